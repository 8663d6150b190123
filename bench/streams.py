"""Many watchers on one trainer: health and GetJob latency while 1,000 WatchJob streams are open.

    .venv/bin/python bench/streams.py [--streams 1000] [--seconds 30] [--watch running|queued] [--json FILE]

Starts the three services as `tunewright up` does (``tunewright.stack.Stack``), uploads the
demo's support tickets and starts a default `lora` job on SmolLM2-135M, so the trainer's
worker trains on the machine's cores the whole time (the window starts once the job has
trained a step). Then it opens ``--streams`` WatchJob
streams on that job (``--watch queued``: on a second job, queued behind it, as a dashboard's
tabs watch what is waiting), spread over 16 client channels (grpc.aio, one process), waits until
every stream has had its first event, and for ``--seconds`` calls the health check and
GetJob in turn, every 50 ms, on a channel of their own, recording each latency and status.
One CreateJob is timed at the start and one at the end of that window. Every watcher of the
running job keeps reading its events (a progress event per training step) throughout; the
watchers of a queued job get none. The trainer process's CPU time over the window says what
the watchers cost it.

A benchmark, not a test: tests never assert timings. Figures go in bench/README.md, with the
command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
TICKETS = REPO / "examples" / "support_tickets" / "tickets.jsonl"
CHANNELS = 16


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def measure(address: str, job: str, create, streams: int, seconds: float, trainer_pid: int) -> dict:
    from tunewright.trainer.v1 import trainer_service_pb2 as pb
    from tunewright.trainer.v1 import trainer_service_pb2_grpc as pb_grpc

    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    control = grpc.aio.insecure_channel(address)
    trainer, health = pb_grpc.TrainerServiceStub(control), health_pb2_grpc.HealthStub(control)
    received = [0] * streams
    failures: list[str] = []
    everyone = asyncio.Event()
    started = time.monotonic()

    async def watch(i: int) -> None:
        try:
            async for _event in pb_grpc.TrainerServiceStub(channels[i % CHANNELS]).WatchJob(
                pb.WatchJobRequest(name=job)
            ):
                received[i] += 1
                if received[i] == 1 and all(received):
                    everyone.set()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                failures.append(error.code().name)

    async def timed(call) -> tuple[float, object]:
        began = time.perf_counter()
        reply = await call
        return (time.perf_counter() - began) * 1000, reply

    watchers = [asyncio.create_task(watch(i)) for i in range(streams)]
    try:
        await asyncio.wait_for(everyone.wait(), timeout=300)
        opened_seconds = time.monotonic() - started
        before = [received[:]]
        cpu_before, window_start = cpu_seconds(trainer_pid), time.monotonic()
        create_ms = [(await timed(trainer.CreateJob(create(), timeout=30)))[0]]
        health_ms, health_status, get_ms = [], [], []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ms, reply = await timed(health.Check(health_pb2.HealthCheckRequest(), timeout=5))
            health_ms.append(ms)
            health_status.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            get_ms.append((await timed(trainer.GetJob(pb.GetJobRequest(name=job), timeout=5)))[0])
            await asyncio.sleep(0.05)
        create_ms.append((await timed(trainer.CreateJob(create(), timeout=30)))[0])
        trainer_cpu = (cpu_seconds(trainer_pid) - cpu_before) / (time.monotonic() - window_start)
        during = [after - start for after, start in zip(received, before[0], strict=True)]
        return {
            "streams": streams,
            "all_open_after_seconds": round(opened_seconds, 2),
            "stream_failures": failures,
            "events_per_stream_during_window": {"min": min(during), "median": statistics.median(during)},
            "health_checks": len(health_ms),
            "health_not_serving": sum(status != "SERVING" for status in health_status),
            "health_ms": {"p50": percentile(health_ms, 0.5), "p99": percentile(health_ms, 0.99), "max": max(health_ms)},
            "get_job_ms": {"p50": percentile(get_ms, 0.5), "p99": percentile(get_ms, 0.99), "max": max(get_ms)},
            "create_job_ms": create_ms,
            "trainer_cpu_share": round(trainer_cpu, 3),  # CPU seconds of the trainer per second
        }
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for channel in [*channels, control]:
            await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--watch", choices=("running", "queued"), default="running")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tunewright.client import Client
    from tunewright.stack import Stack, free_port
    from tunewright.trainer.v1 import trainer_service_pb2 as pb

    with tempfile.TemporaryDirectory(prefix="tunewright-streams-") as state:
        ports = {s: free_port() for s in ("data", "trainer", "serve")}
        stack = Stack(Path(state), ports=ports, log_dir=Path(state) / "logs")
        stack.start()
        client = Client(stack.address("data"), stack.address("trainer"), stack.address("serve"))
        try:
            dataset = client.upload_dataset(TICKETS)
            job = client.create_job(dataset.name, max_steps=1000, evaluate=False)
            while client.get_job(job.name).progress is None:  # training, not loading
                time.sleep(0.5)

            watched = job if args.watch == "running" else client.create_job(dataset.name, evaluate=False)

            def create() -> pb.CreateJobRequest:
                return pb.CreateJobRequest(dataset=dataset.name, method="lora", base_model=job.base_model)

            trainer = stack.processes["trainer"].pid
            result = asyncio.run(
                measure(stack.address("trainer"), watched.name, create, args.streams, args.seconds, trainer)
            )
            result["watched"] = args.watch
            result["job_state_after"] = str(client.get_job(job.name).state)
        finally:
            for found in client.list_jobs():
                if found.state in ("queued", "running"):
                    client.cancel_job(found.name)
            client.close()
            stack.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if result["stream_failures"] or result["health_not_serving"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
