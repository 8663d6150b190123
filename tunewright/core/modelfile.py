"""Ollama's TEMPLATE, SYSTEM and stops for an exported model, worked out from the model's own
Jinja chat template.

Ollama renders a chat with a Go ``text/template`` and stops generating at its stop strings; a
Hugging Face tokenizer carries a Jinja template instead. Here the Jinja template is rendered
on a few probe conversations, and each chat format tunewright knows is checked against what
it produced: ChatML (Qwen 2 to 3, SmolLM2), Llama 3, Mistral ``[INST]``, Gemma, Phi-3 (with
the early Phi-3 templates that leave system messages out), Zephyr (TinyLlama), Granite
(IBM Granite 3 and 4), OLMo 2 (and Tülu 3), DeepSeek (V3, R1 and its distills) and
Command-R. The format whose rendering equals the Jinja rendering of every probe is the
model's, and its Go template is written with what the probes revealed (the default system
prompt, Mistral's spacing, Llama 3.1's system preamble, the EOS text that closes Zephyr's
turns and OLMo 2's replies, what DeepSeek writes after ``<｜Assistant｜>``).

Invariants:
- A format is recognised by rendering, never by the model's name or the template's text.
- For every conversation the Jinja template accepts, Ollama's rendering of the Go template
  (SYSTEM prepended when the conversation does not start with a system message, then the
  template executed once over ``.Messages``) equals the Jinja rendering with
  ``add_generation_prompt=True`` after ``bos_text``: llama.cpp adds the BOS token itself, so
  a Go template that wrote the BOS text too would give the model two.
- Message contents go through as they are: Ollama's templates have no trim, so a template
  that trims contents matches only contents without surrounding whitespace (``note`` says so).
  Likewise for what else a Go template cannot do and a further probe shows the template
  doing: dropping the reasoning (``<think>...</think>``) from earlier replies (Qwen3,
  DeepSeek-R1) and keeping only one of several system messages; ``note`` says so.
- A template that matches no known format gets no Go template (``template is None``): Ollama
  then renders the Jinja template embedded in the GGUF, and ``note`` says why. So does one
  that writes today's date (Llama 3.2, Granite 3.3), which a Go template cannot compute.
- Stops hold every end-of-turn token the template writes and the vocabulary holds, plus the
  turn markers Ollama ships as stops for the format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from jinja2 import TemplateError

from tunewright.core.chat import KNOWN_END_OF_TURN, Message
from tunewright.core.errors import FailedPrecondition

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ChatFormat(Protocol):
    """A chat format Ollama can render: its Go template and the same rendering in Python."""

    name: str
    title: str
    # The turn markers Ollama ships as stops for this format.
    stops: tuple[str, ...]

    def go_template(self) -> str: ...

    def render(self, system: str, messages: list[Message]) -> str:
        """What the Go template renders for Ollama's collated ``messages`` and ``.System``."""
        ...


def _go_text(text: str) -> str:
    """``text`` as literal output of a Go template."""
    return f"{{{{ {json.dumps(text)} }}}}" if "{{" in text else text


@dataclass(frozen=True)
class ChatML:
    name = "chatml"
    title = "ChatML"
    stops = ("<|im_start|>", "<|im_end|>")

    def go_template(self) -> str:
        # As Ollama ships it.
        return (
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
        )

    def render(self, system: str, messages: list[Message]) -> str:
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"


