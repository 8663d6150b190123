"""Helpers shared by every method built on peft: checking target layers, and saving,
loading and merging adapters. A third-party method can use them too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewright.core.families import lora_target_names
from tunewright.parameters import ParameterError

# peft's name for every linear layer of the model but the output head.
ALL_LINEAR = "all-linear"


def check_target_modules(model: Any, target_modules: list[str]) -> str | list[str]:
    """The ``target_modules`` peft gets for this model: refuses layer names it does not have,
    before peft fails less clearly, and maps separate projections onto the fused layers of
    families that fuse them (``tunewright.core.families``)."""
    if target_modules == [ALL_LINEAR]:
        return ALL_LINEAR
    layers = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets, missing = lora_target_names(layers, target_modules)
    if missing:
        raise ValueError(f"target_modules {missing} are not layers of this model")
    return targets


def check_target_names(field: str, target_modules: list[str]) -> None:
    """For a config's ``__post_init__``: at least one name, and "all-linear" only alone."""
    if not target_modules:
        raise ParameterError(field, f"must name at least one layer, or be [{ALL_LINEAR!r}]")
    if ALL_LINEAR in target_modules and len(target_modules) > 1:
        raise ParameterError(field, f"{ALL_LINEAR!r} already means every linear layer; give it alone")


def peft_targets(target_modules: list[str]) -> str | list[str]:
    return ALL_LINEAR if target_modules == [ALL_LINEAR] else list(target_modules)


def save_adapter(model: Any, directory: Path) -> None:
    """Writes only the adapter weights (safetensors) and its peft config."""
    model.save_pretrained(directory, safe_serialization=True)


def load_adapter(base_model: Any, directory: Path, trainable: bool) -> Any:
    """``base_model`` with the adapter in ``directory`` attached (not merged)."""
    import peft

    model = peft.PeftModel.from_pretrained(base_model, directory, is_trainable=trainable)
    return model if trainable else model.eval()


def merge_adapter(base_model: Any, directory: Path) -> Any:
    """The base model with the adapter in ``directory`` folded into its weights."""
    return load_adapter(base_model, directory, trainable=False).merge_and_unload()
