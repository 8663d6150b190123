"""A worker that dies is run again, up to a limit; a worker a dead trainer left behind is ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import ticket_lines
from tunewright.trainer.runner import MAX_WORKER_ATTEMPTS, WORKER_PID, JobRunner, worker_pid, write_pid_file
from tunewright.trainer.store import QUEUED, RUNNING, JobStore


def train_killing_workers(services, tiny_model, kills: int):
    """Runs a 12-step job and SIGKILLs its worker at its 2nd step, ``kills`` times."""
    client = services.client
    dataset = client.create_dataset(client.upload_bytes("k.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name)
    job = client.create_job(dataset.name, base_model=str(tiny_model), epochs=3, batch_size=8, evaluate=False)
    pid_file = services.root / "trainer" / "jobs" / job.name.split("/")[1] / WORKER_PID
    killed, events = [], []
    for event in client.watch_job(job.name):
        events.append(event)
        if event.progress and event.progress.step == 2 and len(killed) < kills:
            pid = worker_pid(pid_file)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return client.get_job(job.name), events, killed


def test_a_killed_worker_is_run_again_and_the_job_succeeds(services, tiny_model):
    job, events, killed = train_killing_workers(services, tiny_model, kills=1)
    assert job.state == "succeeded" and job.progress.step == 12 and len(killed) == 1
    states = [e.state for e in events if e.state]
    assert states == ["queued", "running", "queued", "running", "succeeded"]
    assert any(
        e.log and "killed by signal 9" in e.log and f"run 2 of at most {MAX_WORKER_ATTEMPTS}" in e.log for e in events
    )


def test_a_worker_that_keeps_dying_fails_the_job_after_the_last_run(services, tiny_model):
    job, events, killed = train_killing_workers(services, tiny_model, kills=MAX_WORKER_ATTEMPTS)
    assert len(set(killed)) == MAX_WORKER_ATTEMPTS
    assert job.state == "failed" and job.error.code == "WORKER_CRASHED"
    assert f"{MAX_WORKER_ATTEMPTS} times" in job.error.message and "worker.log" in job.error.message


def test_a_restarted_trainer_ends_the_worker_its_predecessor_left_running(tmp_path):
    store = JobStore(tmp_path / "trainer.sqlite3")
    job, _ = store.create("", "base", "datasets/d", "lora", {}, {})
    assert store.set_state(job.id, RUNNING, only_from=(QUEUED,))
    job_dir = tmp_path / "jobs" / job.id
    job_dir.mkdir(parents=True)
    # Stands in for the worker, in a session of its own as workers are.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    write_pid_file(job_dir / WORKER_PID, orphan.pid)
    # An unrelated process under a stale pid file (the pid reused since) is left alone.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    other, _ = store.create("", "base", "datasets/d", "lora", {}, {})
    store.set_state(other.id, RUNNING, only_from=(QUEUED,))
    (tmp_path / "jobs" / other.id).mkdir()
    write_pid_file(tmp_path / "jobs" / other.id / WORKER_PID, bystander.pid)
    started = (tmp_path / "jobs" / other.id / WORKER_PID).read_text().split()[1]
    (tmp_path / "jobs" / other.id / WORKER_PID).write_text(f"{bystander.pid} {int(started) - 1}\n")

    runner = JobRunner(store, tmp_path / "jobs", "127.0.0.1:1", tmp_path / "cache")
    try:
        runner.start()
        assert orphan.wait(timeout=15) == -signal.SIGTERM
        assert bystander.poll() is None
        logs = [e.payload.get("text", "") for e in store.events_after(job.id, 0) if e.kind == "log"]
        assert (
            "the trainer restarted while this job ran; it was queued again, to resume from its last checkpoint" in logs
        )
    finally:
        runner.stop()
        bystander.kill()
        bystander.wait()


def test_jobs_run_side_by_side_up_to_the_limit_and_the_queue_says_each_place(tmp_path, tiny_model):
    import time

    from tunewright.client import Client
    from tunewright.data.app import start_data
    from tunewright.trainer.app import start_trainer

    data = start_data("127.0.0.1:0", tmp_path / "data")
    trainer, runner = start_trainer(
        "127.0.0.1:0", tmp_path / "trainer", f"127.0.0.1:{data.port}", max_running_jobs=2, models_dirs=[tiny_model]
    )
    client = Client(f"127.0.0.1:{data.port}", f"127.0.0.1:{trainer.port}", "127.0.0.1:1")
    try:
        dataset = client.create_dataset(
            client.upload_bytes("q.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name
        )
        jobs = [
            client.create_job(dataset.name, base_model=str(tiny_model), epochs=3, batch_size=8, evaluate=False)
            for _ in range(4)
        ]
        seen_two_running = False
        positions = set()
        deadline = time.monotonic() + 600
        names = {j.name for j in jobs}
        while True:
            assert time.monotonic() < deadline
            # One ListJobs reads one snapshot: GetJob after GetJob could see a job still
            # running and, a moment later, the one that took its place.
            now = {j.name: j for j in client.list_jobs() if j.name in names}
            if all(j.state.finished for j in now.values()):
                break
            running = [j for j in now.values() if j.state == "running"]
            assert len(running) <= 2
            seen_two_running |= len(running) == 2
            queued = sorted((j for j in now.values() if j.state == "queued"), key=lambda j: j.queue_position)
            assert [j.queue_position for j in queued] == list(range(1, len(queued) + 1))
            # First come, first served: a queued job was created after every running one.
            assert all(q.create_time >= r.create_time for q in queued for r in running)
            positions |= {j.queue_position for j in queued}
            time.sleep(0.2)
        assert seen_two_running and positions >= {1}
        assert all(client.get_job(j.name).state == "succeeded" for j in jobs)
        assert all(client.get_job(j.name).queue_position == 0 for j in jobs)
    finally:
        client.close()
        runner.stop()
        trainer.stop(grace=0)
        data.stop(grace=0)


def test_a_cancel_between_running_and_the_workers_start_stops_the_worker(tmp_path, monkeypatch):
    """CancelJob can arrive after the runner marked the job RUNNING and before its worker
    exists; the job was answered "already finished (RUNNING)". Now the worker is stopped as
    soon as it starts, and the job ends CANCELLED."""
    import threading

    from tunewright.trainer.store import CANCELLED

    store = JobStore(tmp_path / "trainer.sqlite3")
    job, _ = store.create("", "base", "datasets/d", "lora", {}, {})
    runner = JobRunner(store, tmp_path / "jobs", "127.0.0.1:1", tmp_path / "cache")
    at_start, go_on = threading.Event(), threading.Event()

    def held_launch(job_dir, spec, events_fd):
        at_start.set()
        go_on.wait(timeout=30)
        # Stands in for the worker: sleeps until stopped, in its own session as workers are.
        sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
        return subprocess.Popen(sleeper, pass_fds=(events_fd,), start_new_session=True)

    monkeypatch.setattr(runner, "_launch", held_launch)
    running = threading.Thread(target=runner._run, args=(store.get(job.id),))
    running.start()
    assert at_start.wait(timeout=30) and store.get(job.id).state == RUNNING
    assert runner.cancel(job.id)
    go_on.set()
    running.join(timeout=30)
    assert not running.is_alive()
    assert store.get(job.id).state == CANCELLED


def test_a_worker_over_the_memory_limit_is_stopped_and_its_job_fails_out_of_memory(tmp_path, tiny_model):
    """With --memory-limit the trainer stops a worker that passes it (here at once: the
    limit is below what a worker's libraries take), before the kernel's out-of-memory killer
    would choose a process; the job fails OUT_OF_MEMORY with the peak and what to change, and
    is not run again, as a crash would be."""
    from conftest import Services

    limit = 256 * 2**20
    services = Services(tmp_path / "services", models_dirs=[tiny_model.parent], memory_limit_bytes=limit)
    try:
        client = services.client
        data = ("\n".join(ticket_lines(40)) + "\n").encode()
        dataset = client.create_dataset(client.upload_bytes("k.jsonl", data).name)
        job = client.create_job(
            dataset.name,
            base_model=str(tiny_model),
            epochs=3,
            batch_size=8,
            evaluate=False,
            ignore_memory_estimate=True,  # CreateJob would refuse it; this is about a worker that runs
        )
        states = [e.state for e in client.watch_job(job.name) if e.state]
        job = client.get_job(job.name)
    finally:
        services.stop()
    assert states == ["queued", "running", "failed"]
    assert job.error.code == "OUT_OF_MEMORY", job.error
    assert "memory limit (0.25 GiB, --memory-limit)" in job.error.message
    peak = float(job.error.message.split(" GiB resident")[0].rsplit(" ", 1)[1])
    assert peak > 0.25
    assert "micro_batch_size" in job.error.message and "qlora" in job.error.message


def test_memory_sizes_read_as_people_write_them():
    from tunewright.trainer.memory import parse_size

    assert parse_size("8G") == parse_size("8GiB") == parse_size("8gb") == 8 * 2**30
    assert parse_size("512M") == 512 * 2**20 and parse_size("1.5G") == 3 * 2**29 and parse_size("4096") == 4096
    for wrong in ("lots", "-1G", "0", "8X"):
        with pytest.raises(ValueError, match="write it as 8G"):
            parse_size(wrong)
