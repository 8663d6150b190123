"""A method from a separately installed package, found through the `tunewright` entry-point
group, appears in ListMethods and runs a job, with no change to tunewright."""

from __future__ import annotations

import pytest

from conftest import run_job, ticket_lines
from tunewright.client import Client
from tunewright.serve.v1 import serve_service_pb2 as serve_pb
from tunewright.stack import Stack, free_port
from tunewright.trainer.v1 import trainer_service_pb2 as pb


def test_installed_plugin_is_listed_and_trains(ia3_site, tiny_model, tmp_path):
    stack = Stack(
        tmp_path / "state",
        ports={n: free_port() for n in ("data", "trainer", "serve")},
        log_dir=tmp_path / "logs",
        env={"PYTHONPATH": str(ia3_site)},
        models_dirs=[tiny_model],
    )
    stack.start()
    client = Client(stack.address("data"), stack.address("trainer"), stack.address("serve"))
    try:
        methods = {m.name: m for m in client.trainer.ListMethods(pb.ListMethodsRequest()).methods}
        assert {"lora", "ia3"} <= set(methods)
        assert {p.name for p in methods["ia3"].parameters} == {"target_modules", "feedforward_modules"}

        data = tmp_path / "d.jsonl"
        data.write_text("\n".join(ticket_lines(24)) + "\n")
        dataset = client.create_dataset(client.upload(data).name).name
        job = run_job(client, tiny_model, dataset, method="ia3", epochs=1, evaluate=False)
        assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
        assert job.hyperparameters.learning_rate == pytest.approx(3e-3)  # the plugin's default
        model = client.serve.ExportModel(serve_pb.ExportModelRequest(job=job.name), timeout=600).model
        assert model.method == "ia3"
    finally:
        client.close()
        stack.stop()
