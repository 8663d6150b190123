"""Loss masking through the chat template, on the tiny test tokenizer."""

from __future__ import annotations

from tunewright.core.chat import IGNORE_INDEX, end_of_turn_tokens, tokenize_for_training


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
