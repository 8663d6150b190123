"""Wiring of the data service."""

from __future__ import annotations

from pathlib import Path

from tunewright.core.security import ServerSecurity
from tunewright.core.server import Server, create_server
from tunewright.data.servicer import SERVICE_NAME, register
from tunewright.data.store import DataStore


def start_data(
    address: str, data_dir: Path, metrics_address: str | None = None, security: ServerSecurity | None = None
) -> Server:
    return create_server(
        address, register(DataStore(data_dir)), [SERVICE_NAME], metrics_address=metrics_address, security=security
    )
