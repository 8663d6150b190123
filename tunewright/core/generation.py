"""What an answer is, whoever produces it: generation options in, pieces of text out. Shared
by the serve service's engines and the Ollama client (tunewright.core.ollama), which the
exporter plugins use too."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS = 4096
STOP, LENGTH = "stop", "length"
# Which engine answered, as ChatResponse.backend names it.
TRANSFORMERS, LLAMA_CPP = "transformers", "llama.cpp"


@dataclass(frozen=True)
class Options:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Piece:
    text: str
    token_count: int
    # "stop" (an end-of-turn token) or "length" on the last piece; None before.
    finish_reason: str | None = None
