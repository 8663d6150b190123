"""Saving and merging peft adapters: shared by every method built on peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_adapter(model: Any, directory: Path) -> None:
    """Writes only the adapter weights (safetensors) and its peft config."""
    model.save_pretrained(directory, safe_serialization=True)


def merge_adapter(base_model: Any, directory: Path) -> Any:
    """The base model with the adapter in ``directory`` folded into its weights."""
    import peft

    return peft.PeftModel.from_pretrained(base_model, directory).merge_and_unload()
