"""Starting the three services as separate processes on one machine (``tunewright up``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tunewright.core.security import ChannelSecurity, LocalSecrets, open_channel

DEFAULT_PORTS = {"data": 50051, "trainer": 50052, "serve": 50053}
# Prometheus /metrics over HTTP, as `tunewright up` serves it.
DEFAULT_METRICS_PORTS = {"data": 9451, "trainer": 9452, "serve": 9453}
# `tunewright up` restarts a service that dies: at once, then after 1, 2, 4 ... 30 s while it
# keeps dying; a service up for a minute starts again from no wait.
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    """Three service processes, each with its own data directory under ``state_dir``."""

    state_dir: Path
    host: str = "127.0.0.1"
    ports: dict[str, int] | None = None
    log_dir: Path | None = None
    env: dict[str, str] | None = None
    # Each service's /metrics port; None serves no metrics.
    metrics_ports: dict[str, int] | None = None
    # Tokens and TLS (`tunewright up --secure`): what the services require and present, and
    # what they, and this object's health checks, use to call each other.
    secrets: LocalSecrets | None = None
    mutual_tls: bool = False
    max_running_jobs: int = 1
    # The folders a job's base_model may name (the trainer's --models-dir); None: STATE_DIR/models.
    models_dirs: list[Path] | None = None
    # The trainer's --memory-limit, as written (8G, 512M); None: the host's free memory.
    memory_limit: str | None = None

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self.models_dirs = [Path(folder) for folder in self.models_dirs or [self.state_dir / "models"]]
        self.ports = dict(self.ports or DEFAULT_PORTS)
        self.processes: dict[str, subprocess.Popen] = {}

    def address(self, service: str) -> str:
        return f"{self.host}:{self.ports[service]}"

    def _command(self, service: str) -> list[str]:
        command = [
            sys.executable,
            "-m",
            f"tunewright.{service}",
            "--listen",
            self.address(service),
            "--data-dir",
            str(self.state_dir / service),
        ]
        if service == "trainer":
            command += ["--data-service", self.address("data"), "--max-running-jobs", str(self.max_running_jobs)]
            for folder in self.models_dirs:
                command += ["--models-dir", str(folder)]
            if self.memory_limit:
                command += ["--memory-limit", self.memory_limit]
        if service == "serve":
            command += ["--trainer-service", self.address("trainer")]
        if self.metrics_ports:
            command += ["--metrics-listen", f"{self.host}:{self.metrics_ports[service]}"]
        if self.secrets is not None:
            command += ["--tokens", str(self.secrets.tokens_file)]
            command += [
                "--tls-cert",
                str(self.secrets.path("server.pem")),
                "--tls-key",
                str(self.secrets.path("server.key")),
            ]
            if self.mutual_tls:
                command += ["--client-ca", str(self.secrets.path("ca.pem"))]
        return command

    def channel_security(self) -> ChannelSecurity:
        return self.secrets.channel_security(self.mutual_tls) if self.secrets else ChannelSecurity()

    def _spawn(self, service: str) -> None:
        env = {**os.environ, **(self.env or {}), **self.channel_security().environment()}
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{service}.log", "ab")  # noqa: SIM115 - owned by the child
        self.processes[service] = subprocess.Popen(
            self._command(service), env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
        if output is not None:
            output.close()  # the child has its own copy

    def start(self, timeout: float = 60.0) -> None:
        # The default models folder exists from the start, as a place to put models.
        if self.models_dirs == [self.state_dir / "models"]:
            self.models_dirs[0].mkdir(parents=True, exist_ok=True)
        for service in ("data", "trainer", "serve"):
            self._spawn(service)
        try:
            for service in self.processes:
                self.wait_serving(service, timeout)
        except BaseException:
            self.stop()
            raise

    def wait_serving(self, service: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with open_channel(self.address(service), self.channel_security()) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.processes[service].poll() is not None:
                    raise RuntimeError(f"the {service} service exited with code {self.processes[service].returncode}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the {service} service did not answer on {self.address(service)} within {timeout}s"
                    )
                time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM to each service, newest first; returns their exit codes."""
        codes = {}
        for service in reversed(list(self.processes)):
            process = self.processes[service]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for service, process in self.processes.items():
            try:
                codes[service] = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[service] = process.wait()
        return codes

    def wait(self, on_restart: Callable[[str, str], None] | None = None) -> None:
        """Supervises the services until this process is told to stop: a service that exits
        is started again, at once the first time, then after a backoff that doubles up to
        ``MAX_BACKOFF_SECONDS`` while it keeps dying, and resets once it has stayed up for
        ``STABLE_SECONDS``. The others keep serving meanwhile. ``on_restart(service, why)``
        hears about each restart."""
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
        backoff = dict.fromkeys(self.processes, 0.0)
        started = dict.fromkeys(self.processes, time.monotonic())
        due: dict[str, float] = {}
        while not stopping:
            now = time.monotonic()
            for service, process in self.processes.items():
                if service in due or process.poll() is None:
                    if now - started[service] > STABLE_SECONDS:
                        backoff[service] = 0.0
                    continue
                due[service] = now + backoff[service]
                why = f"exited with code {process.returncode}; restarting in {backoff[service]:.0f} s"
                if on_restart is not None:
                    on_restart(service, why)
                backoff[service] = min(MAX_BACKOFF_SECONDS, max(1.0, 2 * backoff[service]))
            for service, when in list(due.items()):
                if now >= when and not stopping:
                    del due[service]
                    self._spawn(service)
                    started[service] = time.monotonic()
            time.sleep(0.2)
