"""Counting an example's tokens as the trainer will see them, fast enough for millions.

The trainer renders a conversation with the model's chat template and tokenizes it; the loss
is on each assistant reply and the end-of-turn token after it (``tunewright.core.chat``). A
text example is tokenized as it is, with the end-of-sequence token after it, and the loss is
on all of it. Here the template is compiled once with Jinja, as transformers compiles it,
and batches are encoded by the Rust tokenizer: ``apply_chat_template`` per example would
take minutes on a million examples. Loss tokens are counted from the assistant replies
encoded on their own, one token more per reply for the end of turn; where a reply's first
or last token merges with the template's text this can differ from the trainer's mask by a
token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunewright.core.basemodel import load_tokenizer
from tunewright.core.chat import end_of_turn_tokens
from tunewright.dataformats import Example


@dataclass(frozen=True)
class Counted:
    tokens: int
    loss_tokens: int


class TokenCounter:
    def __init__(self, folder: Path) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        tokenizer = load_tokenizer(folder)
        self.backend = tokenizer.backend_tokenizer
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        self.template = environment.from_string(tokenizer.chat_template)
        self.special = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
        self.turn_end = 1 if end_of_turn_tokens(tokenizer) else 0

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.template.render(messages=messages, add_generation_prompt=False, **self.special)

    def count(self, examples: list[Example]) -> list[Counted]:
        rendered = [e["text"] if "text" in e else self.render(e["messages"]) for e in examples]
        replies = [[m["content"] for m in e.get("messages", ()) if m["role"] == "assistant"] for e in examples]
        # The _fast variant skips character offsets, which counting does not need (1.4x faster).
        totals = self.backend.encode_batch_fast(rendered, add_special_tokens=False)
        flat = [reply for example in replies for reply in example]
        reply_lengths = iter(len(e.ids) for e in self.backend.encode_batch_fast(flat, add_special_tokens=False))
        counted = []
        for example, total, example_replies in zip(examples, totals, replies, strict=True):
            if "text" in example:
                counted.append(Counted(len(total.ids) + 1, len(total.ids) + 1))
            else:
                loss = sum(next(reply_lengths) + self.turn_end for _ in example_replies)
                counted.append(Counted(len(total.ids), loss))
        return counted


def _raise(message: str) -> None:
    raise ValueError(message)
