from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FullConfig:
    """Parameters of the ``full`` method."""

    train_embeddings: bool = field(
        default=True,
        metadata={"help": "Also train the token embeddings (and the output head tied to them)."},
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, about 20% more time."},
    )
