"""Exporting a job: pull its artifact from the trainer, merge into the base model, write
merged safetensors, the tokenizer (chat template included) and an Ollama Modelfile."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import grpc
import structlog

from tunewright.core.basemodel import load_model, load_tokenizer, resolve_base_model, save_tokenizer
from tunewright.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    TunewrightError,
    Unavailable,
)
from tunewright.core.files import write_text_atomic
from tunewright.core.ids import parse_name
from tunewright.core.timeutil import now
from tunewright.methods import Method
from tunewright.plugin_manager import get_method
from tunewright.serve.modelfile import modelfile_text, ollama_template
from tunewright.serve.store import ModelRecord, ModelStore
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb
from tunewright.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc

log = structlog.get_logger(__name__)

MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Receiver:
    """One artifact file being received: hashed as it comes, kept only if the hash matches."""

    def __init__(self, root: Path, header: trainer_pb.ArtifactFile) -> None:
        if header.path.startswith("/") or ".." in Path(header.path).parts:
            raise FailedPrecondition(
                f"the trainer sent an unsafe artifact path {header.path!r}", reason="UNSAFE_ARTIFACT"
            )
        self.header = header
        self.path = root / header.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".part")
        self.handle = open(self.partial, "wb")  # noqa: SIM115 - closed in finish()
        self.digest = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.handle.write(chunk)

    def finish(self) -> None:
        self.handle.close()
        if self.digest.hexdigest() != self.header.sha256:
            raise Unavailable(
                f"artifact file {self.header.path} arrived corrupted (sha256 mismatch); retry the export",
                reason="ARTIFACT_CORRUPTED",
            )
        os.replace(self.partial, self.path)


def fetch_artifact(trainer_address: str, job: str, into: Path) -> None:
    """Streams every file of the job's artifact into ``into``, checking each sha256."""
    with grpc.insecure_channel(trainer_address) as channel:
        stub = trainer_grpc.TrainerServiceStub(channel)
        receiver: _Receiver | None = None
        try:
            for message in stub.ReadArtifact(trainer_pb.ReadArtifactRequest(name=job), timeout=600):
                if message.WhichOneof("content") == "file":
                    if receiver is not None:
                        receiver.finish()
                    receiver = _Receiver(into, message.file)
                elif receiver is not None:
                    receiver.write(message.chunk)
            if receiver is not None:
                receiver.finish()
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    f"{job} does not exist on the trainer",
                    reason="JOB_NOT_FOUND",
                    violations=[FieldViolation("job", "no such job")],
                ) from error
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                raise FailedPrecondition(
                    f"the trainer refused to hand over {job}: {details}",
                    reason="JOB_NOT_EXPORTABLE",
                    violations=[FieldViolation("job", details)],
                ) from error
            raise Unavailable(
                f"the trainer at {trainer_address} did not answer ({code.name}); start it, then retry",
                reason="TRAINER_UNAVAILABLE",
            ) from error


class Exporter:
    def __init__(self, root: Path, store: ModelStore, trainer_address: str, methods: dict[str, Method]) -> None:
        self.root = Path(root)
        self.store = store
        self.trainer_address = trainer_address
        self.methods = methods
        self.model_cache = self.root / "base-models"
        # One export at a time: each holds a base model and a merged copy in memory.
        self._lock = threading.Lock()

    def export(self, request_id: str, job: str, model_id: str) -> ModelRecord:
        # The lock also makes a retry wait for the first attempt, then find its result.
        with self._lock:
            return self._export_locked(request_id, job, model_id)

    def _export_locked(self, request_id: str, job: str, model_id: str) -> ModelRecord:
        if existing := self.store.by_request(request_id):
            return existing
        job_id = parse_name(job, "jobs", field="job")
        model_id = model_id or job_id
        if not MODEL_ID.match(model_id):
            raise InvalidArgument(
                f"model_id {model_id!r} must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
                reason="INVALID_MODEL_ID",
                violations=[FieldViolation("model_id", "bad characters or length")],
            )
        if self.store.exists(model_id):
            raise AlreadyExists(
                f"models/{model_id} exists already; pass another model_id",
                reason="MODEL_EXISTS",
                violations=[FieldViolation("model_id", "taken")],
            )
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".export-"))
        try:
            return self._export(staging, request_id, job, model_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _export(self, staging: Path, request_id: str, job: str, model_id: str) -> ModelRecord:
        artifact = staging / "artifact"
        fetch_artifact(self.trainer_address, job, artifact)
        manifest = json.loads((artifact / "manifest.json").read_text())
        try:
            method = get_method(self.methods, manifest["method"])
        except TunewrightError as error:
            raise FailedPrecondition(
                f"{job} was trained with method {manifest['method']!r}, which is not installed "
                "on the serve host; install its plugin there",
                reason="METHOD_NOT_INSTALLED",
            ) from error
        if not (method.capabilities.mergeable and method.capabilities.exportable):
            raise FailedPrecondition(
                f"method {method.name!r} produces weights that cannot be merged into the base model and exported",
                reason="NOT_EXPORTABLE",
            )
        folder = resolve_base_model(manifest["base_model"], self.model_cache)
        tokenizer = load_tokenizer(folder)
        template = ollama_template(tokenizer)
        log.info("merging", job=job, method=method.name, base_model=manifest["base_model"])
        merged = method.merge(load_model(folder), artifact / "adapter")
        out = staging / "model"
        merged.save_pretrained(out, safe_serialization=True)
        save_tokenizer(tokenizer, out)
        text = modelfile_text(".", template, getattr(merged.config, "max_position_embeddings", None))
        write_text_atomic(out / "Modelfile", text)
        final = self.root / "models" / model_id
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        out.rename(final)
        files = sorted((p.relative_to(final).as_posix(), p.stat().st_size) for p in final.rglob("*") if p.is_file())
        record = ModelRecord(
            model_id, job, manifest["base_model"], method.name, str(final.resolve()), files, text, now()
        )
        self.store.add(record, request_id)
        return record
