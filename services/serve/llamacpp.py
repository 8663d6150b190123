"""Answering from an exported GGUF in this process, with llama.cpp (llama-cpp-python): the
engine inside Ollama, for when no Ollama server is registered or reachable.

The conversation is rendered and tokenized by the model's own Hugging Face tokenizer,
saved next to the GGUF, so the tokens llama.cpp evaluates are exactly the ones the model
was trained on; llama.cpp only computes. Generation stops at every end-of-turn token of
the chat template, as the transformers backend does.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunewright.core.basemodel import load_tokenizer
from tunewright.core.chat import end_of_turn_tokens, render
from tunewright.serve.answers import LENGTH, STOP, Options, Piece
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
        logits_all=logits_all,
        verbose=False,
    )


class LlamaCppBackend:
    def __init__(self, max_loaded: int = 2, context_length: int = 2048) -> None:
        self.max_loaded = max_loaded
        self.context_length = context_length
        self._loaded: OrderedDict[str, tuple] = OrderedDict()
        # One generation at a time: each call uses every core.
        self._lock = threading.Lock()

    def _load(self, record: ModelRecord) -> tuple:
        if record.id in self._loaded:
            self._loaded.move_to_end(record.id)
            return self._loaded[record.id]
        directory = Path(record.directory)
        tokenizer = load_tokenizer(directory)
        stops = {tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)} or {tokenizer.eos_token_id}
        model = open_gguf(directory / record.gguf, self.context_length)
        self._loaded[record.id] = (model, tokenizer, stops)
        while len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return self._loaded[record.id]

    def chat(self, record: ModelRecord, messages: list[dict[str, str]], options: Options) -> Iterator[Piece]:
        with self._lock:
            _, tokenizer, _ = self._load(record)
        prompt = render(tokenizer, messages, generation_prompt=True)
        yield from self._generate(record, prompt, options, add_special_tokens=False)

    def generate(self, record: ModelRecord, prompt: str, options: Options) -> Iterator[Piece]:
        yield from self._generate(record, prompt, options, add_special_tokens=True)

    def _generate(
        self, record: ModelRecord, prompt: str, options: Options, add_special_tokens: bool
    ) -> Iterator[Piece]:
        with self._lock:
            model, tokenizer, stops = self._load(record)
            input_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
            model.set_seed(options.seed)
            tokens: list[int] = []
            sent = ""
            # Only temperature and top-p shape sampling, as in the transformers backend.
            sampled = model.generate(
                input_ids, temp=options.temperature, top_p=options.top_p, top_k=0, min_p=0.0, repeat_penalty=1.0
            )
            for token in sampled:
                if token in stops:
                    yield Piece("", len(tokens), STOP)
                    return
                tokens.append(token)
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                # Hold back a partial UTF-8 character until its remaining bytes arrive.
                if not text.endswith("\ufffd") and len(text) > len(sent):
                    yield Piece(text[len(sent) :], len(tokens))
                    sent = text
                if len(tokens) >= options.max_new_tokens:
                    break
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            yield Piece(text[len(sent) :], len(tokens), LENGTH)


@dataclass(frozen=True)
class Parity:
    """How closely llama.cpp running a GGUF follows the Hugging Face model it came from."""

    # Positions of the prompts where both pick the same next token, over all positions.
    top1_agreement: float
    # Prompts whose greedy continuation of ``continuation_tokens`` tokens is identical.
    identical_continuations: float
    positions: int
    prompts: int
    continuation_tokens: int


def parity(gguf: Path, hf_folder: Path, prompts: list[list[int]], continuation_tokens: int = 24) -> Parity:
    """Runs each prompt (token ids) through both engines: the next-token choice at every
    position, and a greedy continuation that ignores end-of-turn tokens."""
    import numpy as np
    import torch

    from tunewright.core.basemodel import load_model

    model = load_model(hf_folder).eval()
    engine = open_gguf(gguf, context_length=max(len(p) for p in prompts) + continuation_tokens + 8, logits_all=True)
    agree = positions = identical = 0
    for ids in prompts:
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids]), use_cache=True)
            expected = output.logits[0].argmax(-1).numpy()
            # Greedy by hand: generate() would stop at, or with min_new_tokens suppress, the
            # end-of-turn token, which llama.cpp's generator does neither of.
            reference = [int(expected[-1])]
            while len(reference) < continuation_tokens:
                output = model(
                    input_ids=torch.tensor([[reference[-1]]]), past_key_values=output.past_key_values, use_cache=True
                )
                reference.append(int(output.logits[0, -1].argmax()))
        engine.reset()
        engine.eval(ids)
        actual = np.asarray(engine.scores[: len(ids)]).argmax(-1)
        agree += int((expected == actual).sum())
        positions += len(ids)
        continuation: list[int] = []
        for token in engine.generate(ids, temp=0.0, top_k=0, min_p=0.0, repeat_penalty=1.0):
            continuation.append(token)
            if len(continuation) == continuation_tokens:
                break
        identical += continuation == reference
    return Parity(agree / positions, identical / len(prompts), positions, len(prompts), continuation_tokens)
