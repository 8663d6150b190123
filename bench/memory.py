"""Where a training job's memory goes: the demo's job (SmolLM2-135M, its tickets, batch 8,
grouped by length, the precision a job uses), one process per run.

    .venv/bin/python bench/memory.py [--runs lora,lora:micro=2,...] [--steps 12] [--warmup 4]

A run is a method, with options after a colon, joined by "+": ``micro=N`` for passes of at
most N examples a step (the ``micro_batch_size`` hyperparameter), ``precision=bf16`` or
``fp32`` for other than a job's ``auto`` (bf16 only where the CPU has it natively: check
which the run used before comparing figures), ``shape=360m`` or ``shape=1b`` for random weights in another size of the
architecture, ``late`` to tell malloc to keep freed memory only once the model is loaded
and prepared rather than before. It goes through what a job uses: the method's
``load_base`` and ``prepare`` and the trainer's ``TrainingRun``. Each run prints the
process's resident memory after each phase, the peak, and a breakdown of what it holds:

- weights: every distinct tensor of the model's parameters and buffers, by dtype, and what
  the training loop holds in its stead (``frozen_linears_in``'s copies);
- trainable: the trained parameters, their gradients and AdamW's two moments;
- activations: what autograd keeps for the backward pass of the largest pass, measured
  with ``torch.autograd.graph.saved_tensors_hooks`` on one extra step after the timed ones
  (the hooks are Python calls on every saved tensor, so they stay out of the timed steps),
  parameters and their copies not counted; and the logits of that pass.

Tokens per second is the median over the timed steps. A benchmark, not a test: run it on a
quiet machine; figures go in bench/README.md with the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 2**30


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def demo_hyperparameters(**overrides):
    """The demo job's settings (tunewright/demo.py: batch 8, the rest the defaults)."""
    from tunewright.contract import Hyperparameters

    return Hyperparameters(batch_size=8, evaluate=False, **overrides)


def tensor_bytes(tensors) -> dict[str, int]:
    """Bytes of the distinct storages among ``tensors``, by dtype."""
    seen: dict[int, tuple[str, int]] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = (str(tensor.dtype).removeprefix("torch."), storage.nbytes())
    by_dtype: dict[str, int] = {}
    for dtype, size in seen.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0) + size
    return by_dtype


