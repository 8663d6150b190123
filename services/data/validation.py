"""Validation of chat JSONL files: every bad line is found and named, with the fix."""

from __future__ import annotations

import json
from collections.abc import Iterable

from tunewright.core.errors import FieldViolation, InvalidArgument

ROLES = ("system", "user", "assistant")
# The report names at most this many lines; the message still says how many are bad.
MAX_REPORTED = 100

Example = list[dict[str, str]]


def _check_messages(record: object) -> list[tuple[str, str]]:
    """(field, problem with its fix) for each problem of one parsed line."""
    if not isinstance(record, dict):
        return [("", f"expected a JSON object with a 'messages' list, got {type(record).__name__}")]
    messages = record.get("messages")
    if messages is None:
        keys = ", ".join(sorted(record)) or "none"
        return [("messages", f'missing; each line needs {{"messages": [...]}} (keys found: {keys})')]
    if not isinstance(messages, list) or not messages:
        return [("messages", 'must be a non-empty list of {"role", "content"} objects')]
    problems = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append((where, "must be an object with 'role' and 'content'"))
            continue
        role = message.get("role")
        if role not in ROLES:
            problems.append((f"{where}.role", f"{role!r} is not a role; use one of: {', '.join(ROLES)}"))
        elif role == "system" and i != 0:
            problems.append((f"{where}.role", "a system message may only come first"))
        content = message.get("content")
        if not isinstance(content, str):
            problems.append((f"{where}.content", "must be a string"))
        elif not content.strip():
            problems.append((f"{where}.content", "is empty; remove the message or write its text"))
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            problems.append((where, f"unknown keys {extra}; only 'role' and 'content' are read"))
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append(("messages", "has no assistant message, so there is nothing to learn; add the reply"))
    return problems


def parse_chat_jsonl(lines: Iterable[bytes]) -> list[Example]:
    """The examples of a chat JSONL file, or InvalidArgument naming every bad line.

    Blank lines are skipped; line numbers count from 1 as an editor shows them.
    """
    examples: list[Example] = []
    violations: list[FieldViolation] = []
    bad_lines = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        problems: list[tuple[str, str]]
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            problems = [("", f"not UTF-8 text (byte {error.start}); save the file as UTF-8")]
        except json.JSONDecodeError as error:
            problems = [("", f"not valid JSON: {error.msg} at column {error.colno}; each line must be one JSON object")]
        else:
            problems = _check_messages(record)
            if not problems:
                examples.append([{"role": m["role"], "content": m["content"]} for m in record["messages"]])
        if problems:
            bad_lines += 1
            for field, problem in problems:
                if len(violations) < MAX_REPORTED:
                    path = f"line {number}" + (f": {field}" if field else "")
                    violations.append(FieldViolation(path, problem))
    if violations:
        shown = "; ".join(f"{v.field}: {v.description}" for v in violations[:10])
        more = f" (and {len(violations) - 10} more in the details)" if len(violations) > 10 else ""
        raise InvalidArgument(
            f"the file has {bad_lines} bad line(s); nothing was stored. {shown}{more}",
            reason="INVALID_DATASET_FILE",
            violations=violations,
            metadata={"bad_lines": str(bad_lines)},
        )
    if not examples:
        raise InvalidArgument(
            'the file has no examples; each line needs {"messages": [...]}',
            reason="EMPTY_DATASET_FILE",
            violations=[FieldViolation("file", "no non-blank lines")],
        )
    return examples
