"""Ollama must render a conversation exactly as the model's own chat template does.

The Jinja side is the real chat template of each model in tests/data/chat_templates,
rendered by transformers; the Ollama side is the exported Go template, rendered by Go's own
text/template with Ollama's rules (tests/go/render). The two must match byte for byte, except
for the BOS text that the Jinja template writes and llama.cpp adds as a token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jinja2 import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from tunewright.core.chat import KNOWN_END_OF_TURN, render
from tunewright.core.errors import FailedPrecondition
from tunewright.core.modelfile import (
    OllamaTemplate,
    modelfile_text,
    ollama_template,
    render_like_ollama,
)

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

# The chat format each model's template must be recognised as; None: exported without a Go template.
FAMILIES = {
    "smollm2-135m-instruct": "chatml",
    "qwen2-7b-instruct": "chatml",
    "qwen2.5-72b-instruct": "chatml",
    # ChatML with think blocks: renders as ChatML, but drops the reasoning from earlier replies.
    "qwen3-0.6b": "chatml",
    "meta-llama-3-8b-instruct": "llama3",
    "llama-3.1-8b-instruct": "llama3",
    # Writes today's date into every prompt, which a Go template cannot compute.
    "llama-3.2-3b-instruct": None,
    "mixtral-8x7b-instruct-v0.1": "mistral",
    "mistral-7b-instruct-v0.2": "mistral",
    "mistral-large-instruct-2407": "mistral",
    "gemma-2-2b-it": "gemma",
    "gemma-3-1b-it": "gemma",
    "phi-3.5-mini-instruct": "phi3",
    # The first Phi-3 template: leaves system messages out.
    "phi-3-mini-4k-instruct": "phi3",
    "tinyllama-1.1b-chat-v1.0": "zephyr",
    "granite-3.0-8b-instruct": "granite",
    # Writes today's date into its default system prompt.
    "granite-3.3-2b-instruct": None,
    "granite-4.0": "granite",
    "olmo-2-1124-13b-instruct": "olmo2",
    "deepseek-r1-distill-llama-8b": "deepseek",
    "deepseek-v3.1": "deepseek",
    "c4ai-command-r-plus": "command-r",
}
TRANSLATED = [name for name, family in FAMILIES.items() if family]

# These templates raise for any system message (Gemma: "System role not supported";
# Mixtral's: "Only user and assistant roles are supported!"), so there is no Jinja rendering
# to match; the Go template's choice for them is tested on its own below.
REFUSES_SYSTEM = {"gemma-2-2b-it", "mixtral-8x7b-instruct-v0.1"}

SYSTEM = {"role": "system", "content": "Be terse."}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello"}],
    "system": [SYSTEM, {"role": "user", "content": "Hello"}],
    "multi-turn": [
        {"role": "user", "content": "Is checkout down?"},
        {"role": "assistant", "content": "Yes, since 09:00."},
        {"role": "user", "content": "For whom?"},
    ],
    "system multi-turn": [
        SYSTEM,
        {"role": "user", "content": "Is checkout down?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Since when?"},
        {"role": "assistant", "content": "09:00."},
        {"role": "user", "content": "For whom?"},
    ],
    "newlines": [
        {"role": "user", "content": "line one\nline two\n\nafter a blank line"},
        {"role": "assistant", "content": "a\nb"},
        {"role": "user", "content": "c\r\nd"},
    ],
    "quotes and backslashes": [
        {"role": "system", "content": "Quote \"exactly\" and don't 'paraphrase'."},
        {"role": "user", "content": 'He said "hi", it\'s C:\\temp\\new and \\n is not a newline; {{ .Content }}'},
    ],
    "non-ASCII": [
        {"role": "user", "content": "Café crème, 日本語のテキスト, emoji 🙂🎉"},
        {"role": "assistant", "content": "Très bien — 了解しました ✅"},
        {"role": "user", "content": "Ünïcödé again: ß, ø, 한국어"},
    ],
}


class TemplateTokenizer:
    """The parts of a Hugging Face tokenizer the exporter uses, for a template stored as data:
    transformers renders the Jinja template, as ``apply_chat_template`` would."""

    def __init__(self, data: dict) -> None:
        self.chat_template = data["chat_template"]
        self.bos_token = data["bos_token"]
        self.eos_token = data["eos_token"]
        self.special_tokens = data["special_tokens"]

    def get_vocab(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.special_tokens)}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize
        special = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        rendered, _ = render_jinja_template(
            [messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            **{key: value for key, value in special.items() if value is not None},
        )
        return rendered[0]


def load(name: str) -> TemplateTokenizer:
    return TemplateTokenizer(json.loads((TEMPLATES / f"{name}.json").read_text()))


def test_every_stored_template_is_tested():
    assert sorted(p.stem for p in TEMPLATES.glob("*.json")) == sorted(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_chat_format_is_recognised_by_rendering(name):
    template = ollama_template(load(name))
    assert template.family == FAMILIES[name], template.note
    assert (template.template is None) == (template.family is None)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("name", TRANSLATED)
def test_go_template_renders_like_the_jinja_template(name, conversation, go_render):
    tokenizer, messages = load(name), CONVERSATIONS[conversation]
    template = ollama_template(tokenizer)
    if name in REFUSES_SYSTEM and messages[0]["role"] == "system":
        # The model's own template refuses the conversation; render() joins the system
        # message to the first user message, as the Go template does.
        with pytest.raises(TemplateError):
            tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    jinja = render(tokenizer, messages, generation_prompt=True)
    go = go_render(template.template, messages, template.default_system)
    assert jinja == (template.bos_text or "") + go
    assert render_like_ollama(template, messages) == go


@pytest.mark.parametrize("name", ["gemma-2-2b-it", "mixtral-8x7b-instruct-v0.1"])
def test_a_system_message_joins_the_first_user_message_where_the_template_refuses_it(name, go_render):
    template = ollama_template(load(name))
    go = go_render(template.template, CONVERSATIONS["system multi-turn"], None)
    first_user = go.index("Is checkout down?")
    assert go.index("Be terse.\n\n") == first_user - len("Be terse.\n\n")
    assert go.count("Be terse.") == 1
    assert "refuses system messages" in template.note


@pytest.mark.parametrize(
    "name, default_system",
    [
        ("smollm2-135m-instruct", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
        ("qwen2.5-72b-instruct", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
        ("meta-llama-3-8b-instruct", None),
        ("gemma-2-2b-it", None),
        ("granite-4.0", "You are a helpful assistant. Please ensure responses are professional, accurate, and safe."),
        ("granite-3.0-8b-instruct", None),
        ("deepseek-r1-distill-llama-8b", None),
        ("c4ai-command-r-plus", None),
    ],
)
def test_the_default_system_prompt_is_what_the_template_writes_without_one(name, default_system):
    assert ollama_template(load(name)).default_system == default_system


@pytest.mark.parametrize("name", TRANSLATED)
def test_the_go_template_leaves_out_the_bos_the_engine_adds(name):
    tokenizer = load(name)
    template = ollama_template(tokenizer)
    jinja = render(tokenizer, CONVERSATIONS["multi-turn"], generation_prompt=True)
    bos = tokenizer.bos_token
    # SmolLM2's BOS is <|im_start|>, which ChatML writes as a turn marker, not as a BOS.
    if bos and jinja.startswith(bos) and template.family != "chatml":
        assert template.bos_text == bos
        # OLMo 2's BOS is also its EOS, which the Go template writes after each reply.
        assert not render_like_ollama(template, CONVERSATIONS["multi-turn"]).startswith(bos)
    else:
        assert template.bos_text is None


@pytest.mark.parametrize("name", FAMILIES)
def test_stops_hold_every_end_of_turn_token_the_template_writes(name):
    tokenizer = load(name)
    template = ollama_template(tokenizer)
    written = render(tokenizer, [*CONVERSATIONS["multi-turn"], {"role": "assistant", "content": "Everyone."}], False)
    end_of_turn = [t for t in KNOWN_END_OF_TURN if t in written and t in tokenizer.get_vocab()]
    assert end_of_turn, "every stored template ends a reply with an end-of-turn token"
    assert set(end_of_turn) <= set(template.stops)


@pytest.mark.parametrize(
    "name, stops",
    [
        ("smollm2-135m-instruct", ["<|im_start|>", "<|im_end|>"]),
        ("meta-llama-3-8b-instruct", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
        ("mistral-large-instruct-2407", ["[INST]", "[/INST]", "</s>"]),
        ("gemma-2-2b-it", ["<start_of_turn>", "<end_of_turn>"]),
        ("phi-3.5-mini-instruct", ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"]),
        ("tinyllama-1.1b-chat-v1.0", ["<|system|>", "<|user|>", "<|assistant|>", "</s>"]),
        ("granite-4.0", ["<|start_of_role|>", "<|end_of_text|>"]),
        ("olmo-2-1124-13b-instruct", ["<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"]),
        ("deepseek-v3.1", ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]),
        ("c4ai-command-r-plus", ["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"]),
    ],
)
def test_stops_add_the_turn_markers_ollama_ships(name, stops):
    assert ollama_template(load(name)).stops == stops


def test_chatml_written_with_other_whitespace_is_still_chatml():
    smollm2 = load("smollm2-135m-instruct")
    reformatted = load("smollm2-135m-instruct")
    reformatted.chat_template = """
{%- for message in messages -%}
    {%- if loop.first and messages[0]['role'] != 'system' -%}
        {{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' -}}
    {%- endif -%}
    {{- '<|im_start|>' ~ message.role ~ '\\n' ~ message.content ~ '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""
    assert reformatted.chat_template != smollm2.chat_template
    for messages in CONVERSATIONS.values():
        assert render(reformatted, messages, True) == render(smollm2, messages, True)
    assert ollama_template(reformatted) == ollama_template(smollm2)


def test_a_template_of_no_known_format_is_exported_without_a_go_template():
    tokenizer = load("smollm2-135m-instruct")
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}"
    template = ollama_template(tokenizer)
    assert template.template is None and template.family is None and template.default_system is None
    assert "Jinja template embedded in the GGUF" in template.note
    assert template.stops == ["<|im_end|>"]
    text = modelfile_text("./model.gguf", template)
    assert "TEMPLATE" not in text and "SYSTEM" not in text
    assert text.splitlines() == ["FROM ./model.gguf", 'PARAMETER stop "<|im_end|>"']
    with pytest.raises(ValueError):
        render_like_ollama(template, CONVERSATIONS["user"])


@pytest.mark.parametrize(
    "name, end_of_turn", [("llama-3.2-3b-instruct", "<|eot_id|>"), ("granite-3.3-2b-instruct", "<|end_of_text|>")]
)
def test_a_template_that_dates_the_prompt_today_is_left_to_ollama(name, end_of_turn):
    template = ollama_template(load(name))
    assert template.template is None
    assert "today's date" in template.note
    assert end_of_turn in template.stops


def test_a_template_that_leaves_system_messages_out_is_matched_and_says_so(go_render):
    tokenizer = load("phi-3-mini-4k-instruct")
    template = ollama_template(tokenizer)
    messages = CONVERSATIONS["system multi-turn"]
    go = go_render(template.template, messages, template.default_system)
    assert "Be terse." not in go and "<|system|>" not in go
    assert render(tokenizer, messages, generation_prompt=True) == template.bos_text + go
    assert "leaves system messages out" in template.note


REASONING_REPLY = "<think>\nThe status page says so.\n</think>\n\nYes, since 09:00."


@pytest.mark.parametrize("name", ["qwen3-0.6b", "deepseek-r1-distill-llama-8b", "deepseek-v3.1"])
def test_reasoning_dropped_from_earlier_replies_is_the_known_difference(name, go_render):
    """A Go template cannot cut a reply's <think> block out, as these templates do; the note says so."""
    tokenizer = load(name)
    template = ollama_template(tokenizer)
    messages = [*CONVERSATIONS["multi-turn"]]
    messages[1] = {"role": "assistant", "content": REASONING_REPLY}
    jinja = render(tokenizer, messages, generation_prompt=True)
    go = go_render(template.template, messages, template.default_system)
    assert "The status page says so." not in jinja and "The status page says so." in go
    assert "drops the reasoning" in template.note
    # Without reasoning in the reply, the two agree.
    messages[1] = {"role": "assistant", "content": "Yes, since 09:00."}
    go = go_render(template.template, messages, template.default_system)
    assert render(tokenizer, messages, generation_prompt=True) == (template.bos_text or "") + go


def test_a_template_that_keeps_one_of_several_system_messages_says_so(go_render):
    """DeepSeek-R1 writes only the last system message; Ollama's .System holds them all."""
    tokenizer = load("deepseek-r1-distill-llama-8b")
    template = ollama_template(tokenizer)
    messages = [
        *CONVERSATIONS["system multi-turn"][:3],
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Why?"},
    ]
    jinja = render(tokenizer, messages, generation_prompt=True)
    go = go_render(template.template, messages, template.default_system)
    assert "Be terse." not in jinja and go.startswith("Be terse.\n\nBe kind.")
    assert "more than one system message" in template.note
    assert "more than one system message" not in ollama_template(load("deepseek-v3.1")).note


@pytest.mark.parametrize("name", ["meta-llama-3-8b-instruct", "gemma-2-2b-it", "c4ai-command-r-plus"])
def test_templates_that_trim_contents_say_so(name, go_render):
    """Ollama's templates cannot trim, so surrounding whitespace is the one known difference."""
    tokenizer = load(name)
    template = ollama_template(tokenizer)
    messages = [{"role": "user", "content": "  padded  "}]
    jinja = render(tokenizer, messages, generation_prompt=True)
    go = go_render(template.template, messages, template.default_system)
    assert jinja != (template.bos_text or "") + go
    assert jinja.replace("padded", "  padded  ") == (template.bos_text or "") + go
    assert "trims message contents" in template.note


def test_modelfile_has_from_template_system_and_a_json_quoted_stop_per_token():
    template = ollama_template(load("smollm2-135m-instruct"))
    text = modelfile_text("./model.gguf", template, num_ctx=512)
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert f'TEMPLATE """{template.template}"""' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines
    assert lines[-1] == "PARAMETER num_ctx 512"
    quoted = OllamaTemplate(template=None, default_system=None, stops=['say "stop"\\'])
    assert modelfile_text(".", quoted).splitlines()[1] == 'PARAMETER stop "say \\"stop\\"\\\\"'


@pytest.mark.parametrize("text", ['a """ b', 'ends with a quote"'])
def test_text_a_modelfile_cannot_quote_is_refused(text):
    with pytest.raises(FailedPrecondition):
        modelfile_text(".", OllamaTemplate(template=text, default_system=None, stops=[]))
    with pytest.raises(FailedPrecondition):
        modelfile_text(".", OllamaTemplate(template=None, default_system=text, stops=[]))