# Other sizes of the Llama architecture, random weights: SmolLM2-360M's published shape, and
# Llama-3.2-1B's (its 128,256-token vocabulary included, so the embedding is its size; the
# text is still tokenized by SmolLM2's tokenizer, whose ids all lie within it).
SHAPES = {
    "360m": dict(
        hidden_size=960, intermediate_size=2560, num_attention_heads=15, num_key_value_heads=5, num_hidden_layers=32
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=16,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
}


def shaped_model(smollm2: Path, shape: str, cache: Path) -> Path:
    """SmolLM2-135M's config and tokenizer with the dimensions of ``shape``, random weights,
    saved once under ``cache``."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = cache / f"smollm2-{shape}-shape"
    if (folder / "model.safetensors").is_file():
        return folder
    config = LlamaConfig.from_pretrained(smollm2)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for name in smollm2.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation")):
            shutil.copy(name, folder / name.name)
    return folder


def run(spec: str, steps: int, warmup: int, cache: Path) -> dict:
    name, _, given = spec.partition(":")
    options = dict(option.partition("=")[::2] for option in given.split("+") if option)
    micro = int(options.get("micro", 0))
    rss = {}
    from tunewright.methods import detect_runtime
    from tunewright.parameters import build_config
    from tunewright.plugin_manager import get_method, load_methods

    method = get_method(load_methods(), name)
    for module in method.capabilities.import_first:
        __import__(module)
    import peft  # noqa: F401 - as in every run, before the baseline
    import torch
    import transformers  # noqa: F401

    from tunewright.core.basemodel import DEFAULT_BASE_MODEL, load_tokenizer, resolve_base_model
    from tunewright.core.chat import tokenize_for_training
    from tunewright.trainer import training

    folder = resolve_base_model(DEFAULT_BASE_MODEL, cache)
    if "shape" in options:
        folder = shaped_model(folder, options["shape"], cache)
    if "late" not in options:
        training.keep_freed_memory()
    rss["imports"] = current_rss_bytes()
    tokenizer = load_tokenizer(folder)
    lines = (REPO / "examples" / "support_tickets" / "tickets.jsonl").read_text().splitlines()
    hp = demo_hyperparameters(
        max_steps=warmup + steps + 1, micro_batch_size=micro, precision=options.get("precision", "auto")
    )
    examples = [tokenize_for_training(tokenizer, json.loads(line)["messages"], hp.max_seq_length) for line in lines]
    config = build_config(method, {})
    runtime = detect_runtime()
    torch.manual_seed(0)
    model = method.load_base(folder, config, runtime)
    rss["base loaded"] = current_rss_bytes()
    model = method.prepare(model, config)
    if "late" in options:
        training.keep_freed_memory()
    rss["prepared"] = current_rss_bytes()
    weights = tensor_bytes([*model.parameters(), *model.buffers()])
    trained = [p for p in model.parameters() if p.requires_grad]

    autocast, _ = training.autocast_dtype(hp.precision, runtime)
    layout, _ = training.layout_for(hp.packing, method.capabilities.takes_position_ids, hp.group_by_length)
    progress = []
    training_run = training.TrainingRun(model, examples, hp, tokenizer.pad_token_id, autocast=autocast, layout=layout)
    training_run.steps = warmup + steps  # the extra step below is measured apart
    training_run.run(progress.append)
    rss["trained (peak)"] = training.peak_memory_bytes(training_run.device)
    optimizer_state = sum(
        t.nbytes for state in training_run.optimizer.state.values() for t in state.values() if torch.is_tensor(t)
    )

    # One more step, with autograd's saved tensors counted for each pass.
    parameters = {t.untyped_storage().data_ptr() for t in model.parameters()}
    passes: list[dict[str, int]] = []

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            passes[-1][storage.data_ptr()] = storage.nbytes()
        return tensor

    forward = training.summed_loss
    logits_bytes = []
    shapes: list[tuple[int, ...]] = []

    def counted(model, inputs, targets):
        passes.append({})
        logits_bytes.append(0)
        shapes.append(tuple(inputs["input_ids"].shape))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            return forward(model, inputs, targets)

    training.summed_loss = counted
    training_run.steps = warmup + steps + 1
    with training.frozen_linears_in(model, autocast):
        parameters |= {t.untyped_storage().data_ptr() for t in model.parameters()}
        training_run.run(lambda _: None)
    training.summed_loss = forward
    # The estimate for the examples this run trained on: a whole job would meet longer ones.
    ran = [examples[i] for i in training_run.position.order[: training_run.steps * hp.batch_size]]
    predicted = estimate_for(method, config, runtime, folder, ran, hp)
    activations = max(sum(p.values()) for p in passes)
    largest = max(range(len(passes)), key=lambda i: sum(passes[i].values()))
    return {
        "run": spec,
        "precision": str(autocast or "float32").removeprefix("torch."),
        "rss": rss,
        "weights": weights,
        "trainable": sum(p.nbytes for p in trained),
        "optimizer_state": optimizer_state,
        "activations": activations,
        "passes": len(passes),
        "largest_pass_shape": shapes[largest],
        "tokens_per_second": statistics.median(p.tokens_per_second for p in progress[warmup:]),
        "final_loss": progress[-1].loss,
        # What the estimate was made from, to make it again: the examples this run trained on.
        "lengths": [len(e.input_ids) for e in ran],
        "loss_lengths": [e.trained_tokens for e in ran],
        "estimate": {
            "peak": predicted.peak_bytes,
            "breakdown": predicted.breakdown,
            "tokens_per_second": predicted.tokens_per_second,
            "largest_pass": predicted.largest_pass,
        },
    }


def estimate_for(method, config, runtime, folder: Path, examples, hp):
    """What ``tunewright.estimate`` predicts for this run, from the config and token counts."""
    from tunewright.estimate import DataShape, ModelShape, estimate

    shape = ModelShape.from_config(json.loads((folder / "config.json").read_text()))
    data = DataShape.from_lengths([len(e.input_ids) for e in examples], [e.trained_tokens for e in examples])
    return estimate(shape, method.footprint(shape, config, runtime), data, hp, runtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="lora,lora:micro=2,full,qlora,prefix")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    parser.add_argument("--cache", type=Path, default=REPO / ".tunewright" / "bench-cache")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--make-shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_shape:
        from tunewright.core.basemodel import DEFAULT_BASE_MODEL, resolve_base_model

        shaped_model(resolve_base_model(DEFAULT_BASE_MODEL, args.cache), args.make_shape, args.cache)
        return
    if args.child:
        print("RESULT " + json.dumps(run(args.child, args.steps, args.warmup, args.cache)), flush=True)
        return
    results = []
    # Random weights are made once, in a process of their own, so that no run's peak holds them.
    for shape in {o.removeprefix("shape=") for s in args.runs.split(",") for o in s.partition(":")[2].split("+")}:
        if shape in SHAPES:
            make = [sys.executable, __file__, "--make-shape", shape, "--cache", str(args.cache)]
            subprocess.run(make, check=True)
    for spec in args.runs.split(","):
        print(f"running {spec} ...", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--child", spec, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        output = subprocess.run([*command, "--cache", str(args.cache)], capture_output=True, text=True, check=False)
        line = next((row for row in output.stdout.splitlines() if row.startswith("RESULT ")), None)
        if output.returncode != 0 or line is None:
            sys.exit(f"{spec} failed:\n{output.stderr[-3000:]}")
        results.append(json.loads(line.removeprefix("RESULT ")))
    first = results[0]
    print(f"the demo's job, {args.steps} timed steps after {args.warmup}; GiB unless said")
    for r in results:
        phases = ", ".join(f"{phase} {value / GIB:.2f}" for phase, value in r["rss"].items())
        weights = ", ".join(f"{dtype} {size / GIB:.3f}" for dtype, size in r["weights"].items())
        print(f"{r['run']} ({r['precision']} passes): {phases}")
        print(
            f"  weights ({weights}); trainable {r['trainable'] / GIB:.3f} (+ grads, + AdamW "
            f"{r['optimizer_state'] / GIB:.3f}); activations of the largest of {r['passes']} passes "
            f"{r['activations'] / GIB:.2f} (rows x tokens {r['largest_pass_shape']}); {r['tokens_per_second']:.0f} tokens/s "
            f"({r['tokens_per_second'] / first['tokens_per_second']:.2f}x {first['run']}), loss {r['final_loss']:.4f}"
        )
        guess = r["estimate"]
        measured_peak = r["rss"]["trained (peak)"]
        print(
            f"  estimate: peak {guess['peak'] / GIB:.2f} ({guess['peak'] / measured_peak:.2f}x measured), "
            f"{guess['tokens_per_second']:.0f} tokens/s ({guess['tokens_per_second'] / r['tokens_per_second']:.2f}x), "
            f"largest pass {tuple(guess['largest_pass'])}; "
            + ", ".join(f"{part} {size / GIB:.2f}" for part, size in guess["breakdown"].items())
        )
    print("JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
