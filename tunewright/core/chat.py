"""Chat templates: rendering conversations, masking the loss to assistant tokens, and
finding the tokens that end a turn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunewright.core.errors import FailedPrecondition

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

# Tokens that templates in the wild use to close a turn.
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>", "<|endoftext|>")

Message = dict[str, str]


def end_of_turn_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every known end-of-turn token that the chat template writes and the vocabulary holds
    as one token, in the order of KNOWN_END_OF_TURN."""
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    return [token for token in KNOWN_END_OF_TURN if token in template and token in vocab]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model must learn to write:
    each assistant reply with the end-of-turn token after it."""
    text = render(tokenizer, messages, generation_prompt=False)
    stops = end_of_turn_tokens(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not text.startswith(before) or not text.startswith(through):
            raise FailedPrecondition(
                "the chat template renders a conversation differently from its prefixes, "
                "so assistant turns cannot be located for loss masking",
                reason="UNSUPPORTED_CHAT_TEMPLATE",
            )
        start, end = len(before), len(through)
        # Keep the end-of-turn token, drop what the template writes after it (a newline).
        turn = text[start:end]
        cut = max((turn.rfind(stop) + len(stop) for stop in stops if stop in turn), default=len(turn.rstrip()))
        spans.append((start, start + cut))
    return text, spans


def tokenize_for_training(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], max_length: int
) -> TokenizedExample:
    """Token ids of the rendered conversation, with labels only on assistant tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        inside = any(start >= s and end <= e and end > start for s, e in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return TokenizedExample(input_ids=encoded["input_ids"][:max_length], labels=labels[:max_length])


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> TokenizedExample:
    """Token ids of a text for continued pre-training, the end-of-sequence token after it;
    the loss is on every token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return TokenizedExample(input_ids=ids[:max_length], labels=ids[:max_length])


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, example: list[Message] | str, max_length: int
) -> TokenizedExample:
    """A conversation (a list of messages) or a text (a string), tokenized for training."""
    if isinstance(example, str):
        return tokenize_text(tokenizer, example, max_length)
    return tokenize_for_training(tokenizer, example, max_length)


def prompt_and_reference(messages: list[Message]) -> tuple[list[Message], str]:
    """Splits a conversation at its last assistant turn: what the model sees, what it should say."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]
