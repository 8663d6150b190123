"""``tunewright methods``: the fine-tuning methods the trainer offers, and their parameters."""

from __future__ import annotations

import json as jsonlib

import typer
from rich.table import Table

from tunewright.cli.output import JsonFlag, client, console, print_json

app = typer.Typer(help="Fine-tuning methods and their parameters.", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Every method with its parameters (for `jobs create --param NAME=VALUE`)."""
    found = client(ctx).list_methods()
    if json:
        print_json(found)
        return
    for method in found:
        exports = "exportable" if method.exportable else f"not exportable: {method.not_exportable_reason}"
        console.print(
            f"[bold]{method.name}[/]: {method.description} "
            f"(learning rate {method.default_learning_rate:g}; {method.artifact_kind}; {exports})",
            highlight=False,
        )
        table = Table("parameter", "type", "default", "choices", "meaning", box=None, padding=(0, 2))
        for p in method.parameters:
            table.add_row(p.name, p.type, jsonlib.dumps(p.default), ", ".join(p.choices), p.description)
        console.print(table)
