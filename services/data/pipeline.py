"""From an uploaded file to split, cleaned examples, a report and statistics, in one pass
over the file and memory that does not grow with it.

1. The reader streams records; the format parses each into an example. Every bad record
   is named (line or row, field, fix); any bad record refuses the file, and nothing is kept.
2. Each example is scrubbed of PII, checked against the exact and the near duplicates
   before it, counted in tokens, and kept (or dropped) in a SQLite working table on disk.
   Every change is a line of the report, with the source position.
3. The split ranks near-duplicate groups, not examples, by a hash of the seed and their
   content, and fills test, then validation, then train with whole groups: the same file,
   fractions and seed give the same split whatever the lines' order, and no group crosses
   splits. A check then counts test examples whose group has members elsewhere (none, unless
   this code is wrong) and reports them.
4. Statistics per split are SQL aggregates over the working table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewright.core.errors import FieldViolation, InvalidArgument
from tunewright.data.cleaning import (
    CleaningOptions,
    DuplicateIndex,
    NearDuplicates,
    normalized_text,
    working_database,
)
from tunewright.data.split import SPLITS, SplitPlan
from tunewright.data.tokens import TokenCounter
from tunewright.dataformats import BadRecord, DataFormat, DataFormatRegistry, Example, Reader

# The report names at most this many bad records; the message still says how many are bad.
MAX_REPORTED = 100
TOKENIZE_BATCH = 1024
DEFAULT_READER = "jsonl"

EXACT_DUPLICATE_REMOVED = "exact_duplicate_removed"
NEAR_DUPLICATE_REMOVED = "near_duplicate_removed"
PII_REPLACED = "pii_replaced"
OVERLENGTH_REMOVED = "overlength_removed"
OVERLENGTH = "overlength"
LEAKED_TEST_EXAMPLE = "leaked_test_example"


@dataclass(frozen=True)
class Source:
    path: Path
    filename: str
    format_name: str = ""
    column_mapping: dict[str, str] = field(default_factory=dict)


@dataclass
class Prepared:
    format_name: str
    reader: str
    split_counts: dict[str, int]
    stats: dict[str, Any]


def choose(source: Source, registry: DataFormatRegistry) -> tuple[Reader, DataFormat | None]:
    """The file's reader (by its name's ending, JSONL otherwise) and its format when given
    or fixed by the reader; None means: detect from the first record."""
    reader = registry.reader_for(source.filename) or registry.readers[DEFAULT_READER]
    wanted = source.format_name or reader.fixed_format or ""
    if reader.fixed_format and source.format_name and source.format_name != reader.fixed_format:
        raise InvalidArgument(
            f"a {reader.name} file can only hold {reader.fixed_format!r} examples, not {source.format_name!r}",
            reason="FORMAT_MISMATCH",
            violations=[FieldViolation("format_name", f"must be {reader.fixed_format!r} or empty for this file")],
        )
    if not wanted:
        return reader, None
    if wanted not in registry.formats:
        known = ", ".join(registry.formats)
        raise InvalidArgument(
            f"unknown data format {wanted!r}; installed formats: {known}",
            reason="UNKNOWN_FORMAT",
            violations=[FieldViolation("format_name", f"not one of: {known}")],
        )
    return reader, registry.formats[wanted]


def mapped(record: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    if not mapping:
        return record
    record = dict(record)
    for target, column in mapping.items():
        if column in record:
            record[target] = record.pop(column)
    return record


class Violations:
    """Bad records, kept up to MAX_REPORTED problems, counted all."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.items: list[FieldViolation] = []
        self.bad = 0

    def add(self, position: int, problems: list[tuple[str, str]]) -> None:
        self.bad += 1
        for where, problem in problems:
            if len(self.items) < MAX_REPORTED:
                path = f"{self.unit} {position}" + (f": {where}" if where else "")
                self.items.append(FieldViolation(path, problem))

    def raise_any(self) -> None:
        if not self.bad:
            return
        shown = "; ".join(f"{v.field}: {v.description}" for v in self.items[:10])
        more = f" (and {len(self.items) - 10} more in the details)" if len(self.items) > 10 else ""
        raise InvalidArgument(
            f"the file has {self.bad} bad {self.unit}(s); nothing was stored. {shown}{more}",
            reason="INVALID_DATASET_FILE",
            violations=self.items,
            metadata={f"bad_{self.unit}s": str(self.bad)},
        )


