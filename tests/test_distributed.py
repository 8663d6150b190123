"""A job in two processes (torchrun, DDP over gloo on the CPU) trains as the same job in one."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from conftest import ticket_lines
from tunewright.client import ServiceError


def test_two_processes_under_torchrun_train_as_one_process_does(services, tiny_model):
    client = services.client
    dataset = client.create_dataset(client.upload_bytes("d.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name)
    # float32, so that the only difference is the order in which the two halves' gradients add up.
    settings = dict(base_model=str(tiny_model), epochs=2, batch_size=8, evaluate=False, precision="fp32")
    runs = {}
    for processes in (1, 2):
        job = client.create_job(dataset.name, processes=processes, **settings)
        events = list(client.watch_job(job.name))
        finished = client.get_job(job.name)
        assert finished.state == "succeeded", finished.error
        job_id = job.name.split("/")[1]
        runs[processes] = (
            [e.progress for e in events if e.progress],
            [e.log for e in events if e.log],
            load_file(
                services.root / "trainer" / "jobs" / job_id / "artifact" / "adapter" / "adapter_model.safetensors"
            ),
        )
    (one, _, one_weights), (two, two_logs, two_weights) = runs[1], runs[2]
    assert any(line.startswith("training in 2 processes (torch.distributed, gloo)") for line in two_logs)
    assert [p.step for p in two] == [p.step for p in one] == list(range(1, 9))
    # Each step reports the whole batch: its mean loss and all its tokens.
    assert [p.loss for p in two] == pytest.approx([p.loss for p in one], rel=1e-5)
    assert sum(1 for p in two if p.tokens_per_second > 0) == 8
    assert one_weights.keys() == two_weights.keys()
    # The halves' gradients add up in another order than one pass's, a rounding difference
    # that AdamW's normalised steps carry into the weights: at most 4e-5 of a tensor's norm
    # here (o_proj's adapter in the last layer), a tenth of a millionth for most.
    for name, expected in one_weights.items():
        assert float((two_weights[name] - expected).norm() / expected.norm()) < 1e-4, name


def test_more_processes_than_examples_in_a_batch_is_refused(services, tiny_model):
    client = services.client
    dataset = client.create_dataset(client.upload_bytes("r.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name)
    with pytest.raises(ServiceError) as refused:
        client.create_job(dataset.name, base_model=str(tiny_model), batch_size=4, processes=8)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert refused.value.violations[0][0] == "hyperparameters.processes"
