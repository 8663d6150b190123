"""The probe: the trained model's logits on one held-out example, kept with the artifact.

Whoever rebuilds the trained model from an artifact (the serve service merging it or
attaching it to the base, a test, a resumed job) runs the same tokens through what it
built and compares. A rebuild that went wrong (an adapter merged into quantized weights,
a layer left out, the wrong base) differs far beyond the tolerance, and the export is
refused instead of shipping a model that answers differently from the one that was
trained and evaluated.

The difference is the KL divergence of the rebuilt model's next-token distribution from
the trained model's, in nats, the largest over the last ``POSITIONS`` positions. KL weighs
tokens by how likely the trained model found them, so rounding in the far tail, where
log-probabilities of 1e-9 tokens swing widely, does not count, while a missing adapter
or a wrong merge shows at once. The tolerance depends on the precision the trained model
computed in: a float32 model must be rebuilt almost exactly; one that ran in bfloat16 is
rebuilt in float32 and differs by bfloat16 rounding accumulated over the layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunewright.core.chat import render

POSITIONS = 8
MAX_TOKENS = 64
# Largest KL divergence (nats) accepted between the trained model and its rebuild, by the
# precision the trained model computed in. Measured on SmolLM2-135M: float32 rebuilds
# stay below 1e-6, bfloat16 ones (unsloth, qlora) near 0.01 (docs/architecture.md).
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.05, "float16": 0.05}


def compute_dtype(model: Any) -> str:
    """The lowest precision the model computes in: its floating parameters, and the compute
    dtype of quantized layers, which keep their weights as integers."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    dtypes |= {m.compute_dtype for m in model.modules() if isinstance(getattr(m, "compute_dtype", None), torch.dtype)}
    for dtype in (torch.float16, torch.bfloat16):
        if dtype in dtypes:
            return str(dtype).removeprefix("torch.")
    return "float32"


def probe_ids(tokenizer: Any, conversation: list[dict[str, str]]) -> list[int]:
    """Token ids of the rendered conversation, cut to ``MAX_TOKENS`` from the end, where the
    answer is."""
    text = render(tokenizer, conversation, generation_prompt=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"][-MAX_TOKENS:]


@torch.no_grad()
def logits_at(model: Any, input_ids: list[int]) -> torch.Tensor:
    """Float32 logits of the last ``POSITIONS`` positions, shape (positions, vocabulary)."""
    device = next(iter(model.parameters())).device
    output = model(input_ids=torch.tensor([input_ids], device=device))
    return output.logits[0, -POSITIONS:].float().cpu()


def write_probe(path: Path, input_ids: list[int], logits: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file({"input_ids": torch.tensor(input_ids), "logits": logits.contiguous()}, str(path))


def read_probe(path: Path) -> tuple[list[int], torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return tensors["input_ids"].tolist(), tensors["logits"]


def divergence(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """Largest KL(expected || actual) over the positions, in nats, from logits."""
    expected_log, actual_log = expected.float().log_softmax(-1), actual.float().log_softmax(-1)
    return float((expected_log.exp() * (expected_log - actual_log)).sum(-1).clamp(min=0).max())


def measure(model: Any, path: Path) -> float:
    """How far ``model`` is from the trained model on the probe in ``path``."""
    input_ids, expected = read_probe(path)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        return divergence(expected, logits_at(model, input_ids))
    finally:
        if was_training:
            model.train()
