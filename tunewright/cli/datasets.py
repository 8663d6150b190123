"""``tunewright datasets``: upload a file as a dataset, list, show, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunewright.cli.output import JsonFlag, client, console, emit, print_json, when
from tunewright.records import Dataset

SPLITS = ("train", "validation", "test")

app = typer.Typer(help="Upload, validate and split training data.", no_args_is_help=True)


def show_dataset(dataset: Dataset) -> None:
    counts = dataset.split_counts
    table = Table(show_header=False, box=None)
    rows = [
        ("name", dataset.name),
        ("display name", dataset.display_name),
        ("file", dataset.file),
        ("format", f"{dataset.format}, read as {dataset.reader}" if dataset.reader else dataset.format),
        ("examples", str(dataset.example_count)),
        ("splits", f"train {counts.train}, validation {counts.validation}, test {counts.test}"),
        ("split seed", str(dataset.split_seed)),
        ("created", when(dataset.create_time)),
    ]
    if dataset.source_sha256:
        rows.append(("source sha256", dataset.source_sha256))
    if dataset.column_mapping:
        rows.append(("columns", ", ".join(f"{f} <- {c}" for f, c in dataset.column_mapping.items())))
    if dataset.stats:
        rows.append(("cleaning", cleaning_summary(dataset.stats["cleaning"])))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    console.print(table)


def cleaning_summary(cleaning: dict) -> str:
    pii = ", ".join(f"{kind} {n}" for kind, n in cleaning["pii_replacements"].items()) or "none"
    return (
        f"read {cleaning['read']}; removed: exact duplicates {cleaning['exact_duplicates_removed']}, "
        f"near duplicates {cleaning['near_duplicates_removed']}, too long {cleaning['overlength_removed']}; "
        f"in near-duplicate groups {cleaning['near_duplicate_examples']}; PII replaced in "
        f"{cleaning['pii_examples']} examples ({pii}); test examples leaked {cleaning['leaked_test_examples']}"
    )


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise typer.BadParameter(f"{pair!r} is not FIELD=COLUMN, e.g. prompt=question", param_hint="--map")
        mapping[field] = column
    return mapping


@app.command()
def upload(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="JSONL (chat, prompt/completion, Alpaca, ShareGPT, text), .txt, CSV or Parquet",
        ),
    ],
    name: Annotated[str, typer.Option(help="display name (default: the file's name)")] = "",
    format: Annotated[str, typer.Option("--format", help="the records' format (default: detected)")] = "",
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="FIELD=COLUMN: read the format's FIELD from COLUMN (repeat)")
    ] = None,
    validation_fraction: Annotated[float | None, typer.Option(help="share held out for validation (0.1)")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="share held out for testing (0.1)")] = None,
    split_seed: Annotated[int, typer.Option(help="seed of the split")] = 0,
    exact_dedupe: Annotated[bool, typer.Option(help="drop exact duplicates after normalization")] = True,
    near_duplicates: Annotated[
        str, typer.Option(help="group (keep them in one split), remove (keep the first) or off")
    ] = "group",
    near_duplicate_threshold: Annotated[float, typer.Option(help="estimated Jaccard similarity")] = 0.8,
    scrub_pii: Annotated[bool, typer.Option(help="replace e-mails, phones, cards, IBANs, IPs by <KIND>")] = True,
    max_seq_length: Annotated[int, typer.Option(help="tokens above which an example counts as too long")] = 512,
    drop_overlength: Annotated[bool, typer.Option(help="drop examples over --max-seq-length")] = False,
    tokenizer_model: Annotated[str, typer.Option(help="model whose tokenizer counts tokens (default: built-in)")] = "",
    json: JsonFlag = False,
) -> None:
    """Upload FILE, validate every record, clean it and split it into train, validation and test."""
    dataset = client(ctx).upload_dataset(
        file,
        name,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        format_name=format,
        column_mapping=_mapping(map_ or []),
        cleaning={
            "exact_dedupe": exact_dedupe,
            "near_duplicates": near_duplicates,
            "near_duplicate_threshold": near_duplicate_threshold,
            "scrub_pii": scrub_pii,
            "max_seq_length": max_seq_length,
            "drop_overlength": drop_overlength,
        },
        tokenizer_model=tokenizer_model,
    )
    emit(json, dataset, show_dataset)


@app.command("list")
def list_(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Every dataset, newest last."""
    found = client(ctx).list_datasets()
    if json:
        print_json(found)
        return
    table = Table("name", "display name", "format", "examples", "train/val/test", "created")
    for d in found:
        c = d.split_counts
        table.add_row(
            d.name,
            d.display_name,
            d.format,
            str(d.example_count),
            f"{c.train}/{c.validation}/{c.test}",
            when(d.create_time),
        )
    console.print(table)


@app.command()
def show(ctx: typer.Context, dataset: str, json: JsonFlag = False) -> None:
    """One dataset: its file, format, size, splits, provenance and cleaning."""
    found = client(ctx).get_dataset(dataset)
    emit(json, found, show_dataset)


@app.command()
def report(
    ctx: typer.Context,
    dataset: str,
    changes: Annotated[int, typer.Option(help="list at most this many of cleaning's changes")] = 20,
    json: JsonFlag = False,
) -> None:
    """What each split holds (examples, turns, tokens, the share that carries loss, lengths)
    and what cleaning changed, line by line."""
    c = client(ctx)
    found = c.get_dataset(dataset)
    actions = c.dataset_report(found.name)
    if json:
        print_json(
            {
                "dataset": found.name,
                "splits": {s: found.stats.get(s, {}) for s in SPLITS},
                "cleaning": found.stats.get("cleaning", {}),
                "actions": actions,
            }
        )
        return
    if not found.stats:
        console.print(f"{found.name} was made before statistics were kept")
        return
    table = Table(
        "split",
        "examples",
        "turns",
        "tokens",
        "carry loss",
        "tokens each (min / mean / max)",
        "too long",
        title=found.name,
    )
    for split in SPLITS:
        s = found.stats[split]
        share = int(s["loss_tokens"]) / int(s["tokens"]) if int(s["tokens"]) else 0.0
        table.add_row(
            split,
            str(s["examples"]),
            str(s["turns"]),
            str(s["tokens"]),
            f"{share:.1%}",
            f"{s['min_tokens']} / {s['mean_tokens']:.0f} / {s['max_tokens']}",
            str(s["overlength"]),
        )
    console.print(table)
    console.print(f"cleaning: {cleaning_summary(found.stats['cleaning'])}")
    for action in actions[:changes]:
        detail = f" (duplicate of line {action.duplicate_of_line})" if action.duplicate_of_line else ""
        if action.pii_replacements:
            detail = " (" + ", ".join(f"{k} {n}" for k, n in action.pii_replacements.items()) + ")"
        if action.tokens:
            detail = f" ({action.tokens} tokens)"
        console.print(f"  line {action.line}: {action.kind.replace('_', ' ')}{detail}")
    if len(actions) > changes:
        console.print(f"  ... and {len(actions) - changes} more (--changes N, or --json)")
