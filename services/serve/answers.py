"""The answering loop shared by the engines that run in this process, on the options and
pieces of tunewright.core.generation (re-exported here). Free of torch and of any engine."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tunewright.core.chat import end_of_turn_tokens, render
from tunewright.core.generation import (  # noqa: F401 - re-exported for the service's modules
    DEFAULT_MAX_NEW_TOKENS,
    LENGTH,
    LLAMA_CPP,
    MAX_NEW_TOKENS,
    STOP,
    TRANSFORMERS,
    Options,
    Piece,
)

if TYPE_CHECKING:
    from tunewright.serve.store import ModelRecord


class TokenBackend:
    """Chat and Generate for an engine that produces token ids one at a time.

    The engine gives two functions: ``load(record)`` returns ``(model, tokenizer)``, and
    ``tokens(model, input_ids, options)`` yields token ids. Everything else is shared by
    every engine: rendering the chat with the model's tokenizer, stopping at any
    end-of-turn token, decoding into text pieces, and keeping the last few models loaded.
    """

    def __init__(
        self,
        load: Callable[[ModelRecord], tuple[Any, Any]],
        tokens: Callable[[Any, list[int], Options], Iterator[int]],
        max_loaded: int = 2,
    ) -> None:
        self._load_model = load
        self._tokens = tokens
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, tuple[Any, Any, set[int]]] = OrderedDict()
        # One generation at a time: the CPU has few cores and each call uses them all.
        self._lock = threading.Lock()

    def _load(self, record: ModelRecord) -> tuple[Any, Any, set[int]]:
        if record.id in self._loaded:
            self._loaded.move_to_end(record.id)
            return self._loaded[record.id]
        model, tokenizer = self._load_model(record)
        stops = {tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)} or {tokenizer.eos_token_id}
        self._loaded[record.id] = (model, tokenizer, stops)
        while len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return self._loaded[record.id]

    def chat(self, record: ModelRecord, messages: list[dict[str, str]], options: Options) -> Iterator[Piece]:
        with self._lock:
            _, tokenizer, _ = self._load(record)
        prompt = render(tokenizer, messages, generation_prompt=True)
        yield from self._answer(record, prompt, options, add_special_tokens=False)

    def generate(self, record: ModelRecord, prompt: str, options: Options) -> Iterator[Piece]:
        yield from self._answer(record, prompt, options, add_special_tokens=True)

    def _answer(self, record: ModelRecord, prompt: str, options: Options, add_special_tokens: bool) -> Iterator[Piece]:
        with self._lock:
            model, tokenizer, stops = self._load(record)
            input_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
            tokens: list[int] = []
            sent = ""
            for token in self._tokens(model, input_ids, options):
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
