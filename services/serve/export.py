"""Exporting a job: pull its artifact from the trainer and make it a model this service
answers with.

What happens follows the method's capabilities and the artifact's kind: "merged" folds the
result into the base with the method's own ``merge`` and writes merged safetensors, the
tokenizer (chat template included) and an Ollama Modelfile; "attached" keeps what was
trained beside a reference to the base, to be joined by ``load_trained`` when answering.
Either way the rebuilt model must reproduce the trained model's logits on the artifact's
probe before anything is stored."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import grpc
import msgspec
import structlog

from tunewright import contract
from tunewright.contract import ARTIFACT, FORMAT_VERSION, MANIFEST, ArtifactKind, Manifest
from tunewright.core.basemodel import load_tokenizer, resolve_base_model, save_tokenizer
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
from tunewright.methods import Method, detect_runtime
from tunewright.parameters import build_config
from tunewright.serve.modelfile import modelfile_text, ollama_template
from tunewright.serve.store import ATTACHED, FORMATS, MERGED, ModelRecord, ModelStore
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


def _trainer_error(error: grpc.RpcError, job: str, trainer_address: str) -> Exception:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(
            f"{job} does not exist on the trainer",
            reason="JOB_NOT_FOUND",
            violations=[FieldViolation("job", "no such job")],
        )
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
        return FailedPrecondition(
            f"the trainer refused to hand over {job}: {details}",
            reason="JOB_NOT_EXPORTABLE",
            violations=[FieldViolation("job", details)],
        )
    return Unavailable(
        f"the trainer at {trainer_address} did not answer ({code.name}); start it, then retry",
        reason="TRAINER_UNAVAILABLE",
    )


def get_job(trainer_address: str, job: str) -> trainer_pb.Job:
    with grpc.insecure_channel(trainer_address) as channel:
        try:
            return trainer_grpc.TrainerServiceStub(channel).GetJob(trainer_pb.GetJobRequest(name=job), timeout=60).job
        except grpc.RpcError as error:
            raise _trainer_error(error, job, trainer_address) from error


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
            raise _trainer_error(error, job, trainer_address) from error


def read_manifest(artifact: Path, job: str) -> Manifest:
    """The artifact's manifest, refusing one this release cannot read."""
    try:
        data = (artifact / MANIFEST).read_bytes()
        version = msgspec.json.decode(data, type=dict).get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise FailedPrecondition(
                f"{job} was written by a newer tunewright (artifact format {version}, this serve reads up to "
                f"{FORMAT_VERSION}); upgrade the serve service",
                reason="ARTIFACT_TOO_NEW",
            )
        return contract.from_json(data, Manifest)
    except (OSError, msgspec.DecodeError) as error:
        raise FailedPrecondition(
            f"the artifact of {job} has no readable {MANIFEST}: {error}", reason="ARTIFACT_UNREADABLE"
        ) from error


def verify(model: Any, artifact: Path, manifest: Manifest, job: str, what: str) -> tuple[float | None, float | None]:
    """(difference, tolerance) of ``model`` from the trained model on the artifact's probe;
    refuses a model that does not reproduce it. (None, None) for artifacts without a probe."""
    if manifest.probe is None:
        return None, None
    from tunewright.core import probe

    difference = probe.measure(model, artifact / manifest.probe.file)
    if difference > manifest.probe.tolerance:
        raise FailedPrecondition(
            f"the {what} model of {job} does not reproduce the trained model: on a held-out example its next-token "
            f"distribution is {difference:.4g} nats (KL) from the trained model's (tolerance "
            f"{manifest.probe.tolerance}, the trained model computed in {manifest.probe.compute_dtype}); the "
            f"{manifest.method} method's {what} step or the artifact is broken, so nothing was exported",
            reason="EXPORT_MISMATCH",
        )
    return difference, manifest.probe.tolerance


