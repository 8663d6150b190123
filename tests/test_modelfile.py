"""The Ollama template must render conversations exactly as the model's own chat template."""

from __future__ import annotations

import pytest

from tunewright.core.chat import render
from tunewright.serve.modelfile import CHATML_TEMPLATE, modelfile_text, ollama_template, render_like_ollama

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c\nd"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_ollama_rendering_matches_the_jinja_template(tiny_tokenizer, messages):
    template = ollama_template(tiny_tokenizer)
    assert render_like_ollama(template, messages) == render(tiny_tokenizer, messages, generation_prompt=True)


def test_modelfile_has_from_template_system_and_a_stop_per_end_of_turn_token(tiny_tokenizer):
    template = ollama_template(tiny_tokenizer)
    text = modelfile_text("./model.gguf", template, num_ctx=512)
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert f'TEMPLATE """{CHATML_TEMPLATE}"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    assert "PARAMETER num_ctx 512" in lines


def test_unknown_template_families_are_refused(tiny_tokenizer):
    from tunewright.core.errors import FailedPrecondition

    original = tiny_tokenizer.chat_template
    tiny_tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    try:
        with pytest.raises(FailedPrecondition):
            ollama_template(tiny_tokenizer)
    finally:
        tiny_tokenizer.chat_template = original
