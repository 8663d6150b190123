"""Answering from an exported GGUF in this process, with llama.cpp (llama-cpp-python): the
engine inside Ollama, for when no Ollama server is registered or reachable.

The conversation is rendered and tokenized by the model's own Hugging Face tokenizer,
saved next to the GGUF, so the tokens llama.cpp evaluates are exactly the ones the model
was trained on; llama.cpp only computes. Generation stops at every end-of-turn token of
the chat template, as the transformers backend does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewright.core.basemodel import load_tokenizer
from tunewright.serve.answers import Options, TokenBackend
from tunewright.serve.store import ModelRecord


def open_gguf(path: Path, context_length: int, logits_all: bool = False):
    """A llama.cpp model on this machine's CPU threads (a GPU if llama.cpp was built for one)."""
    from llama_cpp import Llama

    threads = int(os.environ.get("TUNEWRIGHT_TORCH_THREADS") or os.cpu_count() or 1)
    return Llama(
        model_path=str(path),
        n_ctx=context_length,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=-1,
        # No flash attention: on the demo's GGUF it measured 5-10% faster but moved greedy
        # continuations away from the Hugging Face model's (18 of 20 identical, under
        # tests/test_gguf.py's floor of 19).
        flash_attn=False,
        logits_all=logits_all,
        verbose=False,
    )


def llama_cpp_backend(context_length: int = 2048, max_loaded: int = 2) -> TokenBackend:
    def load(record: ModelRecord) -> tuple[Any, Any]:
        directory = Path(record.directory)
        return open_gguf(directory / record.gguf, context_length), load_tokenizer(directory)

    return TokenBackend(load, tokens, max_loaded)


def tokens(model: Any, input_ids: list[int], options: Options) -> Iterator[int]:
    """llama.cpp's next tokens; only temperature and top-p shape sampling, as in the
    transformers backend."""
    model.set_seed(options.seed)
    yield from model.generate(
        input_ids, temp=options.temperature, top_p=options.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0
    )


@dataclass(frozen=True)
class Parity:
    """How closely llama.cpp running a GGUF follows the Hugging Face model it came from."""

    # Positions where both pick the same next token, over all positions. A position is its
    # prefix of token ids, counted once however many prompts share it: prompts that open with
    # the same system prompt would otherwise count one near-tie in it once per prompt.
    top1_agreement: float
    # Prompts whose greedy continuation of ``continuation_tokens`` tokens is identical.
    identical_continuations: float
    # Prompts whose continuation is identical, or parts where the Hugging Face model itself
    # nearly ties: llama.cpp takes its runner-up, less than ``near_tie`` logits behind.
    # Rounding to F16 moves logits by a few hundredths, which flips such a choice.
    identical_up_to_near_ties: float
    positions: int
    prompts: int
    continuation_tokens: int


# Logits: a choice the Hugging Face model makes by less than this is a near-tie, which F16's
# rounding (up to about 0.07 on SmolLM2) may flip.
NEAR_TIE = 0.1


def parity(
    gguf: Path, hf_folder: Path, prompts: list[list[int]], continuation_tokens: int = 24, near_tie: float = NEAR_TIE
) -> Parity:
    """Runs each prompt (token ids) through both engines: the next-token choice at every
    position, and a greedy continuation that ignores end-of-turn tokens."""
    import numpy as np
    import torch

    from tunewright.core.basemodel import load_model

    model = load_model(hf_folder).eval()
    engine = open_gguf(gguf, context_length=max(len(p) for p in prompts) + continuation_tokens + 8, logits_all=True)
    agree = identical = faithful = 0
    seen: set[tuple[int, ...]] = set()
    for ids in prompts:
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids]), use_cache=True)
            expected = output.logits[0].argmax(-1).numpy()
            # Greedy by hand: generate() would stop at, or with min_new_tokens suppress, the
            # end-of-turn token, which llama.cpp's generator does neither of. The top two
            # candidates at each step tell a near-tie from a real difference.
            candidates = [torch.topk(output.logits[0, -1], 2)]
            reference = [int(expected[-1])]
            while len(reference) < continuation_tokens:
                output = model(
                    input_ids=torch.tensor([[reference[-1]]]), past_key_values=output.past_key_values, use_cache=True
                )
                candidates.append(torch.topk(output.logits[0, -1], 2))
                reference.append(int(candidates[-1].indices[0]))
        engine.reset()
        engine.eval(ids)
        actual = np.asarray(engine.scores[: len(ids)]).argmax(-1)
        for end in range(1, len(ids) + 1):
            if (prefix := tuple(ids[:end])) not in seen:
                seen.add(prefix)
                agree += int(expected[end - 1] == actual[end - 1])
        continuation: list[int] = []
        for token in engine.generate(ids, temp=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0):
            continuation.append(token)
            if len(continuation) == continuation_tokens:
                break
        identical += continuation == reference
        part = next((i for i, (a, b) in enumerate(zip(continuation, reference, strict=False)) if a != b), None)
        faithful += continuation == reference or (
            part is not None
            and continuation[part] == int(candidates[part].indices[1])
            and float(candidates[part].values[0] - candidates[part].values[1]) < near_tie
        )
    return Parity(
        agree / len(seen),
        identical / len(prompts),
        faithful / len(prompts),
        len(seen),
        len(prompts),
        continuation_tokens,
    )
