"""The trainer service through real gRPC servers, training the tiny random Llama."""

from __future__ import annotations

import json
import random

import grpc
import pytest

from conftest import rich_error
from tunewright.trainer.v1 import trainer_service_pb2 as pb

TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)


@pytest.fixture(scope="module")
def dataset(services, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    from conftest import ticket_lines

    path.write_text("\n".join(ticket_lines(40)) + "\n")
    return services.client.create_dataset(services.client.upload(path).name).name


def create(services, tiny_model, dataset, method="lora", params=None, **hp) -> pb.Job:
    hyper = {"epochs": 1, "batch_size": 8, "eval_max_new_tokens": 8, **hp}
    return services.client.trainer.CreateJob(
        pb.CreateJobRequest(
            base_model=str(tiny_model),
            dataset=dataset,
            method=method,
            method_parameters=params or {},
            hyperparameters=pb.Hyperparameters(**hyper),
        )
    ).job


def watch(services, name) -> list[pb.WatchJobResponse]:
    return list(services.client.trainer.WatchJob(pb.WatchJobRequest(name=name), timeout=600))


def test_list_methods_describes_every_method_with_capabilities_and_parameters(services):
    methods = {m.name: m for m in services.client.trainer.ListMethods(pb.ListMethodsRequest()).methods}
    assert set(methods) == {"lora", "qlora", "unsloth", "prefix", "full"}
    lora = methods["lora"]
    assert lora.description and lora.capabilities.mergeable and lora.default_learning_rate == pytest.approx(1e-3)
    params = {p.name: p for p in lora.parameters}
    assert params["r"].type == pb.PARAMETER_TYPE_INT and params["r"].default_json == "16"
    assert params["target_modules"].default_json == '["all-linear"]'
    kinds = {name: m.capabilities.artifact_kind for name, m in methods.items()}
    assert kinds == {
        "lora": pb.ARTIFACT_KIND_ADAPTER,
        "qlora": pb.ARTIFACT_KIND_ADAPTER,
        "unsloth": pb.ARTIFACT_KIND_ADAPTER,
        "prefix": pb.ARTIFACT_KIND_PROMPT,
        "full": pb.ARTIFACT_KIND_FULL,
    }
    prefix = methods["prefix"].capabilities
    assert not prefix.mergeable and not prefix.exportable and prefix.not_exportable_reason
    qlora = methods["qlora"]
    assert qlora.capabilities.quantized_base and list(qlora.capabilities.required_packages) == ["peft", "bitsandbytes"]
    assert list({p.name: p for p in qlora.parameters}["quant_type"].choices) == ["nf4", "fp4"]
    assert "unsloth" in methods["unsloth"].capabilities.required_packages
    assert all(p.description for m in methods.values() for p in m.parameters)


def test_a_job_trains_evaluates_and_publishes_its_artifact(services, tiny_model, dataset):
    job = create(services, tiny_model, dataset, params={"r": pb.ParameterValue(int_value=4)})
    assert job.name.startswith("jobs/") and job.state == pb.JOB_STATE_QUEUED
    assert job.hyperparameters.learning_rate == pytest.approx(1e-3)  # lora's default
    events = watch(services, job.name)
    states = [e.state_change.state for e in events if e.WhichOneof("payload") == "state_change"]
    assert states == [pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED]
    steps = [e.progress for e in events if e.WhichOneof("payload") == "progress"]
    assert [s.step for s in steps] == list(range(1, 5)) and steps[-1].total_steps == 4
    assert all(s.tokens_per_second > 0 and s.loss > 0 for s in steps)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    evaluation = next(e.evaluation for e in events if e.WhichOneof("payload") == "evaluation")
    assert evaluation.example_count == 4 and evaluation.base.loss > 0 and evaluation.tuned.loss > 0
    # Mixed precision where the hardware has it, and the events say which.
    from tunewright.methods import detect_runtime

    logs = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    expected = "precision: bfloat16 autocast" if detect_runtime().bf16 else "precision: float32"
    assert any(line.startswith(expected) for line in logs), logs
    assert job.hyperparameters.precision == "auto"
    # The batch layout is said too, and each evaluation's time apart from training's.
    assert "batches: left-padded, logits only where a token is trained, examples grouped by length" in logs
    assert not job.hyperparameters.packing and job.hyperparameters.group_by_length
    assert job.hyperparameters.gradient_checkpointing == "off"  # "auto": the job fits without
    assert evaluation.base.seconds > 0 and evaluation.tuned.seconds > 0
    assert any(line.startswith("evaluated the base model in ") for line in logs)
    assert any(line.startswith("trained in ") for line in logs)
    # The validation loss at the end of the (only) epoch, for a loss curve to plot.
    validations = [e.validation for e in events if e.WhichOneof("payload") == "validation"]
    assert [(v.step, v.epoch) for v in validations] == [(4, 1.0)] and validations[0].loss > 0

    done = services.client.trainer.GetJob(pb.GetJobRequest(name=job.name)).job
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.progress.step == 4 and done.evaluation == evaluation
    assert done.method_parameters["r"].int_value == 4
    # Replaying from a sequence number sends only what came after it.
    assert [e.sequence for e in services.client.trainer.WatchJob(pb.WatchJobRequest(name=job.name, after_sequence=3))][
        0
    ] == 4

    files = {}
    current = None
    for message in services.client.trainer.ReadArtifact(pb.ReadArtifactRequest(name=job.name)):
        if message.WhichOneof("content") == "file":
            current = message.file.path
            files[current] = b""
        else:
            files[current] += message.chunk
    assert {
        "manifest.json",
        "eval_predictions.jsonl",
        "probe.safetensors",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    } <= set(files)
    manifest = json.loads(files["manifest.json"])
    assert (
        manifest["format_version"] == 1 and manifest["artifact_kind"] == "adapter" and manifest["trained"] == "adapter"
    )
    assert manifest["method"] == "lora" and manifest["method_parameters"]["r"] == 4
    assert manifest["probe"] == {"file": "probe.safetensors", "compute_dtype": "float32", "tolerance": 1e-4}
    # Provenance: the dataset's record, down to its source file's sha256 and its cleaning.
    record = services.client.get_dataset(dataset)
    assert manifest["dataset"]["name"] == dataset and manifest["dataset"]["source_sha256"] == record.source_sha256
    assert manifest["dataset"]["format_name"] == "chat" and manifest["dataset"]["cleaning"]["scrub_pii"] is True


def test_bad_requests_are_refused_up_front_naming_the_field(services, tiny_model, dataset):
    trainer = services.client.trainer
    cases = [
        (
            dict(params={"rank": pb.ParameterValue(int_value=8)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "method_parameters.rank",
        ),
        (
            dict(params={"r": pb.ParameterValue(string_value="big")}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "method_parameters.r",
        ),
        (dict(method="nope"), grpc.StatusCode.INVALID_ARGUMENT, "method"),
        (dict(params={"r": pb.ParameterValue(int_value=0)}), grpc.StatusCode.INVALID_ARGUMENT, "method_parameters.r"),
        (
            dict(method="prefix", params={"num_virtual_tokens": pb.ParameterValue(int_value=0)}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "method_parameters.num_virtual_tokens",
        ),
        (
            dict(method="qlora", params={"quant_type": pb.ParameterValue(string_value="int3")}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "method_parameters.quant_type",
        ),
        (dict(epochs=0), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.epochs"),
        (dict(batch_size=4, micro_batch_size=8), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.micro_batch_size"),
        (dict(precision="fp8"), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.precision"),
        (dict(method="prefix", packing=True), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.packing"),
        (
            dict(gradient_checkpointing="sometimes"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hyperparameters.gradient_checkpointing",
        ),
        (
            dict(method="prefix", gradient_checkpointing="on"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "hyperparameters.gradient_checkpointing",
        ),
        (dict(learning_rate=5.0), grpc.StatusCode.INVALID_ARGUMENT, "hyperparameters.learning_rate"),
        (dict(dataset="datasets/missing"), grpc.StatusCode.NOT_FOUND, "dataset"),
    ]
    before = len(trainer.ListJobs(pb.ListJobsRequest(page_size=1000)).jobs)
    for kwargs, code, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            create(services, tiny_model, kwargs.pop("dataset", dataset), **kwargs)
        assert caught.value.code() == code, kwargs
        assert field in [f for f, _ in rich_error(caught.value)[1]], kwargs
    with pytest.raises(grpc.RpcError) as caught:
        trainer.CreateJob(pb.CreateJobRequest(base_model="/no/such/folder", dataset=dataset, method="lora"))
    assert rich_error(caught.value)[1][0][0] == "base_model"
    assert len(trainer.ListJobs(pb.ListJobsRequest(page_size=1000)).jobs) == before


def test_a_packed_job_trains_and_says_so(services, tiny_model, dataset):
    job = create(services, tiny_model, dataset, packing=True, evaluate=False)
    assert job.hyperparameters.packing
    events = watch(services, job.name)
    logs = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    assert "batches: packed into one row per pass, attention kept within each example" in logs
    assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED, logs


def test_a_job_can_draw_its_batches_fully_shuffled(services, tiny_model, dataset):
    job = create(services, tiny_model, dataset, group_by_length=False, evaluate=False)
    assert not job.hyperparameters.group_by_length
    events = watch(services, job.name)
    logs = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    assert "batches: left-padded, logits only where a token is trained, examples shuffled" in logs
    assert events[-1].state_change.state == pb.JOB_STATE_SUCCEEDED, logs


def test_create_is_idempotent_on_request_id(services, tiny_model, dataset):
    request = pb.CreateJobRequest(
        request_id="retry-me",
        base_model=str(tiny_model),
        dataset=dataset,
        method="lora",
        hyperparameters=pb.Hyperparameters(max_steps=1, evaluate=False),
    )
    first = services.client.trainer.CreateJob(request).job
    second = services.client.trainer.CreateJob(request).job
    assert first.name == second.name
    watch(services, first.name)


def test_cancel_stops_the_worker_and_the_job_ends_cancelled(services, tiny_model, dataset):
    job = create(services, tiny_model, dataset, epochs=100, evaluate=False)
    for event in services.client.trainer.WatchJob(pb.WatchJobRequest(name=job.name), timeout=300):
        if event.WhichOneof("payload") == "progress":
            break
    cancelled = services.client.trainer.CancelJob(pb.CancelJobRequest(name=job.name)).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert job.name.split("/")[1] not in services.runner._running  # the worker process is gone
    with pytest.raises(grpc.RpcError) as caught:
        services.client.trainer.CancelJob(pb.CancelJobRequest(name=job.name))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        list(services.client.trainer.ReadArtifact(pb.ReadArtifactRequest(name=job.name)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_failing_job_ends_failed_with_a_code_and_an_actionable_message(services, tiny_model, dataset):
    job = create(
        services,
        tiny_model,
        dataset,
        params={"target_modules": pb.ParameterValue(string_list_value=pb.StringList(values=["not_a_layer"]))},
    )
    events = watch(services, job.name)
    final = events[-1].state_change
    assert final.state == pb.JOB_STATE_FAILED
    assert final.error.code == "INVALID_METHOD_PARAMETER" and "not_a_layer" in final.error.message
    job = services.client.trainer.GetJob(pb.GetJobRequest(name=job.name)).job
    assert job.error.code == "INVALID_METHOD_PARAMETER"


def test_unknown_job_is_not_found(services):
    with pytest.raises(grpc.RpcError) as caught:
        services.client.trainer.GetJob(pb.GetJobRequest(name="jobs/nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_text_dataset_trains_with_the_loss_on_every_token(services, tiny_model, tmp_path):
    rng = random.Random(0)
    words = [f"{a}{b}" for a in ("queue", "disk", "alert", "node", "cache") for b in ("", "s", "ed", "ing", "er", "ly")]
    paragraphs = [f"Runbook {i}: " + " ".join(rng.choice(words) for _ in range(40)) + "." for i in range(24)]
    path = tmp_path / "runbooks.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    dataset = services.client.upload_dataset(path, tokenizer_model=str(tiny_model))
    assert dataset.format == "text" and dataset.reader == "txt"
    train = dataset.stats["train"]
    assert train["loss_tokens"] == train["tokens"] > 0
    job = create(services, tiny_model, dataset.name, max_steps=2)
    events = watch(services, job.name)
    states = [e.state_change.state for e in events if e.WhichOneof("payload") == "state_change"]
    assert states[-1] == pb.JOB_STATE_SUCCEEDED, events
    logs = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    assert any(line.startswith("test loss of the base model: ") for line in logs), logs
    assert any(line.startswith("test loss of the fine-tuned model: ") for line in logs), logs
    assert not any(e.WhichOneof("payload") == "evaluation" for e in events)
    # Every token of a text example is trained: the steps' loss is over all of them.
    assert all(e.progress.loss > 0 for e in events if e.WhichOneof("payload") == "progress")


def test_a_base_model_folder_outside_the_models_dirs_is_permission_denied(tiny_model, tmp_path):
    import os
    import shutil

    from conftest import Services, ticket_lines

    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_model, models / "inside")
    (models / "link-out").symlink_to(tiny_model, target_is_directory=True)
    running = Services(tmp_path / "services", models_dirs=[models])
    try:
        client = running.client
        data = client.upload_bytes("d.jsonl", ("\n".join(ticket_lines(24)) + "\n").encode())
        dataset = client.create_dataset(data.name).name
        outside = (tiny_model, models / "link-out", models / ".." / os.path.relpath(tiny_model, tmp_path))
        for folder in outside:
            with pytest.raises(grpc.RpcError) as caught:
                create(running, folder, dataset)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, folder
            assert rich_error(caught.value) == (
                "BASE_MODEL_OUTSIDE_MODELS_DIR",
                [("base_model", "a folder outside every --models-dir of the trainer")],
            )
            message = caught.value.details()
            assert str(tiny_model.resolve()) in message and str(models.resolve()) in message
            assert "--models-dir" in message
        assert not client.trainer.ListJobs(pb.ListJobsRequest()).jobs  # nothing stored

        job = create(running, models / "inside", dataset, max_steps=1, evaluate=False)
        assert job.base_model == str(models / "inside")
        watch(running, job.name)
        assert client.trainer.GetJob(pb.GetJobRequest(name=job.name)).job.state == pb.JOB_STATE_SUCCEEDED
    finally:
        running.stop()
