"""SQLite, the embedded default store of each service.

Every write happens inside one transaction (``with transaction(conn):``), so a crash
leaves the previous committed state. WAL mode lets readers run during a write.

A schema grows by migrations: the first one creates the tables, each later one changes
them, and ``PRAGMA user_version`` counts those applied, so a database written by an older
release is brought forward in place, keeping its rows.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    """One SQLite file shared by the server's threads, each with its own connection."""

    def __init__(self, path: Path, schema: str, migrations: tuple[str, ...] = ()) -> None:
        """``schema`` creates the tables (``CREATE TABLE IF NOT EXISTS``, so safe on a
        database from before migrations were counted); ``migrations`` are applied once
        each, in order."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self.connection()
        conn.executescript(schema)  # commits on its own
        with self.transaction() as conn:
            applied = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, migration in enumerate(migrations[applied:], start=applied + 1):
                for statement in filter(str.strip, migration.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        return self.connection().execute(sql, params).fetchone()