def examples(source: Source, registry: DataFormatRegistry) -> tuple[str, str, Iterator[tuple[int, Example]]]:
    """(format name, reader name, the examples with their positions). The iterator raises
    InvalidArgument at its end if any record was bad, naming them all."""
    reader, data_format = choose(source, registry)
    records = (
        (position, r if isinstance(r, BadRecord) else mapped(r, source.column_mapping))
        for position, r in reader.read(source.path)
    )
    first = next(records, None)
    if first is None:
        raise InvalidArgument(
            f"the file has no records; {_expected(data_format, registry)}",
            reason="EMPTY_DATASET_FILE",
            violations=[FieldViolation("file", "no non-blank lines")],
        )
    if data_format is None:
        position, record = first
        if isinstance(record, BadRecord):
            violations = Violations(reader.unit)
            violations.add(position, record.problems)
            violations.raise_any()
        data_format = registry.detect(record)
        if data_format is None:
            keys = ", ".join(sorted(record)) or "none"
            raise InvalidArgument(
                f"cannot tell the format of {reader.unit} {first[0]} (keys: {keys}); name it with format_name "
                f"({', '.join(registry.formats)}) or map the columns with column_mapping",
                reason="UNKNOWN_FORMAT",
                violations=[FieldViolation(f"{reader.unit} {first[0]}", f"no format matches the keys {keys}")],
            )

    def parsed() -> Iterator[tuple[int, Example]]:
        violations = Violations(reader.unit)
        for position, record in itertools.chain([first], records):
            try:
                if isinstance(record, BadRecord):
                    raise record
                example = data_format.parse(record)
            except BadRecord as bad:
                violations.add(position, bad.problems)
                continue
            if not violations.bad:
                yield position, example
        violations.raise_any()

    return data_format.name, reader.name, parsed()


def _expected(data_format: DataFormat | None, registry: DataFormatRegistry) -> str:
    if data_format is not None:
        return f"expected {data_format.description}"
    return "each record needs one of the formats: " + ", ".join(registry.formats)


