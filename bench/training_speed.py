"""Training speed of the default `lora` job against the Hugging Face Trainer a user would
write instead, in one run: tokens per second, the ratio, and MFU against this machine's
measured matmul peak.

    .venv/bin/python bench/training_speed.py [--steps 30] [--warmup 10] [--batch-size 8] [--json FILE]

Four measurements, each in its own process, on SmolLM2-135M and the demo's support tickets,
LoRA r=16, alpha=32, every linear layer, the same batch size and number of steps:

- ``peak``: 2048x2048 matmuls in float32 and in bfloat16, the ceiling MFU is read against:
  the median of 40 (the best one is printed too), on a GPU when CUDA is present, else the CPU;
- ``hf-trainer-lora``, the reference: ``transformers.Trainer`` + peft, float32, batches padded
  to their longest example (``bench/methods.py`` has the code);
- ``loop``: the trainer's own loop (``tunewright.trainer.training.train``) with the `lora`
  method, at the precision and batch layout a job uses by default, on the reference's very
  batches (shuffled, not grouped by length): the loop's own speed;
- ``job``: a real job through the three services (``tunewright.stack.Stack``), created over
  gRPC with default hyperparameters but the step count, its speed read from its progress
  events. Its examples are the dataset's train split, drawn as a job draws them by default
  (batches of similar length), so its batches are not the same ones.

Tokens per second counts real tokens, not padding: the median over the timed steps, after
the untimed warm-up steps.

MFU is (tokens/s x FLOPs needed per token) / the peak of the dtype the run computes in. The
FLOPs needed by LoRA on a frozen base, per token, are counted from the model's shape:
the forward pass (every linear layer, causal attention within the example, and the
vocabulary projection at the positions whose next token is trained, since only those carry
loss), once more for the gradients flowing back through the frozen weights, and three times
LoRA's own matmuls (forward, and gradients for their inputs and their weights). Work a run
does beyond that (logits nobody trains on, padding) is not counted: it is the waste the
figure should show. A benchmark, not a test: figures go in bench/README.md, with the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TICKETS = REPO / "examples" / "support_tickets" / "tickets.jsonl"
LORA_RANK = 16


def methods_bench():
    """bench/methods.py as a module: the reference and the loop runs are its own."""
    spec = importlib.util.spec_from_file_location("bench_methods", REPO / "bench" / "methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matmul_peak() -> dict:
    """FLOP/s of a 2048x2048 matmul per dtype, 40 timed after 5 untimed: the median (the
    peak MFU is read against) and the best one."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 2048
    median, best = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = []
        for _ in range(45):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            torch.mm(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        name = str(dtype).removeprefix("torch.")
        median[name] = 2 * n**3 / statistics.median(seconds[5:])
        best[name] = 2 * n**3 / min(seconds[5:])
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"device": device_name, "flops": median, "best_flops": best}


def flops_per_token(folder: Path, examples: list) -> float:
    """FLOPs a LoRA step needs per real token on these examples (see the module's docstring)."""
    config = json.loads((folder / "config.json").read_text())
    hidden, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    layers = config["num_hidden_layers"]
    kv = hidden * kv_heads // heads
    # (in, out) of every linear layer in a decoder layer: q, k, v, o, gate, up, down.
    linears = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inner), (hidden, inner)]
    linears.append((inner, hidden))
    frozen = 2 * sum(i * o for i, o in linears) * layers
    lora = 2 * sum(LORA_RANK * (i + o) for i, o in linears) * layers
    tokens = needed = 0
    for example in examples:
        length = len(example.input_ids)
        trained = sum(1 for label in example.labels[1:] if label != -100)
        # Scores and the weighted sum of values, each 2*hidden FLOPs per (query, key) pair, causal.
        attention = 2 * 2 * hidden * length * (length + 1) / 2 * layers
        forward = frozen * length + attention + 2 * hidden * vocab * trained
        needed += 2 * forward + 3 * lora * length
        tokens += length
    return needed / tokens


