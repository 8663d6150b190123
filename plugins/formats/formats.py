"""The built-in record formats, each parsed into the one example shape
(``tunewright.dataformats``): a conversation of system, user and assistant messages, or a
text for continued pre-training.

Formats are tried in registration order when a file's format is detected, so each
``detect`` looks for the field that only its format has.
"""

from __future__ import annotations

import json
from typing import Any

from tunewright.dataformats import ROLES, BadRecord, Example, check_messages


def _keys(record: dict[str, Any]) -> str:
    return ", ".join(sorted(record)) or "none"


def _string(record: dict[str, Any], field: str, required: bool = True) -> tuple[str, list[tuple[str, str]]]:
    """The field's text, and its problems. Missing and optional reads as ""."""
    value = record.get(field)
    if value is None:
        if required:
            return "", [(field, f"missing (keys found: {_keys(record)}); map another column to it with column_mapping")]
        return "", []
    if not isinstance(value, str):
        return "", [(field, f"must be a string, got {type(value).__name__}")]
    if required and not value.strip():
        return "", [(field, "is empty; write its text or remove the record")]
    return value, []


def _list_field(record: dict[str, Any], field: str) -> object:
    """A list field; in CSV and Parquet cells it may be written as JSON text."""
    value = record.get(field)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class ChatFormat:
    name = "chat"
    description = 'OpenAI chat: {"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}'
    fields = ("messages",)

    def detect(self, record: dict[str, Any]) -> bool:
        return "messages" in record

    def parse(self, record: dict[str, Any]) -> Example:
        messages = _list_field(record, "messages")
        if messages is None:
            raise BadRecord(
                [("messages", f'missing; each line needs {{"messages": [...]}} (keys found: {_keys(record)})')]
            )
        if not isinstance(messages, list) or not messages:
            raise BadRecord([("messages", 'must be a non-empty list of {"role", "content"} objects')])
        problems = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                problems.append((where, "must be an object with 'role' and 'content'"))
                continue
            role = message.get("role")
            if role not in ROLES:
                problems.append((f"{where}.role", f"{role!r} is not a role; use one of: {', '.join(ROLES)}"))
            extra = sorted(set(message) - {"role", "content"})
            if extra:
                problems.append((where, f"unknown keys {extra}; only 'role' and 'content' are read"))
        conversation = [{"role": m.get("role"), "content": m.get("content")} for m in messages if isinstance(m, dict)]
        problems += check_messages(conversation)
        if problems:
            raise BadRecord(problems)
        return {"messages": conversation}


class PromptCompletionFormat:
    name = "prompt_completion"
    description = '{"prompt": ..., "completion": ...}: the prompt is the user\'s message, the completion the reply'
    fields = ("prompt", "completion", "system")

    def detect(self, record: dict[str, Any]) -> bool:
        return "prompt" in record and "completion" in record

    def parse(self, record: dict[str, Any]) -> Example:
        prompt, problems = _string(record, "prompt")
        completion, more = _string(record, "completion")
        system, optional = _string(record, "system", required=False)
        if problems + more + optional:
            raise BadRecord(problems + more + optional)
        return {"messages": _conversation(system, prompt, completion)}


class AlpacaFormat:
    name = "alpaca"
    description = (
        '{"instruction": ..., "input": ..., "output": ...}: the instruction, then the input after a blank '
        "line when there is one, is the user's message; the output is the reply"
    )
    fields = ("instruction", "input", "output", "system")

    def detect(self, record: dict[str, Any]) -> bool:
        return "instruction" in record and "output" in record

    def parse(self, record: dict[str, Any]) -> Example:
        instruction, problems = _string(record, "instruction")
        given, more = _string(record, "input", required=False)
        output, most = _string(record, "output")
        system, optional = _string(record, "system", required=False)
        if problems + more + most + optional:
            raise BadRecord(problems + more + most + optional)
        prompt = f"{instruction}\n\n{given}" if given.strip() else instruction
        return {"messages": _conversation(system, prompt, output)}


SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


class ShareGPTFormat:
    name = "sharegpt"
    description = '{"conversations": [{"from": "system" | "human" | "gpt", "value": ...}, ...]}'
    fields = ("conversations",)

    def detect(self, record: dict[str, Any]) -> bool:
        return "conversations" in record

    def parse(self, record: dict[str, Any]) -> Example:
        turns = _list_field(record, "conversations")
        if not isinstance(turns, list) or not turns:
            raise BadRecord([("conversations", 'must be a non-empty list of {"from", "value"} objects')])
        problems = []
        conversation = []
        for i, turn in enumerate(turns):
            where = f"conversations[{i}]"
            if not isinstance(turn, dict):
                problems.append((where, "must be an object with 'from' and 'value'"))
                continue
            speaker = turn.get("from")
            if speaker not in SHAREGPT_ROLES:
                problems.append((f"{where}.from", f"{speaker!r} is not a speaker; use one of: system, human, gpt"))
                continue
            conversation.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
        if problems:
            raise BadRecord(problems)
        problems = [
            (field.replace("messages", "conversations").replace(".content", ".value").replace(".role", ".from"), p)
            for field, p in check_messages(conversation)
        ]
        if problems:
            raise BadRecord(problems)
        return {"messages": conversation}


class TextFormat:
    name = "text"
    description = '{"text": ...} or a plain .txt file: text for continued pre-training, the loss on every token'
    fields = ("text",)

    def detect(self, record: dict[str, Any]) -> bool:
        return "text" in record and not ({"messages", "conversations", "prompt", "instruction"} & set(record))

    def parse(self, record: dict[str, Any]) -> Example:
        text, problems = _string(record, "text")
        if problems:
            raise BadRecord(problems)
        return {"text": text}


def _conversation(system: str, prompt: str, reply: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
