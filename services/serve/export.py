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
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import msgspec
import structlog

from tunewright import contract
from tunewright.contract import ARTIFACT, FORMAT_VERSION, MANIFEST, ArtifactKind, Manifest
from tunewright.core.basemodel import load_tokenizer, model_cache, resolve_base_model, save_tokenizer_with_sources
from tunewright.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    TunewrightError,
    Unavailable,
)
from tunewright.core.ids import parse_job_or_checkpoint, parse_name
from tunewright.core.modelfile import ollama_template
from tunewright.core.security import ChannelSecurity, open_channel
from tunewright.core.timeutil import now
from tunewright.exporters import Exported, ExporterRegistry, ExportFormat, MergedModel
from tunewright.methods import Method, detect_runtime
from tunewright.parameters import build_config, parse_options
from tunewright.serve.loading import installed_method
from tunewright.serve.store import ATTACHED, ModelRecord, ModelStore, PushRecord
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
        if "/checkpoints/" in job:
            return NotFound(
                f"the trainer has no {job}: {details}",
                reason="CHECKPOINT_NOT_FOUND",
                violations=[FieldViolation("job", "no such checkpoint")],
            )
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
    with open_channel(trainer_address, ChannelSecurity.from_env()) as channel:
        try:
            return trainer_grpc.TrainerServiceStub(channel).GetJob(trainer_pb.GetJobRequest(name=job), timeout=60).job
        except grpc.RpcError as error:
            raise _trainer_error(error, job, trainer_address) from error


def fetch_artifact(trainer_address: str, job: str, into: Path) -> None:
    """Streams every file of the job's artifact into ``into``, checking each sha256."""
    with open_channel(trainer_address, ChannelSecurity.from_env()) as channel:
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


@dataclass(frozen=True)
class Plan:
    """What an export will do, decided before any transfer."""

    method: Method
    format: str
    # The plugin laying the merged model out; None for "attached".
    layout: ExportFormat | None
    options: Any
    base_folder: Path
    architecture: str


