"""The ``tunewright`` command: the services on this machine (``up``, ``demo``) and the whole
path from a file to a chat (``datasets``, ``jobs``, ``models``, ``chat``), built on Typer.

Every command that talks to the services finds them through ``--data``/``--trainer``/
``--serve``, then ``TUNEWRIGHT_DATA``/``_TRAINER``/``_SERVE``, then the config file
(``--config``, ``TUNEWRIGHT_CONFIG``, ``~/.config/tunewright/config.toml``), then the local
``tunewright up``. Errors print one line, ``error: …`` with the fix, and exit non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tunewright.cli import chat, datasets, jobs, methods, models, stack
from tunewright.cli.output import Settings, fail

app = typer.Typer(
    name="tunewright",
    help="Self-hosted LLM fine-tuning: upload data, train, export to Ollama, chat.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    data: Annotated[str | None, typer.Option(help="data service host:port [env: TUNEWRIGHT_DATA]")] = None,
    trainer: Annotated[str | None, typer.Option(help="trainer service host:port [env: TUNEWRIGHT_TRAINER]")] = None,
    serve: Annotated[str | None, typer.Option(help="serve service host:port [env: TUNEWRIGHT_SERVE]")] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with \\[services] and \\[security] tables [env: TUNEWRIGHT_CONFIG]")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="file holding the bearer token [env: TUNEWRIGHT_TOKEN_FILE, or TUNEWRIGHT_TOKEN]"),
    ] = None,
    ca: Annotated[Path | None, typer.Option(help="PEM roots to trust; turns TLS on [env: TUNEWRIGHT_CA]")] = None,
    client_cert: Annotated[Path | None, typer.Option(help="client certificate, for mutual TLS")] = None,
    client_key: Annotated[Path | None, typer.Option(help="its private key")] = None,
) -> None:
    settings = ctx.ensure_object(Settings)
    settings.data, settings.trainer, settings.serve, settings.config = data, trainer, serve, config
    # No --token: a token on the command line shows in `ps` and shell history.
    settings.security = {"token_file": token_file, "ca": ca, "client_cert": client_cert, "client_key": client_key}
    ctx.call_on_close(settings.close)


stack.register(app)
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")
app.add_typer(methods.app, name="methods")
app.command("chat")(chat.chat)


def main(argv: list[str] | None = None) -> int:
    from tunewright.client import ServiceError
    from tunewright.connection import ConfigError
    from tunewright.core.security import SecurityConfigError

    try:
        # Typer handles usage mistakes itself (a message and exit code 2) and ends with SystemExit.
        app(args=argv, prog_name="tunewright")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except ServiceError as error:
        reason = f" ({error.reason})" if error.reason and error.reason not in str(error) else ""
        return fail(f"{error.code}{reason}: {error}").exit_code
    except (ConfigError, SecurityConfigError, OSError) as error:
        return fail(str(error), 2).exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
