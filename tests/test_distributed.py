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


def test_killing_torchrun_takes_its_processes_with_it(services, tiny_model):
    """torchrun starts each process in a session of its own: SIGKILL to torchrun reaches none
    of them, so each asks the kernel to kill it when torchrun dies (worker.die_with_torchrun)."""
    import os
    import signal

    import psutil

    from tunewright.trainer.runner import WORKER_PID, worker_pid

    client = services.client
    dataset = client.create_dataset(client.upload_bytes("k.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name)
    # Long enough that the processes are still training when torchrun is killed.
    job = client.create_job(dataset.name, base_model=str(tiny_model), processes=2, epochs=100, evaluate=False)
    pid_file = services.root / "trainer" / "jobs" / job.name.split("/")[1] / WORKER_PID
    ranks: list[psutil.Process] = []
    noticed = False
    try:
        for event in client.watch_job(job.name):
            if event.progress and not ranks:
                launcher = psutil.Process(worker_pid(pid_file))
                ranks = launcher.children()
                assert len(ranks) == 2 and all(r.is_running() for r in ranks)
                os.kill(launcher.pid, signal.SIGKILL)
                _, alive = psutil.wait_procs(ranks, timeout=20)
                assert not alive, f"processes {[p.pid for p in alive]} outlived torchrun"
            # The trainer sees the end as any killed worker's, and runs the job again.
            if event.log and "killed by signal 9" in event.log:
                noticed = True
                break
    finally:
        client.cancel_job(job.name)
        for rank in ranks:  # only if the test failed: none of ours may outlive it
            if rank.is_running():
                rank.kill()
    assert noticed
