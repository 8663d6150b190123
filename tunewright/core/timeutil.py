from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2


def now() -> str:
    """UTC time as ISO-8601 text, the form stored in the databases."""
    return datetime.now(UTC).isoformat()


def to_timestamp(iso: str | None) -> timestamp_pb2.Timestamp | None:
    if not iso:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(iso))
    return stamp
