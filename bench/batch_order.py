"""Shuffled batches against batches grouped by length, in the trainer's own loop, taking turns
in one process: the padding each leaves and the tokens per second each trains at.

    .venv/bin/python bench/batch_order.py [--steps 24] [--rounds 3] [--batch-size 8]

SmolLM2-135M with the `lora` method at a job's default precision, on the demo's support
tickets. Each round trains ``--steps`` steps with each order in turn, the same model going on
training (the speed of a step does not depend on the adapters' values); each order draws a
new epoch from ``random.Random(round + 1)``, the grouped one then rearranged by
``training.grouped_by_length`` as a job does. Per order: the share of a padded batch that is
padding, the median of the steps' tokens per second (what the progress events report) and all
real tokens over all the time, each the median over the rounds (the first steps of a round
include its warm-up). A benchmark, not a test: figures go in bench/README.md with this command.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=REPO / ".tunewright" / "bench-cache")
    args = parser.parse_args()

    import torch

    from tunewright.contract import Hyperparameters
    from tunewright.core.basemodel import DEFAULT_BASE_MODEL, resolve_base_model
    from tunewright.methods import detect_runtime
    from tunewright.parameters import build_config
    from tunewright.plugin_manager import get_method, load_methods
    from tunewright.trainer import training

    spec = importlib.util.spec_from_file_location("bench_methods", REPO / "bench" / "methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    training.keep_freed_memory()  # as the job's worker does
    folder = resolve_base_model(DEFAULT_BASE_MODEL, args.cache)
    tokenizer, examples = bench.load_examples(folder)
    method = get_method(load_methods(), "lora")
    torch.manual_seed(0)
    runtime = detect_runtime()
    config = build_config(method, {})
    model = method.prepare(method.load_base(folder, config, runtime), config)
    autocast, _ = training.autocast_dtype("auto", runtime)
    lengths = [len(example.input_ids) for example in examples]
    size, steps = args.batch_size, args.steps

    def train(grouped: bool, seed: int) -> tuple[float, float, float]:
        rng = random.Random(seed)
        order = list(range(len(examples)))
        rng.shuffle(order)
        if grouped:
            order = training.grouped_by_length(order, lengths, size, rng)
        hp = Hyperparameters(epochs=1, batch_size=size, max_steps=steps, evaluate=False, seed=0)
        run = training.TrainingRun(model, examples, hp, tokenizer.pad_token_id, autocast=autocast)
        run.position.order = order
        progress = []
        started = time.perf_counter()
        run.run(progress.append)
        seconds = time.perf_counter() - started
        batches = [order[s * size : (s + 1) * size] for s in range(steps)]
        real = sum(lengths[i] for batch in batches for i in batch)
        padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
        return 1 - real / padded, statistics.median(p.tokens_per_second for p in progress), real / seconds

    results: dict[str, list[tuple[float, float, float]]] = {"shuffled": [], "grouped by length": []}
    for round_ in range(args.rounds):
        for name in results:
            results[name].append(train(name != "shuffled", round_ + 1))
    print(f"{steps} steps of {size} a round, {args.rounds} rounds, {autocast or torch.float32}")
    print(f"{'order':20}{'padding':>9}{'tokens/s (median step)':>25}{'tokens/s (all)':>16}")
    for name, rows in results.items():
        padding, median_rate, overall = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"{name:20}{padding:>9.1%}{median_rate:>25.0f}{overall:>16.0f}")


if __name__ == "__main__":
    main()
