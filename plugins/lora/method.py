"""LoRA through peft: low-rank updates on the chosen linear layers, merged for export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewright.methods import Capabilities
from tunewright.plugins.lora.config import LoraConfig
from tunewright.plugins.peft_adapters import merge_adapter, save_adapter


class LoraMethod:
    name = "lora"
    description = "LoRA (peft): trains low-rank updates of the linear layers; merges into the base for export."
    config_class = LoraConfig
    capabilities = Capabilities(mergeable=True, exportable=True, requires_gpu=False)
    default_learning_rate = 1e-3

    def prepare(self, model: Any, config: LoraConfig) -> Any:
        import peft

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in config.target_modules if m not in present]
        if missing:
            raise ValueError(f"target_modules {missing} are not layers of this model")
        peft_config = peft.LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
        return peft.get_peft_model(model, peft_config)

    def save(self, model: Any, config: LoraConfig, directory: Path) -> None:
        save_adapter(model, directory)

    def merge(self, base_model: Any, directory: Path) -> Any:
        return merge_adapter(base_model, directory)
