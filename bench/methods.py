"""Every fine-tuning method on SmolLM2-135M, beside a plain Hugging Face Trainer + PEFT LoRA
reference, in one run on the same data, batch size and steps.

    .venv/bin/python bench/methods.py [--steps 30] [--warmup 10] [--batch-size 8] [--methods lora,qlora,...]

A method runs at the precision a job would use (``auto``: bfloat16 autocast where the CPU has
it); ``lora:fp32`` (or ``:bf16``) in ``--methods`` asks for another.

Each run is its own process, so that peak memory is that method's alone and Unsloth's
patches stay in its process. A method trains through what a job uses: its ``load_base`` and
``prepare`` and the trainer's own loop (``tunewright.trainer.training.train``). The
reference is what a user would write instead: ``transformers.Trainer`` with a peft
``LoraConfig`` (r=16, alpha=32, every linear layer), float32, batches padded to their
longest example, the loss on assistant tokens only. Every run sees the same batches in the
same order.

Figures per run: real (unpadded) tokens per second, median over the timed steps
(the untimed warm-up steps come first, all in one epoch: every run sees each example once);
peak resident memory of the process; and the same above the process's memory once torch
and transformers are imported, before the model loads, which is what the run itself added.
A benchmark, not a test: numbers go in bench/README.md, with the command.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE = "hf-trainer-lora"
DEFAULT_METHODS = ("lora", "qlora", "unsloth", "prefix", "full")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def batches(examples: list, batch_size: int, steps: int, seed: int) -> list[list]:
    """The examples of each step, in the order the trainer's loop draws them in its first
    epoch when not grouping by length (``training.train`` shuffles with ``random.Random(seed)``)."""
    if steps * batch_size > len(examples):
        sys.exit(f"{steps} steps of {batch_size} need more than one epoch of {len(examples)} examples")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [[examples[i] for i in order[s * batch_size : (s + 1) * batch_size]] for s in range(steps)]


def load_examples(folder: Path) -> tuple[object, list]:
    from tunewright.core.basemodel import load_tokenizer
    from tunewright.core.chat import tokenize_for_training

    tokenizer = load_tokenizer(folder)
    lines = (REPO / "examples" / "support_tickets" / "tickets.jsonl").read_text().splitlines()
    return tokenizer, [tokenize_for_training(tokenizer, json.loads(line)["messages"], 512) for line in lines]


def run_method(name: str, folder: Path, steps: int, warmup: int, batch_size: int, precision: str = "auto") -> dict:
    """One method through its own loading and preparing and the trainer's loop."""
    from tunewright.contract import Hyperparameters
    from tunewright.methods import detect_runtime
    from tunewright.parameters import build_config
    from tunewright.plugin_manager import get_method, load_methods

    method = get_method(load_methods(), name)
    for module in method.capabilities.import_first:
        __import__(module)
    import peft  # noqa: F401 - imported before the baseline is taken, as in every run
    import torch
    import transformers  # noqa: F401

    from tunewright.trainer import training

    training.keep_freed_memory()  # as the job's worker does
    baseline = current_rss_bytes()
    tokenizer, examples = load_examples(folder)
    config = build_config(method, {})
    torch.manual_seed(0)
    runtime = detect_runtime()
    model = method.prepare(method.load_base(folder, config, runtime), config)
    seen = []
    # The loop draws its batches as ``batches`` does (shuffled, not grouped by length, which a
    # job does by default): the reference gets the same ones.
    hp = Hyperparameters(
        epochs=1,
        batch_size=batch_size,
        max_steps=warmup + steps,
        evaluate=False,
        seed=0,
        precision=precision,
        group_by_length=False,
    )
    # The precision a job would use: bfloat16 autocast where the CPU has it, unless asked otherwise.
    autocast, _ = training.autocast_dtype(precision, runtime)
    training.train(model, examples, hp, tokenizer.pad_token_id, seen.append, autocast=autocast)
    rates = [p.tokens_per_second for p in seen[warmup:]]
    return {
        "run": name if precision == "auto" else f"{name}-{precision}",
        "tokens_per_second": statistics.median(rates),
        "final_loss": seen[-1].loss,
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
        "compute_dtype": "bfloat16" if autocast is not None else _compute_dtype(model),
    }


def _compute_dtype(model) -> str:
    from tunewright.core import probe

    return probe.compute_dtype(model)


