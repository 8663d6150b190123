"""Exported models: records in SQLite, files under ``<root>/models/{id}/``.

A model is "merged" (one self-contained folder) or "attached" (the folder holds what was
trained; the base model and the method named in the record rebuild it when serving).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunewright.core.db import Database
from tunewright.core.errors import AlreadyExists, FieldViolation, NotFound
from tunewright.core.paging import next_token, page_bounds

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    job TEXT NOT NULL,
    base_model TEXT NOT NULL,
    method TEXT NOT NULL,
    directory TEXT NOT NULL,
    files TEXT NOT NULL,
    modelfile TEXT NOT NULL,
    request_id TEXT UNIQUE,
    create_time TEXT NOT NULL
);
"""

MIGRATIONS = (
    # 1: the export format, what an attached model needs to be rebuilt, and the check of
    # the export against the trained model. Models from before were all merged, unchecked.
    """
    ALTER TABLE models ADD COLUMN format TEXT NOT NULL DEFAULT 'merged';
    ALTER TABLE models ADD COLUMN method_parameters TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE models ADD COLUMN max_divergence REAL;
    ALTER TABLE models ADD COLUMN tolerance REAL
    """,
)

MERGED, ATTACHED = "merged", "attached"
FORMATS = (MERGED, ATTACHED)


@dataclass(frozen=True)
class ModelRecord:
    id: str
    job: str
    base_model: str
    method: str
    directory: str
    files: list[tuple[str, int]]
    modelfile: str
    create_time: str
    format: str = MERGED
    method_parameters: dict[str, Any] = field(default_factory=dict)
    # Largest KL divergence (nats) from the trained model on the probe, and the
    # tolerance it was held to; None for models exported before the check existed.
    max_divergence: float | None = None
    tolerance: float | None = None


def _model(row) -> ModelRecord:
    return ModelRecord(
        id=row["id"],
        job=row["job"],
        base_model=row["base_model"],
        method=row["method"],
        directory=row["directory"],
        files=[tuple(f) for f in json.loads(row["files"])],
        modelfile=row["modelfile"],
        create_time=row["create_time"],
        format=row["format"],
        method_parameters=json.loads(row["method_parameters"]),
        max_divergence=row["max_divergence"],
        tolerance=row["tolerance"],
    )


class ModelStore:
    def __init__(self, path) -> None:
        self.db = Database(path, SCHEMA, MIGRATIONS)

    def by_request(self, request_id: str) -> ModelRecord | None:
        if not request_id:
            return None
        row = self.db.query_one("SELECT * FROM models WHERE request_id = ?", (request_id,))
        return _model(row) if row else None

    def exists(self, model_id: str) -> bool:
        return self.db.query_one("SELECT 1 FROM models WHERE id = ?", (model_id,)) is not None

    def add(self, record: ModelRecord, request_id: str) -> None:
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM models WHERE id = ?", (record.id,)).fetchone():
                raise AlreadyExists(
                    f"models/{record.id} exists already; choose another model_id",
                    reason="MODEL_EXISTS",
                    violations=[FieldViolation("model_id", "taken")],
                )
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM models").fetchone()[0]
            conn.execute(
                "INSERT INTO models (id, seq, job, base_model, method, directory, files, modelfile, request_id,"
                " create_time, format, method_parameters, max_divergence, tolerance)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    seq,
                    record.job,
                    record.base_model,
                    record.method,
                    record.directory,
                    json.dumps(record.files),
                    record.modelfile,
                    request_id or None,
                    record.create_time,
                    record.format,
                    json.dumps(record.method_parameters),
                    record.max_divergence,
                    record.tolerance,
                ),
            )

    def get(self, model_id: str, field: str = "model") -> ModelRecord:
        row = self.db.query_one("SELECT * FROM models WHERE id = ?", (model_id,))
        if row is None:
            raise NotFound(
                f"models/{model_id} does not exist; export one with ExportModel",
                reason="MODEL_NOT_FOUND",
                violations=[FieldViolation(field, "no such model")],
            )
        return _model(row)

    def list(self, page_size: int, page_token: str) -> tuple[list[ModelRecord], str]:
        offset, limit = page_bounds(page_size, page_token)
        rows = self.db.query("SELECT * FROM models ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset))
        return [_model(r) for r in rows], next_token(offset, limit, len(rows))
