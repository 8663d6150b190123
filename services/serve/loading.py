"""Loading an exported model for the transformers backend, by its format.

A safetensors export is a self-contained folder. An "attached" one is rebuilt from the
base model and what was trained, by the method that trained it (``Method.load_trained``),
so the serve host needs that method's plugin; it never imports a library that patches
others (those load only in training workers). GGUF exports are served by llama.cpp
(``llamacpp.py``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewright import contract
from tunewright.contract import MANIFEST, Manifest
from tunewright.core.basemodel import load_model, load_tokenizer, resolve_base_model
from tunewright.core.errors import FailedPrecondition
from tunewright.methods import Method, detect_runtime
from tunewright.parameters import build_config
from tunewright.serve.store import ATTACHED, ModelRecord


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any


def installed_method(methods: dict[str, Method], name: str, what: str) -> Method:
    """The method ``what`` (a job, a model) needs, or why the serve host cannot use it."""
    if name not in methods:
        raise FailedPrecondition(
            f"{what} needs method {name!r}, which is not installed on the serve host; install its plugin "
            "and restart the serve service",
            reason="METHOD_NOT_INSTALLED",
        )
    return methods[name]


class ModelLoader:
    def __init__(self, methods: dict[str, Method], model_cache: Path) -> None:
        self.methods = methods
        self.model_cache = Path(model_cache)

    def load(self, record: ModelRecord) -> LoadedModel:
        directory = Path(record.directory)
        if record.format != ATTACHED:
            runtime = detect_runtime()
            return LoadedModel(load_model(directory).to(runtime.device).eval(), load_tokenizer(directory))
        method = installed_method(self.methods, record.method, f"models/{record.id}")
        manifest = contract.from_json((directory / MANIFEST).read_bytes(), Manifest)
        folder = resolve_base_model(record.base_model, self.model_cache)
        config = build_config(method, record.method_parameters)
        model = method.load_trained(folder, config, directory / manifest.trained, detect_runtime(), trainable=False)
        return LoadedModel(model, load_tokenizer(folder))
