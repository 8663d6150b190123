from __future__ import annotations

from dataclasses import dataclass, field

from tunewright.plugins.lora.config import LoraConfig


@dataclass
class UnslothConfig(LoraConfig):
    """LoRA's parameters, trained through Unsloth."""

    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Unsloth's offloaded gradient checkpointing: much less memory for long sequences, slower."},
    )
