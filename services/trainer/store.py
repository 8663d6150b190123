"""Job records and their event history, in SQLite.

A job's state only moves forward (QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED),
and each change is stored with its event in one transaction, so WatchJob replays exactly
what happened, even after a restart.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from tunewright.core.db import Database
from tunewright.core.errors import FieldViolation, NotFound
from tunewright.core.ids import new_id
from tunewright.core.paging import next_token, page_bounds
from tunewright.core.timeutil import now

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    base_model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    method_parameters TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    request_id TEXT UNIQUE,
    create_time TEXT NOT NULL,
    start_time TEXT,
    end_time TEXT,
    error_code TEXT,
    error_message TEXT,
    progress TEXT,
    evaluation TEXT
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
"""

# A job row with its place in the queue (first come, first served: 1 runs next; 0 when not
# queued), in one statement, so that the state and the place come from one snapshot of the table.
SELECT_JOBS = f"""
SELECT jobs.*, CASE WHEN jobs.state = '{QUEUED}' THEN (
    SELECT COUNT(*) FROM jobs AS ahead WHERE ahead.state = '{QUEUED}' AND ahead.seq <= jobs.seq
) ELSE 0 END AS queue_position FROM jobs
"""


@dataclass
class JobRecord:
    id: str
    state: str
    base_model: str
    dataset: str
    method: str
    method_parameters: dict[str, Any]
    hyperparameters: dict[str, Any]
    create_time: str
    start_time: str | None = None
    end_time: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    progress: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    queue_position: int = 0


@dataclass
class Event:
    seq: int
    time: str
    kind: str  # "state", "progress", "evaluation", "log"
    payload: dict[str, Any] = field(default_factory=dict)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _job(row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        state=row["state"],
        base_model=row["base_model"],
        dataset=row["dataset"],
        method=row["method"],
        method_parameters=json.loads(row["method_parameters"]),
        hyperparameters=json.loads(row["hyperparameters"]),
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        progress=_loads(row["progress"]),
        evaluation=_loads(row["evaluation"]),
        queue_position=row["queue_position"],
    )


