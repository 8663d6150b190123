"""The fork server starts each worker from a process that has imported the heavy libraries:
a forked worker must behave as a new interpreter's would (its arguments, environment, log,
exit status, own session), and must not outlive a fork server that dies under it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tunewright.core.forkserver import PASSED_FD, ForkServer

# The fork server itself works on any Linux; ``usable`` also keeps callers off it where an
# NVIDIA driver is, which these probes (torch imported, CUDA untouched) do not need.
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the fork server uses Linux's pidfd_open and SOCK_SEQPACKET"
)

# Stands in for tunewright.trainer.worker: reports what it sees on its events descriptor,
# writes a line to its log, then sleeps when asked to and exits with the code it was given.
PROBE = """
import json, os, sys, time
events = PASSED_FD
seen = {
    "argv": sys.argv[1:],
    "probe": os.environ.get("PROBE"),
    "own_session": os.getsid(0) == os.getpid(),
    "torch_preloaded": "torch" in sys.modules,
    "stdin": sys.stdin.read(),
}
os.write(events, json.dumps(seen).encode() + b"\\n")
os.close(events)
print("probe: to the log", flush=True)
if "sleep" in sys.argv:
    time.sleep(120)
sys.exit(int(sys.argv[1]))
"""


def probe_server(folder) -> ForkServer:
    """A fork server that can run ``probe_worker``, from ``folder``."""
    (folder / "probe_worker.py").write_text(textwrap.dedent(PROBE).replace("PASSED_FD", str(PASSED_FD)))
    return ForkServer({**os.environ, "PYTHONPATH": str(folder)}, ["torch"])


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probe")


@pytest.fixture(scope="module")
def forkserver(probe_folder):
    server = probe_server(probe_folder)
    yield server
    server.close()


def launch(server, tmp_path, *args: str, env: dict[str, str] | None = None, target: str = "probe_worker"):
    """Forks the probe (a module, or a script's path) with ``args``; returns the worker and
    its events, to read."""
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - closed below, after the launch
    read, write = os.pipe()
    try:
        worker = server.launch(target, list(args), env or {}, log.fileno(), log.fileno(), passed=write)
    finally:
        os.close(write)
        log.close()
    return worker, os.fdopen(read, "rb")


def test_a_forked_process_gets_its_arguments_environment_log_and_exit_code(forkserver, probe_folder, tmp_path):
    worker, events = launch(forkserver, tmp_path, "3", "x y", env={"PROBE": "this job's"})
    with events:
        seen = json.loads(events.readline())
    assert worker.wait(timeout=60) == 3
    assert seen["argv"] == ["3", "x y"]
    assert seen["probe"] == "this job's" and seen["own_session"] and seen["torch_preloaded"]
    assert seen["stdin"] == ""
    assert "probe: to the log" in (tmp_path / "worker.log").read_text()
    # The environment is the request's alone: the next process does not see this one's. A
    # script runs as ``python SCRIPT`` would.
    other, events = launch(forkserver, tmp_path, "0", target=str(probe_folder / "probe_worker.py"))
    with events:
        assert json.loads(events.readline())["probe"] is None
    assert other.wait(timeout=60) == 0


def test_a_signal_to_the_process_group_is_the_exit_status_every_waiting_thread_gets(forkserver, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    worker, events = launch(forkserver, tmp_path, "0", "sleep")
    with events:
        events.readline()
    assert worker.poll() is None
    with ThreadPoolExecutor(1) as pool:
        # As the runner's thread waits for the worker while a cancel waits to see it stop.
        waiting = pool.submit(worker.wait)
        with pytest.raises(subprocess.TimeoutExpired):
            worker.wait(timeout=0.2)
        os.killpg(worker.pid, signal.SIGKILL)
        assert worker.wait(timeout=60) == -signal.SIGKILL
        assert waiting.result(timeout=60) == -signal.SIGKILL


def test_a_worker_does_not_outlive_its_dead_fork_server(tmp_path):
    """Its exit status dies with the fork server, so the runner could not tell how it ended:
    the worker is stopped, and counts as killed (its job resumes from its last checkpoint)."""
    server = probe_server(tmp_path)
    try:
        worker, events = launch(server, tmp_path, "0", "sleep")
        with events:
            events.readline()
        os.kill(server.pid, signal.SIGKILL)
        assert worker.wait(timeout=60) == -signal.SIGKILL
        assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        server.close()


def test_closing_ends_the_fork_server_and_a_launch_after_starts_another(tmp_path):
    server = probe_server(tmp_path)
    try:
        worker, events = launch(server, tmp_path, "0")
        with events:
            events.readline()
        assert worker.wait(timeout=60) == 0
        first = server.pid
        server.close()
        assert server.pid is None and not psutil.pid_exists(first)
        worker, events = launch(server, tmp_path, "0")
        with events:
            events.readline()
        assert worker.wait(timeout=60) == 0 and server.pid not in (None, first)
    finally:
        server.close()
