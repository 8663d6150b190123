"""What a data format and a file reader are: the protocols data-format plugins follow.

A **reader** turns a file into records: one JSON object per line, a CSV row, a Parquet row,
a paragraph of plain text. A **format** turns one record into an example, the one shape
every format becomes and the trainer reads over gRPC:

- ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``, a
  conversation whose assistant replies carry the loss; or
- ``{"text": str}``, for continued pre-training, where every token carries the loss.

Both are contributed through ``tunewright_register_data_formats(registry)`` with
``registry.add_format(...)`` and ``registry.add_reader(...)``; the built-in ones are
ordinary plugins (``plugins/formats``). A team adds its own (its ticketing system's
export, say) in a package of its own, without editing the data service.

Formats run in the data service, once per record of files up to millions of records:
keep ``parse`` cheap and free of I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["BadRecord", "DataFormat", "DataFormatRegistry", "Example", "Reader"]

Example = dict[str, Any]
ROLES = ("system", "user", "assistant")


class BadRecord(Exception):
    """A record that cannot become an example: each problem is (field, what is wrong and
    how to fix it). ``field`` is "" when the problem is the record as a whole."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {p}" if f else p for f, p in problems))
        self.problems = problems


@runtime_checkable
class DataFormat(Protocol):
    # Lowercase, as given in CreateDatasetRequest.format_name.
    name: str
    description: str
    # The top-level fields of a record, the ones a column mapping can name.
    fields: tuple[str, ...]

    def detect(self, record: dict[str, Any]) -> bool:
        """Whether the record looks like this format (used on a file's first record)."""

    def parse(self, record: dict[str, Any]) -> Example:
        """The record's example, or ``BadRecord`` naming every problem and its fix."""


@runtime_checkable
class Reader(Protocol):
    # "jsonl", "csv" ...
    name: str
    # File name endings it reads, lowercase with the dot: (".csv",).
    suffixes: tuple[str, ...]
    # What a position in its files is called in reports: "line" or "row".
    unit: str
    # The format its records always have ("text" for plain text files), or None to detect.
    fixed_format: str | None

    def read(self, path: Path) -> Iterator[tuple[int, dict[str, Any] | BadRecord]]:
        """Yields (position from 1, record) for every record of the file, in order, or
        (position, BadRecord) for one that cannot be read at all (bad JSON, not UTF-8).
        Streams: a file of millions of records must not be held in memory."""


class DataFormatRegistry:
    def __init__(self) -> None:
        self.formats: dict[str, DataFormat] = {}
        self.readers: dict[str, Reader] = {}

    def add_format(self, data_format: DataFormat) -> None:
        if not isinstance(data_format, DataFormat):
            raise TypeError(f"{data_format!r} does not follow tunewright.dataformats.DataFormat")
        if data_format.name in self.formats:
            raise ValueError(f"two plugins register a data format named {data_format.name!r}")
        self.formats[data_format.name] = data_format

    def add_reader(self, reader: Reader) -> None:
        if not isinstance(reader, Reader):
            raise TypeError(f"{reader!r} does not follow tunewright.dataformats.Reader")
        if reader.name in self.readers:
            raise ValueError(f"two plugins register a reader named {reader.name!r}")
        self.readers[reader.name] = reader

    def reader_for(self, filename: str) -> Reader | None:
        lowered = filename.lower()
        # The longest matching ending wins (".csv.gz" before ".gz").
        matches = [(len(s), r) for r in self.readers.values() for s in r.suffixes if lowered.endswith(s)]
        return max(matches, key=lambda match: match[0])[1] if matches else None

    def detect(self, record: dict[str, Any]) -> DataFormat | None:
        return next((f for f in self.formats.values() if f.detect(record)), None)


def check_messages(messages: object, where: str = "messages") -> list[tuple[str, str]]:
    """Problems of a conversation in the internal shape, for formats that build one."""
    if not isinstance(messages, list) or not messages:
        return [(where, 'must be a non-empty list of {"role", "content"} objects')]
    problems = []
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        role, content = message.get("role"), message.get("content")
        if role == "system" and i != 0:
            problems.append((f"{at}.role", "a system message may only come first"))
        if not isinstance(content, str):
            problems.append((f"{at}.content", "must be a string"))
        elif not content.strip():
            problems.append((f"{at}.content", "is empty; remove the message or write its text"))
    if not any(m.get("role") == "assistant" for m in messages):
        problems.append((where, "has no assistant message, so there is nothing to learn; add the reply"))
    return problems
