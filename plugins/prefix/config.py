from __future__ import annotations

from dataclasses import dataclass, field

from tunewright.parameters import ParameterError


@dataclass
class PrefixConfig:
    """Parameters of the ``prefix`` method."""

    num_virtual_tokens: int = field(
        default=20,
        metadata={"help": "Length of the learned prefix, in positions prepended to every layer's keys and values."},
    )
    prefix_projection: bool = field(
        default=False,
        metadata={"help": "Learn the prefix through a two-layer MLP (more stable, more parameters while training)."},
    )
    encoder_hidden_size: int = field(
        default=512,
        metadata={"help": "Hidden size of that MLP; used only with prefix_projection."},
    )

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ParameterError("num_virtual_tokens", f"must be at least 1, got {self.num_virtual_tokens}")
        if self.encoder_hidden_size < 1:
            raise ParameterError("encoder_hidden_size", f"must be at least 1, got {self.encoder_hidden_size}")