class Exporter:
    def __init__(self, root: Path, store: ModelStore, trainer_address: str, methods: dict[str, Method]) -> None:
        self.root = Path(root)
        self.store = store
        self.trainer_address = trainer_address
        self.methods = methods
        self.model_cache = self.root / "base-models"
        # One export at a time: each holds a base model and a merged copy in memory.
        self._lock = threading.Lock()

    def export(self, request_id: str, job: str, model_id: str, format: str = "") -> ModelRecord:
        # The lock also makes a retry wait for the first attempt, then find its result.
        with self._lock:
            return self._export_locked(request_id, job, model_id, format)

    def _export_locked(self, request_id: str, job: str, model_id: str, format: str) -> ModelRecord:
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
        if format and format not in FORMATS:
            raise InvalidArgument(
                f"format {format!r} is not one of: {', '.join(FORMATS)} (or empty for the method's default)",
                reason="UNKNOWN_EXPORT_FORMAT",
                violations=[FieldViolation("format", f"not one of: {', '.join(FORMATS)}")],
            )
        if self.store.exists(model_id):
            raise AlreadyExists(
                f"models/{model_id} exists already; pass another model_id",
                reason="MODEL_EXISTS",
                violations=[FieldViolation("model_id", "taken")],
            )
        method, format = self._plan(job, format)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".export-"))
        try:
            return self._export(staging, request_id, job, model_id, method, format)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _plan(self, job: str, format: str) -> tuple[Method, str]:
        """The job's method and the format to write, refusing what cannot be done before
        anything is transferred."""
        found = get_job(self.trainer_address, job)
        if found.state != trainer_pb.JOB_STATE_SUCCEEDED:
            state = trainer_pb.JobState.Name(found.state).removeprefix("JOB_STATE_")
            raise FailedPrecondition(
                f"{job} is {state}; only a job that SUCCEEDED can be exported", reason="JOB_NOT_SUCCEEDED"
            )
        method = self.methods.get(found.method)
        if method is None:
            raise FailedPrecondition(
                f"{job} was trained with method {found.method!r}, which is not installed on the serve host; "
                "install its plugin there",
                reason="METHOD_NOT_INSTALLED",
            )
        capabilities = method.capabilities
        format = format or (MERGED if capabilities.exportable else ATTACHED)
        if format == MERGED and not capabilities.exportable:
            raise FailedPrecondition(
                f"{job} was trained with {method.name}, which cannot be exported merged for Ollama: "
                f"{capabilities.not_exportable_reason}",
                reason="NOT_EXPORTABLE",
                violations=[FieldViolation("format", f"{method.name} results cannot be merged")],
            )
        if format == ATTACHED and capabilities.artifact_kind is ArtifactKind.FULL:
            raise FailedPrecondition(
                f"{job} was trained with {method.name}, which saves a whole model: there is nothing to attach to "
                "a base; export it with format 'merged'",
                reason="FORMAT_NOT_APPLICABLE",
                violations=[FieldViolation("format", "a whole model cannot be attached")],
            )
        return method, format

    def _export(
        self, staging: Path, request_id: str, job: str, model_id: str, method: Method, format: str
    ) -> ModelRecord:
        artifact = staging / ARTIFACT
        fetch_artifact(self.trainer_address, job, artifact)
        manifest = read_manifest(artifact, job)
        try:
            config = build_config(method, manifest.method_parameters)
        except TunewrightError as error:
            raise FailedPrecondition(
                f"{job}'s method parameters are not accepted by the {method.name} plugin installed here: "
                f"{error.message}; install the same plugin version as on the trainer",
                reason="METHOD_PARAMETERS_REFUSED",
            ) from error
        folder = resolve_base_model(manifest.base_model, self.model_cache)
        tokenizer = load_tokenizer(folder)
        trained = artifact / manifest.trained
        out = staging / "model"
        text = ""
        if format == MERGED:
            template = ollama_template(tokenizer)  # refuses an untranslatable template before the merge
            log.info("merging", job=job, method=method.name, base_model=manifest.base_model)
            merged = method.merge(folder, config, trained)
            difference, tolerance = verify(merged, artifact, manifest, job, "merged")
            merged.save_pretrained(out, safe_serialization=True)
            save_tokenizer(tokenizer, out)
            text = modelfile_text(".", template, getattr(merged.config, "max_position_embeddings", None))
            write_text_atomic(out / "Modelfile", text)
        else:
            log.info("attaching", job=job, method=method.name, base_model=manifest.base_model)
            rebuilt = method.load_trained(folder, config, trained, detect_runtime(), trainable=False)
            difference, tolerance = verify(rebuilt, artifact, manifest, job, "attached")
            out.mkdir()
            shutil.copytree(trained, out / manifest.trained)
            shutil.copy2(artifact / MANIFEST, out / MANIFEST)
        final = self.root / "models" / model_id
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        out.rename(final)
        files = sorted((p.relative_to(final).as_posix(), p.stat().st_size) for p in final.rglob("*") if p.is_file())
        record = ModelRecord(
            id=model_id,
            job=job,
            base_model=manifest.base_model,
            method=method.name,
            directory=str(final.resolve()),
            files=files,
            modelfile=text,
            create_time=now(),
            format=format,
            method_parameters=manifest.method_parameters,
            max_divergence=difference,
            tolerance=tolerance,
        )
        self.store.add(record, request_id)
        return record
