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
from dataclasses import dataclass

from tunewright.exporters import Pushed, PushTarget
from tunewright.serve.answers import LLAMA_CPP, TRANSFORMERS, Options, Piece, TokenBackend
from tunewright.serve.store import ModelRecord


@dataclass(frozen=True)
class _ThroughTarget:
    """A push target answering for one pushed model, shaped like the in-process backends."""

    target: PushTarget
    pushed: Pushed

    def chat(self, record: ModelRecord, messages: list[dict[str, str]], options: Options) -> Iterator[Piece]:
        return self.target.chat(self.pushed, messages, options)

    def generate(self, record: ModelRecord, prompt: str, options: Options) -> Iterator[Piece]:
        return self.target.generate(self.pushed, prompt, options)


class Answerer:
    def __init__(self, transformers: TokenBackend, llama_cpp: TokenBackend, targets: dict[str, PushTarget]):
        self.transformers = transformers
        self.llama_cpp = llama_cpp
        self.targets = targets

    def engine(self, record: ModelRecord) -> tuple[str, TokenBackend | _ThroughTarget]:
        """(the backend's name, as responses report it; the backend)."""
        for push in reversed(record.pushes):
            target = self.targets.get(push.target)
            pushed = Pushed(address=push.address, remote_name=push.remote_name)
            if target is not None and target.reachable(pushed):
                return target.name, _ThroughTarget(target, pushed)
        if record.gguf:
            return LLAMA_CPP, self.llama_cpp
        return TRANSFORMERS, self.transformers

    def chat(
        self, record: ModelRecord, messages: list[dict[str, str]], options: Options
    ) -> tuple[str, Iterator[Piece]]:
        name, engine = self.engine(record)
        if record.system_prompt and (not messages or messages[0]["role"] != "system"):
            # As Ollama does with the Modelfile's SYSTEM.
            messages = [{"role": "system", "content": record.system_prompt}, *messages]
        return name, engine.chat(record, messages, options)

    def generate(self, record: ModelRecord, prompt: str, options: Options) -> tuple[str, Iterator[Piece]]:
        name, engine = self.engine(record)
        return name, engine.generate(record, prompt, options)
