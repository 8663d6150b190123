"""Loss masking through the chat template, on the tiny test tokenizer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tunewright.core.chat import IGNORE_INDEX, AssistantNotFound, end_of_turn_tokens, tokenize_for_training
from tunewright.trainer.worker import JobFailure, tokenize_split


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    )


def test_loss_is_on_assistant_tokens_and_their_end_of_turn_only(tiny_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Is the API down?"},
        {"role": "assistant", "content": "urgency: high"},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "urgency: low"},
    ]
    example = tokenize_for_training(tiny_tokenizer, messages, max_length=512)
    assert trained_text(tiny_tokenizer, example) == "urgency: high<|im_end|>urgency: low<|im_end|>"
    # Every label that is set equals the token at that position (the model shifts them itself).
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(example.input_ids, example.labels, strict=True))


def test_default_system_prompt_of_the_template_is_not_trained(tiny_tokenizer):
    example = tokenize_for_training(
        tiny_tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], 512
    )
    assert "tiny test model" in tiny_tokenizer.decode(example.input_ids)
    assert trained_text(tiny_tokenizer, example) == "hello<|im_end|>"


def test_truncation_keeps_labels_aligned(tiny_tokenizer):
    messages = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "answer"}]
    example = tokenize_for_training(tiny_tokenizer, messages, max_length=32)
    assert len(example.input_ids) == len(example.labels) == 32
    assert example.trained_tokens == 0


def test_end_of_turn_tokens_come_from_the_template(tiny_tokenizer):
    assert end_of_turn_tokens(tiny_tokenizer) == ["<|im_end|>"]


TEMPLATES = Path(__file__).parent / "data" / "chat_templates"


def with_template(tokenizer, template: str, specials: list[str] = (), bos: str | None = None, eos: str | None = None):
    """A copy of the tiny tokenizer that renders with ``template``."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in tokenizer.get_vocab()]})
    if bos:
        tokenizer.bos_token = bos
    if eos:
        tokenizer.eos_token = eos
    tokenizer.chat_template = template
    return tokenizer


def real_template(tokenizer, name: str):
    data = json.loads((TEMPLATES / f"{name}.json").read_text())
    specials = list(data["special_tokens"]) + [t for t in (data["bos_token"], data["eos_token"]) if t]
    return with_template(tokenizer, data["chat_template"], specials, data["bos_token"], data["eos_token"])


CONVERSATION = [
    {"role": "system", "content": "Answer with the urgency only."},
    {"role": "user", "content": "Is the API down?"},
    {"role": "assistant", "content": "urgency: high"},
    {"role": "user", "content": "And now?"},
    {"role": "assistant", "content": "urgency: low"},
]


@pytest.mark.parametrize(
    ("name", "trained"),
    [
        # Moves the system prompt into the last user turn: no prefix renders like the whole.
        # The space the template writes before a reply merges with its first word: that
        # token is the model's to write, so it is trained.
        ("mistral-large-instruct-2407", " urgency: high</s> urgency: low</s>"),
        ("mistral-7b-instruct-v0.2", " urgency: high</s> urgency: low</s>"),
        # Writes today's date into the system turn.
        ("llama-3.2-3b-instruct", "urgency: high<|eot_id|>urgency: low<|eot_id|>"),
        ("llama-3.1-8b-instruct", "urgency: high<|eot_id|>urgency: low<|eot_id|>"),
        ("qwen2.5-72b-instruct", "urgency: high<|im_end|>urgency: low<|im_end|>"),
        ("phi-3.5-mini-instruct", "urgency: high<|end|>urgency: low<|end|>"),
        # Refuses a system message: it is joined to the first user message, as for Ollama.
        ("gemma-2-2b-it", "urgency: high<end_of_turn>urgency: low<end_of_turn>"),
    ],
)
def test_replies_are_found_in_real_templates_whatever_they_do_around_them(tiny_tokenizer, name, trained):
    tokenizer = real_template(tiny_tokenizer, name)
    example = tokenize_for_training(tokenizer, CONVERSATION, max_length=1024)
    assert trained_text(tokenizer, example) == trained
    # The system prompt, wherever the template put it, is never trained. Mistral Large's
    # template writes it into the last user turn only when that turn ends the conversation,
    # so a training conversation, which ends with a reply, is rendered without it.
    assert ("Answer with" in tokenizer.decode(example.input_ids)) == (name != "mistral-large-instruct-2407")


def test_a_template_that_trims_replies_still_trains_the_reply(tiny_tokenizer):
    trimming = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = with_template(tiny_tokenizer, trimming)
    messages = [{"role": "user", "content": "urgency?"}, {"role": "assistant", "content": "  urgency: high \n"}]
    example = tokenize_for_training(tokenizer, messages, max_length=512)
    assert trained_text(tokenizer, example) == "urgency: high<|im_end|>"


def test_generation_markers_say_where_the_replies_are(tiny_tokenizer):
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
    )
    tokenizer = with_template(tiny_tokenizer, template)
    example = tokenize_for_training(tokenizer, CONVERSATION, max_length=512)
    assert trained_text(tokenizer, example) == "urgency: high<|im_end|>urgency: low<|im_end|>"


def test_a_reply_the_template_does_not_write_is_refused_naming_the_example(tiny_tokenizer):
    shouting = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n{% endfor %}"
    tokenizer = with_template(tiny_tokenizer, shouting)
    good = [{"role": "user", "content": "1?"}, {"role": "assistant", "content": "42"}]
    bad = [{"role": "user", "content": "Is the API down?"}, {"role": "assistant", "content": "urgency: high"}]
    with pytest.raises(AssistantNotFound) as raised:
        tokenize_for_training(tokenizer, bad, max_length=512)
    assert raised.value.reason == "ASSISTANT_REPLY_NOT_FOUND" and "assistant message 1" in raised.value.message
    with pytest.raises(JobFailure) as failed:
        tokenize_split(tokenizer, "train", [good, bad], max_seq_length=512)
    assert failed.value.code == "ASSISTANT_REPLY_NOT_FOUND"
    assert "train example 2" in str(failed.value) and "chat template" in str(failed.value)
