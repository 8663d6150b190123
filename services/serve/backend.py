"""The transformers backend: answers token by token with the model in PyTorch. It serves every
export format that is not a GGUF (safetensors folders, and attached results such as a
prefix, rebuilt by their method): a loaded model only has to continue a sequence from its
``past_key_values``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from tunewright.serve.answers import Options, TokenBackend
from tunewright.serve.loading import ModelLoader
from tunewright.serve.store import ModelRecord


def transformers_backend(loader: ModelLoader, max_loaded: int = 2) -> TokenBackend:
    def load(record: ModelRecord) -> tuple[Any, Any]:
        loaded = loader.load(record)
        return loaded.model, loaded.tokenizer

    return TokenBackend(load, tokens, max_loaded)


@torch.no_grad()
def tokens(model: Any, input_ids: list[int], options: Options) -> Iterator[int]:
    """Sampled (or greedy, at temperature 0) next tokens, reusing the key-value cache."""
    device = next(iter(model.parameters())).device
    generator = torch.Generator().manual_seed(options.seed)
    step_input = torch.tensor([input_ids], device=device)
    past = None
    while True:
        output = model(input_ids=step_input, past_key_values=past, use_cache=True)
        past = output.past_key_values
        token = _choose(output.logits[0, -1], options, generator)
        yield token
        step_input = torch.tensor([[token]], device=device)


def _choose(logits: torch.Tensor, options: Options, generator: torch.Generator) -> int:
    if options.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < options.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial((probs / probs.sum()).cpu(), 1, generator=generator))
