"""``tunewright jobs``: create, list, show, watch, cancel and plot fine-tuning jobs."""

from __future__ import annotations

import inspect
import json as jsonlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from tunewright.cli.output import JsonFlag, client, console, emit, fail, name_value_pairs, percent, print_json, when
from tunewright.core.basemodel import DEFAULT_BASE_MODEL
from tunewright.records import Job, JobEstimate, JobEvent, JobState, Method

app = typer.Typer(help="Fine-tuning jobs: create, watch, inspect, plot.", no_args_is_help=True)


def parse_parameters(items: list[str], method: Method | None) -> dict[str, Any]:
    """NAME=VALUE pairs, each VALUE read as the method declares the parameter (a list as
    "a,b" or JSON); names the method does not have are passed on for the trainer to refuse."""
    types = {p.name: p.type for p in method.parameters} if method else {}
    values: dict[str, Any] = {}
    for name, text in name_value_pairs(items, "--param", "r=32").items():
        kind = types.get(name)
        try:
            if kind == "int":
                values[name] = int(text)
            elif kind == "float":
                values[name] = float(text)
            elif kind == "bool":
                values[name] = {"true": True, "false": False, "1": True, "0": False}[text.lower()]
            elif kind == "string_list":
                values[name] = jsonlib.loads(text) if text.startswith("[") else [v for v in text.split(",") if v]
            else:
                values[name] = text
        except (ValueError, KeyError):
            raise fail(f"--param {name}: {text!r} is not a valid {kind}", 2) from None
    return values


@app.command()
def create(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="the dataset to train on (datasets/… or its id)")],
    method: Annotated[str, typer.Option(help="fine-tuning method; `tunewright methods list` shows them")] = "lora",
    base_model: Annotated[str, typer.Option(help="built-in model name or a local model folder")] = DEFAULT_BASE_MODEL,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="method parameter NAME=VALUE, repeatable (r=32)")
    ] = None,
    epochs: int | None = None,
    batch_size: Annotated[int | None, typer.Option(help="examples per optimizer step")] = None,
    micro_batch_size: Annotated[
        int | None, typer.Option(help="examples per pass; smaller accumulates gradients, saving memory")
    ] = None,
    learning_rate: Annotated[float | None, typer.Option(help="peak learning rate (default: the method's)")] = None,
    precision: Annotated[str | None, typer.Option(help="auto (bf16 where the hardware has it), bf16 or fp32")] = None,
    packing: Annotated[
        bool | None,
        typer.Option("--packing/--no-packing", help="pack each pass's examples into one row instead of padding"),
    ] = None,
    group_by_length: Annotated[
        bool | None,
        typer.Option(
            "--group-by-length/--no-group-by-length",
            help="draw each batch among examples of similar length (default), or fully shuffled",
        ),
    ] = None,
    max_seq_length: int | None = None,
    gradient_checkpointing: Annotated[
        str | None,
        typer.Option(help="on, off, or auto (on only where the job would not fit the trainer's memory without)"),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps (0: no limit)")] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="steps between checkpoints (0: as often as costs under 5% of training)")
    ] = None,
    keep_checkpoints: Annotated[
        int | None, typer.Option(help="latest checkpoints kept, besides the best by validation loss")
    ] = None,
    processes: Annotated[
        int | None, typer.Option(help="processes that train together (torchrun, DDP), each a share of every batch")
    ] = None,
    seed: int | None = None,
    evaluate: Annotated[
        bool | None, typer.Option("--evaluate/--no-evaluate", help="compare base and tuned on the test split")
    ] = None,
    ignore_memory_estimate: Annotated[
        bool,
        typer.Option(help="create it even if its estimated peak memory is more than the trainer may use"),
    ] = False,
    watch_: Annotated[bool, typer.Option("--watch", help="then watch it until it ends")] = False,
    json: JsonFlag = False,
) -> None:
    """Queue a fine-tuning job. One estimated to need more memory than the trainer may use
    is refused, with what would fit (`tunewright jobs estimate` shows the estimate)."""
    c = client(ctx)
    job = c.create_job(**_job_request(c, locals()), ignore_memory_estimate=ignore_memory_estimate)
    if json and not watch_:
        print_json(job)
    elif not json:
        console.print(f"created [bold]{job.name}[/] ({job.method} on {job.base_model}, {job.dataset}): {job.state}")
    if watch_:
        _watch(ctx, job.name, json)


def _job_request(c, options: dict[str, Any]) -> dict[str, Any]:
    """create_job's (and estimate_job's) arguments from ``create``'s options."""
    param = options["param"]
    name_value_pairs(param, "--param", "r=32")  # a malformed pair is refused before any call
    known = {m.name: m for m in c.list_methods()} if param else {}
    names = [
        "epochs",
        "batch_size",
        "micro_batch_size",
        "learning_rate",
        "precision",
        "packing",
        "group_by_length",
        "max_seq_length",
        "gradient_checkpointing",
        "max_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "processes",
        "seed",
        "evaluate",
    ]
    return dict(
        dataset=options["dataset"],
        base_model=options["base_model"],
        method=options["method"],
        parameters=parse_parameters(param or [], known.get(options["method"])),
        **{name: options[name] for name in names},
    )


