"""``tunewright models``: export a finished job (GGUF, safetensors; to Ollama), list, push."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from tunewright.cli.output import JsonFlag, client, console, emit, name_value_pairs, print_json, when
from tunewright.records import Model

app = typer.Typer(help="Export fine-tuned models and register them with Ollama.", no_args_is_help=True)


def show_model(model: Model) -> None:
    table = Table(show_header=False, box=None)
    rows = [
        ("name", model.name),
        ("job", model.job),
        ("method / base", f"{model.method} on {model.base_model}"),
        ("format", model.format + (f" ({model.template_family} template)" if model.template_family else "")),
        ("system prompt", model.system_prompt or "(none)"),
        ("directory", model.directory),
        ("files", ", ".join(f"{p} ({s / 2**20:.1f} MiB)" for p, s in model.files.items())),
        ("created", when(model.create_time)),
    ]
    if model.max_kl_divergence is not None:
        rows.append(("verified", f"KL divergence {model.max_kl_divergence:.2g} <= {model.kl_tolerance:g}"))
    rows += [("note", note) for note in model.notes]
    rows += [("pushed", f"{p.target} at {p.address} as {p.remote_name}") for p in model.pushes]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    console.print(table, highlight=False)
    for push in model.pushes:
        if push.target == "ollama":
            console.print(f"run it: [bold]ollama run {push.remote_name}[/]")


@app.command("export")
def export(
    ctx: typer.Context,
    job: str,
    format: Annotated[str, typer.Option(help="gguf, safetensors, attached (default: the best the method allows)")] = "",
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="format option NAME=VALUE, repeatable (type=q8_0)")
    ] = None,
    id: Annotated[str, typer.Option("--id", help="the model's id (default: the job's)")] = "",
    system: Annotated[
        str | None,
        typer.Option(
            help="the system prompt a chat without one gets (default: the one the training data shared, "
            "else the base model's; '' for the base model's)"
        ),
    ] = None,
    ollama: Annotated[bool, typer.Option("--ollama", help="then register it with Ollama")] = False,
    ollama_host: Annotated[
        str | None, typer.Option(help="Ollama's address [env: OLLAMA_HOST; default http://127.0.0.1:11434]")
    ] = None,
    ollama_name: Annotated[str, typer.Option(help="the name in Ollama (default: tunewright-ID)")] = "",
    json: JsonFlag = False,
) -> None:
    """Export a finished job as a model the serve service (and Ollama) can run."""
    c = client(ctx)
    model = c.export_model(
        job,
        format=format,
        options=name_value_pairs(option, "--option", "type=q8_0"),
        model_id=id,
        system_prompt=system,
    )
    if ollama:
        options = {"name": ollama_name or f"tunewright-{model.name.split('/')[-1]}"}
        host = ollama_host or os.environ.get("OLLAMA_HOST")
        if host:
            options["host"] = host
        model = c.push_model(model.name, "ollama", options)
    emit(json, model, show_model)


@app.command()
def push(
    ctx: typer.Context,
    model: str,
    target: Annotated[str, typer.Option(help="where to register it")] = "ollama",
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="target option NAME=VALUE (host=…, name=…)")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Register an exported model with Ollama (or another push target)."""
    pushed = client(ctx).push_model(model, target, name_value_pairs(option, "--option", "type=q8_0"))
    emit(json, pushed, show_model)


@app.command("list")
def list_(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Every exported model."""
    found = client(ctx).list_models()
    if json:
        print_json(found)
        return
    table = Table("name", "format", "method", "base model", "job", "pushed", "created")
    for m in found:
        table.add_row(
            m.name,
            m.format,
            m.method,
            m.base_model,
            m.job,
            ", ".join(p.remote_name for p in m.pushes) or "-",
            when(m.create_time),
        )
    console.print(table)


@app.command()
def show(ctx: typer.Context, model: str, json: JsonFlag = False) -> None:
    """One model: its files, template, verification and pushes."""
    found = client(ctx).get_model(model)
    emit(json, found, show_model)
