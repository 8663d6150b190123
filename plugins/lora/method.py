"""LoRA through peft: low-rank updates on the chosen linear layers of a float32 base,
merged into the base for export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewright.core.basemodel import load_model
from tunewright.estimate import FLOAT32, Footprint, ModelShape
from tunewright.methods import ArtifactKind, Capabilities, Runtime
from tunewright.plugins.lora.config import LoraConfig
from tunewright.plugins.peft_adapters import (
    check_target_modules,
    load_adapter,
    merge_adapter,
    peft_targets,
    save_adapter,
)


def peft_lora_config(config: LoraConfig, targets: str | list[str] | None = None) -> Any:
    """The peft config for ``config``, on ``targets`` as check_target_modules resolved them
    for the model; qlora uses it too."""
    import peft

    return peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets or peft_targets(config.target_modules),
        task_type="CAUSAL_LM",
    )


class LoraMethod:
    name = "lora"
    description = "LoRA (peft): trains low-rank updates of the linear layers; merges into the base for export."
    config_class = LoraConfig
    capabilities = Capabilities(
        artifact_kind=ArtifactKind.ADAPTER, mergeable=True, exportable=True, required_packages=("peft",)
    )
    default_learning_rate = 1e-3

    def load_base(self, folder: Path, config: LoraConfig, runtime: Runtime) -> Any:
        return load_model(folder).to(runtime.device)

    def footprint(self, shape: ModelShape, config: LoraConfig, runtime: Runtime) -> Footprint:
        return Footprint(
            trainable=shape.lora_params(config.r, config.target_modules), frozen_bytes=shape.params * FLOAT32
        )

    def prepare(self, model: Any, config: LoraConfig) -> Any:
        import peft

        targets = check_target_modules(model, config.target_modules)
        return peft.get_peft_model(model, peft_lora_config(config, targets))

    def save(self, model: Any, config: LoraConfig, directory: Path) -> None:
        save_adapter(model, directory)

    def load_trained(self, folder: Path, config: LoraConfig, directory: Path, runtime: Runtime, trainable: bool) -> Any:
        return load_adapter(self.load_base(folder, config, runtime), directory, trainable)

    def merge(self, folder: Path, config: LoraConfig, directory: Path) -> Any:
        return merge_adapter(load_model(folder), directory)