@dataclass(frozen=True)
class Llama3:
    name = "llama3"
    title = "Llama 3"
    stops = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    # Written before the first system message's content (Llama 3.1: "Cutting Knowledge Date: ...").
    preamble: str = ""
    # The template writes a system turn (holding only the preamble) when the chat has none.
    system_turn_always: bool = False

    @staticmethod
    def header(role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    def go_template(self) -> str:
        head = ""
        if self.system_turn_always:
            head = (
                '{{- if not (and .Messages (eq (index .Messages 0).Role "system")) }}'
                f"{self.header('system')}{_go_text(self.preamble)}<|eot_id|>{{{{ end }}}}"
            )
        if self.preamble:
            first_system = f'{{{{ if and (eq $i 0) (eq .Role "system") }}}}{_go_text(self.preamble)}{{{{ end }}}}'
            turns = "{{- range $i, $_ := .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n" + first_system
        else:
            turns = "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        return head + turns + "{{ .Content }}<|eot_id|>{{ end }}" + self.header("assistant")

    def render(self, system: str, messages: list[Message]) -> str:
        starts_with_system = bool(messages) and messages[0]["role"] == "system"
        text = ""
        if self.system_turn_always and not starts_with_system:
            text += self.header("system") + self.preamble + "<|eot_id|>"
        for i, m in enumerate(messages):
            preamble = self.preamble if i == 0 and m["role"] == "system" else ""
            text += self.header(m["role"]) + preamble + m["content"] + "<|eot_id|>"
        return text + self.header("assistant")


@dataclass(frozen=True)
class Mistral:
    """``[INST]`` turns, with the spacing each Mistral template version uses, and the system
    message written into one user message (Mistral's templates have no system turn)."""

    name = "mistral"
    title = "Mistral [INST]"
    stops = ("[INST]", "[/INST]")
    user_open: str
    user_close: str
    assistant_open: str
    assistant_close: str
    # v1 templates put the system message before the first user message, v3 before the last.
    system_joins: Literal["first", "last"]

    def go_template(self) -> str:
        if self.system_joins == "first":
            start, joins, done = "{{- $first := true }}", "$first", "{{ $first = false }}"
        else:
            start, joins, done = "", "(eq (len (slice $.Messages $i)) 1)", ""
        return (
            f'{start}{{{{- range $i, $_ := .Messages }}}}{{{{ if eq .Role "user" }}}}{_go_text(self.user_open)}'
            f"{{{{ if and $.System {joins} }}}}{{{{ $.System }}}}\n\n{{{{ end }}}}{{{{ .Content }}}}"
            f'{_go_text(self.user_close)}{done}{{{{ else if eq .Role "assistant" }}}}{_go_text(self.assistant_open)}'
            f"{{{{ .Content }}}}{_go_text(self.assistant_close)}{{{{ end }}}}{{{{ end }}}}"
        )

    def render(self, system: str, messages: list[Message]) -> str:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        joins_at = users[0] if self.system_joins == "first" and users else len(messages) - 1
        text = ""
        for i, m in enumerate(messages):
            if m["role"] == "user":
                prefix = system + "\n\n" if system and i == joins_at else ""
                text += self.user_open + prefix + m["content"] + self.user_close
            elif m["role"] == "assistant":
                text += self.assistant_open + m["content"] + self.assistant_close
        return text


@dataclass(frozen=True)
class Gemma:
    """Gemma's turns. Gemma's templates refuse a system role; the system message goes into the
    first user turn, as Gemma 3's own template does."""

    name = "gemma"
    title = "Gemma"
    stops = ("<start_of_turn>", "<end_of_turn>")

    def go_template(self) -> str:
        return (
            '{{- $first := true }}{{- range .Messages }}{{ if eq .Role "user" }}<start_of_turn>user\n'
            "{{ if and $.System $first }}{{ $.System }}\n\n{{ end }}{{ .Content }}<end_of_turn>\n{{ $first = false }}"
            '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}'
            "<start_of_turn>model\n"
        )

    def render(self, system: str, messages: list[Message]) -> str:
        text, first = "", True
        for m in messages:
            if m["role"] == "user":
                prefix = system + "\n\n" if system and first else ""
                text += f"<start_of_turn>user\n{prefix}{m['content']}<end_of_turn>\n"
                first = False
            elif m["role"] == "assistant":
                text += f"<start_of_turn>model\n{m['content']}<end_of_turn>\n"
        return text + "<start_of_turn>model\n"


@dataclass(frozen=True)
class Phi3:
    """Phi-3's turns. The first Phi-3 templates (Phi-3 mini and medium until mid 2024) write
    only user and assistant turns, leaving system messages out."""

    name = "phi3"
    title = "Phi-3"
    stops = ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
    drops_system: bool = False

    def go_template(self) -> str:
        turn = "<|{{ .Role }}|>\n{{ .Content }}<|end|>\n"
        if self.drops_system:
            turn = f'{{{{ if or (eq .Role "user") (eq .Role "assistant") }}}}{turn}{{{{ end }}}}'
        return f"{{{{- range .Messages }}}}{turn}{{{{ end }}}}<|assistant|>\n"

    def render(self, system: str, messages: list[Message]) -> str:
        kept = [m for m in messages if not self.drops_system or m["role"] in ("user", "assistant")]
        return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in kept) + "<|assistant|>\n"