def collate(batch: list, pad_id: int) -> dict:
    """Right-padded model inputs with ``labels``, what a Hugging Face model's own loss takes:
    the reference's batches."""
    import torch

    from tunewright.core.chat import IGNORE_INDEX

    width = max(len(example.input_ids) for example in batch)
    ids, labels, mask = [], [], []
    for example in batch:
        pad = width - len(example.input_ids)
        ids.append(example.input_ids + [pad_id] * pad)
        labels.append(example.labels + [IGNORE_INDEX] * pad)
        mask.append([1] * len(example.input_ids) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }


def run_reference(folder: Path, steps: int, warmup: int, batch_size: int) -> dict:
    """transformers.Trainer + peft LoRA, as a user would write it, on the same batches."""
    import peft
    import torch
    import transformers  # noqa: F401
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from tunewright.core.basemodel import load_model

    baseline = current_rss_bytes()
    tokenizer, examples = load_examples(folder)
    drawn = [e for batch in batches(examples, batch_size, warmup + steps, seed=0) for e in batch]
    torch.manual_seed(0)
    model = peft.get_peft_model(
        load_model(folder),
        peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.started = 0.0
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    tokens: list[int] = []

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def training_step(self, model, inputs, *args, **kwargs):
            tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, *args, **kwargs)

    timer = Timer()
    arguments = TrainingArguments(
        output_dir=str(folder.parent / "hf-trainer-bench"),
        per_device_train_batch_size=batch_size,
        max_steps=warmup + steps,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=max(1, (warmup + steps) // 10),
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=0,
    )
    trainer = InOrder(
        model=model,
        args=arguments,
        train_dataset=drawn,
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
        callbacks=[timer],
    )
    trainer.train()
    rates = [t / s for t, s in zip(tokens[warmup:], timer.seconds[warmup:], strict=False)]
    return {
        "run": REFERENCE,
        "tokens_per_second": statistics.median(rates),
        "final_loss": None,
        "peak_rss_bytes": peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
        "compute_dtype": "float32",
    }


def run_in_child(script: str, run: str, args: argparse.Namespace) -> dict:
    """``script --child RUN`` in a process of its own, with the step settings of ``args``;
    returns the JSON object it prints on its ``RESULT`` line."""
    command = [sys.executable, script, "--child", run, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--batch-size", str(args.batch_size), "--cache", str(args.cache)]
    print(f"running {run} ...", file=sys.stderr, flush=True)
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((row for row in output.stdout.splitlines() if row.startswith("RESULT ")), None)
    if output.returncode != 0 or line is None:
        sys.exit(f"{run} failed:\n{output.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def child(args: argparse.Namespace) -> None:
    from tunewright.core.basemodel import DEFAULT_BASE_MODEL, resolve_base_model

    folder = resolve_base_model(DEFAULT_BASE_MODEL, args.cache)
    if args.child == REFERENCE:
        result = run_reference(folder, args.steps, args.warmup, args.batch_size)
    else:
        name, _, precision = args.child.partition(":")
        result = run_method(name, folder, args.steps, args.warmup, args.batch_size, precision or "auto")
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="untimed steps first: Unsloth's compiled kernels and the allocators take several steps to settle",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--cache", type=Path, default=REPO / ".tunewright" / "bench-cache")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    results = [run_in_child(__file__, run, args) for run in [REFERENCE, *args.methods.split(",")]]

    reference = results[0]
    lora = next((r for r in results if r["run"] == "lora"), None)
    gib = 2**30
    print(
        f"SmolLM2-135M, {args.steps} timed steps after {args.warmup} untimed, batch {args.batch_size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'run':16}{'dtype':>10}{'tokens/s':>10}{'x ref':>8}{'peak GiB':>10}"
        f"{'added GiB':>11}{'peak x lora':>13}{'added x lora':>14}"
    )
    for r in results:
        added = r["peak_rss_bytes"] - r["baseline_rss_bytes"]
        lora_added = lora["peak_rss_bytes"] - lora["baseline_rss_bytes"] if lora else None
        print(
            f"{r['run']:16}{r['compute_dtype']:>10}{r['tokens_per_second']:>10.0f}"
            f"{r['tokens_per_second'] / reference['tokens_per_second']:>8.2f}"
            f"{r['peak_rss_bytes'] / gib:>10.2f}{added / gib:>11.2f}"
            + (f"{r['peak_rss_bytes'] / lora['peak_rss_bytes']:>13.2f}{added / lora_added:>14.2f}" if lora else "")
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "runs": results}, indent=2
            )
        )


if __name__ == "__main__":
    main()
