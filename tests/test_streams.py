"""Many open streams never starve the rest: with the trainer holding its limit of WatchJob
streams, health, GetJob and CreateJob still answer, and one stream more is refused with
RESOURCE_EXHAUSTED. (Latencies under load are measured by bench/streams.py, not here.)"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ticket_lines
from tunewright.core.server import MAX_STREAMS
from tunewright.trainer.v1 import trainer_service_pb2 as pb
from tunewright.trainer.v1 import trainer_service_pb2_grpc as pb_grpc

CHANNELS = 16


async def hold_streams(address: str, job: str, create: pb.CreateJobRequest, count: int) -> dict:
    """Opens ``count`` WatchJob streams on ``job`` over a few channels, waits until each has
    its first event, then calls health, GetJob, CreateJob and one WatchJob more."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    control = grpc.aio.insecure_channel(address)
    trainer, health = pb_grpc.TrainerServiceStub(control), health_pb2_grpc.HealthStub(control)
    streaming: set[int] = set()  # the watchers that have had their first event
    opened = asyncio.Event()

    async def watch(i: int) -> None:
        call = pb_grpc.TrainerServiceStub(channels[i % CHANNELS]).WatchJob(pb.WatchJobRequest(name=job))
        async for _event in call:
            streaming.add(i)
            if len(streaming) == count:
                opened.set()

    watchers = [asyncio.create_task(watch(i)) for i in range(count)]
    try:
        # Until every watcher has had its first event, or one has failed: its error, not a
        # bare timeout, says what went wrong.
        waiting = asyncio.create_task(opened.wait())
        done, _ = await asyncio.wait([waiting, *watchers], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        failed = [task for task in done if task is not waiting]
        if failed:
            failed[0].result()  # raises the watcher's error
            raise AssertionError(f"a WatchJob stream ended early; {len(streaming)} of {count} had their first event")
        assert done, f"after 120 s, {len(streaming)} of {count} WatchJob streams had their first event"
        checks = [await health.Check(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(20)]
        got = await trainer.GetJob(pb.GetJobRequest(name=job), timeout=10)
        created = await trainer.CreateJob(create, timeout=30)
        refused = None
        try:
            extra = pb_grpc.TrainerServiceStub(control).WatchJob(pb.WatchJobRequest(name=job))
            await extra.read()
        except grpc.aio.AioRpcError as error:
            refused = (error.code(), error.details())
        return {
            "streaming": len(streaming),
            "health": [c.status for c in checks],
            "job": got.job.name,
            "created": created.job.name,
            "refused": refused,
        }
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for channel in [*channels, control]:
            await channel.close()


def test_a_trainer_holding_its_stream_limit_still_answers_health_get_and_create(services, tiny_model):
    """The watchers watch a queued job, as a dashboard's open tabs do: a long job holds the
    runner, so the streams stay open and quiet."""
    client = services.client
    dataset = client.create_dataset(client.upload_bytes("s.jsonl", ("\n".join(ticket_lines(40)) + "\n").encode()).name)
    settings = dict(base_model=str(tiny_model), epochs=100, evaluate=False)
    running = client.create_job(dataset.name, **settings)
    queued = client.create_job(dataset.name, **settings)
    create = pb.CreateJobRequest(request_id="one-more", base_model=str(tiny_model), dataset=dataset.name, method="lora")
    try:
        result = asyncio.run(hold_streams(services.trainer_address, queued.name, create, MAX_STREAMS))
    finally:
        for job in client.list_jobs():
            if job.state in ("queued", "running"):
                client.cancel_job(job.name)
    assert result["streaming"] == MAX_STREAMS
    assert result["health"] == [health_pb2.HealthCheckResponse.SERVING] * 20
    assert result["job"] == queued.name and result["created"].startswith("jobs/")
    code, details = result["refused"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"{MAX_STREAMS} open streams" in details
    assert client.get_job(running.name).state == "cancelled"