def run_job(folder: Path, steps: int, warmup: int, batch_size: int) -> dict:
    """A default `lora` job through the three services, its speed from its progress events."""
    from tunewright.client import Client
    from tunewright.records import JobState
    from tunewright.stack import Stack

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    with tempfile.TemporaryDirectory(prefix="tunewright-bench-") as state:
        stack = Stack(Path(state), ports={s: free_port() for s in ("data", "trainer", "serve")})
        stack.start()
        client = Client(stack.address("data"), stack.address("trainer"), stack.address("serve"))
        try:
            dataset = client.upload_dataset(TICKETS)
            job = client.create_job(
                dataset.name, batch_size=batch_size, epochs=1, max_steps=warmup + steps, evaluate=False
            )
            progress, logs = [], []
            for event in client.watch_job(job.name):
                if event.progress:
                    progress.append(event.progress)
                if event.log:
                    logs.append(event.log)
            job = client.get_job(job.name)
            if job.state != JobState.SUCCEEDED:
                sys.exit(f"the job ended {job.state}: {job.error}")
        finally:
            client.close()
            stack.stop()
    rates = [p.tokens_per_second for p in progress[warmup:]]
    precision = next((line for line in logs if line.startswith("precision:")), "")
    return {
        "run": "job",
        "tokens_per_second": statistics.median(rates),
        "compute_dtype": "bfloat16" if "bfloat16" in precision else "float32",
        "peak_rss_bytes": progress[-1].peak_memory_bytes,
        "events": [line for line in logs if line.startswith(("precision:", "batches:"))],
    }


def child(args: argparse.Namespace) -> dict:
    from tunewright.core.basemodel import DEFAULT_BASE_MODEL, resolve_base_model

    if args.child == "peak":
        return matmul_peak()
    folder = resolve_base_model(DEFAULT_BASE_MODEL, args.cache)
    bench = methods_bench()
    if args.child == "hf-trainer-lora":
        return bench.run_reference(folder, args.steps, args.warmup, args.batch_size)
    if args.child == "loop":
        return {**bench.run_method("lora", folder, args.steps, args.warmup, args.batch_size), "run": "loop"}
    if args.child == "job":
        return run_job(folder, args.steps, args.warmup, args.batch_size)
    if args.child == "flops":
        _, examples = bench.load_examples(folder)
        return {"flops_per_token": flops_per_token(folder, examples)}
    raise SystemExit(f"unknown run {args.child}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=REPO / ".tunewright" / "bench-cache")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    bench = methods_bench()
    results = {
        run: bench.run_in_child(__file__, run, args) for run in ("peak", "flops", "hf-trainer-lora", "loop", "job")
    }

    peak, per_token = results["peak"], results["flops"]["flops_per_token"]
    reference = results["hf-trainer-lora"]["tokens_per_second"]
    print(
        f"{peak['device']}: 2048x2048 matmul, median (best) "
        + ", ".join(f"{k} {v / 1e9:.0f} ({peak['best_flops'][k] / 1e9:.0f}) GFLOP/s" for k, v in peak["flops"].items())
    )
    print(
        f"FLOPs needed per real token: {per_token / 1e6:.0f} M; {args.steps} timed steps after {args.warmup}, batch {args.batch_size}"
    )
    print(f"{'run':18}{'dtype':>10}{'tokens/s':>10}{'x ref':>8}{'GFLOP/s':>9}{'MFU':>7}{'MFU of best':>13}")
    for name in ("hf-trainer-lora", "loop", "job"):
        r = results[name]
        achieved = r["tokens_per_second"] * per_token
        r["gflops"] = achieved / 1e9
        r["mfu"] = achieved / peak["flops"][r["compute_dtype"]]
        r["mfu_of_best"] = achieved / peak["best_flops"][r["compute_dtype"]]
        r["x_reference"] = r["tokens_per_second"] / reference
        print(
            f"{name:18}{r['compute_dtype']:>10}{r['tokens_per_second']:>10.0f}{r['x_reference']:>8.2f}"
            f"{r['gflops']:>9.0f}{r['mfu']:>7.1%}{r['mfu_of_best']:>13.1%}"
        )
    print("the job: " + "; ".join(results["job"]["events"]))
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "warmup": args.warmup, **results}, indent=2))


if __name__ == "__main__":
    main()
