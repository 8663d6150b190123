"""State that survives a crash: SQLite transactions, atomic files, requeue on restart."""

from __future__ import annotations

import pytest

from tunewright.core.db import Database
from tunewright.core.files import write_bytes_atomic
from tunewright.trainer.store import QUEUED, RUNNING, JobStore


def test_a_failed_transaction_leaves_nothing_behind(tmp_path):
    db = Database(tmp_path / "t.sqlite3", "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT);")
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO t (v) VALUES ('half')")
        raise RuntimeError("crash between two writes")
    assert db.query("SELECT * FROM t") == []


def test_an_interrupted_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.txt"
    write_bytes_atomic(target, b"old")

    class Boom(Exception):
        pass

    from tunewright.core.files import atomic_writer

    with pytest.raises(Boom), atomic_writer(target) as handle:
        handle.write(b"new but unfinished")
        raise Boom
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_jobs_left_running_by_a_dead_trainer_are_queued_again(tmp_path):
    store = JobStore(tmp_path / "trainer.sqlite3")
    job, created = store.create("r1", "base", "datasets/d", "lora", {}, {})
    assert created
    store.set_state(job.id, RUNNING)
    store.record(job.id, "progress", {"step": 3})

    restarted = JobStore(tmp_path / "trainer.sqlite3")  # a new process opening the same file
    assert restarted.requeue_interrupted() == [job.id]
    again = restarted.get(job.id)
    assert again.state == QUEUED and again.progress is None and again.start_time is None
    kinds = [(e.kind, e.payload.get("state")) for e in restarted.events_after(job.id, 0)]
    assert kinds[-2:] == [("log", None), ("state", QUEUED)]
    assert restarted.create("r1", "base", "datasets/d", "lora", {}, {}) == (again, False)


def test_a_jobs_place_in_the_queue_comes_with_its_row(tmp_path):
    store = JobStore(tmp_path / "trainer.sqlite3")
    first, second, third = (store.create(f"r{i}", "base", "datasets/d", "lora", {}, {})[0] for i in range(3))
    assert [j.queue_position for j in (first, second, third)] == [1, 2, 3]
    store.set_state(first.id, RUNNING)
    jobs, _ = store.list(10, "")
    assert {j.id: j.queue_position for j in jobs} == {first.id: 0, second.id: 1, third.id: 2}
    assert store.get(third.id).queue_position == 2 and store.next_queued().id == second.id


def test_a_watcher_wakes_for_its_own_job_only(tmp_path):
    """The steps of a running job must not wake, one by one, the thousand streams watching
    another job."""
    import threading
    import time

    store = JobStore(tmp_path / "trainer.sqlite3")
    watched, busy = (store.create(f"r{i}", "base", "datasets/d", "lora", {}, {})[0] for i in range(2))
    seen = store.job_generation(watched.id)
    woke: list[tuple[int, float]] = []

    def wait() -> None:
        start = time.monotonic()
        woke.append((store.wait_for_job_change(watched.id, seen, timeout=1.0), time.monotonic() - start))

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.05)
    store.set_state(busy.id, RUNNING)
    for step in range(1, 20):
        store.record(busy.id, "progress", {"step": step})
    thread.join()
    ((generation, waited),) = woke
    assert generation == seen and waited >= 0.9  # slept through all of them, to its timeout

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.05)
    store.set_state(watched.id, RUNNING)
    thread.join()
    generation, waited = woke[1]
    assert generation > seen and waited < 0.9
    assert not store._job_changed  # no condition is kept once its last watcher has gone
