"""``tunewright.Client``: the three services from Python, without protobuf.

    from tunewright import Client

    with Client() as client:                       # the local `tunewright up`, or $TUNEWRIGHT_*
        dataset = client.upload_dataset("tickets.jsonl")
        job = client.create_job(dataset.name, method="lora", parameters={"r": 32}, epochs=3)
        for event in client.watch_job(job.name):   # reattaches by itself after a disconnect
            if event.progress:
                print(event.progress.step, event.progress.loss)
        model = client.export_model(job.name)      # GGUF where the method and model allow
        print(client.ask(model.name, [{"role": "user", "content": "Our API is down"}]).text)

Every method returns the typed records of ``tunewright.records`` and raises ``ServiceError``
(the service, the gRPC status, the reason code and a message that says how to fix it). The
raw gRPC stubs stay at ``client.data``, ``client.trainer`` and ``client.serve`` for anything
not wrapped here.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tunewright.connection import Connection
from tunewright.core.basemodel import DEFAULT_BASE_MODEL
from tunewright.core.security import open_channel
from tunewright.data.v1 import data_service_pb2 as data_pb
from tunewright.data.v1 import data_service_pb2_grpc as data_grpc
from tunewright.records import (
    Answer,
    Checkpoint,
    CleaningAction,
    Dataset,
    File,
    Job,
    JobEstimate,
    JobEvent,
    Method,
    Model,
    Piece,
)
from tunewright.serve.v1 import serve_service_pb2 as serve_pb
from tunewright.serve.v1 import serve_service_pb2_grpc as serve_grpc
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb
from tunewright.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc

CHUNK_BYTES = 1 << 20
Chat = list[dict[str, str]]
T = TypeVar("T")


@dataclass
class ServiceError(Exception):
    """A call that failed: which service, the gRPC status name, the service's reason code
    (UPPER_SNAKE, for programs to switch on) and a message for people, with the fix."""

    service: str
    code: str
    message: str
    reason: str = ""
    # (where, what is wrong) for each bad input: a field path, or "line 7" of a file.
    violations: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_rpc(cls, service: str, address: str, source: str, error: grpc.RpcError) -> ServiceError:
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            how = "start the services with `tunewright up`" if source == "default" else f"check {source}"
            return cls(
                service,
                code.name,
                f"cannot reach the {service} service at {address} ({error.details()}): {how}, "
                f"or point to it with --{service} or TUNEWRIGHT_{service.upper()}; "
                "if it serves TLS, trust its CA with --ca or TUNEWRIGHT_CA",
                "SERVICE_UNAVAILABLE",
            )
        reason, violations = unpack_status(error)
        return cls(service, code.name, error.details() or code.name, reason, violations)


def unpack_status(error: grpc.RpcError) -> tuple[str, list[tuple[str, str]]]:
    """(ErrorInfo.reason, [(field, description)]) from a rich status; ("", []) without one."""
    reason, violations = "", []
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, violations


def full_name(collection: str, name: str) -> str:
    """Accepts "jobs/job-1" or just "job-1"."""
    return name if "/" in name else f"{collection}/{name}"


def parameter_value(value: Any) -> trainer_pb.ParameterValue:
    if isinstance(value, bool):
        return trainer_pb.ParameterValue(bool_value=value)
    if isinstance(value, int):
        return trainer_pb.ParameterValue(int_value=value)
    if isinstance(value, float):
        return trainer_pb.ParameterValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return trainer_pb.ParameterValue(string_list_value=trainer_pb.StringList(values=[str(v) for v in value]))
    return trainer_pb.ParameterValue(string_value=str(value))


class Client:
    """A connection to the data, trainer and serve services.

    Addresses are ``host:port``; any left out come from ``TUNEWRIGHT_DATA``,
    ``TUNEWRIGHT_TRAINER``, ``TUNEWRIGHT_SERVE``, the config file (see
    ``tunewright.connection``), or the local ``tunewright up``; so do the token and TLS
    settings (``TUNEWRIGHT_TOKEN``, ``TUNEWRIGHT_CA``, ...). ``connection`` gives all of it.
    """

    def __init__(
        self,
        data: str | None = None,
        trainer: str | None = None,
        serve: str | None = None,
        *,
        connection: Connection | None = None,
    ) -> None:
        self.connection = connection or Connection.resolve(data=data, trainer=trainer, serve=serve)
        security = self.connection.security
        self._channels = {s: open_channel(self.connection.address(s), security) for s in ("data", "trainer", "serve")}
        self.data = data_grpc.DataServiceStub(self._channels["data"])
        self.trainer = trainer_grpc.TrainerServiceStub(self._channels["trainer"])
        self.serve = serve_grpc.ServeServiceStub(self._channels["serve"])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- calls, with errors turned into ServiceError

    def _error(self, service: str, error: grpc.RpcError) -> ServiceError:
        c = self.connection
        return ServiceError.from_rpc(service, c.address(service), c.source(service), error)

    def _call(self, service: str, call: Callable[..., T], request: Any, timeout: float = 60) -> T:
        try:
            return call(request, timeout=timeout)
        except grpc.RpcError as error:
            raise self._error(service, error) from None

    def _stream(
        self, service: str, call: Callable[..., Iterable[T]], request: Any, timeout: float | None
    ) -> Iterator[T]:
        try:
            yield from call(request, timeout=timeout)
        except grpc.RpcError as error:
            raise self._error(service, error) from None

    # ---- data

    def upload(self, path: str | Path, request_id: str = "") -> File:
        """Uploads a file as it is; ``create_dataset`` validates it."""
        return self.upload_bytes(Path(path).name, Path(path).read_bytes(), request_id)

    def upload_bytes(
        self,
        filename: str,
        content: bytes,
        request_id: str = "",
        size_bytes: int | None = None,
        sha256: str | None = None,
    ) -> File:
        header = data_pb.UploadFileHeader(
            request_id=request_id or uuid.uuid4().hex,
            filename=filename,
            size_bytes=len(content) if size_bytes is None else size_bytes,
            sha256=hashlib.sha256(content).hexdigest() if sha256 is None else sha256,
        )

        def messages() -> Iterator[data_pb.UploadFileRequest]:
            yield data_pb.UploadFileRequest(header=header)
            for start in range(0, len(content), CHUNK_BYTES):
                yield data_pb.UploadFileRequest(chunk=content[start : start + CHUNK_BYTES])

        return File.from_pb(self._call("data", self.data.UploadFile, messages(), timeout=300).file)

    def create_dataset(
        self,
        file: str,
        display_name: str = "",
        validation_fraction: float | None = None,
        test_fraction: float | None = None,
        split_seed: int = 0,
        request_id: str = "",
        format_name: str = "",
        column_mapping: dict[str, str] | None = None,
        cleaning: dict[str, Any] | None = None,
        tokenizer_model: str = "",
    ) -> Dataset:
        """Validates an uploaded file, cleans it and splits it into train, validation and test.

        ``format_name`` is "chat", "prompt_completion", "alpaca", "sharegpt", "text" or a
        plugin's (detected when empty); ``column_mapping`` maps a format's fields to the
        file's columns; ``cleaning`` holds CleaningOptions fields by name, such as
        ``{"near_duplicates": "remove", "scrub_pii": False}``; ``tokenizer_model`` counts the
        tokens (the built-in default model when empty)."""
        options = dict(cleaning or {})
        if "near_duplicates" in options:
            options["near_duplicates"] = f"NEAR_DUPLICATES_{str(options['near_duplicates']).upper()}"
        request = data_pb.CreateDatasetRequest(
            request_id=request_id or uuid.uuid4().hex,
            file=full_name("files", file),
            display_name=display_name,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            format_name=format_name,
            column_mapping=column_mapping or {},
            cleaning=data_pb.CleaningOptions(**options),
            tokenizer_model=tokenizer_model,
        )
        return Dataset.from_pb(self._call("data", self.data.CreateDataset, request, timeout=3600).dataset)

    def upload_dataset(self, path: str | Path, display_name: str = "", **options: Any) -> Dataset:
        """``upload`` and ``create_dataset`` in one; ``options`` are create_dataset's."""
        return self.create_dataset(self.upload(path).name, display_name or Path(path).name, **options)

    def dataset_report(self, name: str) -> list[CleaningAction]:
        """Every change cleaning made to the dataset's source, in the order of its lines."""
        actions, token = [], ""
        while True:
            request = data_pb.GetDatasetReportRequest(
                name=full_name("datasets", name), page_size=1000, page_token=token
            )
            page = self._call("data", self.data.GetDatasetReport, request)
            actions += [CleaningAction.from_pb(a) for a in page.actions]
            token = page.next_page_token
            if not token:
                return actions

    def get_dataset(self, name: str) -> Dataset:
        request = data_pb.GetDatasetRequest(name=full_name("datasets", name))
        return Dataset.from_pb(self._call("data", self.data.GetDataset, request).dataset)

    def list_datasets(self) -> list[Dataset]:
        return [
            Dataset.from_pb(d)
            for d in self._pages("data", self.data.ListDatasets, data_pb.ListDatasetsRequest, "datasets")
        ]

    def read_dataset(self, name: str, split: str) -> list[Chat | str]:
        """The examples of one split ("train", "validation" or "test"), in order: each a
        conversation, or a string for a text dataset's examples."""
        request = data_pb.ReadDatasetRequest(
            name=full_name("datasets", name), split=data_pb.Split.Value(f"SPLIT_{split.upper()}")
        )
        return [
            r.example.text or [{"role": m.role, "content": m.content} for m in r.example.messages]
            for r in self._stream("data", self.data.ReadDataset, request, timeout=300)
        ]

    def _pages(self, service: str, call: Callable[..., Any], request_type: type, field_name: str) -> list[Any]:
        items, token = [], ""
        while True:
            page = self._call(service, call, request_type(page_size=100, page_token=token))
            items += getattr(page, field_name)
            token = page.next_page_token
            if not token:
                return items

    # ---- trainer

    def list_methods(self) -> list[Method]:
        response = self._call("trainer", self.trainer.ListMethods, trainer_pb.ListMethodsRequest())
        return [Method.from_pb(m) for m in response.methods]

    def create_job(
        self,
        dataset: str,
        base_model: str = DEFAULT_BASE_MODEL,
        method: str = "lora",
        parameters: dict[str, Any] | None = None,
        request_id: str = "",
        ignore_memory_estimate: bool = False,
        **hyperparameters: Any,
    ) -> Job:
        """Queues a fine-tuning job. ``parameters`` are the method's own (``list_methods`` shows
        them); ``hyperparameters`` are epochs, batch_size, learning_rate, max_seq_length, seed,
        max_steps, evaluate, eval_max_new_tokens, micro_batch_size, precision, packing,
        checkpoint_every, keep_checkpoints, processes, group_by_length and gradient_checkpointing (trainer_service.proto
        says what each means), each the trainer's default when left out. A job estimated to
        need more memory than the trainer may use is refused (RESOURCE_EXHAUSTED, with what
        would fit) unless ``ignore_memory_estimate``."""
        request = trainer_pb.CreateJobRequest(
            request_id=request_id or uuid.uuid4().hex,
            base_model=base_model,
            dataset=full_name("datasets", dataset),
            method=method,
            method_parameters={k: parameter_value(v) for k, v in (parameters or {}).items()},
            hyperparameters=trainer_pb.Hyperparameters(**{k: v for k, v in hyperparameters.items() if v is not None}),
            ignore_memory_estimate=ignore_memory_estimate,
        )
        return Job.from_pb(self._call("trainer", self.trainer.CreateJob, request, timeout=120).job)

    def estimate_job(
        self,
        dataset: str,
        base_model: str = DEFAULT_BASE_MODEL,
        method: str = "lora",
        parameters: dict[str, Any] | None = None,
        **hyperparameters: Any,
    ) -> JobEstimate:
        """What ``create_job`` with the same arguments would take: peak memory and where it
        goes, seconds per step and in all, whether it fits the trainer's memory, and if not,
        what would. Nothing is created."""
        request = trainer_pb.EstimateJobRequest(
            base_model=base_model,
            dataset=full_name("datasets", dataset),
            method=method,
            method_parameters={k: parameter_value(v) for k, v in (parameters or {}).items()},
            hyperparameters=trainer_pb.Hyperparameters(**{k: v for k, v in hyperparameters.items() if v is not None}),
        )
        return JobEstimate.from_pb(self._call("trainer", self.trainer.EstimateJob, request, timeout=120).estimate)

    def get_job(self, name: str) -> Job:
        request = trainer_pb.GetJobRequest(name=full_name("jobs", name))
        return Job.from_pb(self._call("trainer", self.trainer.GetJob, request).job)

    def list_jobs(self) -> list[Job]:
        return [
            Job.from_pb(j) for j in self._pages("trainer", self.trainer.ListJobs, trainer_pb.ListJobsRequest, "jobs")
        ]

    def list_checkpoints(self, name: str) -> list[Checkpoint]:
        """The job's complete checkpoints, oldest first."""
        request = trainer_pb.ListCheckpointsRequest(name=full_name("jobs", name))
        return [Checkpoint.from_pb(c) for c in self._call("trainer", self.trainer.ListCheckpoints, request).checkpoints]

    def cancel_job(self, name: str) -> Job:
        request = trainer_pb.CancelJobRequest(name=full_name("jobs", name))
        return Job.from_pb(self._call("trainer", self.trainer.CancelJob, request).job)

    def watch_job(self, name: str, after_sequence: int = 0, reconnect_for: float = 120.0) -> Iterator[JobEvent]:
        """The job's events from ``after_sequence`` on, live until the job ends. When the
        connection drops (the trainer restarting, a network blip), it reattaches and goes on
        from the last event it saw, retrying for up to ``reconnect_for`` seconds."""
        name = full_name("jobs", name)
        last, lost_at = after_sequence, None
        while True:
            try:
                for message in self.trainer.WatchJob(trainer_pb.WatchJobRequest(name=name, after_sequence=last)):
                    lost_at = None
                    event = JobEvent.from_pb(message)
                    last = event.sequence
                    yield event
                return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise self._error("trainer", error) from None
                lost_at = lost_at or time.monotonic()
                if time.monotonic() - lost_at > reconnect_for:
                    raise self._error("trainer", error) from None
                time.sleep(1.0)

    def job_events(self, name: str) -> list[JobEvent]:
        """Every event so far, without waiting for a running job to end."""
        name = full_name("jobs", name)
        if self.get_job(name).state.finished:
            return list(self.watch_job(name))
        events: list[JobEvent] = []
        try:
            for message in self.trainer.WatchJob(trainer_pb.WatchJobRequest(name=name), timeout=3):
                events.append(JobEvent.from_pb(message))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise self._error("trainer", error) from None
        return events

    def wait_job(self, name: str) -> Job:
        """Blocks until the job ends; returns it as it ended."""
        for _ in self.watch_job(name):
            pass
        return self.get_job(name)

    def read_artifact_file(self, job: str, path: str) -> bytes:
        request = trainer_pb.ReadArtifactRequest(name=full_name("jobs", job), path=path)
        return b"".join(
            m.chunk
            for m in self._stream("trainer", self.trainer.ReadArtifact, request, 300)
            if m.WhichOneof("content") == "chunk"
        )

    def predictions(self, job: str) -> list[dict[str, Any]]:
        """The evaluation's answers, one per test example: messages, reference, base, tuned."""
        return [
            json.loads(line) for line in self.read_artifact_file(job, "eval_predictions.jsonl").decode().splitlines()
        ]

    # ---- serve

    def export_model(
        self,
        job: str,
        format: str = "",
        options: dict[str, str] | None = None,
        model_id: str = "",
        request_id: str = "",
        system_prompt: str | None = None,
    ) -> Model:
        """Exports a finished job, or a checkpoint of any job ("jobs/J/checkpoints/STEP",
        ``list_checkpoints``): ``format`` "gguf", "safetensors", or "" for the best the
        method allows; ``options`` are the format's (``type`` = f16/q8_0/bf16 for gguf).
        ``system_prompt``: what a chat without a system message gets; None for the one the
        job's training data shared (else the base model's), "" for the base model's."""
        request = serve_pb.ExportModelRequest(
            request_id=request_id or uuid.uuid4().hex,
            job=full_name("jobs", job),
            model_id=model_id,
            format=format,
            options={k: str(v) for k, v in (options or {}).items()},
            system_prompt=system_prompt,
        )
        return Model.from_pb(self._call("serve", self.serve.ExportModel, request, timeout=900).model)

    def push_model(self, model: str, target: str = "ollama", options: dict[str, str] | None = None) -> Model:
        """Registers an exported model with a target (Ollama: options ``host`` and ``name``)."""
        request = serve_pb.PushModelRequest(
            model=full_name("models", model), target=target, options={k: str(v) for k, v in (options or {}).items()}
        )
        return Model.from_pb(self._call("serve", self.serve.PushModel, request, timeout=900).model)

    def list_models(self) -> list[Model]:
        return [
            Model.from_pb(m) for m in self._pages("serve", self.serve.ListModels, serve_pb.ListModelsRequest, "models")
        ]

    def get_model(self, name: str) -> Model:
        name = full_name("models", name)
        for model in self.list_models():
            if model.name == name:
                return model
        raise ServiceError(
            "serve",
            grpc.StatusCode.NOT_FOUND.name,
            f"no model {name}; `tunewright models list` shows them",
            "MODEL_NOT_FOUND",
        )

    def chat(
        self,
        model: str,
        messages: Chat,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        seed: int = 0,
    ) -> Iterator[Piece]:
        """The answer to a conversation as it is generated; 0 means the service's default."""
        request = serve_pb.ChatRequest(
            model=full_name("models", model),
            messages=[serve_pb.ChatMessage(**m) for m in messages],
            options=serve_pb.GenerationOptions(
                max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
            ),
        )
        for message in self._stream("serve", self.serve.Chat, request, timeout=600):
            yield Piece.from_pb(message)

    def ask(self, model: str, messages: Chat, max_new_tokens: int = 64, **options: Any) -> Answer:
        """The whole answer to a conversation (greedy unless ``temperature`` is given)."""
        pieces = list(self.chat(model, messages, max_new_tokens, **options))
        last = pieces[-1]
        return Answer("".join(p.text for p in pieces), last.finish_reason or "", last.backend, last.token_count)
