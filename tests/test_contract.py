"""The typed contract between trainer, worker and serve: strict in what it reads, and the
serve store's records carried forward across a schema change."""

from __future__ import annotations

import json
import sqlite3

import msgspec
import pytest

from tunewright import contract
from tunewright.contract import (
    Done,
    Evaluation,
    Failed,
    Hyperparameters,
    JobSpec,
    Log,
    Manifest,
    Progress,
    Score,
    Validation,
)
from tunewright.core.errors import FailedPrecondition


def spec(**changes) -> JobSpec:
    values = dict(
        job_id="job-1",
        base_model="smollm2-135m-instruct",
        dataset="datasets/ds-1",
        method="lora",
        method_parameters={"r": 8},
        hyperparameters=Hyperparameters(epochs=1),
        data_service="127.0.0.1:1",
        model_cache="/tmp/cache",
    )
    return JobSpec(**{**values, **changes})


def test_a_job_spec_round_trips_and_refuses_unknown_or_mistyped_fields():
    assert contract.from_json(contract.to_json(spec()), JobSpec) == spec()
    data = json.loads(contract.to_json(spec()))
    with pytest.raises(msgspec.ValidationError, match="unknown field `epochz`"):
        contract.from_json(json.dumps({**data, "hyperparameters": {"epochz": 3}}), JobSpec)
    with pytest.raises(msgspec.ValidationError, match=r"\$.hyperparameters.epochs"):
        contract.from_json(json.dumps({**data, "hyperparameters": {"epochs": "three"}}), JobSpec)
    with pytest.raises(msgspec.ValidationError, match="missing required field `dataset`"):
        contract.from_json(json.dumps({k: v for k, v in data.items() if k != "dataset"}), JobSpec)


def test_worker_events_are_tagged_and_strict():
    events = [
        Progress(step=1, total_steps=2, epoch=0.5, loss=1.5, learning_rate=1e-3, tokens_per_second=10.0),
        Evaluation(
            example_count=2,
            base=Score(loss=2.0, exact_match=0.0, first_line_match=0.0),
            tuned=Score(loss=1.0, exact_match=0.5, first_line_match=0.5),
        ),
        Validation(step=2, epoch=1.0, loss=1.25),
        Log(text="hello"),
        Failed(code="X", message="y"),
        Done(),
    ]
    for event in events:
        line = contract.encode_event(event)
        assert line.endswith(b"\n") and contract.decode_event(line) == event
    assert [contract.event_kind(e) for e in events] == ["progress", "evaluation", "validation", "log", "error", "done"]
    assert contract.event_payload(events[3]) == {"text": "hello"}
    with pytest.raises(msgspec.ValidationError):
        contract.decode_event(b'{"kind": "progress", "step": 1}')
    with pytest.raises(msgspec.ValidationError):
        contract.decode_event(b'{"kind": "celebration"}')


def test_serve_refuses_an_artifact_from_a_newer_release(tmp_path):
    from tunewright.serve.export import read_manifest

    manifest = Manifest(
        format_version=contract.FORMAT_VERSION,
        job_id="job-1",
        base_model="b",
        method="lora",
        method_parameters={},
        hyperparameters=Hyperparameters(),
        artifact_kind=contract.ArtifactKind.ADAPTER,
        trained="adapter",
    )
    (tmp_path / "manifest.json").write_bytes(contract.to_json(manifest))
    assert read_manifest(tmp_path, "jobs/job-1") == manifest
    newer = {**json.loads(contract.to_json(manifest)), "format_version": 99, "something_new": 1}
    (tmp_path / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(FailedPrecondition) as caught:
        read_manifest(tmp_path, "jobs/job-1")
    assert caught.value.reason == "ARTIFACT_TOO_NEW" and "upgrade the serve service" in caught.value.message
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(FailedPrecondition) as caught:
        read_manifest(tmp_path, "jobs/job-1")
    assert caught.value.reason == "ARTIFACT_UNREADABLE"


def test_a_serve_database_from_before_formats_keeps_its_models(tmp_path):
    from tunewright.serve.store import SCHEMA, ModelStore

    path = tmp_path / "serve.sqlite3"
    with sqlite3.connect(path) as conn:  # as the release before export formats left it
        conn.executescript(SCHEMA)
        conn.execute(
            "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("old", 1, "jobs/j", "b", "lora", "/m", '[["Modelfile", 10]]', "FROM .", "req-1", "2026-11-23T00:00:00Z"),
        )
    store = ModelStore(path)
    old = store.get("old")
    # It was a merged safetensors folder, which is what "safetensors" names now.
    assert (old.format, old.method_parameters, old.max_divergence, old.files) == (
        "safetensors",
        {},
        None,
        [("Modelfile", 10)],
    )
    assert (old.gguf, old.chat_template, old.notes, old.pushes, old.system_prompt) == (None, None, [], [], None)
    assert store.by_request("req-1") == old
    reopened = ModelStore(path)  # migrations run once
    assert reopened.get("old") == old
    assert reopened.db.query_one("PRAGMA user_version")[0] == 3