class Exporter:
    def __init__(
        self,
        root: Path,
        store: ModelStore,
        trainer_address: str,
        methods: dict[str, Method],
        exporters: ExporterRegistry,
    ) -> None:
        self.root = Path(root)
        self.store = store
        self.trainer_address = trainer_address
        self.methods = methods
        self.formats = exporters.formats
        self.targets = exporters.targets
        self.model_cache = model_cache(self.root)
        # One export or push at a time: an export holds a base model and a merged copy in memory.
        self._lock = threading.Lock()

    def format_names(self) -> list[str]:
        return [*self.formats, ATTACHED]

    def export(
        self,
        request_id: str,
        job: str,
        model_id: str,
        format: str = "",
        options: dict[str, str] | None = None,
        system_prompt: str | None = None,
    ) -> ModelRecord:
        """``system_prompt``: the model's default system prompt; None for the one the job's
        training data shared, if any; "" for the base model's own."""
        # The lock also makes a retry wait for the first attempt, then find its result.
        with self._lock:
            return self._export_locked(request_id, job, model_id, format, options or {}, system_prompt)

    def _export_locked(
        self,
        request_id: str,
        job: str,
        model_id: str,
        format: str,
        options: dict[str, str],
        system_prompt: str | None,
    ) -> ModelRecord:
        if existing := self.store.by_request(request_id):
            return existing
        job_name, checkpoint = parse_job_or_checkpoint(job, field="job")
        job_id = parse_name(job_name, "jobs", field="job")
        model_id = model_id or (job_id if checkpoint is None else f"{job_id}-step-{checkpoint}")
        if not MODEL_ID.match(model_id):
            raise InvalidArgument(
                f"model_id {model_id!r} must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
                reason="INVALID_MODEL_ID",
                violations=[FieldViolation("model_id", "bad characters or length")],
            )
        if format and format not in self.format_names():
            known = ", ".join(self.format_names())
            raise InvalidArgument(
                f"format {format!r} is not one of: {known} (or empty for the method's default)",
                reason="UNKNOWN_EXPORT_FORMAT",
                violations=[FieldViolation("format", f"not one of: {known}")],
            )
        if self.store.exists(model_id):
            raise AlreadyExists(
                f"models/{model_id} exists already; pass another model_id",
                reason="MODEL_EXISTS",
                violations=[FieldViolation("model_id", "taken")],
            )
        plan = self._plan(job_name, checkpoint, format, options)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".export-"))
        try:
            return self._export(staging, request_id, job, model_id, plan, system_prompt)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _plan(self, job: str, checkpoint: int | None, format: str, options: dict[str, str]) -> Plan:
        """The job's method, the format and its options, refusing what cannot be done
        before anything is transferred. A checkpoint can be exported whatever its job's state."""
        found = get_job(self.trainer_address, job)
        if checkpoint is None and found.state != trainer_pb.JOB_STATE_SUCCEEDED:
            state = trainer_pb.JobState.Name(found.state).removeprefix("JOB_STATE_")
            raise FailedPrecondition(
                f"{job} is {state}; only a job that SUCCEEDED can be exported", reason="JOB_NOT_SUCCEEDED"
            )
        method = installed_method(self.methods, found.method, job)
        base_folder = resolve_base_model(found.base_model, self.model_cache)
        architecture = _architecture(base_folder)
        capabilities = method.capabilities
        format = format or self._default_format(method, base_folder)
        if format == ATTACHED:
            if capabilities.artifact_kind is ArtifactKind.FULL:
                raise FailedPrecondition(
                    f"{job} was trained with {method.name}, which saves a whole model: there is nothing to attach "
                    "to a base; export it with format 'gguf' or 'safetensors'",
                    reason="FORMAT_NOT_APPLICABLE",
                    violations=[FieldViolation("format", "a whole model cannot be attached")],
                )
            if options:
                raise InvalidArgument(
                    "format 'attached' has no options",
                    reason="INVALID_OPTION",
                    violations=[FieldViolation("options", "")],
                )
            return Plan(method, format, None, None, base_folder, architecture)
        if not capabilities.exportable:
            raise FailedPrecondition(
                f"{job} was trained with {method.name}, which cannot be exported as {format!r}: "
                f"{capabilities.not_exportable_reason}",
                reason="NOT_EXPORTABLE",
                violations=[FieldViolation("format", f"{method.name} results cannot be merged")],
            )
        layout = self.formats[format]
        config = parse_options(f"format {format!r}", layout.config_class, options)
        layout.check(base_folder, config)
        return Plan(method, format, layout, config, base_folder, architecture)

    def _default_format(self, method: Method, base_folder: Path) -> str:
        """gguf where the method and the base allow, else safetensors, else attached."""
        if not method.capabilities.exportable:
            return ATTACHED
        for name in ("gguf", "safetensors"):
            layout = self.formats.get(name)
            if layout is None:
                continue
            try:
                layout.check(base_folder, layout.config_class())
            except FailedPrecondition:
                continue
            return name
        return ATTACHED

    def _export(
        self, staging: Path, request_id: str, job: str, model_id: str, plan: Plan, system_prompt: str | None
    ) -> ModelRecord:
        method = plan.method
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
        tokenizer = load_tokenizer(plan.base_folder)
        system, system_note = _system_prompt(manifest, system_prompt)
        trained = artifact / manifest.trained
        out = staging / "model"
        out.mkdir()
        template = ollama_template(tokenizer)
        if system:
            template = replace(template, default_system=system)
        if plan.layout is None:
            log.info("attaching", job=job, method=method.name, base_model=manifest.base_model)
            rebuilt = method.load_trained(plan.base_folder, config, trained, detect_runtime(), trainable=False)
            difference, tolerance = verify(rebuilt, artifact, manifest, job, "attached")
            shutil.copytree(trained, out / manifest.trained)
            shutil.copy2(artifact / MANIFEST, out / MANIFEST)
            exported = Exported()
        else:
            log.info("merging", job=job, method=method.name, base_model=manifest.base_model, format=plan.format)
            merged = method.merge(plan.base_folder, config, trained)
            difference, tolerance = verify(merged, artifact, manifest, job, "merged")
            merged_folder = staging / "merged"
            merged.save_pretrained(merged_folder, safe_serialization=True)
            save_tokenizer_with_sources(tokenizer, plan.base_folder, merged_folder)
            del merged
            exported = plan.layout.write(
                MergedModel(
                    merged_folder,
                    plan.architecture,
                    _context_length(merged_folder),
                    template,
                    Path(manifest.base_model).name,
                ),
                plan.options,
                out,
            )
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
            modelfile=exported.modelfile,
            create_time=now(),
            format=plan.format,
            method_parameters=manifest.method_parameters,
            max_divergence=difference,
            tolerance=tolerance,
            gguf=exported.gguf,
            chat_template=template,
            notes=[*exported.notes, *([system_note] if system_note else [])],
            system_prompt=system,
        )
        self.store.add(record, request_id)
        return record

    def push(self, model: str, target_name: str, options: dict[str, str]) -> tuple[ModelRecord, list[str]]:
        """Hands an exported model to a push target; the export itself is never changed."""
        record = self.store.get(parse_name(model, "models", field="model"))
        target_name = target_name or "ollama"
        target = self.targets.get(target_name)
        if target is None:
            known = ", ".join(self.targets) or "none"
            raise InvalidArgument(
                f"push target {target_name!r} is not one of: {known}",
                reason="UNKNOWN_PUSH_TARGET",
                violations=[FieldViolation("target", f"not one of: {known}")],
            )
        if record.format not in target.formats:
            raise FailedPrecondition(
                f"models/{record.id} is a {record.format!r} export; {target_name} takes "
                f"{' or '.join(repr(f) for f in target.formats)}: export the job again with that format",
                reason="FORMAT_NOT_ACCEPTED",
            )
        config = parse_options(f"push target {target_name!r}", target.config_class, options)
        with self._lock:
            pushed = target.push(
                Path(record.directory),
                Exported(modelfile=record.modelfile, gguf=record.gguf, notes=record.notes),
                record.chat_template or ollama_template(load_tokenizer(Path(record.directory))),
                config,
            )
            self.store.add_push(record.id, PushRecord(target_name, pushed.address, pushed.remote_name, now()))
        return self.store.get(record.id), pushed.notes


def _system_prompt(manifest: Manifest, given: str | None) -> tuple[str | None, str]:
    """(the model's default system prompt, or None for the base model's own; a note saying
    where it came from)."""
    if given:
        return given, "The default system prompt is the one given at export."
    if given is None and manifest.system_prompt:
        return manifest.system_prompt, (
            f"The default system prompt (Modelfile SYSTEM, and this service's for a chat without one) is the one "
            f"{manifest.system_prompt_share:.0%} of the training examples open with, so a bare user message gets "
            f"what the model learned: {manifest.system_prompt[:80]!r}. Export with system_prompt to change it."
        )
    return None, ""


def _architecture(folder: Path) -> str:
    architectures = json.loads((Path(folder) / "config.json").read_text()).get("architectures") or ["unknown"]
    return architectures[0]


def _context_length(folder: Path) -> int | None:
    return json.loads((Path(folder) / "config.json").read_text()).get("max_position_embeddings")
