"""The embedded backend: token-by-token generation with transformers, for when no
Ollama server is at hand. It works the same for every export format: a loaded model only
has to continue a sequence from its ``past_key_values``."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator

import torch

from tunewright.core.chat import end_of_turn_tokens, render
from tunewright.serve.answers import LENGTH, STOP, Options, Piece
from tunewright.serve.loading import ModelLoader
from tunewright.serve.store import ModelRecord


class EmbeddedBackend:
    def __init__(self, loader: ModelLoader, max_loaded: int = 2) -> None:
        self.loader = loader
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, tuple] = OrderedDict()
        # One generation at a time: the CPU has few cores and each call uses them all.
        self._lock = threading.Lock()

    def _load(self, record: ModelRecord) -> tuple:
        if record.id in self._loaded:
            self._loaded.move_to_end(record.id)
            return self._loaded[record.id]
        loaded = self.loader.load(record)
        tokenizer = loaded.tokenizer
        stops = {tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)} or {tokenizer.eos_token_id}
        self._loaded[record.id] = (loaded.model, tokenizer, stops)
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

    @torch.no_grad()
    def _generate(
        self, record: ModelRecord, prompt: str, options: Options, add_special_tokens: bool
    ) -> Iterator[Piece]:
        with self._lock:
            model, tokenizer, stops = self._load(record)
            device = next(iter(model.parameters())).device
            input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)["input_ids"]
            input_ids = input_ids.to(device)
            generator = torch.Generator().manual_seed(options.seed)
            past = None
            tokens: list[int] = []
            sent = ""
            step_input = input_ids
            for _ in range(options.max_new_tokens):
                output = model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = output.past_key_values
                token = _choose(output.logits[0, -1], options, generator)
                if token in stops:
                    yield Piece("", len(tokens), STOP)
                    return
                tokens.append(token)
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                # Hold back a partial UTF-8 character until its remaining bytes arrive.
                if not text.endswith("\ufffd") and len(text) > len(sent):
                    yield Piece(text[len(sent) :], len(tokens))
                    sent = text
                step_input = torch.tensor([[token]], device=device)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            yield Piece(text[len(sent) :], len(tokens), LENGTH)


def _choose(logits: torch.Tensor, options: Options, generator: torch.Generator) -> int:
    if options.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / options.temperature, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < options.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial((probs / probs.sum()).cpu(), 1, generator=generator))
