"""The demo's fine-tuned model as it is served: how faithful its GGUF is, and how fast
llama.cpp answers with it against the transformers loop; plus what gRPC adds.

    make demo   # once: leaves a fine-tuned, GGUF-exported model in .tunewright/demo
    .venv/bin/python bench/serving.py [--state-dir .tunewright/demo] [--model ID] [--prompts 12] [--new-tokens 64] [--rounds 3]

It starts the three services on the demo's state and exports the demo's job twice more: as
a safetensors folder (the Hugging Face model the GGUF came from, and the transformers
backend's input) and as a Q8_0 GGUF. Then:
- fidelity, on the job's held-out test prompts: top-1 next-token agreement between llama.cpp
  on each GGUF and transformers on the safetensors model over every prompt position, and
  the share of identical greedy 24-token continuations (``llamacpp.parity``);
- answers, on the same prompts as served (greedy, stopping at the end of the turn, at most
  64 tokens): the share identical to transformers' answers, and the demo's urgency accuracy;
- speed, on the test tickets' questions, greedy:
  - in this process, straight through each backend (``llama_cpp_backend`` on the F16 and the
    Q8_0 GGUF, ``transformers_backend``): new tokens per second after the first token, and
    the time to the first token, in rounds where the engines take turns (medians; the speed
    ratio to transformers per round and its median);
  - through the serve service's ``Chat`` over gRPC on loopback: the time to the first
    streamed message, whose difference from the in-process figure is what gRPC adds.
A benchmark, not a test: the figures go in bench/README.md with this command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(pieces) -> tuple[float, float, int]:
    """(seconds to the first piece, seconds from the first piece to the last, tokens)."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    for piece in pieces:
        now = time.perf_counter()
        first = first if first is not None else now
        last = now
        tokens = piece.token_count
    return first - started, last - first, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=REPO / ".tunewright" / "demo")
    parser.add_argument("--model", help="the GGUF model to measure (default: the first exported)")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds; the engines take turns in each")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    from tunewright.client import Client
    from tunewright.core.basemodel import load_tokenizer
    from tunewright.core.chat import prompt_and_reference, render
    from tunewright.demo import urgency
    from tunewright.plugin_manager import load_methods
    from tunewright.serve.answers import Options
    from tunewright.serve.backend import transformers_backend
    from tunewright.serve.llamacpp import llama_cpp_backend, parity
    from tunewright.serve.loading import ModelLoader
    from tunewright.serve.store import ModelStore
    from tunewright.serve.v1 import serve_service_pb2 as pb
    from tunewright.stack import Stack, free_port

    store = ModelStore(args.state_dir / "serve" / "serve.sqlite3")
    # The demo's own export: the first GGUF, not the Q8_0 copy an earlier run of this made.
    ggufs = [m for m in store.list(1000, "")[0] if m.format == "gguf" and (args.model in (None, m.id))]
    if not ggufs:
        sys.exit(f"no GGUF export {args.model or ''} in {args.state_dir}; run `make demo` first")
    gguf = min(ggufs, key=lambda m: m.create_time)
    stack = Stack(
        args.state_dir, ports={n: free_port() for n in ("data", "trainer", "serve")}, log_dir=args.state_dir / "logs"
    )
    stack.start()
    client = Client(stack.address("data"), stack.address("trainer"), stack.address("serve"))
    try:
        exports = {"safetensors": {"format": "safetensors"}, "q8_0": {"format": "gguf", "options": {"type": "q8_0"}}}
        for suffix, request in exports.items():
            if not store.exists(f"{gguf.id}-{suffix}"):
                client.serve.ExportModel(
                    pb.ExportModelRequest(job=gguf.job, model_id=f"{gguf.id}-{suffix}", **request), timeout=900
                )
        hf, q8 = store.get(f"{gguf.id}-safetensors"), store.get(f"{gguf.id}-q8_0")
        held_out, references = zip(
            *(
                prompt_and_reference(json.loads(line)["messages"])
                for line in client.read_artifact_file(gguf.job, "eval_predictions.jsonl").decode().splitlines()
            ),
            strict=True,
        )
        tokenizer = load_tokenizer(Path(hf.directory))
        ids = [
            tokenizer(render(tokenizer, p, generation_prompt=True), add_special_tokens=False)["input_ids"]
            for p in held_out
        ]
        fidelity = {
            record.id: parity(Path(record.directory) / record.gguf, Path(hf.directory), ids) for record in (gguf, q8)
        }
        prompts = held_out[: args.prompts]
        options = Options(max_new_tokens=args.new_tokens)

        results = {}
        llama_cpp = llama_cpp_backend()
        engines = {
            "llama.cpp F16": (llama_cpp, gguf),
            "llama.cpp Q8_0": (llama_cpp, q8),
            "transformers": (
                transformers_backend(ModelLoader(load_methods(), args.state_dir / "serve" / "base-models")),
                hf,
            ),
        }
        # The answers as a user gets them, on every held-out prompt (this also loads and warms up).
        answers = {
            name: ["".join(p.text for p in backend.chat(record, m, Options(max_new_tokens=64))) for m in held_out]
            for name, (backend, record) in engines.items()
        }
        # The engines take turns, round after round: a noisy neighbour slows both alike,
        # and the ratio is read per round.
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, (backend, record) in engines.items():
                runs = [timed(backend.chat(record, p, options)) for p in prompts]
                rounds[name].append(
                    (
                        statistics.median((t - 1) / d for _, d, t in runs if t > 1 and d > 0),
                        statistics.median(f for f, _, _ in runs),
                    )
                )
        for name, (_backend, record) in engines.items():
            grpc_first = []
            for p in [prompts[0], *prompts]:  # the first loads the model in the serve service
                request = pb.ChatRequest(
                    model=f"models/{record.id}",
                    messages=[pb.ChatMessage(**m) for m in p],
                    options=pb.GenerationOptions(max_new_tokens=args.new_tokens),
                )
                started = time.perf_counter()
                stream = client.serve.Chat(request, timeout=600)
                next(iter(stream))
                grpc_first.append(time.perf_counter() - started)
                for _ in stream:
                    pass
            results[name] = {
                "decode_tokens_per_second": statistics.median(rate for rate, _ in rounds[name]),
                "first_token_ms_in_process": 1000 * statistics.median(first for _, first in rounds[name]),
                "first_token_ms_over_grpc": 1000 * statistics.median(grpc_first[1:]),
            }
        ratios = {
            name: [fast / slow for (fast, _), (slow, _) in zip(rounds[name], rounds["transformers"], strict=True)]
            for name in engines
            if name != "transformers"
        }
    finally:
        client.close()
        stack.stop()

    print(f"GGUF fidelity against transformers on {len(held_out)} held-out test prompts:")
    for name, measured in fidelity.items():
        print(
            f"  {name:28} top-1 agreement {measured.top1_agreement:.2%} over {measured.positions} positions; "
            f"identical greedy {measured.continuation_tokens}-token continuations "
            f"{measured.identical_continuations:.0%} of {measured.prompts}, "
            f"{measured.identical_up_to_near_ties:.0%} up to near-ties"
        )
    print(f"answers as served on the {len(held_out)} prompts (greedy, to the end of the turn, <= 64 tokens):")
    for name, texts in answers.items():
        identical = sum(a == b for a, b in zip(texts, answers["transformers"], strict=True))
        correct = sum(urgency(a) == urgency(r) for a, r in zip(texts, references, strict=True))
        print(
            f"  {name:16} identical to transformers' {identical}/{len(texts)}; "
            f"urgency accuracy {correct / len(texts):.1%}"
        )
    print(
        f"model {gguf.id} ({gguf.method}, from {gguf.base_model}); {args.prompts} prompts, greedy, <= {args.new_tokens} tokens"
    )
    print(f"{'backend':16}{'tokens/s':>10}{'first token (ms)':>18}{'over gRPC (ms)':>16}{'gRPC adds (ms)':>16}")
    for name, r in results.items():
        added = r["first_token_ms_over_grpc"] - r["first_token_ms_in_process"]
        print(
            f"{name:16}{r['decode_tokens_per_second']:>10.1f}{r['first_token_ms_in_process']:>18.1f}"
            f"{r['first_token_ms_over_grpc']:>16.1f}{added:>16.1f}"
        )
    for name, per_round in ratios.items():
        print(
            f"{name} / transformers, tokens per second: {statistics.median(per_round):.1f}x "
            f"(median of {args.rounds} rounds: {', '.join(f'{r:.1f}x' for r in per_round)})"
        )


if __name__ == "__main__":
    main()
