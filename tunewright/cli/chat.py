"""``tunewright chat MODEL``: talk to an exported model, streaming its answers."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tunewright.cli.output import JsonFlag, client, console, print_json


def chat(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="an exported model (models/… or its id)")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="ask once and exit")] = None,
    system: Annotated[str | None, typer.Option(help="a system message first")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="at most this many tokens an answer (0: 128)")] = 0,
    temperature: Annotated[float, typer.Option(help="0 is greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling (0: off)")] = 0.0,
    seed: int = 0,
    json: JsonFlag = False,
) -> None:
    """Chat with MODEL: interactively (an empty line or Ctrl-D ends it), or once with --prompt."""
    c = client(ctx)
    messages = [{"role": "system", "content": system}] if system else []
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}

    def answer(question: str) -> None:
        messages.append({"role": "user", "content": question})
        text, last = "", None
        for piece in c.chat(model, messages, **options):
            text += piece.text
            last = piece
            if not json:
                sys.stdout.write(piece.text)
                sys.stdout.flush()
        messages.append({"role": "assistant", "content": text})
        if json:
            print_json(
                {
                    "model": model,
                    "text": text,
                    "finish_reason": last.finish_reason,
                    "token_count": last.token_count,
                    "backend": last.backend,
                }
            )
        else:
            sys.stdout.write("\n")
            if last.finish_reason == "length":
                console.print(f"[dim](cut at {last.token_count} tokens; raise --max-new-tokens)[/]")

    if prompt is not None:
        answer(prompt)
        return
    interactive = sys.stdin.isatty()
    while True:
        try:
            question = console.input("[bold]you>[/] ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not question.strip():
            break
        answer(question.strip())
