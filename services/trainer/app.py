"""Wiring of the trainer service: store, runner, plugins and the data service client."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from tunewright.core.basemodel import model_cache
from tunewright.core.errors import Unavailable
from tunewright.core.metrics import Metrics
from tunewright.core.security import ChannelSecurity, ServerSecurity, open_channel
from tunewright.core.server import Server, create_server
from tunewright.data.v1 import data_service_pb2 as data_pb
from tunewright.data.v1 import data_service_pb2_grpc as data_grpc
from tunewright.plugin_manager import load_methods
from tunewright.trainer.runner import JobRunner
from tunewright.trainer.service import Trainer
from tunewright.trainer.servicer import SERVICE_NAME, register
from tunewright.trainer.store import JobStore


def dataset_reader(data_service: str):
    """A function from a dataset's name to the data service's Dataset, or None."""
    channel = open_channel(data_service, ChannelSecurity.from_env())
    stub = data_grpc.DataServiceStub(channel)

    def get(name: str) -> data_pb.Dataset | None:
        try:
            return stub.GetDataset(data_pb.GetDatasetRequest(name=name), timeout=30).dataset
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise Unavailable(
                f"the data service at {data_service} did not answer ({error.code().name}); start it, then retry",
                reason="DATA_SERVICE_UNAVAILABLE",
            ) from error

    return get


def start_trainer(
    address: str,
    data_dir: Path,
    data_service: str,
    metrics_address: str | None = None,
    security: ServerSecurity | None = None,
    max_running_jobs: int = 1,
    models_dirs: Sequence[Path] | None = None,
    memory_limit_bytes: int | None = None,
) -> tuple[Server, JobRunner]:
    """Starts the trainer. A job's base_model may name a folder only under ``models_dirs``
    (default: ``<data_dir>/models``, made here so that there is a place to put models). A
    worker whose resident memory passes ``memory_limit_bytes`` is stopped (OUT_OF_MEMORY)."""
    data_dir = Path(data_dir)
    if models_dirs is None:
        models_dirs = [data_dir / "models"]
        models_dirs[0].mkdir(parents=True, exist_ok=True)
    store = JobStore(data_dir / "trainer.sqlite3")
    metrics = Metrics("trainer")
    metrics.add_job_states(store.count_by_state)
    methods = load_methods()
    runner = JobRunner(
        store,
        data_dir / "jobs",
        data_service,
        model_cache(data_dir),
        metrics,
        max_running_jobs,
        methods,
        memory_limit_bytes,
    )
    trainer = Trainer(store, runner, methods, dataset_reader(data_service), models_dirs)
    server = create_server(address, register(trainer), [SERVICE_NAME], metrics, metrics_address, security)
    runner.start()
    return server, runner