class JobStore:
    def __init__(self, db_path) -> None:
        self.db = Database(db_path, SCHEMA)
        self._lock = threading.Lock()
        # Wakes the runner on any change.
        self.changed = threading.Condition(self._lock)
        # Wakes only the WatchJob streams of the job that changed: a thousand streams watching
        # a queued job must not all wake, and read the database, at each step of another job.
        self._job_changed: dict[str, threading.Condition] = {}
        self._job_waiters: dict[str, int] = {}
        # Counts each job's changes: a watcher reads the database again only when its job's
        # count has moved (``wait_for_job_change``), not on every wake-up.
        self._job_generation: dict[str, int] = {}

    def _notify(self, job_id: str) -> None:
        with self.changed:
            self._job_generation[job_id] = self._job_generation.get(job_id, 0) + 1
            self.changed.notify_all()
            if (job_changed := self._job_changed.get(job_id)) is not None:
                job_changed.notify_all()

    def job_generation(self, job_id: str) -> int:
        with self.changed:
            return self._job_generation.get(job_id, 0)

    def wait_for_job_change(self, job_id: str, seen: int, timeout: float) -> int:
        """Waits until ``job_id`` has changed since its generation ``seen``, at most ``timeout``
        seconds; returns its generation."""
        with self.changed:
            job_changed = self._job_changed.setdefault(job_id, threading.Condition(self._lock))
            self._job_waiters[job_id] = self._job_waiters.get(job_id, 0) + 1
            try:
                job_changed.wait_for(lambda: self._job_generation.get(job_id, 0) != seen, timeout=timeout)
                return self._job_generation.get(job_id, 0)
            finally:
                self._job_waiters[job_id] -= 1
                if not self._job_waiters[job_id]:
                    del self._job_waiters[job_id], self._job_changed[job_id]

    def create(
        self,
        request_id: str,
        base_model: str,
        dataset: str,
        method: str,
        method_parameters: dict[str, Any],
        hyperparameters: dict[str, Any],
    ) -> tuple[JobRecord, bool]:
        """(job, created): a retry with the same request_id returns the first job."""
        with self.db.transaction() as conn:
            if request_id:
                row = conn.execute(f"{SELECT_JOBS} WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    return _job(row), False
            job_id = new_id("job")
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            conn.execute(
                "INSERT INTO jobs (id, seq, state, base_model, dataset, method, method_parameters, hyperparameters,"
                " request_id, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    seq,
                    QUEUED,
                    base_model,
                    dataset,
                    method,
                    json.dumps(method_parameters),
                    json.dumps(hyperparameters),
                    request_id or None,
                    now(),
                ),
            )
            self._append(conn, job_id, "state", {"state": QUEUED})
        self._notify(job_id)
        return self.get(job_id), True

    def by_request(self, request_id: str) -> JobRecord | None:
        row = self.db.query_one(f"{SELECT_JOBS} WHERE request_id = ?", (request_id,)) if request_id else None
        return _job(row) if row else None

    def get(self, job_id: str) -> JobRecord:
        row = self.db.query_one(f"{SELECT_JOBS} WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(
                f"jobs/{job_id} does not exist",
                reason="JOB_NOT_FOUND",
                violations=[FieldViolation("name", "no such job")],
            )
        return _job(row)

    def count_by_state(self) -> dict[str, int]:
        """{"queued": 2, "running": 1, ...}: only states that have jobs."""
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", ())
        return {r["state"].lower(): r["n"] for r in rows}

    def list(self, page_size: int, page_token: str) -> tuple[list[JobRecord], str]:
        offset, limit = page_bounds(page_size, page_token)
        rows = self.db.query(f"{SELECT_JOBS} ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, offset))
        return [_job(r) for r in rows], next_token(offset, limit, len(rows))

    def next_queued(self) -> JobRecord | None:
        row = self.db.query_one(f"{SELECT_JOBS} WHERE state = ? ORDER BY seq LIMIT 1", (QUEUED,))
        return _job(row) if row else None

    def _append(self, conn, job_id: str, kind: str, payload: dict[str, Any]) -> None:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)", (job_id, seq, now(), kind, json.dumps(payload)))

    def set_state(
        self,
        job_id: str,
        state: str,
        error_code: str | None = None,
        error_message: str | None = None,
        only_from: tuple[str, ...] | None = None,
    ) -> bool:
        """Moves the job to RUNNING or a terminal state (if it is in one of ``only_from``) and
        records the event. Going back to QUEUED is ``requeue``."""
        if state != RUNNING and state not in TERMINAL:
            raise ValueError(f"set_state cannot move a job to {state}; use requeue")
        with self.db.transaction() as conn:
            current = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()["state"]
            if current in TERMINAL or (only_from is not None and current not in only_from):
                return False
            stamp = now()
            if state == RUNNING:
                conn.execute("UPDATE jobs SET state = ?, start_time = ? WHERE id = ?", (state, stamp, job_id))
            else:
                conn.execute(
                    "UPDATE jobs SET state = ?, end_time = ?, error_code = ?, error_message = ? WHERE id = ?",
                    (state, stamp, error_code, error_message, job_id),
                )
            payload: dict[str, Any] = {"state": state}
            if error_code:
                payload["error"] = {"code": error_code, "message": error_message or ""}
            self._append(conn, job_id, "state", payload)
        self._notify(job_id)
        return True

    def record(self, job_id: str, kind: str, payload: dict[str, Any]) -> None:
        """Stores a progress, evaluation or log event; the latest progress and the evaluation
        are also kept on the job itself."""
        with self.db.transaction() as conn:
            if kind == "progress":
                conn.execute("UPDATE jobs SET progress = ? WHERE id = ?", (json.dumps(payload), job_id))
            elif kind == "evaluation":
                conn.execute("UPDATE jobs SET evaluation = ? WHERE id = ?", (json.dumps(payload), job_id))
            self._append(conn, job_id, kind, payload)
        self._notify(job_id)

    def events_after(self, job_id: str, after: int) -> list[Event]:
        rows = self.db.query("SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after))
        return [Event(r["seq"], r["time"], r["kind"], json.loads(r["payload"])) for r in rows]

    def requeue(self, job_id: str, why: str) -> None:
        """Puts a RUNNING job back in the queue; it resumes from its last checkpoint."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, start_time = NULL, progress = NULL WHERE id = ? AND state = ?",
                (QUEUED, job_id, RUNNING),
            )
            self._append(conn, job_id, "log", {"text": why})
            self._append(conn, job_id, "state", {"state": QUEUED})
        self._notify(job_id)

    def requeue_interrupted(self) -> list[str]:
        """Jobs left RUNNING by a trainer that died go back to the queue, to resume from their
        last checkpoints."""
        job_ids = [row["id"] for row in self.db.query("SELECT id FROM jobs WHERE state = ?", (RUNNING,))]
        for job_id in job_ids:
            self.requeue(
                job_id,
                "the trainer restarted while this job ran; it was queued again, to resume from its last checkpoint",
            )
        return job_ids
