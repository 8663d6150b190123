"""/metrics on each service: the documented series move when a job runs, a model is exported
and it answers; every series in the registries is documented in docs/metrics.md."""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, ticket_lines
from tunewright.client import ServiceError
from tunewright.core.metrics import Metrics

TRAINER = "/tunewright.trainer.v1.TrainerService/"


def scrape(server) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_series_move_when_a_job_runs_a_model_is_exported_and_answers(services, tiny_model):
    client = services.client
    dataset = client.create_dataset(client.upload_bytes("m.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name)
    trainer_before, serve_before = scrape(services.trainer), scrape(services.serve)

    job = client.create_job(dataset.name, base_model=str(tiny_model), epochs=1, batch_size=8, eval_max_new_tokens=4)
    assert client.wait_job(job.name).state == "succeeded"
    with pytest.raises(ServiceError) as caught:
        client.get_job("jobs/job-nope")
    assert caught.value.code == "NOT_FOUND"

    trainer = scrape(services.trainer)
    assert value(trainer, "tunewright_rpc_requests_total", method=TRAINER + "CreateJob", code="OK") == (
        value(trainer_before, "tunewright_rpc_requests_total", method=TRAINER + "CreateJob", code="OK") + 1
    )
    assert value(trainer, "tunewright_rpc_requests_total", method=TRAINER + "GetJob", code="NOT_FOUND") >= 1
    assert value(trainer, "tunewright_rpc_duration_seconds_count", method=TRAINER + "CreateJob") >= 1
    assert (
        value(trainer, "tunewright_jobs", state="succeeded")
        == value(trainer_before, "tunewright_jobs", state="succeeded") + 1
    )
    assert value(trainer, "tunewright_job_queue_length") == 0
    steps = value(trainer, "tunewright_training_steps_total") - value(trainer_before, "tunewright_training_steps_total")
    assert steps == 4
    assert (
        value(trainer, "tunewright_training_loss") > 0 and value(trainer, "tunewright_training_tokens_per_second") > 0
    )
    assert value(trainer, "tunewright_validation_loss") > 0

    model = client.export_model(job.name, format="safetensors")
    answer = client.ask(model.name, [{"role": "user", "content": "Our API is down"}], max_new_tokens=6)
    serve = scrape(services.serve)
    assert value(serve, "tunewright_exports_total", format="safetensors", outcome="ok") == (
        value(serve_before, "tunewright_exports_total", format="safetensors", outcome="ok") + 1
    )
    generated = value(serve, "tunewright_generated_tokens_total", backend="transformers") - value(
        serve_before, "tunewright_generated_tokens_total", backend="transformers"
    )
    assert generated == answer.token_count > 0
    if answer.token_count > 1:
        assert value(serve, "tunewright_generation_tokens_per_second_count", backend="transformers") >= 1
    assert (
        value(
            scrape(services.data),
            "tunewright_rpc_requests_total",
            method="/tunewright.data.v1.DataService/CreateDataset",
            code="OK",
        )
        >= 1
    )


def test_every_series_is_documented():
    documented = set(re.findall(r"`(tunewright_[a-z_]+)`", (REPO / "docs" / "metrics.md").read_text()))
    metrics = Metrics("any")
    metrics.add_job_states(lambda: {})
    # Counters are scraped with a _total suffix, and the docs name them so.
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in metrics.registry.collect()}
    assert len(exposed) == 11 and exposed <= documented, f"undocumented: {sorted(exposed - documented)}"
