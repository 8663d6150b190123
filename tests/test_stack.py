"""`tunewright up`: three processes, separate data directories, health, reflection, a clean
stop on SIGTERM; and the Node.js client's whole flow against them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import CLI, REPO
from tunewright.stack import Stack, free_port

SERVICES = {
    "data": "tunewright.data.v1.DataService",
    "trainer": "tunewright.trainer.v1.TrainerService",
    "serve": "tunewright.serve.v1.ServeService",
}


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    ports = {name: free_port() for name in SERVICES}
    metrics_ports = {name: free_port() for name in SERVICES}
    # The tiny model is built elsewhere under pytest's temporary root.
    command = [CLI, "up", "--state-dir", str(state), "--models-dir", str(tmp_path_factory.getbasetemp())]
    command += ["--memory-limit", "20G"]  # passed on to the trainer
    for name in SERVICES:
        command += [f"--{name}-port", str(ports[name]), f"--{name}-metrics-port", str(metrics_ports[name])]
    log = open(state / "up.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    stack = Stack(state, ports=ports)
    stack.processes = {name: process for name in SERVICES}  # wait on the `up` process while polling health
    try:
        for name in SERVICES:
            stack.wait_serving(name, timeout=120)
        stack.metrics_ports = metrics_ports
        yield process, stack, state
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log.close()


def test_three_processes_with_their_own_data_directories(up):
    process, stack, state = up
    children = psutil.Process(process.pid).children()
    service_args = sorted(next(a for a in c.cmdline() if a.startswith("tunewright.")) for c in children)
    assert service_args == ["tunewright.data", "tunewright.serve", "tunewright.trainer"]
    assert len({c.pid for c in children}) == 3
    trainer = next(c.cmdline() for c in children if "tunewright.trainer" in c.cmdline())
    assert trainer[trainer.index("--memory-limit") + 1] == "20G"
    assert (state / "data" / "data.sqlite3").is_file()
    assert (state / "trainer" / "trainer.sqlite3").is_file()
    assert (state / "serve" / "serve.sqlite3").is_file()


@pytest.mark.parametrize("service", list(SERVICES))
def test_health_says_serving_and_reflection_lists_the_service(up, service):
    _, stack, _ = up
    with grpc.insecure_channel(stack.address(service)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICES[service]):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        listed = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert SERVICES[service] in listed and "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("service", list(SERVICES))
def test_each_process_serves_prometheus_metrics(up, service):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    _, stack, _ = up
    with grpc.insecure_channel(stack.address(service)) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics", timeout=10) as reply:
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}
    checks = [
        s.value
        for s in families["tunewright_rpc_requests"].samples
        if s.labels == {"method": "/grpc.health.v1.Health/Check", "code": "OK"}
    ]
    assert checks and checks[0] >= 1


def test_node_client_runs_the_whole_flow(up, tiny_model):
    _, stack, _ = up
    node = shutil.which("node")
    assert node, "Node.js is needed for this test (the README lists it)"
    client_dir = REPO / "examples" / "node"
    assert (client_dir / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run `make install` (npm ci in examples/node)"
    env = {
        **os.environ,
        "TUNEWRIGHT_DATA_ADDR": stack.address("data"),
        "TUNEWRIGHT_TRAINER_ADDR": stack.address("trainer"),
        "TUNEWRIGHT_SERVE_ADDR": stack.address("serve"),
        "TUNEWRIGHT_BASE_MODEL": str(tiny_model),
        "TUNEWRIGHT_MAX_STEPS": "3",
    }
    result = subprocess.run([node, "client.js"], cwd=client_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "node client flow: OK"
    assert any("succeeded" in line for line in lines)
    assert any(line.startswith("exported models/") for line in lines)
    # Statistics and the cleaning report, read over gRPC from Node.
    train = next(line for line in lines if line.startswith("  stats train: "))
    assert int(train.split()[2]) > 0 and "carry loss" in train
    assert any(line.startswith("  cleaning: read ") for line in lines)
    assert any(line.startswith("  report: ") and line.endswith("change(s) in all") for line in lines)


def test_logs_are_json_lines_bound_with_service_rpc_request_and_job(up):
    from tunewright.data.v1 import data_service_pb2, data_service_pb2_grpc

    _, stack, state = up
    with grpc.insecure_channel(stack.address("data")) as channel:
        stub = data_service_pb2_grpc.DataServiceStub(channel)
        stub.ListDatasets(data_service_pb2.ListDatasetsRequest(), metadata=[("x-request-id", "trace-me-42")])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in (state / "up.log").read_text().splitlines() if line.startswith("{")]
        if any(r.get("request_id") == "trace-me-42" for r in records):
            break
        time.sleep(0.2)
    calls = [r for r in records if r.get("event") == "rpc"]
    traced = next(r for r in calls if r.get("request_id") == "trace-me-42")
    assert traced["service"] == "data" and traced["rpc"].endswith("/ListDatasets") and traced["outcome"] == "OK"
    assert "duration_ms" in traced and "timestamp" in traced
    assert {r["service"] for r in calls} == {"data", "trainer", "serve"}
    created = next(r for r in calls if r["rpc"].endswith("/CreateJob"))
    assert created["job_id"].startswith("job-")


def serving(stack, service: str) -> bool:
    try:
        with grpc.insecure_channel(stack.address(service)) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


@pytest.mark.parametrize("service", list(SERVICES))
def test_a_killed_service_is_back_within_10_s_and_the_others_keep_serving(up, service):
    process, stack, state = up
    child = next(c for c in psutil.Process(process.pid).children() if f"tunewright.{service}" in c.cmdline())
    child.kill()  # SIGKILL: no goodbye
    killed_at = time.monotonic()
    child.wait(timeout=10)
    while not serving(stack, service):
        assert time.monotonic() - killed_at < 10, f"{service} was not back within 10 s"
        assert all(serving(stack, other) for other in SERVICES if other != service)
        time.sleep(0.2)
    assert all(serving(stack, other) for other in SERVICES)
    again = [c for c in psutil.Process(process.pid).children() if f"tunewright.{service}" in c.cmdline()]
    assert len(again) == 1 and again[0].pid != child.pid
    assert f"{service} exited with code -9; restarting in 0 s" in (state / "up.log").read_text()


def test_a_job_survives_ten_worker_kills_and_five_trainer_kills_and_ends_with_the_uninterrupted_weights(up, tiny_model):
    """The fault test. Under `tunewright up`, a job that checkpoints every 2 steps has its
    worker SIGKILLed 10 times and its trainer 5 times, at random steps; some worker kills
    land inside a checkpoint's write. `up` restarts the trainer, which ends the orphaned
    worker; each new worker resumes from the last complete checkpoint. The job succeeds, no
    kill loses more than one checkpoint interval, and the result is bit for bit the job run
    whole."""
    import random

    from safetensors.torch import load_file

    from conftest import ticket_lines
    from tunewright.client import Client
    from tunewright.trainer import checkpoints
    from tunewright.trainer.runner import WORKER_PID, worker_pid

    process, stack, state = up
    client = Client(stack.address("data"), stack.address("trainer"), stack.address("serve"))
    upload = client.upload_bytes("k.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode())
    dataset = client.create_dataset(upload.name)
    # 80 steps: each kill costs the job 2 to 4 steps of progress, so all 15 fit well before the
    # end. One example a pass makes a step slow enough (8 passes) that the watch, which decides
    # when to kill, never falls far behind the worker.
    settings = dict(
        base_model=str(tiny_model), epochs=20, batch_size=8, micro_batch_size=1, evaluate=False, checkpoint_every=2
    )
    whole = client.create_job(dataset.name, **settings)
    list(client.watch_job(whole.name))
    job = client.create_job(dataset.name, **settings)
    job_dir = state / "trainer" / "jobs" / job.name.split("/")[1]
    folder = job_dir / checkpoints.CHECKPOINTS

    def kill_worker(mid_write: bool) -> bool | None:
        """SIGKILLs the worker, once it is writing a checkpoint when ``mid_write``; returns
        whether that write was left torn, or None when the worker had already gone (the
        watch lags the job a little)."""
        try:
            pid = worker_pid(job_dir / WORKER_PID)
        except (FileNotFoundError, IndexError):
            return None
        staging: list[Path] = []
        deadline = time.monotonic() + 10
        while mid_write and not staging and time.monotonic() < deadline:
            staging = list(folder.glob(".step-*.tmp"))
            time.sleep(0.0001)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        while psutil.pid_exists(pid) and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        return bool(staging) and not (folder / staging[0].name[1:].removesuffix(".tmp")).exists()

    def kill_trainer() -> None:
        next(c for c in psutil.Process(process.pid).children() if "tunewright.trainer" in c.cmdline()).kill()

    # Kill k hits the trainer when k % 3 == 2; kills 1, 7 and 13 aim at a checkpoint's write.
    chooser = random.Random(5)
    kills, resumed_at, torn, kill_at = [], [], 0, chooser.randint(3, 4)
    for event in client.watch_job(job.name, reconnect_for=120):
        if event.log and event.log.startswith("resumed from the checkpoint at step "):
            resumed_at.append(int(event.log.split()[6]))
            aim = len(kills) % 6 == 1  # checkpoints are at even steps, and so is every resume
            kill_at = resumed_at[-1] + (4 if aim else chooser.randint(3, 4))
        if event.progress and event.progress.step == kill_at and len(kills) < 15:
            if len(kills) % 3 == 2:
                kill_trainer()
            else:
                outcome = kill_worker(mid_write=len(kills) % 6 == 1)
                if outcome is None:
                    kill_at += 1  # try again at the next step
                    continue
                torn += outcome
            kills.append(kill_at)
            kill_at = -1
    final = client.get_job(job.name)
    client.close()
    assert final.state == "succeeded", final.error
    assert len(kills) == 15 and len(resumed_at) == 15
    assert torn >= 1, "no kill landed inside a checkpoint's write"
    # No kill lost more than one checkpoint interval.
    assert all(killed - resumed <= 2 for killed, resumed in zip(kills, resumed_at, strict=True))
    assert (state / "up.log").read_text().count("trainer exited with code -9") >= 5

    def weights(name: str) -> dict:
        return load_file(state / "trainer" / "jobs" / name.split("/")[1] / "artifact/adapter/adapter_model.safetensors")

    expected, got = weights(whole.name), weights(job.name)
    assert expected.keys() == got.keys()
    assert all((expected[k] == got[k]).all() for k in expected)


def test_sigterm_stops_all_three_gracefully(up):
    process, stack, _ = up
    children = psutil.Process(process.pid).children()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_sigterm_while_the_services_start_leaves_none_behind(tmp_path):
    ports = [str(free_port()) for _ in SERVICES]
    command = [CLI, "up", "--state-dir", str(tmp_path), "--no-metrics", "--data-port", ports[0]]
    command += ["--trainer-port", ports[1], "--serve-port", ports[2]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # the services are starting; `up` is still waiting for their health
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
        if not left:
            break
        time.sleep(0.2)
    assert not left, [p.info["cmdline"] for p in left]


def test_sigterm_to_the_demo_stops_its_services(tmp_path):
    """The demo runs its own three services; a SIGTERM to it must not leave them running."""
    state = tmp_path / "demo"
    command = [CLI, "demo", "--state-dir", str(state), "--results", str(tmp_path / "results.json")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ours() -> list:
        return [p for p in psutil.process_iter(["cmdline"]) if str(state) in " ".join(p.info["cmdline"] or [])]

    deadline = time.monotonic() + 120
    while len(ours()) < 3 and time.monotonic() < deadline:  # the three services have started
        time.sleep(0.5)
    assert len(ours()) >= 3
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ours(), [p.info["cmdline"] for p in ours()]
