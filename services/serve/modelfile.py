"""Ollama Modelfiles: a Go template equivalent to the model's Jinja chat template, and a
stop parameter for every end-of-turn token.

Ollama does not run Jinja. Each supported template family is recognised here and written
as the Go template Ollama ships for it; ``render_like_ollama`` renders that Go template's
meaning in Python, so tests can check it against the Jinja template token for token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunewright.core.chat import end_of_turn_tokens, render
from tunewright.core.errors import FailedPrecondition

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)

_PROBE = "tunewright-probe"


@dataclass(frozen=True)
class OllamaTemplate:
    template: str
    # Sent as SYSTEM when the conversation has no system message, as the Jinja template does.
    default_system: str | None
    stops: list[str]


def ollama_template(tokenizer: PreTrainedTokenizerBase) -> OllamaTemplate:
    jinja = tokenizer.chat_template or ""
    stops = end_of_turn_tokens(tokenizer)
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        rendered = render(tokenizer, [{"role": "user", "content": _PROBE}], generation_prompt=True)
        default_system = None
        head = "<|im_start|>system\n"
        if rendered.startswith(head):
            default_system = rendered[len(head) : rendered.index("<|im_end|>")]
        return OllamaTemplate(CHATML_TEMPLATE, default_system, sorted(set(stops) | {"<|im_start|>", "<|im_end|>"}))
    raise FailedPrecondition(
        "the model's chat template is not one tunewright can translate for Ollama yet (ChatML is supported)",
        reason="UNSUPPORTED_CHAT_TEMPLATE",
    )


def render_like_ollama(template: OllamaTemplate, messages: list[dict[str, str]]) -> str:
    """What Ollama renders for ``messages`` with this template (and SYSTEM, if any)."""
    if template.template != CHATML_TEMPLATE:
        raise ValueError("only the ChatML template is modelled")
    if template.default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": template.default_system}, *messages]
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return body + "<|im_start|>assistant\n"


def _quote(text: str) -> str:
    if '"""' in text:
        raise FailedPrecondition(
            'a template containing """ cannot be written to a Modelfile', reason="UNQUOTABLE_TEMPLATE"
        )
    return f'"""{text}"""'


def modelfile_text(source: str, template: OllamaTemplate, num_ctx: int | None = None) -> str:
    lines = [f"FROM {source}", f"TEMPLATE {_quote(template.template)}"]
    if template.default_system is not None:
        lines.append(f"SYSTEM {_quote(template.default_system)}")
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in template.stops]
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"
