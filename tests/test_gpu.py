"""The CUDA paths: Unsloth's GPU kernels, QLoRA on the GPU, full fine-tuning in bfloat16.
These run wherever a CUDA GPU is present (marker ``gpu``); the CPU matrix covers the rest."""

from __future__ import annotations

import json

import pytest

from conftest import run_job, ticket_lines
from tunewright.core.basemodel import DEFAULT_BASE_MODEL, resolve_base_model

pytestmark = [pytest.mark.gpu, pytest.mark.real_model]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return resolve_base_model(DEFAULT_BASE_MODEL, tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("method", ["unsloth", "qlora", "full", "lora"])
def test_method_trains_on_cuda_in_bfloat16(method, services, smollm2, tmp_path):
    from tunewright.serve.v1 import serve_service_pb2 as serve_pb
    from tunewright.trainer.v1 import trainer_service_pb2 as pb

    client = services.client
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(ticket_lines(40)) + "\n")
    dataset = client.create_dataset(client.upload(path).name).name
    job = run_job(client, smollm2, dataset, method=method, max_steps=4, batch_size=8, evaluate=True)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    logs = [e.log.text for e in client.trainer.WatchJob(pb.WatchJobRequest(name=job.name)) if e.HasField("log")]
    assert any(text.endswith("on cuda") for text in logs), logs
    manifest = json.loads(client.read_artifact_file(job.name, "manifest.json"))
    expected = "float32" if method == "lora" else "bfloat16"
    assert manifest["probe"]["compute_dtype"] == expected
    model = client.serve.ExportModel(serve_pb.ExportModelRequest(job=job.name), timeout=900).model
    assert model.verification.max_kl_divergence <= model.verification.tolerance
