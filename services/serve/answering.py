"""Which engine answers for an exported model, and the answer's stream.

In order of preference:
1. the latest push target the model was pushed to (Ollama) that answers now: the engine
   users will run it with, so what they see here is what they will see there;
2. llama.cpp in this process, for a model exported as GGUF;
3. transformers in this process, for a safetensors or attached export (prefix tuning can
   only be served this way).
"""

from __future__ import annotations

from collections.abc import Iterator

from tunewright.exporters import Pushed, PushTarget
from tunewright.serve.answers import LLAMA_CPP, TRANSFORMERS, Options, Piece
from tunewright.serve.backend import EmbeddedBackend
from tunewright.serve.llamacpp import LlamaCppBackend
from tunewright.serve.store import ModelRecord


class Answerer:
    def __init__(self, transformers: EmbeddedBackend, llama_cpp: LlamaCppBackend, targets: dict[str, PushTarget]):
        self.transformers = transformers
        self.llama_cpp = llama_cpp
        self.targets = targets

    def _pushed(self, record: ModelRecord) -> tuple[PushTarget, Pushed] | None:
        for push in reversed(record.pushes):
            target = self.targets.get(push.target)
            pushed = Pushed(address=push.address, remote_name=push.remote_name)
            if target is not None and target.reachable(pushed):
                return target, pushed
        return None

    def chat(
        self, record: ModelRecord, messages: list[dict[str, str]], options: Options
    ) -> tuple[str, Iterator[Piece]]:
        if found := self._pushed(record):
            target, pushed = found
            return target.name, target.chat(pushed, messages, options)
        if record.gguf:
            return LLAMA_CPP, self.llama_cpp.chat(record, messages, options)
        return TRANSFORMERS, self.transformers.chat(record, messages, options)

    def generate(self, record: ModelRecord, prompt: str, options: Options) -> tuple[str, Iterator[Piece]]:
        if found := self._pushed(record):
            target, pushed = found
            return target.name, target.generate(pushed, prompt, options)
        if record.gguf:
            return LLAMA_CPP, self.llama_cpp.generate(record, prompt, options)
        return TRANSFORMERS, self.transformers.generate(record, prompt, options)
