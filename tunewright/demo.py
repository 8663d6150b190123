"""``tunewright demo``: the whole path on real parts, as a user would call it.

Starts the three services, uploads the support-ticket examples, creates the dataset,
fine-tunes the built-in model with the chosen method (``lora`` by default), compares base
and fine-tuned on the test split, exports the model (merged, or attached where the method
cannot merge), asks it a question through the serve service, prints a table and writes
the same results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

from tunewright.cli.datasets import cleaning_summary
from tunewright.client import Client, ServiceError
from tunewright.core.basemodel import BUILTIN_MODELS
from tunewright.core.chat import prompt_and_reference
from tunewright.records import JobError, JobState, Model
from tunewright.stack import Stack, free_port

DEFAULT_DATASET = Path("examples/support_tickets/tickets.jsonl")
LABEL = re.compile(r"\b(high|medium|low)\b")
QUESTION = "Since the last deploy nobody in our company can log in, the whole sales team is blocked."


def urgency(text: str) -> str | None:
    """The first urgency word in an answer: lenient, so the base model gets credit for any
    answer that names the right level, whatever its format."""
    found = LABEL.search(text.lower())
    return found.group(1) if found else None


def progress_bar(step: int, total: int, loss: float, tokens_per_second: float, width: int = 30) -> str:
    filled = int(width * step / max(1, total))
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] step {step}/{total}  loss {loss:.3f}  {tokens_per_second:.0f} tok/s"
    )


def show_progress(step: int, total: int, loss: float, tokens_per_second: float) -> None:
    """Redraws one line on a terminal; elsewhere (CI logs) prints every tenth of the way."""
    bar = progress_bar(step, total, loss, tokens_per_second)
    if sys.stdout.isatty():
        print(f"\r  {bar}", end="", flush=True)
    elif step == total or step % max(1, total // 10) == 0:
        print(f"  {bar}", flush=True)


def push_to_ollama(client: Client, model: Model) -> Model | None:
    """Registers a GGUF export with the Ollama at $OLLAMA_HOST (or the default address) when
    one answers; returns the model with its push, or None."""
    from tunewright.core import ollama
    from tunewright.plugins.ollama.target import DEFAULT_HOST

    host = os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    if model.format != "gguf" or not ollama.reachable(host if "://" in host else f"http://{host}", timeout=2.0):
        print(f"no Ollama answers at {host}; the model is served from its GGUF by llama.cpp", flush=True)
        return None
    name = f"tunewright-demo-{model.name.split('/')[1]}"
    return client.push_model(model.name, "ollama", {"host": host, "name": name})


def run_demo(args: argparse.Namespace) -> int:
    dataset_path = args.dataset or DEFAULT_DATASET
    if not dataset_path.is_file():
        print(f"no dataset at {dataset_path}; run from the repository root or pass --dataset", file=sys.stderr)
        return 2
    started = time.monotonic()
    ports = {"data": free_port(), "trainer": free_port(), "serve": free_port()}
    # The demo's own services may read the base model folder named on its command line.
    models_dirs = [args.state_dir / "models"]
    if args.base_model not in BUILTIN_MODELS:
        models_dirs.append(Path(args.base_model))
    stack = Stack(args.state_dir, ports=ports, log_dir=args.state_dir / "logs", models_dirs=models_dirs)
    print(f"starting the three services (logs in {args.state_dir / 'logs'})", flush=True)
    # SIGTERM ends the demo as Ctrl-C does, stopping its services (they were left running).
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        stack.start()
        client = Client(stack.address("data"), stack.address("trainer"), stack.address("serve"))
        try:
            return _run(args, client, dataset_path, started)
        except ServiceError as error:
            print(f"error: {error.code}: {error}", file=sys.stderr)
            return 2
        finally:
            client.close()
            if on_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping: let it finish
            stack.stop()
            print("services stopped", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, client: Client, dataset_path: Path, started: float) -> int:
    file = client.upload(dataset_path)
    dataset = client.create_dataset(file.name, display_name="support tickets", tokenizer_model=args.base_model)
    counts = dataset.split_counts
    print(
        f"dataset {dataset.name}: {dataset.example_count} examples "
        f"(train {counts.train}, validation {counts.validation}, test {counts.test})",
        flush=True,
    )
    for split in ("train", "validation", "test"):
        s = dataset.stats[split]
        print(
            f"  {split}: {s['examples']} examples, {s['tokens']} tokens ({s['loss_tokens'] / max(1, s['tokens']):.0%} "
            f"carry loss), {s['min_tokens']}-{s['max_tokens']} tokens each, {s['overlength']} too long",
            flush=True,
        )
    print(f"  cleaning: {cleaning_summary(dataset.stats['cleaning'])}", flush=True)

    job = client.create_job(
        dataset.name,
        base_model=args.base_model,
        method=args.method,
        epochs=args.epochs,
        batch_size=8,
        eval_max_new_tokens=24,
        learning_rate=args.learning_rate or None,
    )
    print(
        f"job {job.name}: fine-tuning {args.base_model} with {args.method} (the first run converts the model once)",
        flush=True,
    )
    train_started = time.monotonic()
    rates: list[float] = []
    drawing = False  # a terminal progress line is open and needs a newline before other output
    for event in client.watch_job(job.name):
        if event.progress:
            p = event.progress
            rates.append(p.tokens_per_second)
            show_progress(p.step, p.total_steps, p.loss, p.tokens_per_second)
            drawing = sys.stdout.isatty()
            continue
        if drawing:
            print(flush=True)
            drawing = False
        if event.log is not None:
            print(f"  {event.log}", flush=True)
        elif event.state is not None:
            print(f"  {event.state}", flush=True)
    job = client.get_job(job.name)
    train_seconds = time.monotonic() - train_started
    if job.state != JobState.SUCCEEDED:
        error = job.error or JobError("", "")
        print(f"{job.name} ended {job.state}: {error.code}: {error.message}", file=sys.stderr)
        return 1

    predictions = client.predictions(job.name)
    expected = [urgency(p["reference"]) for p in predictions]
    accuracy = {
        side: sum(urgency(p[side]) == e for p, e in zip(predictions, expected, strict=True)) / len(predictions)
        for side in ("base", "tuned")
    }

    print("exporting (GGUF where the method and model allow) ...", flush=True)
    model = client.export_model(job.name)
    pushed = push_to_ollama(client, model)
    if pushed is not None:
        model = pushed
    # A bare question, as a user of `ollama run` asks it: the export's default system prompt
    # is the one every training ticket opened with.
    reply = client.ask(model.name, [{"role": "user", "content": QUESTION}])
    # Every test prompt through the GGUF as llama.cpp (or Ollama) serves it: does it stop by itself?
    stopped = None
    if model.format == "gguf":
        stopped = sum(
            client.ask(model.name, prompt_and_reference(p["messages"])[0]).finish_reason == "stop" for p in predictions
        )
    evaluation = job.evaluation
    results = {
        "dataset": dataset.name,
        "job": job.name,
        "model": model.name,
        "model_directory": model.directory,
        "base_model": args.base_model,
        "method": args.method,
        "export_format": model.format,
        "train_tokens_per_second_median": round(statistics.median(rates[1:] or rates), 1),
        "peak_training_memory_bytes": job.progress.peak_memory_bytes,
        "test_examples": len(predictions),
        "urgency_accuracy": accuracy,
        "first_line_match": {"base": evaluation.base.first_line_match, "tuned": evaluation.tuned.first_line_match},
        "test_loss": {"base": evaluation.base.loss, "tuned": evaluation.tuned.loss},
        "final_train_loss": job.progress.loss,
        "train_steps": job.progress.total_steps,
        "training_seconds": round(train_seconds, 1),
        "evaluation_seconds": {"base": round(evaluation.base.seconds, 1), "tuned": round(evaluation.tuned.seconds, 1)},
        "total_seconds": round(time.monotonic() - started, 1),
        "question": QUESTION,
        "answer": reply.text,
        "answer_finish_reason": reply.finish_reason,
        "answer_backend": reply.backend,
        "test_prompts_stopped": None
        if stopped is None
        else {"stopped": stopped, "of": len(predictions), "max_new_tokens": 64, "backend": reply.backend},
        "template_family": model.template_family,
        "pushes": [{"target": p.target, "address": p.address, "name": p.remote_name} for p in model.pushes],
        "modelfile": model.modelfile,
    }
    print()
    print(f"{'on the ' + str(len(predictions)) + ' test tickets':34}{'base':>10}{'fine-tuned':>12}")
    print(f"{'urgency accuracy':34}{accuracy['base']:>10.1%}{accuracy['tuned']:>12.1%}")
    print(
        f"{'answer format (first line) match':34}{evaluation.base.first_line_match:>10.1%}{evaluation.tuned.first_line_match:>12.1%}"
    )
    print(f"{'test loss (nats/token)':34}{evaluation.base.loss:>10.3f}{evaluation.tuned.loss:>12.3f}")
    print(f"\ngain in urgency accuracy: {100 * (accuracy['tuned'] - accuracy['base']):+.1f} points")
    print(
        f"job: {results['train_steps']} training steps; {train_seconds:.0f} s from creation to the end, of which "
        f"{evaluation.base.seconds:.0f} s evaluating the base and {evaluation.tuned.seconds:.0f} s the fine-tuned model"
    )
    print(
        f"training: {results['train_tokens_per_second_median']:.0f} tokens/s (median), "
        f"peak memory {job.progress.peak_memory_bytes / 2**30:.2f} GiB"
    )
    what = {
        "gguf": "a GGUF for llama.cpp and Ollama, with its Modelfile",
        "safetensors": "merged safetensors + Modelfile",
        "attached": "attached to the base when it answers; Ollama cannot load it",
    }.get(model.format, model.format)
    print(f"exported {model.name} to {model.directory} ({what})")
    for note in model.notes:
        print(f"  note: {note}")
    if model.modelfile:
        print("\nModelfile:\n" + "\n".join(f"  {line}" for line in model.modelfile.splitlines()))
    for push in model.pushes:
        print(f"registered with Ollama at {push.address} as {push.remote_name}: ollama run {push.remote_name}")
    print(f"\nQ (no system message; the model's default: {model.system_prompt[:40]!r}...): {QUESTION}")
    print(f"A ({reply.backend}): {reply.text}")
    if stopped is not None:
        print(
            f"stopped by itself on {stopped} of {len(predictions)} test prompts ({reply.backend}, at most 64 new tokens)"
        )
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {Path(args.results).resolve()}")
    return 0
