from __future__ import annotations

from dataclasses import dataclass, field

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """Parameters of the ``lora`` method; each becomes a parameter in ListMethods."""

    r: int = field(default=16, metadata={"help": "Rank of the low-rank update matrices."})
    alpha: float = field(default=32.0, metadata={"help": "Scale of the update is alpha / r."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, 0 to 1."})
    target_modules: list[str] = field(
        default_factory=lambda: list(ALL_LINEAR),
        metadata={"help": "Names of the linear layers to adapt."},
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be at least 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one layer")
