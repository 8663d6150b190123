"""Wiring of the serve service."""

from __future__ import annotations

from pathlib import Path

from tunewright.core.metrics import Metrics
from tunewright.core.security import ServerSecurity
from tunewright.core.server import Server, create_server
from tunewright.plugin_manager import collect_exporters, collect_methods, plugin_manager
from tunewright.serve.answering import Answerer
from tunewright.serve.backend import transformers_backend
from tunewright.serve.export import Exporter
from tunewright.serve.llamacpp import llama_cpp_backend
from tunewright.serve.loading import ModelLoader
from tunewright.serve.servicer import SERVICE_NAME, ServeServicer, register
from tunewright.serve.store import ModelStore


def start_serve(
    address: str,
    data_dir: Path,
    trainer_service: str,
    metrics_address: str | None = None,
    security: ServerSecurity | None = None,
) -> Server:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(data_dir / "serve.sqlite3")
    plugins = plugin_manager()
    methods = collect_methods(plugins)
    exporter = Exporter(data_dir, store, trainer_service, methods, collect_exporters(plugins))
    answerer = Answerer(
        transformers_backend(ModelLoader(methods, exporter.model_cache)), llama_cpp_backend(), exporter.targets
    )
    metrics = Metrics("serve")
    servicer = ServeServicer(store, exporter, answerer, metrics)
    return create_server(address, register(servicer), [SERVICE_NAME], metrics, metrics_address, security)