@dataclass(frozen=True)
class Zephyr:
    """Zephyr's turns (TinyLlama chat, StableLM Zephyr): Phi-3's shape with the EOS token
    (``</s>`` for TinyLlama) closing every turn."""

    name = "zephyr"
    title = "Zephyr"
    # As Ollama ships them; the EOS token is a stop as an end-of-turn token.
    stops = ("<|system|>", "<|user|>", "<|assistant|>")
    end: str

    def go_template(self) -> str:
        return f"{{{{- range .Messages }}}}<|{{{{ .Role }}}}|>\n{{{{ .Content }}}}{_go_text(self.end)}\n{{{{ end }}}}<|assistant|>\n"

    def render(self, system: str, messages: list[Message]) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}{self.end}\n" for m in messages) + "<|assistant|>\n"


@dataclass(frozen=True)
class Granite:
    """IBM Granite 3 and 4: ``<|start_of_role|>role<|end_of_role|>`` turns closed by
    ``<|end_of_text|>``."""

    name = "granite"
    title = "Granite"
    # Ollama ships no Granite 3 template; like ChatML's, the stops are the turn markers.
    stops = ("<|start_of_role|>", "<|end_of_text|>")

    def go_template(self) -> str:
        return (
            "{{- range .Messages }}<|start_of_role|>{{ .Role }}<|end_of_role|>{{ .Content }}<|end_of_text|>\n{{ end }}"
            "<|start_of_role|>assistant<|end_of_role|>"
        )

    def render(self, system: str, messages: list[Message]) -> str:
        turns = "".join(f"<|start_of_role|>{m['role']}<|end_of_role|>{m['content']}<|end_of_text|>\n" for m in messages)
        return turns + "<|start_of_role|>assistant<|end_of_role|>"


@dataclass(frozen=True)
class OLMo2:
    """OLMo 2 and Tülu 3: Zephyr's role markers, but only replies are closed, by the EOS token
    (``<|endoftext|>`` for OLMo 2); other turns end with a newline."""

    name = "olmo2"
    title = "OLMo 2"
    stops = ("<|system|>", "<|user|>", "<|assistant|>")
    reply_end: str

    def go_template(self) -> str:
        return (
            '{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}{{ if eq .Role "assistant" }}'
            f"{_go_text(self.reply_end)}{{{{ end }}}}\n{{{{ end }}}}<|assistant|>\n"
        )

    def render(self, system: str, messages: list[Message]) -> str:
        turns = "".join(
            f"<|{m['role']}|>\n{m['content']}{self.reply_end if m['role'] == 'assistant' else ''}\n" for m in messages
        )
        return turns + "<|assistant|>\n"


