"""``tunewright datasets``: upload a file as a dataset, list, show, report."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunewright.cli.output import JsonFlag, client, console, emit, print_json, when
from tunewright.records import Dataset

app = typer.Typer(help="Upload, validate and split training data.", no_args_is_help=True)


def show_dataset(dataset: Dataset) -> None:
    counts = dataset.split_counts
    table = Table(show_header=False, box=None)
    for key, value in (
        ("name", dataset.name),
        ("display name", dataset.display_name),
        ("file", dataset.file),
        ("format", dataset.format),
        ("examples", str(dataset.example_count)),
        ("splits", f"train {counts.train}, validation {counts.validation}, test {counts.test}"),
        ("split seed", str(dataset.split_seed)),
        ("created", when(dataset.create_time)),
    ):
        table.add_row(f"[bold]{key}[/]", value)
    console.print(table)


@app.command()
def upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="chat JSONL, one conversation a line")],
    name: Annotated[str, typer.Option(help="display name (default: the file's name)")] = "",
    validation_fraction: Annotated[float | None, typer.Option(help="share held out for validation (0.1)")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="share held out for testing (0.1)")] = None,
    split_seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    json: JsonFlag = False,
) -> None:
    """Upload FILE, validate every line and split it into train, validation and test."""
    dataset = client(ctx).upload_dataset(
        file, name, validation_fraction=validation_fraction, test_fraction=test_fraction, split_seed=split_seed
    )
    emit(json, dataset, show_dataset)


@app.command("list")
def list_(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Every dataset, newest last."""
    found = client(ctx).list_datasets()
    if json:
        print_json(found)
        return
    table = Table("name", "display name", "examples", "train/val/test", "created")
    for d in found:
        c = d.split_counts
        table.add_row(
            d.name, d.display_name, str(d.example_count), f"{c.train}/{c.validation}/{c.test}", when(d.create_time)
        )
    console.print(table)


@app.command()
def show(ctx: typer.Context, dataset: str, json: JsonFlag = False) -> None:
    """One dataset: its file, format, size and splits."""
    found = client(ctx).get_dataset(dataset)
    emit(json, found, show_dataset)


@app.command()
def report(ctx: typer.Context, dataset: str, json: JsonFlag = False) -> None:
    """What each split holds: examples, turns, and the length of prompts and answers in characters."""
    c = client(ctx)
    name = c.get_dataset(dataset).name
    rows = {}
    for split in ("train", "validation", "test"):
        conversations = c.read_dataset(name, split)
        answers = [len(m["content"]) for conv in conversations for m in conv if m["role"] == "assistant"]
        prompts = [len(m["content"]) for conv in conversations for m in conv if m["role"] != "assistant"]
        rows[split] = {
            "examples": len(conversations),
            "turns": sum(1 for conv in conversations for m in conv if m["role"] == "assistant"),
            "with_system_prompt": sum(1 for conv in conversations if conv and conv[0]["role"] == "system"),
            "prompt_chars_median": statistics.median(prompts) if prompts else 0,
            "answer_chars_median": statistics.median(answers) if answers else 0,
            "answer_chars_max": max(answers, default=0),
        }
    if json:
        print_json({"dataset": name, "splits": rows})
        return
    table = Table(
        "split",
        "examples",
        "assistant turns",
        "with system prompt",
        "prompt chars (median)",
        "answer chars (median / max)",
        title=name,
    )
    for split, r in rows.items():
        table.add_row(
            split,
            str(r["examples"]),
            str(r["turns"]),
            str(r["with_system_prompt"]),
            f"{r['prompt_chars_median']:.0f}",
            f"{r['answer_chars_median']:.0f} / {r['answer_chars_max']}",
        )
    console.print(table)