def estimate(ctx: typer.Context, json: bool = False, **options: Any) -> None:
    """What a job would take, before creating it: peak memory and where it goes, time, and
    whether it fits the trainer's memory (if not, what would). Takes create's options."""
    found = client(ctx).estimate_job(**_job_request(client(ctx), options))
    emit(json, found, _show_estimate)


# ``estimate`` takes ``create``'s options but those about what happens after: one list of
# the job's options, kept in one place.
_AFTER = ("watch_", "ignore_memory_estimate")
_create_signature = inspect.signature(create, eval_str=True)
estimate.__signature__ = _create_signature.replace(
    parameters=[p for name, p in _create_signature.parameters.items() if name not in _AFTER]
)
estimate.__annotations__ = {name: kind for name, kind in create.__annotations__.items() if name not in _AFTER}
app.command()(estimate)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _show_estimate(found: JobEstimate) -> None:
    verdict = "[green]fits[/]" if found.fits else "[red]does not fit[/]"
    console.print(
        f"peak memory about [bold]{_gib(found.peak_memory_bytes)}[/] of {_gib(found.memory_limit_bytes)} "
        f"the trainer may use: {verdict}"
    )
    if found.device_memory_bytes:
        console.print(f"GPU memory about {_gib(found.device_memory_bytes)}")
    table = Table("part", "memory")
    for part, size in found.breakdown.items():
        table.add_row(part, _gib(size))
    console.print(table)
    console.print(
        f"{found.steps} steps at about {found.seconds_per_step:.2f} s ({found.tokens_per_second:.0f} tokens/s): "
        f"training {_duration(found.training_seconds)}, with validation and evaluation {_duration(found.total_seconds)}; "
        f"largest pass {found.largest_pass_rows} x {found.largest_pass_tokens} tokens"
    )
    if found.fixes:
        fixes = Table("change", "what it does", "peak", "s/step", "fits")
        for fix in found.fixes:
            fixes.add_row(
                fix.change,
                fix.description,
                _gib(fix.peak_memory_bytes),
                f"{fix.seconds_per_step:.2f}",
                "yes" if fix.fits else "no",
            )
        console.print(fixes)
    for note in found.notes:
        console.print(f"[dim]note: {note}[/]")


