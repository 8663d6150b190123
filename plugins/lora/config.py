from __future__ import annotations

from dataclasses import dataclass, field

from tunewright.parameters import ParameterError
from tunewright.plugins.peft_adapters import ALL_LINEAR, check_target_names


@dataclass
class LoraConfig:
    """Parameters of the ``lora`` method; each becomes a parameter in ListMethods."""

    r: int = field(default=16, metadata={"help": "Rank of the low-rank update matrices, at least 1."})
    alpha: float = field(default=32.0, metadata={"help": "Scale of the update is alpha / r; more than 0."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, 0 to less than 1."})
    target_modules: list[str] = field(
        default_factory=lambda: [ALL_LINEAR],
        metadata={"help": f"Names of the linear layers to adapt, or [{ALL_LINEAR!r}] for every one but the head."},
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ParameterError("r", f"must be at least 1, got {self.r}")
        if self.alpha <= 0:
            raise ParameterError("alpha", f"must be more than 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ParameterError("dropout", f"must be in [0, 1), got {self.dropout}")
        check_target_names("target_modules", self.target_modules)
