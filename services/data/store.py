"""The data service's domain: uploaded files and the datasets made from them.

Files live under ``<root>/files/{id}``, dataset splits under ``<root>/datasets/{id}/``,
records in ``<root>/data.sqlite3``. A dataset's files are written (atomically) before its
record is committed, so a crash can leave an orphaned folder but never a record without data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from tunewright.core.basemodel import DEFAULT_BASE_MODEL, model_cache, resolve_tokenizer
from tunewright.core.db import Database
from tunewright.core.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted
from tunewright.core.files import fsync_path
from tunewright.core.ids import new_id
from tunewright.core.paging import next_token, page_bounds
from tunewright.core.timeutil import now
from tunewright.data.cleaning import CleaningOptions
from tunewright.data.pipeline import Source, prepare
from tunewright.data.split import SplitPlan
from tunewright.data.tokens import TokenCounter
from tunewright.dataformats import Example
from tunewright.plugin_manager import load_data_formats

MAX_FILE_BYTES = 2 * 1024**3
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    request_id TEXT UNIQUE,
    create_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    file_id TEXT NOT NULL REFERENCES files(id),
    format TEXT NOT NULL,
    example_count INTEGER NOT NULL,
    train_count INTEGER NOT NULL,
    validation_count INTEGER NOT NULL,
    test_count INTEGER NOT NULL,
    validation_fraction REAL NOT NULL,
    test_fraction REAL NOT NULL,
    split_seed INTEGER NOT NULL,
    request_id TEXT UNIQUE,
    create_time TEXT NOT NULL,
    seq INTEGER NOT NULL
);
"""
MIGRATIONS = (
    # Provenance, cleaning options and statistics, as one JSON object (Dataset fields 11-17).
    "ALTER TABLE datasets ADD COLUMN details TEXT NOT NULL DEFAULT '{}'",
)


@dataclass(frozen=True)
class FileRecord:
    id: str
    filename: str
    size_bytes: int
    sha256: str
    create_time: str


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    display_name: str
    file_id: str
    format: str
    example_count: int
    split_counts: dict[str, int]
    validation_fraction: float
    test_fraction: float
    split_seed: int
    create_time: str
    # format_name, reader, source_sha256, column_mapping, cleaning, tokenizer_model, stats;
    # {} for a dataset made before they were recorded.
    details: dict = field(default_factory=dict)


def _dataset(row) -> DatasetRecord:
    return DatasetRecord(
        id=row["id"],
        display_name=row["display_name"],
        file_id=row["file_id"],
        format=row["format"],
        example_count=row["example_count"],
        split_counts={"train": row["train_count"], "validation": row["validation_count"], "test": row["test_count"]},
        validation_fraction=row["validation_fraction"],
        test_fraction=row["test_fraction"],
        split_seed=row["split_seed"],
        create_time=row["create_time"],
        details=json.loads(row["details"]),
    )


def _file(row) -> FileRecord:
    return FileRecord(row["id"], row["filename"], row["size_bytes"], row["sha256"], row["create_time"])


class DataStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        (self.root / "datasets").mkdir(parents=True, exist_ok=True)
        self.db = Database(self.root / "data.sqlite3", SCHEMA, MIGRATIONS)
        # Where the tokenizers of built-in models are converted.
        self.model_cache = model_cache(self.root)
        self.formats = load_data_formats()
        self._counters: dict[str, TokenCounter] = {}
        self._counters_lock = threading.Lock()

    # Files

    def upload_file(
        self, request_id: str, filename: str, size_bytes: int, sha256: str, chunks: Iterable[bytes]
    ) -> FileRecord:
        """Stores the chunks as one file once its size and sha256 match the declarations."""
        sha256 = sha256.lower()
        violations = []
        if not filename or "/" in filename or "\\" in filename:
            violations.append(FieldViolation("header.filename", "give the file's base name, without folders"))
        if size_bytes < 0:
            violations.append(FieldViolation("header.size_bytes", "must not be negative"))
        if not SHA256_HEX.match(sha256):
            violations.append(
                FieldViolation("header.sha256", "must be 64 lowercase hex characters (sha256 of the content)")
            )
        if violations:
            raise InvalidArgument(
                "bad upload header: " + "; ".join(f"{v.field} {v.description}" for v in violations),
                reason="INVALID_UPLOAD_HEADER",
                violations=violations,
            )
        if size_bytes > MAX_FILE_BYTES:
            raise ResourceExhausted(
                f"files are limited to {MAX_FILE_BYTES} bytes; split the data into several datasets",
                reason="FILE_TOO_LARGE",
            )
        if request_id and (existing := self.db.query_one("SELECT * FROM files WHERE request_id = ?", (request_id,))):
            return _file(existing)
        file_id = new_id("file")
        fd, tmp = tempfile.mkstemp(dir=self.root / "files", prefix=".upload.")
        digest = hashlib.sha256()
        received = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    received += len(chunk)
                    if received > size_bytes:
                        raise InvalidArgument(
                            f"received more than the declared {size_bytes} bytes; declare the file's real size",
                            reason="UPLOAD_SIZE_MISMATCH",
                            violations=[
                                FieldViolation("header.size_bytes", f"smaller than the data sent (> {size_bytes})")
                            ],
                        )
                    digest.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if received != size_bytes:
                raise InvalidArgument(
                    f"received {received} bytes but the header declared {size_bytes}; the upload was cut short or the size is wrong",
                    reason="UPLOAD_SIZE_MISMATCH",
                    violations=[FieldViolation("header.size_bytes", f"declared {size_bytes}, received {received}")],
                )
            if digest.hexdigest() != sha256:
                raise InvalidArgument(
                    f"the content's sha256 is {digest.hexdigest()}, not the declared {sha256}; the data changed in transit or the hash is wrong",
                    reason="UPLOAD_CHECKSUM_MISMATCH",
                    violations=[FieldViolation("header.sha256", "does not match the content")],
                )
            os.replace(tmp, self.root / "files" / file_id)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        record = FileRecord(file_id, filename, size_bytes, sha256, now())
        with self.db.transaction() as conn:
            if request_id and (
                row := conn.execute("SELECT * FROM files WHERE request_id = ?", (request_id,)).fetchone()
            ):
                # A retry of the same upload finished first: keep its file, drop this copy.
                (self.root / "files" / file_id).unlink(missing_ok=True)
                return _file(row)
            conn.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.filename, record.size_bytes, record.sha256, request_id or None, record.create_time),
            )
        return record

    def get_file(self, file_id: str, field: str = "file") -> FileRecord:
        row = self.db.query_one("SELECT * FROM files WHERE id = ?", (file_id,))
        if row is None:
            raise NotFound(
                f"files/{file_id} does not exist; upload it with UploadFile first",
                reason="FILE_NOT_FOUND",
                violations=[FieldViolation(field, "no such file")],
            )
        return _file(row)

    # Datasets

    def create_dataset(
        self,
        request_id: str,
        file_id: str,
        display_name: str,
        plan: SplitPlan,
        format_name: str = "",
        column_mapping: dict[str, str] | None = None,
        cleaning: CleaningOptions | None = None,
        tokenizer_model: str = "",
    ) -> DatasetRecord:
        if request_id and (existing := self.db.query_one("SELECT * FROM datasets WHERE request_id = ?", (request_id,))):
            return _dataset(existing)
        cleaning = cleaning or CleaningOptions()
        plan.check()
        cleaning.check()
        file = self.get_file(file_id)
        tokenizer_model = tokenizer_model or DEFAULT_BASE_MODEL
        counter = self.token_counter(tokenizer_model)
        source = Source(self.root / "files" / file.id, file.filename, format_name, dict(column_mapping or {}))
        dataset_id = new_id("ds")
        folder = self.root / "datasets" / dataset_id
        staging = self.root / "datasets" / f".{dataset_id}.tmp"
        try:
            prepared = prepare(source, plan, cleaning, counter, self.formats, staging)
            for path in staging.iterdir():
                fsync_path(path)
            staging.rename(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        details = {
            "format_name": prepared.format_name,
            "reader": prepared.reader,
            "source_sha256": file.sha256,
            "column_mapping": source.column_mapping,
            "cleaning": {k: str(v) if isinstance(v, StrEnum) else v for k, v in asdict(cleaning).items()},
            "tokenizer_model": tokenizer_model,
            "stats": prepared.stats,
        }
        record = DatasetRecord(
            id=dataset_id,
            display_name=display_name or file.filename,
            file_id=file.id,
            format=prepared.format_name,
            example_count=sum(prepared.split_counts.values()),
            split_counts=prepared.split_counts,
            validation_fraction=plan.validation_fraction,
            test_fraction=plan.test_fraction,
            split_seed=plan.seed,
            create_time=now(),
            details=details,
        )
        try:
            with self.db.transaction() as conn:
                if request_id and (
                    row := conn.execute("SELECT * FROM datasets WHERE request_id = ?", (request_id,)).fetchone()
                ):
                    shutil.rmtree(folder, ignore_errors=True)  # a concurrent retry won
                    return _dataset(row)
                seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM datasets").fetchone()[0]
                conn.execute(
                    "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.display_name,
                        record.file_id,
                        record.format,
                        record.example_count,
                        record.split_counts["train"],
                        record.split_counts["validation"],
                        record.split_counts["test"],
                        record.validation_fraction,
                        record.test_fraction,
                        record.split_seed,
                        request_id or None,
                        record.create_time,
                        seq,
                        json.dumps(details, ensure_ascii=False),
                    ),
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return record

    def token_counter(self, model: str) -> TokenCounter:
        """The counter of ``model``'s tokens, loaded once per service."""
        with self._counters_lock:
            if model not in self._counters:
                self._counters[model] = TokenCounter(resolve_tokenizer(model, self.model_cache))
            return self._counters[model]

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        row = self.db.query_one("SELECT * FROM datasets WHERE id = ?", (dataset_id,))
        if row is None:
            raise NotFound(
                f"datasets/{dataset_id} does not exist",
                reason="DATASET_NOT_FOUND",
                violations=[FieldViolation("name", "no such dataset")],
            )
        return _dataset(row)

    def list_datasets(self, page_size: int, page_token: str) -> tuple[list[DatasetRecord], str]:
        offset, limit = page_bounds(page_size, page_token)
        rows = self.db.query("SELECT * FROM datasets ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset))
        return [_dataset(r) for r in rows], next_token(offset, limit, len(rows))

    def read_dataset(self, dataset_id: str, split: str) -> Iterator[Example]:
        """The split's examples: ``{"messages": [...]}`` or ``{"text": ...}``."""
        self.get_dataset(dataset_id)
        with open(self.root / "datasets" / dataset_id / f"{split}.jsonl", encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def read_report(self, dataset_id: str, page_size: int, page_token: str) -> tuple[list[dict], str]:
        """One page of the cleaning report's lines (a dataset made before reports has none)."""
        self.get_dataset(dataset_id)
        offset, limit = page_bounds(page_size or 100, page_token)
        path = self.root / "datasets" / dataset_id / "report.jsonl"
        if not path.exists():
            return [], ""
        with open(path, encoding="utf-8") as handle:
            lines = [json.loads(line) for line in itertools.islice(handle, offset, offset + limit)]
        return lines, next_token(offset, limit, len(lines))
