"""The estimate before a job (EstimateJob, `tunewright jobs estimate`), and CreateJob's refusal
of a job that would not fit. The estimate's accuracy on real sizes is bench/memory.py's to
measure; here the bounds are loose and the arithmetic is checked against real models."""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import Services, ticket_lines
from tunewright.client import ServiceError
from tunewright.contract import Hyperparameters
from tunewright.estimate import DataShape, ModelShape, estimate, expected_max
from tunewright.methods import Runtime
from tunewright.parameters import build_config
from tunewright.plugin_manager import get_method, load_methods

GIB = 2**30
CPU = Runtime("cpu", bf16=False)


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("lora", {}),
        ("lora", {"r": 4, "target_modules": ["q_proj", "v_proj"]}),
        ("full", {}),
        ("full", {"train_embeddings": False}),
        ("prefix", {"num_virtual_tokens": 7}),
    ],
)
def test_the_footprint_counts_what_the_method_really_trains(tiny_model, name, parameters):
    """The parameters a method's footprint says it trains are the ones its prepared model
    has with requires_grad, and the model's size is what the config says."""
    from tunewright.core.basemodel import load_model

    method = get_method(load_methods(), name)
    config = build_config(method, parameters)
    shape = ModelShape.from_config(json.loads((tiny_model / "config.json").read_text()))
    base = load_model(tiny_model)
    assert shape.params == sum(p.numel() for p in base.parameters())
    prepared = method.prepare(base, config)
    trained = sum(p.numel() for p in prepared.parameters() if p.requires_grad)
    assert method.footprint(shape, config, CPU).trainable == trained


def test_the_estimate_grows_with_the_pass_and_shrinks_with_its_fixes():
    """Plain arithmetic on SmolLM2-135M's shape: activations follow the largest pass, a
    smaller micro batch and checkpointing take less memory, qlora's frozen linear layers are
    about an eighth of float32's, and full fine-tuning carries AdamW's state for every weight."""
    shape = ModelShape(
        hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64, vocab=49152, tied=True
    )
    assert 134e6 < shape.params < 135e6
    data = DataShape(train_examples=400, mean_tokens=60, max_tokens=90, mean_loss_tokens=12)
    methods = load_methods()

    def peak(method: str, flops: float = 1e11, **changes):
        m = get_method(methods, method)
        config = build_config(m, changes.pop("parameters", {}))
        return estimate(shape, m.footprint(shape, config, CPU), data, Hyperparameters(**changes), CPU, flops)

    lora = peak("lora")
    assert lora.largest_pass == (8, 90) and lora.steps == 100
    # A quarter of the rows, a quarter of the activations; the gradients, accumulating over
    # the four passes, now stay beside them.
    gradients = (
        4 * get_method(methods, "lora").footprint(shape, build_config(get_method(methods, "lora"), {}), CPU).trainable
    )
    assert peak("lora", micro_batch_size=2).breakdown["activations and gradients"] - gradients == pytest.approx(
        lora.breakdown["activations and gradients"] / 4, rel=0.01
    )
    assert peak("lora", max_seq_length=45).largest_pass == (8, 45)
    embeddings = 4 * shape.embedding_params  # qlora keeps them float32
    qlora_linears = peak("qlora").breakdown["weights"] - embeddings
    assert qlora_linears < (lora.breakdown["weights"] - embeddings) / 5  # the adapters are float32 in both
    assert peak("qlora").peak_bytes < lora.peak_bytes
    full = peak("full")
    assert full.breakdown["optimizer state"] == pytest.approx(2 * 4 * shape.params, rel=0.001)
    assert peak("full", parameters={"gradient_checkpointing": True}).peak_bytes < full.peak_bytes
    # Time: twice the host's speed, about half the time a step.
    assert peak("lora", flops=2e11).seconds_per_step < 0.6 * lora.seconds_per_step
    assert lora.training_seconds == pytest.approx(lora.steps * lora.seconds_per_step)
    # The longest of 8 draws from lengths 10..100 is near the top.
    assert 85 < expected_max([(length, 1) for length in range(10, 101)], 8, 0) <= 100


def test_the_estimate_is_near_a_measured_tiny_job(tmp_path, tiny_model):
    """EstimateJob against a job that then runs: peak memory and tokens per second within a
    loose factor of what the job reports (the tiny model's figures are mostly the runtime's
    and Python's; bench/memory.py measures the real sizes)."""
    services = Services(tmp_path / "services", models_dirs=[tiny_model.parent])
    try:
        client = services.client
        data = ("\n".join(ticket_lines(64)) + "\n").encode()
        file = client.upload_bytes("tickets.jsonl", data)
        dataset = client.create_dataset(file.name, tokenizer_model=str(tiny_model))
        settings = dict(base_model=str(tiny_model), epochs=2, batch_size=8, evaluate=False)
        found = client.estimate_job(dataset.name, **settings)
        job = client.create_job(dataset.name, **settings)
        progress = [e.progress for e in client.watch_job(job.name) if e.progress]
        job = client.get_job(job.name)
    finally:
        services.stop()
    assert job.state == "succeeded", job.error
    assert found.fits and found.steps == len(progress) and not found.fixes
    assert sum(found.breakdown.values()) == found.peak_memory_bytes
    measured_peak = max(p.peak_memory_bytes for p in progress)
    assert 0.6 < found.peak_memory_bytes / measured_peak < 1.6, (found.peak_memory_bytes, measured_peak)
    measured_speed = statistics.median(p.tokens_per_second for p in progress[1:])
    assert 0.33 < found.tokens_per_second / measured_speed < 3, (found.tokens_per_second, measured_speed)


