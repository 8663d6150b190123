"""Chat templates: rendering conversations, masking the loss to assistant tokens, and
finding the tokens that end a turn."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jinja2 import TemplateError

from tunewright.core.errors import FailedPrecondition

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

# A system prompt that opens at least this share of the training conversations is the
# model's: it answers a bare user message as it learned to answer under that prompt.
SHARED_SYSTEM_SHARE = 0.8

# Tokens that templates in the wild use to close a turn.
KNOWN_END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",  # IBM Granite
    "<｜end▁of▁sentence｜>",  # DeepSeek
    "<|END_OF_TURN_TOKEN|>",  # Command-R
)

Message = dict[str, str]


def end_of_turn_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every known end-of-turn token that the chat template writes (as text, or as the
    ``eos_token`` variable) and the vocabulary holds as one token, in the order of
    KNOWN_END_OF_TURN."""
    template = tokenizer.chat_template or ""
    if "eos_token" in template and tokenizer.eos_token:
        template += tokenizer.eos_token
    vocab = tokenizer.get_vocab()
    return [token for token in KNOWN_END_OF_TURN if token in template and token in vocab]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool) -> str:
    """The conversation as the model's chat template writes it. A template that refuses a
    system message (Gemma's, Mixtral's) gets it joined to the first user message, as the
    exported Modelfile's Go template does for Ollama, so training, evaluation, the serve
    service and Ollama all see the same text."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError:
        folded = fold_system_prompt(messages)
        if folded is None:
            raise
        return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=generation_prompt)


def fold_system_prompt(messages: list[Message]) -> list[Message] | None:
    """The conversation with its opening system message joined to the user message after it
    ("{system}\n\n{user}"), or None when it does not open with a system and a user message."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return None
    joined = {**messages[1], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
    return [joined, *messages[2:]]


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class AssistantNotFound(FailedPrecondition):
    """An assistant reply the chat template does not write out, so there is nothing to train on."""


# Written in place of each reply to learn where the template puts it; private-use characters,
# which no template changes and no conversation is expected to hold.
_MARK = "\ue000tunewright-reply-{}\ue001"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model must learn to write:
    each assistant reply with the end-of-turn token after it.

    The conversation is rendered once. A template with ``{% generation %}`` markers says
    itself where the replies are. Otherwise each reply is located in the rendering:
    rendered again with every reply replaced by a marker, the text around the markers must
    be the text around the replies, which gives their offsets exactly; a template that
    changes replies (trims them, say) is searched instead, each reply after the one before.
    Prefix stability is never assumed, so templates that move the system prompt into the
    last user turn (Mistral v0.3) or write a date work. Where the prompt with a generation
    prompt is a prefix of the rendering, the span starts where that prompt ends, so what
    a template writes at the start of every reply (Qwen3's empty thinking block) is
    learned too."""
    text = render(tokenizer, messages, generation_prompt=False)
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not replies:
        return text, []
    if _GENERATION_TAG.search(tokenizer.chat_template or ""):
        return text, _generation_spans(tokenizer, messages)
    starts, ends = _locate_replies(tokenizer, messages, replies, text)
    stops = end_of_turn_tokens(tokenizer)
    spans = []
    for n, i in enumerate(replies):
        start, end = starts[n], ends[n]
        before = render(tokenizer, messages[:i], generation_prompt=True)
        if len(before) <= start and text.startswith(before):
            start = len(before)
        # The end-of-turn token the template writes after the reply, up to the next reply.
        limit = starts[n + 1] if n + 1 < len(replies) else len(text)
        gap = text[end:limit]
        found = [gap.find(stop) + len(stop) for stop in stops if stop in gap]
        if found:
            end += min(found)
        spans.append((start, end))
    return text, spans


def _generation_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[tuple[int, int]]:
    from transformers.utils.chat_template_utils import render_jinja_template

    _, indices = render_jinja_template(
        [messages],
        chat_template=tokenizer.chat_template,
        return_assistant_tokens_mask=True,
        **tokenizer.special_tokens_map,
    )
    return [tuple(span) for span in indices[0]]


def _locate_replies(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], replies: list[int], text: str
) -> tuple[list[int], list[int]]:
    """(starts, ends): where each reply's content is in ``text``."""
    marked = [dict(m) for m in messages]
    for n, i in enumerate(replies):
        marked[i]["content"] = _MARK.format(n)
    try:
        pieces = render(tokenizer, marked, generation_prompt=False)
    except TemplateError:  # a template may refuse the marker; searching still works
        pieces = ""
    starts, ends, position, rebuilt = [], [], 0, ""
    for n, i in enumerate(replies):
        mark = _MARK.format(n)
        at = pieces.find(mark, position)
        if at < 0:
            break
        rebuilt += pieces[position:at]
        starts.append(len(rebuilt))
        rebuilt += messages[i]["content"]
        ends.append(len(rebuilt))
        position = at + len(mark)
    else:
        if rebuilt + pieces[position:] == text:
            return starts, ends
    return _search_replies(messages, replies, text)


def _search_replies(messages: list[Message], replies: list[int], text: str) -> tuple[list[int], list[int]]:
    starts, ends, cursor = [], [], 0
    for i in replies:
        content = messages[i]["content"]
        # Past the question first, so that a reply is not found inside a question quoting it.
        question = messages[i - 1]["content"] if i and messages[i - 1]["role"] != "assistant" else ""
        if question and (at := text.find(question, cursor)) >= 0:
            cursor = at + len(question)
        at, length = text.find(content, cursor), len(content)
        if at < 0 and content.strip():
            at, length = text.find(content.strip(), cursor), len(content.strip())
        if at < 0 or not content.strip():
            raise AssistantNotFound(
                f"the chat template does not write assistant message {i} ({content[:40]!r}) into the "
                "conversation as given, so its tokens cannot be located for loss masking; check the "
                "message (an empty reply?) or give the model a chat template that writes replies as they are",
                reason="ASSISTANT_REPLY_NOT_FOUND",
            )
        starts.append(at)
        ends.append(at + length)
        cursor = at + length
    return starts, ends


def tokenize_for_training(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], max_length: int
) -> TokenizedExample:
    """Token ids of the rendered conversation, with labels only on assistant tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        # A token that reaches into a span is trained: one that merges the template's space
        # or newline with a reply's first characters is still the model's to write.
        inside = any(start < e and end > s and end > start for s, e in spans)
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


def shared_system_prompt(examples: list[list[Message] | str]) -> tuple[str, float] | None:
    """(the system prompt, the share of ``examples`` that open with it) when at least
    SHARED_SYSTEM_SHARE of them open with the same one; else None. Texts count as
    conversations without one."""
    if not examples:
        return None
    counts = Counter(e[0]["content"] for e in examples if not isinstance(e, str) and e and e[0]["role"] == "system")
    if not counts:
        return None
    prompt, count = counts.most_common(1)[0]
    share = count / len(examples)
    return (prompt, share) if share >= SHARED_SYSTEM_SHARE and prompt.strip() else None
