"""What an export format and a push target are: the protocols export plugins follow.

An **export format** writes a runnable copy of a fine-tuned model into a folder: a merged
safetensors folder, a GGUF file, or a layout of a team's own (vLLM, MLX). The serve
service merges the trained result and checks the merged model against the trained one
first; a format only lays out what it is given. A **push target** hands an exported model
to something that runs models (Ollama), and may be asked to answer through it.

Both are contributed through ``tunewright_register_exporters(registry)`` with
``registry.add_format(...)`` and ``registry.add_target(...)``; the built-in ones are
ordinary plugins (``plugins/safetensors``, ``plugins/gguf``, ``plugins/ollama``). Their
options are a dataclass, described and checked like a method's parameters
(``tunewright/parameters.py``), given as text in the API (``{"type": "q8_0"}``).

Formats and targets run in the serve service; like ``Method.merge`` they must not import
libraries that patch others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# The model's chat template as Ollama needs it: a Go template (or None when no known
# family matches, and Ollama renders the Jinja template embedded in the GGUF), the default
# system prompt, and every stop.
from tunewright.core.modelfile import OllamaTemplate

__all__ = ["ExportFormat", "Exported", "ExporterRegistry", "MergedModel", "OllamaTemplate", "PushTarget", "Pushed"]


@dataclass(frozen=True)
class MergedModel:
    """A merged model, checked against the trained one, ready to be laid out."""

    # A Hugging Face folder: config.json, safetensors weights, tokenizer with chat template.
    folder: Path
    # config.json's first architecture, such as "LlamaForCausalLM".
    architecture: str
    context_length: int | None
    template: OllamaTemplate
    # The base model's name (a built-in name, or its folder's name), for the file's metadata.
    base_name: str = ""


@dataclass(frozen=True)
class Exported:
    """What a format wrote."""

    # The Ollama Modelfile, when the layout can be imported into Ollama; else "".
    modelfile: str = ""
    # A GGUF file (relative to the export folder) that llama.cpp can run, if there is one.
    gguf: str | None = None
    # Things the user should know ("no Go template: Ollama will render the GGUF's Jinja").
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class ExportFormat(Protocol):
    name: str
    description: str
    config_class: type

    def check(self, base_folder: Path, config: Any) -> None:
        """Refuses, before any work, a base model this format cannot lay out (its
        architecture, its tokenizer): raise ``FailedPrecondition`` saying why and what to
        use instead. ``base_folder`` is the base model's Hugging Face folder."""

    def write(self, model: MergedModel, config: Any, out: Path) -> Exported:
        """Writes the export into the empty folder ``out``; may move files out of
        ``model.folder``, which is discarded afterwards."""


@dataclass(frozen=True)
class Pushed:
    """Where a target put a model, as the serve service records it."""

    # Where the target runs ("http://127.0.0.1:11434").
    address: str
    # The model's name there ("tickets:latest").
    remote_name: str
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class PushTarget(Protocol):
    name: str
    description: str
    config_class: type
    # The export formats it accepts, such as ("gguf",).
    formats: tuple[str, ...]

    def push(self, folder: Path, exported: Exported, template: OllamaTemplate, config: Any) -> Pushed:
        """Hands the export in ``folder`` to the target. Leaves ``folder`` untouched, so a
        failed push can be retried."""

    def reachable(self, pushed: Pushed) -> bool:
        """Whether the target answers now (a short check, never raising)."""

    def chat(self, pushed: Pushed, messages: list[dict[str, str]], options: Any) -> Iterator[Any]:
        """Streams ``tunewright.serve.backend.Piece`` answers through the target."""

    def generate(self, pushed: Pushed, prompt: str, options: Any) -> Iterator[Any]:
        """Streams a raw completion through the target."""


class ExporterRegistry:
    """What the ``tunewright_register_exporters`` hook fills: formats and targets by name."""

    def __init__(self) -> None:
        self.formats: dict[str, ExportFormat] = {}
        self.targets: dict[str, PushTarget] = {}

    def add_format(self, export_format: ExportFormat) -> None:
        if not isinstance(export_format, ExportFormat):
            raise TypeError(f"{export_format!r} does not follow tunewright.exporters.ExportFormat")
        if export_format.name in self.formats:
            raise ValueError(f"two plugins register an export format named {export_format.name!r}")
        self.formats[export_format.name] = export_format

    def add_target(self, target: PushTarget) -> None:
        if not isinstance(target, PushTarget):
            raise TypeError(f"{target!r} does not follow tunewright.exporters.PushTarget")
        if target.name in self.targets:
            raise ValueError(f"two plugins register a push target named {target.name!r}")
        self.targets[target.name] = target