@dataclass(frozen=True)
class DeepSeek:
    """DeepSeek V3 and R1 (with its Llama and Qwen distills): the system prompt bare at the start,
    ``<｜User｜>`` and ``<｜Assistant｜>`` before each message, a reply closed by
    ``<｜end▁of▁sentence｜>``. What follows ``<｜Assistant｜>`` differs by version: R1 opens the
    generation prompt with ``<think>\\n``, V3.1 writes an empty ``<think></think>`` before every
    reply."""

    name = "deepseek"
    title = "DeepSeek"
    # As Ollama ships them (template/deepseek.json).
    stops = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
    user = "<｜User｜>"
    assistant = "<｜Assistant｜>"
    end = "<｜end▁of▁sentence｜>"
    # Written after <｜Assistant｜> before an earlier reply, and in the generation prompt.
    reply_open: str
    prompt_open: str

    def go_template(self) -> str:
        return (
            f'{{{{ .System }}}}{{{{- range .Messages }}}}{{{{ if eq .Role "user" }}}}{self.user}{{{{ .Content }}}}'
            f'{{{{ else if eq .Role "assistant" }}}}{self.assistant}{_go_text(self.reply_open)}{{{{ .Content }}}}{self.end}'
            f"{{{{ end }}}}{{{{ end }}}}{self.assistant}{_go_text(self.prompt_open)}"
        )

    def render(self, system: str, messages: list[Message]) -> str:
        text = system
        for m in messages:
            if m["role"] == "user":
                text += self.user + m["content"]
            elif m["role"] == "assistant":
                text += self.assistant + self.reply_open + m["content"] + self.end
        return text + self.assistant + self.prompt_open


@dataclass(frozen=True)
class CommandR:
    """Cohere's Command-R: each turn in ``<|START_OF_TURN_TOKEN|>`` and ``<|END_OF_TURN_TOKEN|>``,
    the role a token of its own (the assistant's is ``<|CHATBOT_TOKEN|>``)."""

    name = "command-r"
    title = "Command-R"
    # As Ollama ships them (template/command-r.json).
    stops = ("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>")
    role_tokens = (("system", "<|SYSTEM_TOKEN|>"), ("user", "<|USER_TOKEN|>"), ("assistant", "<|CHATBOT_TOKEN|>"))

    def go_template(self) -> str:
        # {{ if eq .Role "system" }}<turn>{{ else if eq .Role "user" }}<turn>...{{ end }}; other roles write nothing.
        turns = [
            f'eq .Role "{role}" }}}}<|START_OF_TURN_TOKEN|>{token}{{{{ .Content }}}}<|END_OF_TURN_TOKEN|>'
            for role, token in self.role_tokens
        ]
        branches = "{{ if " + "{{ else if ".join(turns) + "{{ end }}"
        return "{{- range .Messages }}" + branches + "{{ end }}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"

    def render(self, system: str, messages: list[Message]) -> str:
        tokens = dict(self.role_tokens)
        turns = "".join(
            f"<|START_OF_TURN_TOKEN|>{tokens[m['role']]}{m['content']}<|END_OF_TURN_TOKEN|>"
            for m in messages
            if m["role"] in tokens
        )
        return turns + "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"


_FORMATS = (ChatML, Llama3, Mistral, Gemma, Phi3, Zephyr, Granite, OLMo2, DeepSeek, CommandR)
_FORMAT_TITLES = ", ".join(f.title for f in _FORMATS)


@dataclass(frozen=True)
class OllamaTemplate:
    # Ollama's TEMPLATE; None: no Go template fits, Ollama renders the model's Jinja template.
    template: str | None
    # Ollama's SYSTEM: what the Jinja template writes when the chat has no system message.
    default_system: str | None
    stops: list[str]
    # The recognised chat format (the ``name`` of one in ``_FORMATS``: "chatml", "llama3", ...), or None.
    family: str | None = None
    # For people: what was recognised, what differs from the Jinja template, or why no template.
    note: str = ""
    # The BOS text the Jinja template writes before what the Go template renders.
    bos_text: str | None = None
    # The recognised format: renders in Python what Ollama renders (``render_like_ollama``).
    chat_format: ChatFormat | None = field(default=None, repr=False, compare=False)