def _rank(seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{seed}\n{key}".encode(), digest_size=16).digest()


def _bucket(tokens: int) -> int:
    """The length histogram's buckets: powers of two from 32."""
    bound = 32
    while bound < tokens:
        bound *= 2
    return bound


class Report:
    """The report's lines, appended to a JSONL file as they are found, and their counts."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.counts: Counter[str] = Counter()
        self.pii: Counter[str] = Counter()

    def add(self, position: int, kind: str, **details: Any) -> None:
        self.counts[kind] += 1
        self.handle.write(json.dumps({"line": position, "kind": kind, **details}) + "\n")

    def close(self) -> None:
        self.handle.close()


def prepare(
    source: Source,
    plan: SplitPlan,
    options: CleaningOptions,
    counter: TokenCounter,
    registry: DataFormatRegistry,
    out: Path,
) -> Prepared:
    """Writes ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``report.jsonl`` into
    the new folder ``out``; a working database is kept beside them until the end."""
    plan.check()
    options.check()
    format_name, reader_name, stream = examples(source, registry)
    out.mkdir(parents=True)
    work = working_database(out / "work.sqlite3")
    work.execute(
        "CREATE TABLE kept (position INTEGER PRIMARY KEY, grp INTEGER, rank BLOB, line TEXT, "
        "turns INTEGER, tokens INTEGER, loss_tokens INTEGER, bucket INTEGER, split TEXT)"
    )
    index = DuplicateIndex(out / "index.sqlite3", options)
    report = Report(out / "report.jsonl")
    read = 0
    batch: list[tuple[int, Example, int, Counter[str]]] = []

    def flush() -> None:
        counts = counter.count([example for _, example, _, _ in batch])
        for (position, example, group, found), counted in zip(batch, counts, strict=True):
            overlength = counted.tokens > options.max_seq_length
            if overlength and options.drop_overlength:
                report.add(position, OVERLENGTH_REMOVED, tokens=counted.tokens)
                continue
            # PII is counted in the examples kept; a removed one's report line says only why.
            if found:
                report.pii.update(found)
                report.add(position, PII_REPLACED, pii=dict(found))
            if overlength:
                report.add(position, OVERLENGTH, tokens=counted.tokens)
            line = json.dumps(example, ensure_ascii=False)
            work.execute(
                "INSERT INTO kept VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    position,
                    group,
                    _rank(plan.seed, line),
                    line,
                    len(example.get("messages", ())) or 1,
                    counted.tokens,
                    counted.loss_tokens,
                    _bucket(counted.tokens),
                ),
            )
        batch.clear()

    try:
        for position, example in stream:
            read += 1
            found: Counter[str] = Counter()
            if options.scrub_pii:
                # Before deduplication, so that examples differing only in PII are duplicates.
                example, found = _scrubbed(example)
            normalized = normalized_text(example)
            earlier = index.exact_duplicate_of(normalized, position)
            if earlier is not None and options.exact_dedupe:
                report.add(position, EXACT_DUPLICATE_REMOVED, duplicate_of=earlier)
                continue
            group = position
            if index.near:
                group, joined = index.near_group(index.signature(normalized), position)
                if joined and options.near_duplicates == NearDuplicates.REMOVE:
                    report.add(position, NEAR_DUPLICATE_REMOVED, duplicate_of=index.find(group))
                    continue
            batch.append((position, example, group, found))
            if len(batch) >= TOKENIZE_BATCH:
                flush()
        flush()
        if index.merged:
            work.execute("CREATE INDEX kept_group ON kept (grp)")
        for merged, kept in index.merged.items():
            work.execute("UPDATE kept SET grp = ? WHERE grp = ?", (index.find(kept), merged))
        split_counts = _split(work, plan)
        leaked = _check_leakage(work, report)
        stats = _stats(work, options.max_seq_length)
        for split in SPLITS:
            with open(out / f"{split}.jsonl", "w", encoding="utf-8") as handle:
                for (line,) in work.execute("SELECT line FROM kept WHERE split = ? ORDER BY rank", (split,)):
                    handle.write(line + "\n")
        grouped = work.execute(
            "SELECT COALESCE(SUM(n), 0) FROM (SELECT COUNT(*) AS n FROM kept GROUP BY grp HAVING n > 1)"
        ).fetchone()[0]
        stats["cleaning"] = {
            "read": read,
            "exact_duplicates_removed": report.counts[EXACT_DUPLICATE_REMOVED],
            "near_duplicates_removed": report.counts[NEAR_DUPLICATE_REMOVED],
            "overlength_removed": report.counts[OVERLENGTH_REMOVED],
            "near_duplicate_examples": grouped,
            "pii_examples": report.counts[PII_REPLACED],
            "pii_replacements": dict(sorted(report.pii.items())),
            "leaked_test_examples": leaked,
        }
    finally:
        report.close()
        index.close()
        work.execute("COMMIT")
        work.close()
        (out / "work.sqlite3").unlink(missing_ok=True)
        (out / "index.sqlite3").unlink(missing_ok=True)
    return Prepared(format_name=format_name, reader=reader_name, split_counts=split_counts, stats=stats)


def _scrubbed(example: Example) -> tuple[Example, Counter[str]]:
    from tunewright.data.pii import scrub

    found: Counter[str] = Counter()
    if "text" in example:
        text, counts = scrub(example["text"])
        found.update(counts)
        return {"text": text}, found
    messages = []
    for message in example["messages"]:
        content, counts = scrub(message["content"])
        found.update(counts)
        messages.append({"role": message["role"], "content": content})
    return {"messages": messages}, found


def _split(work: sqlite3.Connection, plan: SplitPlan) -> dict[str, int]:
    """Fills test, then validation, then train with whole groups, in the order of each
    group's lowest rank."""
    n = work.execute("SELECT COUNT(*) FROM kept").fetchone()[0]
    targets = {"test": round(n * plan.test_fraction), "validation": round(n * plan.validation_fraction)}
    counts = dict.fromkeys(SPLITS, 0)
    work.execute("CREATE TABLE assign (grp INTEGER PRIMARY KEY, split TEXT)")
    assignments = []
    for group, size in work.execute("SELECT grp, COUNT(*) FROM kept GROUP BY grp ORDER BY MIN(rank)"):
        split = next((s for s in ("test", "validation") if counts[s] < targets[s]), "train")
        counts[split] += size
        assignments.append((group, split))
        if len(assignments) >= 10_000:
            work.executemany("INSERT INTO assign VALUES (?, ?)", assignments)
            assignments.clear()
    work.executemany("INSERT INTO assign VALUES (?, ?)", assignments)
    if counts["train"] < 1:
        groups = work.execute("SELECT COUNT(*) FROM assign").fetchone()[0]
        grouped = (
            f" (they are {groups} group(s) of near duplicates, and a group stays in one split)" if groups < n else ""
        )
        raise InvalidArgument(
            f"{n} example(s){grouped} leave none to train on after the split; add examples or lower the fractions",
            reason="TOO_FEW_EXAMPLES",
            violations=[FieldViolation("file", f"{n} example(s)")],
        )
    work.execute("UPDATE kept SET split = (SELECT split FROM assign WHERE assign.grp = kept.grp)")
    return counts


def _check_leakage(work: sqlite3.Connection, report: Report) -> int:
    """Test examples whose near-duplicate group has members in train or validation."""
    leaked = work.execute(
        "SELECT position FROM kept WHERE split = 'test' AND grp IN "
        "(SELECT grp FROM kept GROUP BY grp HAVING COUNT(DISTINCT split) > 1) ORDER BY position"
    ).fetchall()
    for (position,) in leaked:
        report.add(position, LEAKED_TEST_EXAMPLE)
    return len(leaked)


def _stats(work: sqlite3.Connection, max_seq_length: int) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for split in SPLITS:
        row = work.execute(
            "SELECT COUNT(*), COALESCE(SUM(turns), 0), COALESCE(SUM(tokens), 0), COALESCE(SUM(loss_tokens), 0), "
            "COALESCE(MIN(tokens), 0), COALESCE(MAX(tokens), 0), COALESCE(AVG(tokens), 0), "
            "COALESCE(SUM(tokens > ?), 0) FROM kept WHERE split = ?",
            (max_seq_length, split),
        ).fetchone()
        histogram = work.execute(
            "SELECT bucket, COUNT(*) FROM kept WHERE split = ? GROUP BY bucket ORDER BY bucket", (split,)
        ).fetchall()
        stats[split] = {
            "examples": row[0],
            "turns": row[1],
            "tokens": row[2],
            "loss_tokens": row[3],
            "min_tokens": row[4],
            "max_tokens": row[5],
            "mean_tokens": row[6],
            "overlength": row[7],
            "length_histogram": [{"max_tokens": b, "examples": c} for b, c in histogram],
        }
    return stats
