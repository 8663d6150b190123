from __future__ import annotations

from dataclasses import dataclass, field

from tunewright.plugins.lora.config import LoraConfig

# The 4-bit data types bitsandbytes has; NF4 is the QLoRA paper's.
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("auto", "bfloat16", "float32")


@dataclass
class QloraConfig(LoraConfig):
    """LoRA's parameters, plus how the frozen base is quantized."""

    quant_type: str = field(
        default="nf4",
        metadata={"help": "4-bit data type of the frozen base weights.", "choices": QUANT_TYPES},
    )
    double_quant: bool = field(
        default=True,
        metadata={"help": "Also quantize the quantization constants (about 0.4 bits per weight saved)."},
    )
    compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the matrix products; auto is bfloat16 where the hardware has it, else float32.",
            "choices": COMPUTE_DTYPES,
        },
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata={"help": "Recompute activations in the backward pass: less memory, about 20% more time."},
    )