def ollama_chat(default_system: str | None, messages: list[Message]) -> tuple[str, list[Message]]:
    """What Ollama gives the template for a chat: SYSTEM prepended when the chat does not start
    with a system message, consecutive messages of one role merged, and ``.System`` (every
    system message, joined)."""
    if default_system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    collated: list[Message] = []
    for m in messages:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {**collated[-1], "content": collated[-1]["content"] + "\n\n" + m["content"]}
        else:
            collated.append(dict(m))
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return system, collated


def render_like_ollama(template: OllamaTemplate, messages: list[Message]) -> str:
    """What Ollama renders for ``messages`` with this template (tests prove it with Go)."""
    if template.chat_format is None:
        raise ValueError("no Go template: Ollama renders the model's Jinja template")
    return template.chat_format.render(*ollama_chat(template.default_system, messages))


_SYSTEM = "tunewright probe: the system message"
_USER = "tunewright probe: a user message"
_ASSISTANT = "tunewright probe: an assistant reply"
_NEXT_USER = 'tunewright probe: a "second" user message\nover two lines'

_PROBES: dict[str, list[Message]] = {
    "user": [{"role": "user", "content": _USER}],
    "system+user": [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}],
    "turns": [
        {"role": "user", "content": _USER},
        {"role": "assistant", "content": _ASSISTANT},
        {"role": "user", "content": _NEXT_USER},
    ],
    "system+turns": [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": _USER},
        {"role": "assistant", "content": _ASSISTANT},
        {"role": "user", "content": _NEXT_USER},
    ],
}
_PADDED = [
    {"role": "user", "content": " tunewright padded user "},
    {"role": "assistant", "content": " tunewright padded reply "},
    {"role": "user", "content": _USER},
]
_REASONING = "tunewright probe: the reasoning"
# A reply as a reasoning model writes it, sent back in a later turn.
_THOUGHT = [
    {"role": "user", "content": _USER},
    {"role": "assistant", "content": f"<think>\n{_REASONING}\n</think>\n\n{_ASSISTANT}"},
    {"role": "user", "content": _NEXT_USER},
]
# System messages that Ollama's collation does not merge; ``.System`` holds them all.
_TWO_SYSTEMS = [
    {"role": "system", "content": _SYSTEM},
    {"role": "user", "content": _USER},
    {"role": "assistant", "content": _ASSISTANT},
    {"role": "system", "content": "tunewright probe: a later system message"},
    {"role": "user", "content": _NEXT_USER},
]


def _render_or_none(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool) -> str | None:
    # The template as it is, without render()'s joining of a refused system message: the
    # probes must see what the template refuses.
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError:  # raise_exception() in the template: it refuses this conversation
        return None


def _default_system(renders: dict[str, str | None]) -> str | None:
    """What the template writes in place of a system message when the chat has none: the
    rendering with a system message, with that message's text replaced, must give the
    rendering without one."""
    with_system, without = renders["system+user"], renders["user"]
    if with_system is None or without is None or _SYSTEM not in with_system:
        return None
    before, after = with_system.split(_SYSTEM, 1)
    if without.startswith(before) and without.endswith(after) and len(without) >= len(before) + len(after):
        return without[len(before) : len(without) - len(after)]
    return None


def _llama3(renders: dict[str, str | None], default: str | None) -> Llama3:
    """Llama 3 with the preamble the template writes before a system message's text, and a
    system turn of its own when the template writes one without being given a system message
    (an empty default)."""
    with_system, header = renders["system+user"], Llama3.header("system")
    preamble = ""
    if with_system is not None and with_system.startswith(header) and _SYSTEM in with_system:
        preamble = with_system[len(header) : with_system.index(_SYSTEM)]
    return Llama3(preamble=preamble, system_turn_always=default == "")


