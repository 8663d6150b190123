"""Domain tests of chat JSONL validation (no gRPC)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tunewright.core.errors import InvalidArgument
from tunewright.data.pipeline import Source, examples
from tunewright.plugin_manager import load_data_formats

FORMATS = load_data_formats()


def parse_chat_jsonl(lines: list[bytes]) -> list:
    """The conversations of a chat JSONL file of these lines, as the data service reads it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_bytes(b"\n".join(lines))
        _, _, stream = examples(Source(path, path.name, "chat"), FORMATS)
        return [example["messages"] for _, example in stream]


def good(i: int) -> bytes:
    return json.dumps(
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
    ).encode()


def test_every_bad_line_is_named_with_its_field_and_fix():
    lines = [good(i) for i in range(1, 21)]
    lines[6] = b'{"messages": [{"role": "user", "content": "hi"}'  # line 7: cut-off JSON
    lines[11] = json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}).encode()
    with pytest.raises(InvalidArgument) as caught:
        parse_chat_jsonl(lines)
    error = caught.value
    fields = [v.field for v in error.violations]
    assert fields[0] == "line 7"
    assert "not valid JSON" in error.violations[0].description
    assert "line 12: messages[1].role" in fields
    role = next(v for v in error.violations if v.field == "line 12: messages[1].role")
    assert "'bot'" in role.description and "system, user, assistant" in role.description
    assert error.metadata["bad_lines"] == "2"
    assert "line 7" in error.message and "line 12" in error.message


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        ({"prompt": "p", "completion": "c"}, "line 1: messages", "missing"),
        ({"messages": []}, "line 1: messages", "non-empty"),
        ({"messages": [{"role": "user", "content": "q"}]}, "line 1: messages", "no assistant"),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
            "line 1: messages[0].content",
            "string",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "system", "content": "s"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "line 1: messages[1].role",
            "first",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
            "line 1: messages[1].content",
            "empty",
        ),
        ([1, 2], "line 1", "JSON object"),
    ],
)
def test_each_kind_of_problem_names_its_field(record, field, words):
    with pytest.raises(InvalidArgument) as caught:
        parse_chat_jsonl([json.dumps(record).encode()])
    assert any(v.field == field and words in v.description for v in caught.value.violations), caught.value.violations


def test_blank_lines_are_skipped_and_line_numbers_stay_true():
    with pytest.raises(InvalidArgument) as caught:
        parse_chat_jsonl([good(1), b"", b"   ", b"{bad"])
    assert [v.field for v in caught.value.violations] == ["line 4"]
    assert len(parse_chat_jsonl([good(1), b"\n", good(2)])) == 2


def test_non_utf8_and_empty_files_are_refused():
    with pytest.raises(InvalidArgument) as caught:
        parse_chat_jsonl([b'{"messages": "\xff"}'])
    assert "UTF-8" in caught.value.violations[0].description
    with pytest.raises(InvalidArgument) as caught:
        parse_chat_jsonl([b"", b"\n"])
    assert caught.value.reason == "EMPTY_DATASET_FILE"
