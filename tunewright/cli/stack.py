"""``tunewright up`` (the three services on this machine) and ``tunewright demo``."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Annotated

import typer

from tunewright.cli.output import JsonFlag, console, print_json
from tunewright.core.basemodel import DEFAULT_BASE_MODEL
from tunewright.core.security import generate_local_secrets
from tunewright.stack import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, Stack


def _checked_size(text: str | None) -> str | None:
    """Refuses a --memory-limit the trainer could not read, before any service starts."""
    from tunewright.trainer.memory import parse_size

    if text is not None:
        try:
            parse_size(text)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
    return text


def up(
    state_dir: Annotated[Path, typer.Option(help="one data directory per service inside")] = Path(".tunewright"),
    host: str = "127.0.0.1",
    data_port: int = DEFAULT_PORTS["data"],
    trainer_port: int = DEFAULT_PORTS["trainer"],
    serve_port: int = DEFAULT_PORTS["serve"],
    metrics: Annotated[bool, typer.Option(help="serve Prometheus /metrics over HTTP")] = True,
    secure: Annotated[
        bool,
        typer.Option(
            help="require a token and serve TLS, with a token and certificates made once in STATE_DIR/secrets"
        ),
    ] = False,
    mutual_tls: Annotated[bool, typer.Option(help="with --secure: clients must present a certificate too")] = False,
    max_running_jobs: Annotated[int, typer.Option(help="jobs that train at once; more wait in the queue")] = 1,
    models_dir: Annotated[
        list[Path] | None,
        typer.Option(
            help="a folder whose model folders a job's base_model may name; repeat for several "
            "(default: STATE_DIR/models; built-in model names are always allowed)"
        ),
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help="memory a job may use (8G, 512M): a job estimated above it is refused, a worker "
            "that passes it is stopped (default: the host's free memory, checked when a job is created)",
            callback=_checked_size,
        ),
    ] = None,
    data_metrics_port: int = DEFAULT_METRICS_PORTS["data"],
    trainer_metrics_port: int = DEFAULT_METRICS_PORTS["trainer"],
    serve_metrics_port: int = DEFAULT_METRICS_PORTS["serve"],
    json: JsonFlag = False,
) -> None:
    """Start the data, trainer and serve services on this machine and keep them up (a service
    that dies is started again); Ctrl-C stops all three."""
    metrics_ports = {"data": data_metrics_port, "trainer": trainer_metrics_port, "serve": serve_metrics_port}
    secrets = generate_local_secrets(state_dir / "secrets", ("localhost", "127.0.0.1", host)) if secure else None
    stack = Stack(
        state_dir,
        host=host,
        ports={"data": data_port, "trainer": trainer_port, "serve": serve_port},
        metrics_ports=metrics_ports if metrics else None,
        secrets=secrets,
        mutual_tls=secure and mutual_tls,
        max_running_jobs=max_running_jobs,
        models_dirs=models_dir or None,
        memory_limit=memory_limit,
    )
    # Until Stack.wait takes SIGTERM over, it stops the services too instead of leaving them
    # orphaned: a supervisor may send it while they are still starting.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stack.start()
        _announce(stack, state_dir, host, metrics_ports if metrics else None, secrets, mutual_tls, json)
        stack.wait(on_restart=lambda service, why: console.print(f"{service} {why}", highlight=False))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping: let it finish
        stack.stop()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _announce(stack, state_dir, host, metrics_ports, secrets, mutual_tls, json) -> None:
    """Where each service listens and keeps its data, and how a client connects."""
    metrics = metrics_ports is not None
    where = {
        s: {
            "address": stack.address(s),
            "data_dir": str(state_dir / s),
            "metrics": f"http://{host}:{metrics_ports[s]}/metrics" if metrics else None,
        }
        for s in stack.processes
    }
    connect = {}
    if secrets is not None:
        connect = {"TUNEWRIGHT_TOKEN_FILE": secrets.token_file, "TUNEWRIGHT_CA": secrets.path("ca.pem")}
        if mutual_tls:
            connect |= {
                "TUNEWRIGHT_CLIENT_CERT": secrets.path("client.pem"),
                "TUNEWRIGHT_CLIENT_KEY": secrets.path("client.key"),
            }
    if json:
        print_json({**where, "environment": {k: str(v.resolve()) for k, v in connect.items()}})
    else:
        for service, w in where.items():
            extra = f"  metrics {w['metrics']}" if w["metrics"] else ""
            console.print(
                f"{service:8} {w['address']}  data in {w['data_dir']}{extra}", highlight=False, soft_wrap=True
            )
        if connect:
            console.print("token and TLS required; clients connect with:", highlight=False)
            exports = " ".join(f"{k}={v.resolve()}" for k, v in connect.items())
            console.print(f"  export {exports}", highlight=False, soft_wrap=True)
        console.print("serving; Ctrl-C or SIGTERM stops all three")


def demo(
    state_dir: Path = Path(".tunewright/demo"),
    dataset: Annotated[Path | None, typer.Option(help="chat JSONL (default: the support-ticket example)")] = None,
    base_model: str = DEFAULT_BASE_MODEL,
    method: Annotated[
        str, typer.Option(help="lora, qlora, unsloth, prefix, full, or one from an installed plugin")
    ] = "lora",
    learning_rate: Annotated[float, typer.Option(help="peak learning rate (0: the method's own)")] = 0.0,
    epochs: int = 2,
    results: Annotated[Path, typer.Option(help="where the results are written as JSON")] = Path("demo-results.json"),
    json: Annotated[
        bool, typer.Option("--json", help="print the results as JSON on stdout (the running commentary goes to stderr)")
    ] = False,
) -> None:
    """Fine-tune the built-in model on the support-ticket example, end to end, on its own services."""
    import contextlib
    import json as jsonlib
    import sys

    from tunewright.demo import run_demo

    args = argparse.Namespace(
        state_dir=state_dir,
        dataset=dataset,
        base_model=base_model,
        method=method,
        learning_rate=learning_rate,
        epochs=epochs,
        results=results,
    )
    with contextlib.redirect_stdout(sys.stderr) if json else contextlib.nullcontext():
        code = run_demo(args)
    if code:
        raise typer.Exit(code)
    if json:
        print_json(jsonlib.loads(results.read_text()))


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(demo)