def _mistral(renders: dict[str, str | None]) -> list[Mistral]:
    """The ``[INST]`` spacing read off the rendered turns (user, assistant, user)."""
    text = renders["turns"] or ""
    try:
        i_user, i_reply, i_next = text.index(_USER), text.index(_ASSISTANT), text.index(_NEXT_USER)
    except ValueError:
        return []
    user_open, user_close = text[:i_user], text[i_next + len(_NEXT_USER) :]
    between, after_reply = text[i_user + len(_USER) : i_reply], text[i_reply + len(_ASSISTANT) : i_next]
    if not (
        "[INST]" in user_open
        and "[/INST]" in user_close
        and between.startswith(user_close)
        and after_reply.endswith(user_open)
    ):
        return []
    parts = (user_open, user_close, between[len(user_close) :], after_reply[: len(after_reply) - len(user_open)])
    return [Mistral(*parts, system_joins=joins) for joins in ("first", "last")]


def _turn_ends(renders: dict[str, str | None]) -> tuple[str, str]:
    """What closes a user turn and a reply in ``<|role|>`` turns (Zephyr, OLMo 2): the text
    between the message and the newline before the next role marker."""
    text = renders["turns"] or ""
    user_end = text.partition(_USER)[2].partition("\n<|assistant|>\n")[0]
    reply_end = text.partition(_ASSISTANT)[2].partition("\n<|user|>\n")[0]
    return user_end, reply_end


def _deepseek(renders: dict[str, str | None]) -> list[DeepSeek]:
    """What the template writes after ``<｜Assistant｜>``, before a reply and in the generation
    prompt, read off the rendered turns (user, assistant, user)."""
    text = renders["turns"] or ""
    if text.count(DeepSeek.assistant) != 2 or _ASSISTANT not in text:
        return []
    reply_open = text.partition(DeepSeek.assistant)[2].partition(_ASSISTANT)[0]
    return [DeepSeek(reply_open=reply_open, prompt_open=text.rpartition(DeepSeek.assistant)[2])]


def _candidates(renders: dict[str, str | None], default: str | None) -> list[ChatFormat]:
    user_end, reply_end = _turn_ends(renders)
    return [
        ChatML(),
        _llama3(renders, default),
        *_mistral(renders),
        Gemma(),
        Phi3(),
        Phi3(drops_system=True),
        Zephyr(end=user_end),
        Granite(),
        OLMo2(reply_end=reply_end),
        *_deepseek(renders),
        CommandR(),
    ]


def _today(renders: dict[str, str | None]) -> str | None:
    now = datetime.now()
    for date in dict.fromkeys(now.strftime(f) for f in ("%d %b %Y", "%d %B %Y", "%Y-%m-%d", "%B %d, %Y", "%b %d, %Y")):
        if any(date in text for text in renders.values() if text):
            return date
    return None


