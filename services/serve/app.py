"""Wiring of the serve service."""

from __future__ import annotations

from pathlib import Path

from tunewright.core.server import Server, create_server
from tunewright.plugin_manager import load_methods
from tunewright.serve.backend import EmbeddedBackend
from tunewright.serve.export import Exporter
from tunewright.serve.loading import ModelLoader
from tunewright.serve.servicer import SERVICE_NAME, ServeServicer, register
from tunewright.serve.store import ModelStore


def start_serve(address: str, data_dir: Path, trainer_service: str) -> Server:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(data_dir / "serve.sqlite3")
    methods = load_methods()
    exporter = Exporter(data_dir, store, trainer_service, methods)
    backend = EmbeddedBackend(ModelLoader(methods, exporter.model_cache))
    servicer = ServeServicer(store, exporter, backend)
    return create_server(address, register(servicer), [SERVICE_NAME])
