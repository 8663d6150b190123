"""The built-in file readers. Each streams its file: a record at a time (Parquet: a row
group's batch at a time), so that files of millions of records need no more memory than
small ones."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunewright.dataformats import BadRecord

Records = Iterator[tuple[int, dict[str, Any] | BadRecord]]


class JsonlReader:
    name = "jsonl"
    suffixes = (".jsonl", ".ndjson")
    unit = "line"
    fixed_format = None

    def read(self, path: Path) -> Records:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as error:
                    yield number, BadRecord([("", f"not UTF-8 text (byte {error.start}); save the file as UTF-8")])
                except json.JSONDecodeError as error:
                    yield (
                        number,
                        BadRecord(
                            [
                                (
                                    "",
                                    f"not valid JSON: {error.msg} at column {error.colno}; each line must be one JSON object",
                                )
                            ]
                        ),
                    )
                else:
                    if isinstance(record, dict):
                        yield number, record
                    else:
                        yield number, BadRecord([("", f"expected a JSON object, got {type(record).__name__}")])


class TextFileReader:
    """Plain text: one example per paragraph (paragraphs are separated by blank lines), at
    the paragraph's first line."""

    name = "txt"
    suffixes = (".txt",)
    unit = "line"
    fixed_format = "text"

    def read(self, path: Path) -> Records:
        paragraph: list[str] = []
        first = 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    yield number, BadRecord([("", f"not UTF-8 text (byte {error.start}); save the file as UTF-8")])
                    continue
                if line.strip():
                    if not paragraph:
                        first = number
                    paragraph.append(line)
                elif paragraph:
                    yield first, {"text": "".join(paragraph).strip("\n")}
                    paragraph = []
        if paragraph:
            yield first, {"text": "".join(paragraph).strip("\n")}


class CsvReader:
    """CSV with a header row; rows count from 1 after the header. Cells are text; a list
    field (messages, conversations) can be a cell of JSON."""

    name = "csv"
    suffixes = (".csv",)
    unit = "row"
    fixed_format = None

    def read(self, path: Path) -> Records:
        # utf-8-sig: spreadsheets often save a byte-order mark before the header.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = csv.DictReader(handle)
            number = 0
            try:
                for number, row in enumerate(rows, start=1):  # noqa: B007 (read after the loop)
                    if None in row:
                        yield (
                            number,
                            BadRecord(
                                [("", f"has {len(row) + len(row[None]) - 1} cells, more than the header's columns")]
                            ),
                        )
                    elif any(value is None for value in row.values()):
                        yield number, BadRecord([("", "has fewer cells than the header's columns")])
                    elif any(value.strip() for value in row.values()):
                        yield number, dict(row)
            except UnicodeDecodeError as error:
                yield number + 1, BadRecord([("", f"not UTF-8 text (byte {error.start}); save the file as UTF-8")])
            except csv.Error as error:
                yield number + 1, BadRecord([("", f"not valid CSV: {error}")])


class ParquetReader:
    name = "parquet"
    suffixes = (".parquet",)
    unit = "row"
    fixed_format = None

    def read(self, path: Path) -> Records:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            yield 1, BadRecord([("", f"not a readable Parquet file: {error}")])
            return
        number = 0
        for batch in table.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield number, row