def _end_of_turn_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every known end-of-turn token the template writes after a reply and the vocabulary holds."""
    reply = {"role": "assistant", "content": _ASSISTANT}
    text = _render_or_none(tokenizer, [*_PROBES["turns"], reply], False)
    text = text or _render_or_none(tokenizer, [_PROBES["user"][0], reply], False) or ""
    vocab = tokenizer.get_vocab()
    return [token for token in KNOWN_END_OF_TURN if token in text and token in vocab]


def _untranslated(stops: list[str], reason: str) -> OllamaTemplate:
    note = f"{reason}; no TEMPLATE is sent, so Ollama renders the Jinja template embedded in the GGUF."
    return OllamaTemplate(template=None, default_system=None, stops=stops, family=None, note=note)


def ollama_template(tokenizer: PreTrainedTokenizerBase) -> OllamaTemplate:
    """The Go template, SYSTEM and stops that make Ollama render chats as the model's chat
    template does; without a Go template (and a note saying why) when no known format fits."""
    if not tokenizer.chat_template:
        return _untranslated([], "The model has no chat template")
    end_of_turn = _end_of_turn_tokens(tokenizer)
    renders = {name: _render_or_none(tokenizer, messages, True) for name, messages in _PROBES.items()}
    if renders["user"] is None or renders["turns"] is None:
        return _untranslated(end_of_turn, "The model's chat template refuses a plain user/assistant conversation")
    if date := _today(renders):
        reason = f"The model's chat template writes today's date ({date}) into the prompt, which a Go template cannot"
        return _untranslated(end_of_turn, reason)
    bos = tokenizer.bos_token
    bos_choices: list[str | None] = [None]
    # The BOS text is only left out when no format matches the template's output as it is
    # (SmolLM2's BOS is <|im_start|>, which ChatML writes on purpose).
    if bos and all(text is None or text.startswith(bos) for text in renders.values()):
        bos_choices.append(bos)
    for bos_text in bos_choices:
        cut = len(bos_text or "")
        after_bos = {name: None if text is None else text[cut:] for name, text in renders.items()}
        default = _default_system(after_bos)
        for chat_format in _candidates(after_bos, default):
            # Probes the template refuses (a system message, for some) have nothing to match.
            if all(
                chat_format.render(*ollama_chat(default, _PROBES[name])) == text
                for name, text in after_bos.items()
                if text is not None
            ):
                stops = list(dict.fromkeys([*chat_format.stops, *end_of_turn]))
                return OllamaTemplate(
                    template=chat_format.go_template(),
                    default_system=default or None,
                    stops=stops,
                    family=chat_format.name,
                    note=_note(tokenizer, chat_format, bos_text, default, renders),
                    bos_text=bos_text,
                    chat_format=chat_format,
                )
    reason = f"The model's chat template renders like none of the chat formats tunewright translates ({_FORMAT_TITLES})"
    return _untranslated(end_of_turn, reason)


def _note(
    tokenizer: PreTrainedTokenizerBase,
    chat_format: ChatFormat,
    bos_text: str | None,
    default: str | None,
    renders: dict[str, str | None],
) -> str:
    notes = [f"Recognised as {chat_format.title} by rendering the model's chat template."]
    if bos_text:
        notes.append(
            f"The template starts with the BOS text {bos_text}, which llama.cpp adds as a token; the Go template leaves it out."
        )
    if renders["system+user"] is None:
        where = "first" if not isinstance(chat_format, Mistral) else chat_format.system_joins
        notes.append(
            f"The template refuses system messages; the Go template writes them into the {where} user message."
        )
    elif _SYSTEM not in renders["system+user"]:
        notes.append("The template leaves system messages out, and so does the Go template: SYSTEM has no effect.")
    thought = _render_or_none(tokenizer, _THOUGHT, True)
    if thought is not None and _REASONING not in thought:
        notes.append(
            "The template drops the reasoning (<think>...</think>) from earlier replies and a Go template cannot, so Ollama's prompt keeps whatever reasoning a client sends back in a reply's content."
        )
    two_systems = _render_or_none(tokenizer, _TWO_SYSTEMS, True)
    go_two_systems = (bos_text or "") + chat_format.render(*ollama_chat(default, _TWO_SYSTEMS))
    if two_systems is not None and two_systems != go_two_systems:
        notes.append(
            "The template renders a chat with more than one system message differently from the Go template, which keeps them all; chats with one system message render alike."
        )
    padded = _render_or_none(tokenizer, _PADDED, True)
    if padded is not None and not all(m["content"] in padded for m in _PADDED):
        notes.append(
            "The template trims message contents and Ollama's templates cannot, so contents with leading or trailing whitespace render differently."
        )
    return " ".join(notes)


def _quote(text: str) -> str:
    if '"""' in text or text.endswith('"'):
        raise FailedPrecondition(
            'a template or system prompt containing """, or ending with ", cannot be written to a Modelfile',
            reason="UNQUOTABLE_TEMPLATE",
        )
    return f'"""{text}"""'


def modelfile_text(source: str, template: OllamaTemplate, num_ctx: int | None = None) -> str:
    lines = [f"FROM {source}"]
    if template.template is not None:
        lines.append(f"TEMPLATE {_quote(template.template)}")
    if template.default_system is not None:
        lines.append(f"SYSTEM {_quote(template.default_system)}")
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in template.stops]
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"