def test_a_job_that_would_not_fit_is_refused_with_what_would(tmp_path, tiny_model):
    """With --memory-limit 2G, the default model at a batch of 64 in one pass does not fit:
    CreateJob refuses it with RESOURCE_EXHAUSTED, the estimate and the fixes; EstimateJob
    lists the same fixes; the smallest micro batch that fits is accepted."""
    services = Services(tmp_path / "services", models_dirs=[tiny_model.parent], memory_limit_bytes=2 * GIB)
    try:
        client = services.client
        data = ("\n".join(ticket_lines(80)) + "\n").encode()
        dataset = client.create_dataset(client.upload_bytes("tickets.jsonl", data).name)
        with pytest.raises(ServiceError) as refused:
            client.create_job(dataset.name, batch_size=64, evaluate=False)
        error = refused.value
        assert error.code == "RESOURCE_EXHAUSTED" and error.reason == "JOB_DOES_NOT_FIT"
        assert "would need about" in error.message and "the trainer's --memory-limit is 2.00 GiB" in error.message
        assert "hyperparameters.micro_batch_size=" in error.message  # the fixes that fit, each estimated
        assert ("hyperparameters.micro_batch_size", "passes of") in [(f, w[:9]) for f, w in error.violations]
        assert client.list_jobs() == []

        found = client.estimate_job(dataset.name, batch_size=64, evaluate=False)
        assert not found.fits and found.memory_limit_bytes == 2 * GIB
        assert found.peak_memory_bytes > 2 * GIB and found.largest_pass_rows == 64
        changes = [f.change.partition("=")[0] for f in found.fixes]
        assert changes[0] == "hyperparameters.micro_batch_size" and found.fixes[0].fits  # what fits first
        assert {"method", "hyperparameters.gradient_checkpointing"} <= set(changes)
        micro = found.fixes[0]
        assert micro.fits and micro.peak_memory_bytes <= 2 * GIB
        size = int(micro.change.partition("=")[2])

        job = client.create_job(dataset.name, batch_size=64, micro_batch_size=size, evaluate=False)
        client.cancel_job(job.name)
        # Asked to, the trainer queues it anyway (its worker is still watched).
        job = client.create_job(dataset.name, batch_size=64, evaluate=False, ignore_memory_estimate=True)
        client.cancel_job(job.name)

        # gradient_checkpointing "auto" turns it on where that makes the job fit, and only there.
        def peak(**settings) -> int:
            return client.estimate_job(dataset.name, batch_size=16, evaluate=False, **settings).peak_memory_bytes

        off, on = peak(gradient_checkpointing="off"), peak(gradient_checkpointing="on")
        assert on < off
        services.runner.memory_limit_bytes = (on + off) // 2
        assert peak() == on and peak(gradient_checkpointing="off") == off
        job = client.create_job(dataset.name, batch_size=16, evaluate=False)
        client.cancel_job(job.name)
        assert job.hyperparameters["gradient_checkpointing"] == "on"
        services.runner.memory_limit_bytes = 2 * off
        job = client.create_job(dataset.name, batch_size=16, evaluate=False)
        client.cancel_job(job.name)
        assert job.hyperparameters["gradient_checkpointing"] == "off"
    finally:
        services.stop()


def test_a_built_in_model_is_estimated_from_its_gguf_header_before_it_is_converted(tmp_path):
    """No conversion, no weights: the built-in model's shape comes from its GGUF metadata,
    and the same as its converted config.json says (checked against SmolLM2-135M's)."""
    from tunewright.core.basemodel import DEFAULT_BASE_MODEL, base_model_config

    config = base_model_config(DEFAULT_BASE_MODEL, tmp_path)
    assert not (tmp_path / DEFAULT_BASE_MODEL).exists()
    shape = ModelShape.from_config(config)
    assert (shape.hidden, shape.intermediate, shape.layers, shape.heads, shape.kv_heads) == (576, 1536, 30, 9, 3)
    assert shape.vocab == 49152 and shape.tied and shape.head_dim == 64
    assert base_model_config(DEFAULT_BASE_MODEL, tmp_path) == config  # now from the cache
