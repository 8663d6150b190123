"""Counting an example's tokens as the trainer will see them, fast enough for millions.

The trainer renders a conversation with the model's chat template and tokenizes it; the loss
is on each assistant reply and the end-of-turn token after it (``tunewright.core.chat``). A
text example is tokenized as it is, with the end-of-sequence token after it, and the loss is
on all of it. Here the template is compiled once with Jinja, as transformers compiles it,
and batches are encoded by the Rust tokenizer: ``apply_chat_template`` per example would
take minutes on a million examples. Loss tokens are counted from the assistant replies
encoded on their own, one token more per reply for the end of turn. A conversation with
whitespace at the edge of a content, where the template's text and the content can merge
into one token, is tokenized exactly as the trainer does it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from tunewright.core.basemodel import load_tokenizer
from tunewright.core.chat import end_of_turn_tokens, fold_system_prompt, tokenize_for_training
from tunewright.dataformats import Example


@dataclass(frozen=True)
class Counted:
    tokens: int
    loss_tokens: int


# Examples of each conversation shape (its roles, in order) counted both ways before the
# shape is counted from its contents alone.
VERIFY_PER_SHAPE = 32


class TokenCounter:
    """Counts from the contents alone where the chat template allows it.

    A template such as ChatML writes each content between special tokens and newlines, which
    the pre-tokenizer never merges with the content, so a conversation's tokens are its
    contents' tokens plus a fixed number for its shape (its roles, system prompt and markers).
    That fixed number is measured on the first examples of each shape, rendered and encoded
    whole; if any of them disagrees (a template that writes " {content}" merges the space into
    the content's first token), every example from then on is rendered. Rendering is a Jinja
    call per example and encodes the template's text too: counting from contents is about
    twice as fast.
    """

    def __init__(self, folder: Path) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.tokenizer = tokenizer = load_tokenizer(folder)
        self.backend = tokenizer.backend_tokenizer
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        self.template = environment.from_string(tokenizer.chat_template)
        self.special = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
        self.turn_end = 1 if end_of_turn_tokens(tokenizer) else 0
        # shape -> (the template's tokens, examples that agreed); rendered is set for good
        # once an example disagrees.
        self.shapes: dict[tuple[str, ...], tuple[int, int]] = {}
        self.rendered = False

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=False, **self.special)
        except (ValueError, TemplateError):
            # A template that refuses a system message gets it joined to the first user
            # message, as training renders it (tunewright.core.chat.render).
            folded = fold_system_prompt(messages)
            if folded is None:
                raise
            return self.template.render(messages=folded, add_generation_prompt=False, **self.special)

    def _encoded_lengths(self, texts: list[str]) -> list[int]:
        # The _fast variant skips character offsets, which counting does not need (1.4x faster).
        return [len(e.ids) for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def count(self, examples: list[Example]) -> list[Counted]:
        contents = [m["content"] for e in examples for m in e.get("messages", ())]
        lengths = iter(self._encoded_lengths(contents + [e["text"] for e in examples if "text" in e]))
        per_message = [[next(lengths) for _ in e.get("messages", ())] for e in examples]
        counted: list[Counted | None] = []
        unverified = []
        for i, (example, sizes) in enumerate(zip(examples, per_message, strict=True)):
            if "text" in example:
                # Taken after every message's length: the texts were encoded after the contents.
                counted.append(None)
                continue
            if any(m["content"][:1].isspace() or m["content"][-1:].isspace() for m in example["messages"]):
                # Whitespace at a content's edge can merge with the template's: tokenized as
                # the trainer does (slow, and rare).
                tokenized = tokenize_for_training(self.tokenizer, example["messages"], max_length=1 << 30)
                counted.append(Counted(len(tokenized.input_ids), tokenized.trained_tokens))
                continue
            roles = tuple(m["role"] for m in example["messages"])
            loss = sum(size + self.turn_end for size, role in zip(sizes, roles, strict=True) if role == "assistant")
            template, agreed = self.shapes.get(roles, (0, 0))
            if self.rendered or agreed < VERIFY_PER_SHAPE:
                unverified.append(i)
            counted.append(Counted(sum(sizes) + template, loss))
        for i, example in enumerate(examples):
            if "text" in example:
                size = next(lengths)
                counted[i] = Counted(size + 1, size + 1)
        if unverified:
            totals = self._encoded_lengths([self.render(examples[i]["messages"]) for i in unverified])
            for i, total in zip(unverified, totals, strict=True):
                roles = tuple(m["role"] for m in examples[i]["messages"])
                template = total - sum(per_message[i])
                known, agreed = self.shapes.get(roles, (template, 0))
                if known != template:
                    self.rendered = True
                self.shapes[roles] = (known, agreed + 1)
                counted[i] = Counted(total, counted[i].loss_tokens)
        return counted


def _raise(message: str) -> None:
    raise ValueError(message)