@app.command("list")
def list_(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Every job, oldest first."""
    found = client(ctx).list_jobs()
    if json:
        print_json(found)
        return
    table = Table("name", "state", "method", "base model", "dataset", "step", "loss", "created")
    for job in found:
        p = job.progress
        table.add_row(
            job.name,
            f"queued (#{job.queue_position})" if job.queue_position else str(job.state),
            job.method,
            job.base_model,
            job.dataset,
            f"{p.step}/{p.total_steps}" if p else "-",
            f"{p.loss:.3f}" if p else "-",
            when(job.create_time),
        )
    console.print(table)


def show_job(job: Job) -> None:
    table = Table(show_header=False, box=None)
    rows = [
        ("name", job.name),
        ("state", f"queued, #{job.queue_position} in the queue" if job.queue_position else str(job.state)),
        ("method", f"{job.method} {jsonlib.dumps(job.method_parameters) if job.method_parameters else ''}"),
        ("base model", job.base_model),
        ("dataset", job.dataset),
        (
            "hyperparameters",
            ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in job.hyperparameters.items()),
        ),
        ("created / started / ended", f"{when(job.create_time)} / {when(job.start_time)} / {when(job.end_time)}"),
    ]
    if job.progress:
        p = job.progress
        rows.append(
            (
                "progress",
                f"step {p.step}/{p.total_steps}, epoch {p.epoch:.2f}, loss {p.loss:.4f}, {p.tokens_per_second:.0f} tokens/s, peak memory {p.peak_memory_bytes / 2**30:.2f} GiB",
            )
        )
    if job.error:
        rows.append(("error", f"[red]{job.error.code}[/]: {job.error.message}"))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    console.print(table)
    if job.evaluation:
        e = job.evaluation
        scores = Table(
            "on the test split", "base", "fine-tuned", title=f"base against fine-tuned, {e.example_count} test examples"
        )
        scores.add_row("loss (nats/token)", f"{e.base.loss:.3f}", f"{e.tuned.loss:.3f}")
        scores.add_row("exact match", percent(e.base.exact_match), percent(e.tuned.exact_match))
        scores.add_row("first line match", percent(e.base.first_line_match), percent(e.tuned.first_line_match))
        scores.add_row("evaluation time", f"{e.base.seconds:.1f} s", f"{e.tuned.seconds:.1f} s")
        console.print(scores)


@app.command()
def show(ctx: typer.Context, job: str, json: JsonFlag = False) -> None:
    """One job: its settings, progress, error, and the base-against-tuned table."""
    found = client(ctx).get_job(job)
    emit(json, found, show_job)


@app.command()
def checkpoints(ctx: typer.Context, job: str, json: JsonFlag = False) -> None:
    """The job's complete checkpoints: where it resumes from if its worker or trainer dies."""
    found = client(ctx).list_checkpoints(job)
    if json:
        print_json(found)
        return
    table = Table("name", "step", "epoch", "loss", "validation loss", "size", "created")
    for c in found:
        validation = f"{c.validation_loss:.4f}" if c.validation_loss is not None else "-"
        size = f"{c.size_bytes / 2**20:.1f} MiB"
        table.add_row(c.name, str(c.step), f"{c.epoch:.2f}", f"{c.loss:.4f}", validation, size, when(c.created))
    console.print(table)


@app.command()
def cancel(ctx: typer.Context, job: str, json: JsonFlag = False) -> None:
    """Cancel a queued or running job."""
    found = client(ctx).cancel_job(job)
    if json:
        print_json(found)
    else:
        console.print(f"{found.name}: {found.state}")


@app.command()
def watch(ctx: typer.Context, job: str, json: JsonFlag = False) -> None:
    """Follow a job live until it ends: a progress bar with loss, tokens/s and the time left.
    Reattaches by itself when the connection drops. With --json, one event per line."""
    _watch(ctx, job, json)


def _watch(ctx: typer.Context, name: str, json: bool) -> None:
    c = client(ctx)
    if json:
        for event in c.watch_job(name):
            print_json(event)
        ended = c.get_job(name)
    else:
        ended = _watch_live(c, name)
    if ended.state != JobState.SUCCEEDED:
        raise typer.Exit(1)


def _watch_live(c, name: str) -> Job:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[steps]}  loss {task.fields[loss]}  {task.fields[rate]} tokens/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(name, total=None, steps="waiting", loss="-", rate="-")
        for event in c.watch_job(name):
            _show_event(bar, task, event)
    job = c.get_job(name)
    console.print(
        f"{job.name}: [bold]{job.state}[/]" + (f": {job.error.code}: {job.error.message}" if job.error else "")
    )
    return job


def _show_event(bar: Progress, task, event: JobEvent) -> None:
    # Validation events need no line of their own: the worker logs each one too.
    if event.progress:
        p = event.progress
        bar.update(
            task,
            completed=p.step,
            total=p.total_steps,
            steps=f"step {p.step}/{p.total_steps}",
            loss=f"{p.loss:.3f}",
            rate=f"{p.tokens_per_second:.0f}",
        )
    elif event.evaluation:
        e = event.evaluation
        bar.console.print(
            f"  evaluated on {e.example_count} test examples: loss {e.base.loss:.3f} -> {e.tuned.loss:.3f}, "
            f"exact match {percent(e.base.exact_match)} -> {percent(e.tuned.exact_match)} "
            f"(evaluation took {e.base.seconds:.0f} s for the base, {e.tuned.seconds:.0f} s fine-tuned)"
        )
    elif event.state:
        bar.console.print(f"  {event.state}" + (f": {event.error.code}: {event.error.message}" if event.error else ""))
    elif event.log:
        bar.console.print(f"  {event.log}", highlight=False)


@app.command()
def plot(
    ctx: typer.Context,
    job: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG to write (default: JOB-loss.png)")] = None,
    width: Annotated[float, typer.Option(help="inches, at 100 dots per inch")] = 8.0,
    height: Annotated[float, typer.Option(help="inches, at 100 dots per inch")] = 4.5,
    json: JsonFlag = False,
) -> None:
    """Write the loss curve (training loss per step, validation loss per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = client(ctx)
    found = c.get_job(job)
    events = c.job_events(found.name)
    train = [(e.progress.step, e.progress.loss) for e in events if e.progress]
    validation = [(e.validation.step, e.validation.loss) for e in events if e.validation]
    if not train:
        raise fail(f"{found.name} has no training steps yet ({found.state}); plot it once it is running")
    path = output or Path(f"{found.name.split('/')[-1]}-loss.png")
    figure, axes = plt.subplots(figsize=(width, height), dpi=100)
    axes.plot(*zip(*train, strict=True), label="training loss (batch)", linewidth=1)
    if validation:
        axes.plot(*zip(*validation, strict=True), "o-", label="validation loss")
    axes.set(xlabel="step", ylabel="loss (nats per token)", title=f"{found.name}: {found.method} on {found.base_model}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    if json:
        print_json(
            {"job": found.name, "path": str(path), "train_points": len(train), "validation_points": len(validation)}
        )
    else:
        console.print(f"wrote {path} ({len(train)} steps, {len(validation)} validation points)")
