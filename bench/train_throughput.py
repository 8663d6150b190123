"""Training and evaluation throughput of the built-in `lora` method on SmolLM2-135M, CPU.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--batch-size 8]

Runs the trainer's own loop (tunewright.trainer.training) on the support-ticket examples
and prints one JSON object: median tokens per second over the steps after a warm-up step,
seconds per step, peak resident memory, and greedy evaluation speed. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from tunewright.contract import Hyperparameters
from tunewright.core.basemodel import DEFAULT_BASE_MODEL, load_model, load_tokenizer, resolve_base_model
from tunewright.core.chat import tokenize_for_training
from tunewright.methods import build_config
from tunewright.plugin_manager import load_methods
from tunewright.trainer import training

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-examples", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=REPO / ".tunewright" / "bench-cache")
    args = parser.parse_args()

    folder = resolve_base_model(DEFAULT_BASE_MODEL, args.cache)
    tokenizer = load_tokenizer(folder)
    conversations = [
        json.loads(line)["messages"]
        for line in (REPO / "examples" / "support_tickets" / "tickets.jsonl").read_text().splitlines()
    ]
    examples = [tokenize_for_training(tokenizer, c, 512) for c in conversations]
    method = load_methods()["lora"]
    model = method.prepare(load_model(folder), build_config(method, {}))

    seen: list[training.Progress] = []
    hp = Hyperparameters(epochs=1, batch_size=args.batch_size, max_steps=args.steps + 1, evaluate=False)
    started = time.perf_counter()
    training.train(model, examples, hp, tokenizer.pad_token_id, seen.append)
    train_seconds = time.perf_counter() - started
    rates = [p.tokens_per_second for p in seen[1:]]

    test = conversations[: args.eval_examples]
    started = time.perf_counter()
    answers = training.generate_answers(model, tokenizer, test, max_new_tokens=24)
    eval_seconds = time.perf_counter() - started

    print(
        json.dumps(
            {
                "model": DEFAULT_BASE_MODEL,
                "method": "lora (r=16, all linear layers)",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "steps_timed": len(rates),
                "mean_tokens_per_example": round(statistics.mean(len(e.input_ids) for e in examples), 1),
                "train_tokens_per_second_median": round(statistics.median(rates), 1),
                "seconds_per_step": round(train_seconds / len(seen), 2),
                "eval_examples": len(test),
                "eval_seconds": round(eval_seconds, 1),
                "eval_new_tokens_per_second": round(
                    sum(len(tokenizer(a)["input_ids"]) for a in answers) / eval_seconds, 1
                ),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
