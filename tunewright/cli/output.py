"""What every command shares: the client it talks through, ``--json`` output, and errors
as one readable line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tunewright.records import as_json

console = Console()
errors = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="print the result as JSON, for scripts")]


@dataclass
class Settings:
    """The root options, kept on the click context for the subcommands."""

    data: str | None = None
    trainer: str | None = None
    serve: str | None = None
    config: Path | None = None
    security: dict[str, Any] = field(default_factory=dict, repr=False)
    _client: Any = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            from tunewright.client import Client
            from tunewright.connection import Connection

            connection = Connection.resolve(
                self.config, data=self.data, trainer=self.trainer, serve=self.serve, **self.security
            )
            self._client = Client(connection=connection)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def client(ctx: typer.Context):
    return ctx.ensure_object(Settings).client()


def print_json(value: Any) -> None:
    """One JSON document on one line: ``jq`` and ``json.loads`` read it, line by line for streams."""
    sys.stdout.write(json.dumps(as_json(value), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit(json: bool, value: Any, show: Callable[[Any], None]) -> None:
    """``value`` as JSON with --json, else as ``show`` prints it for people."""
    if json:
        print_json(value)
    else:
        show(value)


def name_value_pairs(items: list[str] | None, flag: str, example: str) -> dict[str, str]:
    """``--flag NAME=VALUE`` options as a dict; a malformed one is a usage error (exit 2)."""
    pairs = {}
    for item in items or []:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise fail(f"{flag} {item!r} is not NAME=VALUE; for example {flag} {example}", 2)
        pairs[name] = value
    return pairs


def fail(message: str, code: int = 1) -> typer.Exit:
    """Prints ``error: message`` on one line to stderr; raise what it returns."""
    errors.print(f"[bold red]error:[/] {' '.join(message.split())}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def percent(value: float) -> str:
    return f"{value:.1%}"


def when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
