"""Exported models: records in SQLite, files under ``<root>/models/{id}/``.

A model is in an export format's layout (a GGUF, a safetensors folder: self-contained) or
"attached" (the folder holds what was trained; the base model and the method named in the
record rebuild it when serving). Pushes record where a model was handed over (Ollama).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunewright.core.db import Database
from tunewright.core.errors import AlreadyExists, FieldViolation, NotFound
from tunewright.core.modelfile import OllamaTemplate
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
    # 2: formats are named by layout ("merged" was the safetensors folder), a GGUF to serve
    # with llama.cpp, the chat template sent to Ollama, notes, and where models were pushed.
    """
    UPDATE models SET format = 'safetensors' WHERE format = 'merged';
    ALTER TABLE models ADD COLUMN gguf TEXT;
    ALTER TABLE models ADD COLUMN chat_template TEXT;
    ALTER TABLE models ADD COLUMN notes TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE pushes (
        model_id TEXT NOT NULL REFERENCES models(id),
        seq INTEGER NOT NULL,
        target TEXT NOT NULL,
        address TEXT NOT NULL,
        remote_name TEXT NOT NULL,
        create_time TEXT NOT NULL,
        PRIMARY KEY (model_id, seq)
    )
    """,
    # 3: the system prompt the model gets when a chat has none, where it is not the base
    # model's own (the training data's shared one, or one given at export).
    """
    ALTER TABLE models ADD COLUMN system_prompt TEXT
    """,
)

# The format that keeps what was trained apart from the base; the others are export plugins.
ATTACHED = "attached"


@dataclass(frozen=True)
class PushRecord:
    target: str
    address: str
    remote_name: str
    create_time: str


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
    format: str
    method_parameters: dict[str, Any] = field(default_factory=dict)
    # Largest KL divergence (nats) from the trained model on the probe, and the
    # tolerance it was held to; None for models exported before the check existed.
    max_divergence: float | None = None
    tolerance: float | None = None
    # A GGUF file in the model's folder that llama.cpp can serve.
    gguf: str | None = None
    # The template, system prompt and stops sent to Ollama.
    chat_template: OllamaTemplate | None = None
    notes: list[str] = field(default_factory=list)
    # The system prompt a chat without one gets, where it is not the base model's own.
    system_prompt: str | None = None
    # Newest last.
    pushes: list[PushRecord] = field(default_factory=list)


_TEMPLATE_FIELDS = ("template", "default_system", "stops", "family", "note")


def _template_json(template: OllamaTemplate | None) -> str | None:
    return json.dumps({name: getattr(template, name) for name in _TEMPLATE_FIELDS}) if template else None


def _template_from_json(text: str | None) -> OllamaTemplate | None:
    return OllamaTemplate(**json.loads(text)) if text else None


def _model(row, pushes: list[PushRecord]) -> ModelRecord:
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
        gguf=row["gguf"],
        chat_template=_template_from_json(row["chat_template"]),
        notes=json.loads(row["notes"]),
        system_prompt=row["system_prompt"],
        pushes=pushes,
    )


class ModelStore:
    def __init__(self, path) -> None:
        self.db = Database(path, SCHEMA, MIGRATIONS)

    def _with_pushes(self, row) -> ModelRecord:
        rows = self.db.query("SELECT * FROM pushes WHERE model_id = ? ORDER BY seq", (row["id"],))
        pushes = [PushRecord(r["target"], r["address"], r["remote_name"], r["create_time"]) for r in rows]
        return _model(row, pushes)

    def by_request(self, request_id: str) -> ModelRecord | None:
        if not request_id:
            return None
        row = self.db.query_one("SELECT * FROM models WHERE request_id = ?", (request_id,))
        return self._with_pushes(row) if row else None

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
                " create_time, format, method_parameters, max_divergence, tolerance, gguf, chat_template, notes,"
                " system_prompt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    record.gguf,
                    _template_json(record.chat_template),
                    json.dumps(record.notes),
                    record.system_prompt,
                ),
            )

    def add_push(self, model_id: str, push: PushRecord) -> None:
        with self.db.transaction() as conn:
            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM pushes WHERE model_id = ?", (model_id,)
            ).fetchone()[0]
            conn.execute(
                "INSERT INTO pushes VALUES (?, ?, ?, ?, ?, ?)",
                (model_id, seq, push.target, push.address, push.remote_name, push.create_time),
            )

    def get(self, model_id: str, field: str = "model") -> ModelRecord:
        row = self.db.query_one("SELECT * FROM models WHERE id = ?", (model_id,))
        if row is None:
            raise NotFound(
                f"models/{model_id} does not exist; export one with ExportModel",
                reason="MODEL_NOT_FOUND",
                violations=[FieldViolation(field, "no such model")],
            )
        return self._with_pushes(row)

    def list(self, page_size: int, page_token: str) -> tuple[list[ModelRecord], str]:
        offset, limit = page_bounds(page_size, page_token)
        rows = self.db.query("SELECT * FROM models ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset))
        return [self._with_pushes(r) for r in rows], next_token(offset, limit, len(rows))
