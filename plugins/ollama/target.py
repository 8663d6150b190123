"""Ollama as a push target, through the official ``ollama`` client
(``tunewright.core.ollama`` does the protocol and maps its failures to typed errors).

The GGUF is uploaded as a blob and a model is created from it with the export's Go
template, system prompt and stops, so Ollama renders and stops exactly as the trained
model expects (see docs/architecture.md, "Exports").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewright.core import ollama
from tunewright.core.errors import FailedPrecondition
from tunewright.exporters import Exported, OllamaTemplate, Pushed

DEFAULT_HOST = "http://127.0.0.1:11434"
# A push is asked for explicitly; answering goes elsewhere if Ollama is slow to say it is there.
REACHABLE_SECONDS = 2.0


@dataclass
class OllamaOptions:
    host: str = field(
        default="",
        metadata={"help": f"Ollama's address; $OLLAMA_HOST when empty, then {DEFAULT_HOST}."},
    )
    name: str = field(
        default="",
        metadata={"help": "The name:tag to register (Ollama's naming rules); the model id when empty."},
    )
    quantize: str = field(
        default="",
        metadata={
            "help": "Have Ollama quantize the F16 GGUF (older servers only; newer ones refuse it for GGUF).",
            "choices": ("", *ollama.QUANTIZE_TYPES),
        },
    )
    num_ctx: int = field(default=0, metadata={"help": "Context length Ollama runs with; the model's own when 0."})


def host_of(options: OllamaOptions) -> str:
    host = options.host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    return host if "://" in host else f"http://{host}"


class OllamaTarget:
    name = "ollama"
    description = "Registers a GGUF export with an Ollama server (blob upload, then create), and answers through it."
    config_class = OllamaOptions
    formats = ("gguf",)

    def push(self, folder: Path, exported: Exported, template: OllamaTemplate, config: OllamaOptions) -> Pushed:
        if exported.gguf is None:
            raise FailedPrecondition("Ollama takes a GGUF; export the model with format 'gguf'", reason="NOT_GGUF")
        host = host_of(config)
        registered = ollama.register(
            host=host,
            name=config.name or folder.name,
            gguf=folder / exported.gguf,
            template=template.template,
            system=template.default_system,
            stops=template.stops,
            num_ctx=config.num_ctx or None,
            quantize=config.quantize or None,
        )
        return Pushed(address=host, remote_name=registered.model, notes=list(registered.statuses))

    def reachable(self, pushed: Pushed) -> bool:
        return ollama.reachable(pushed.address, REACHABLE_SECONDS)

    def chat(self, pushed: Pushed, messages: list[dict[str, str]], options: Any) -> Iterator[Any]:
        return ollama.chat(pushed.address, pushed.remote_name, messages, options)

    def generate(self, pushed: Pushed, prompt: str, options: Any) -> Iterator[Any]:
        return ollama.generate(pushed.address, pushed.remote_name, prompt, options)
