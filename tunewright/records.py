"""What the services hand back, as plain typed Python values: the public client returns these
instead of protobuf messages, and the CLI prints them (``as_json`` for ``--json``).

Field names follow the API's messages (``protos/``), so a reader of either knows the
other. Resource names keep their collection prefix ("datasets/…", "jobs/…", "models/…");
times are timezone-aware UTC datetimes, or None when unset.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from tunewright.data.v1 import data_service_pb2 as data_pb
from tunewright.serve.v1 import serve_service_pb2 as serve_pb
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb


def _time(stamp: Timestamp) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if stamp.seconds or stamp.nanos else None


def as_json(value: Any) -> Any:
    """A record (or a list or dict of them) as JSON-ready builtins."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


# ---- data service


@dataclass(frozen=True)
class File:
    name: str
    filename: str
    size_bytes: int
    sha256: str
    create_time: datetime | None

    @classmethod
    def from_pb(cls, m: data_pb.File) -> File:
        return cls(m.name, m.filename, m.size_bytes, m.sha256, _time(m.create_time))


@dataclass(frozen=True)
class SplitCounts:
    train: int
    validation: int
    test: int


@dataclass(frozen=True)
class Dataset:
    name: str
    display_name: str
    file: str
    format: str
    example_count: int
    split_counts: SplitCounts
    validation_fraction: float
    test_fraction: float
    split_seed: int
    create_time: datetime | None
    # How the file was read: "jsonl", "txt", "csv", "parquet" or a plugin's reader.
    reader: str = ""
    source_sha256: str = ""
    column_mapping: dict[str, str] = dataclasses.field(default_factory=dict)
    # CleaningOptions and DatasetStats of the API, as dicts with its field names.
    cleaning: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer_model: str = ""
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_pb(cls, m: data_pb.Dataset) -> Dataset:
        c = m.split_counts
        return cls(
            name=m.name,
            display_name=m.display_name,
            file=m.file,
            format=m.format_name or data_pb.DatasetFormat.Name(m.format).removeprefix("DATASET_FORMAT_").lower(),
            example_count=m.example_count,
            split_counts=SplitCounts(c.train, c.validation, c.test),
            validation_fraction=m.validation_fraction,
            test_fraction=m.test_fraction,
            split_seed=m.split_seed,
            create_time=_time(m.create_time),
            reader=m.reader,
            source_sha256=m.source_sha256,
            column_mapping=dict(m.column_mapping),
            cleaning=_cleaning(m.cleaning) if m.HasField("cleaning") else {},
            tokenizer_model=m.tokenizer_model,
            stats=_stats(m.stats) if m.HasField("stats") else {},
        )


@dataclass(frozen=True)
class CleaningAction:
    # The source's line (or row), from 1.
    line: int
    # "exact_duplicate_removed", "near_duplicate_removed", "pii_replaced", "overlength_removed",
    # "overlength" or "leaked_test_example".
    kind: str
    duplicate_of_line: int = 0
    pii_replacements: dict[str, int] = dataclasses.field(default_factory=dict)
    tokens: int = 0

    @classmethod
    def from_pb(cls, m: data_pb.CleaningAction) -> CleaningAction:
        return cls(
            line=m.line,
            kind=data_pb.CleaningAction.Kind.Name(m.kind).removeprefix("KIND_").lower(),
            duplicate_of_line=m.duplicate_of_line,
            pii_replacements=dict(m.pii_replacements),
            tokens=m.tokens,
        )


def _dict(message: Any) -> dict[str, Any]:
    """A message as a dict with the API's field names, unset numbers and flags included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _cleaning(m: data_pb.CleaningOptions) -> dict[str, Any]:
    found = _dict(m)
    found["near_duplicates"] = data_pb.NearDuplicates.Name(m.near_duplicates).removeprefix("NEAR_DUPLICATES_").lower()
    return found


def _stats(m: data_pb.DatasetStats) -> dict[str, Any]:
    found = _dict(m)
    for split in ("train", "validation", "test"):
        # JSON mapping writes 64-bit integers as strings.
        for key in ("turns", "tokens", "loss_tokens"):
            found[split][key] = int(found[split][key])
    return found


# ---- trainer service


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def from_pb(cls, state: int) -> JobState:
        return cls(trainer_pb.JobState.Name(state).removeprefix("JOB_STATE_").lower())

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # int, float, bool, string, string_list
    description: str
    default: Any
    choices: list[str]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    parameters: list[Parameter]
    default_learning_rate: float
    mergeable: bool
    exportable: bool
    not_exportable_reason: str
    requires_gpu: bool
    artifact_kind: str  # adapter, full, prompt

    @classmethod
    def from_pb(cls, m: trainer_pb.Method) -> Method:
        import json

        c = m.capabilities
        return cls(
            name=m.name,
            description=m.description,
            parameters=[
                Parameter(
                    p.name,
                    trainer_pb.ParameterType.Name(p.type).removeprefix("PARAMETER_TYPE_").lower(),
                    p.description,
                    json.loads(p.default_json) if p.default_json else None,
                    list(p.choices),
                )
                for p in m.parameters
            ],
            default_learning_rate=m.default_learning_rate,
            mergeable=c.mergeable,
            exportable=c.exportable,
            not_exportable_reason=c.not_exportable_reason,
            requires_gpu=c.requires_gpu,
            artifact_kind=trainer_pb.ArtifactKind.Name(c.artifact_kind).removeprefix("ARTIFACT_KIND_").lower(),
        )


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    peak_memory_bytes: int

    @classmethod
    def from_pb(cls, m: trainer_pb.TrainingProgress) -> Progress:
        return cls(m.step, m.total_steps, m.epoch, m.loss, m.learning_rate, m.tokens_per_second, m.peak_memory_bytes)


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint of a job: where a resumed job would start from."""

    name: str
    step: int
    epoch: float
    loss: float
    # Set when it was taken right after a validation (the end of an epoch).
    validation_loss: float | None
    created: datetime | None
    size_bytes: int

    @classmethod
    def from_pb(cls, m: trainer_pb.Checkpoint) -> Checkpoint:
        validation = m.validation_loss if m.HasField("validation_loss") else None
        return cls(m.name, m.step, m.epoch, m.loss, validation, _time(m.create_time), m.size_bytes)


@dataclass(frozen=True)
class MemoryFix:
    """A change that makes a job fit the trainer's memory, and what the job would then take."""

    change: str
    description: str
    peak_memory_bytes: int
    seconds_per_step: float
    fits: bool


@dataclass(frozen=True)
class JobEstimate:
    """What a job would take (EstimateJob): peak memory and where it goes, time, whether it fits."""

    peak_memory_bytes: int
    device_memory_bytes: int
    # Part name to bytes; the parts sum to the peak.
    breakdown: dict[str, int]
    seconds_per_step: float
    steps: int
    training_seconds: float
    total_seconds: float
    tokens_per_second: float
    largest_pass_rows: int
    largest_pass_tokens: int
    memory_limit_bytes: int
    fits: bool
    fixes: list[MemoryFix]
    notes: list[str]

    @classmethod
    def from_pb(cls, m: trainer_pb.JobEstimate) -> JobEstimate:
        return cls(
            peak_memory_bytes=m.peak_memory_bytes,
            device_memory_bytes=m.device_memory_bytes,
            breakdown={part.name: part.bytes for part in m.breakdown},
            seconds_per_step=m.seconds_per_step,
            steps=m.steps,
            training_seconds=m.training_seconds,
            total_seconds=m.total_seconds,
            tokens_per_second=m.tokens_per_second,
            largest_pass_rows=m.largest_pass_rows,
            largest_pass_tokens=m.largest_pass_tokens,
            memory_limit_bytes=m.memory_limit_bytes,
            fits=m.fits,
            fixes=[
                MemoryFix(f.change, f.description, f.peak_memory_bytes, f.seconds_per_step, f.fits) for f in m.fixes
            ],
            notes=list(m.notes),
        )


@dataclass(frozen=True)
class Validation:
    step: int
    epoch: float
    loss: float


@dataclass(frozen=True)
class Score:
    loss: float
    exact_match: float
    first_line_match: float
    # How long this model's evaluation took, apart from training.
    seconds: float = 0.0

    @classmethod
    def from_pb(cls, m: trainer_pb.ModelScore) -> Score:
        return cls(m.loss, m.exact_match, m.first_line_match, m.seconds)


@dataclass(frozen=True)
class Evaluation:
    """The base model against the fine-tuned one on the test split."""

    example_count: int
    base: Score
    tuned: Score

    @classmethod
    def from_pb(cls, m: trainer_pb.Evaluation) -> Evaluation:
        return cls(m.example_count, Score.from_pb(m.base), Score.from_pb(m.tuned))


@dataclass(frozen=True)
class JobError:
    code: str
    message: str


def _value(v: trainer_pb.ParameterValue) -> Any:
    kind = v.WhichOneof("kind")
    return list(v.string_list_value.values) if kind == "string_list_value" else getattr(v, kind) if kind else None


@dataclass(frozen=True)
class Job:
    name: str
    state: JobState
    base_model: str
    dataset: str
    method: str
    method_parameters: dict[str, Any]
    hyperparameters: dict[str, Any]
    create_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    error: JobError | None
    progress: Progress | None
    evaluation: Evaluation | None
    # While queued: 1 runs next; else 0.
    queue_position: int = 0

    @classmethod
    def from_pb(cls, m: trainer_pb.Job) -> Job:
        hp = m.hyperparameters
        return cls(
            name=m.name,
            state=JobState.from_pb(m.state),
            base_model=m.base_model,
            dataset=m.dataset,
            method=m.method,
            method_parameters={k: _value(v) for k, v in m.method_parameters.items()},
            hyperparameters={f.name: getattr(hp, f.name) for f in hp.DESCRIPTOR.fields},
            create_time=_time(m.create_time),
            start_time=_time(m.start_time),
            end_time=_time(m.end_time),
            error=JobError(m.error.code, m.error.message) if m.HasField("error") and m.error.code else None,
            progress=Progress.from_pb(m.progress) if m.HasField("progress") else None,
            evaluation=Evaluation.from_pb(m.evaluation) if m.HasField("evaluation") else None,
            queue_position=m.queue_position,
        )


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's history, in order (``sequence`` counts from 1). Exactly one of the
    payload fields is set, the one ``kind`` names: state, progress, validation, evaluation, log."""

    sequence: int
    time: datetime | None
    kind: str
    state: JobState | None = None
    error: JobError | None = None
    progress: Progress | None = None
    validation: Validation | None = None
    evaluation: Evaluation | None = None
    log: str | None = None

    @classmethod
    def from_pb(cls, m: trainer_pb.WatchJobResponse) -> JobEvent:
        kind = m.WhichOneof("payload")
        common = {"sequence": m.sequence, "time": _time(m.time)}
        if kind == "state_change":
            c = m.state_change
            error = JobError(c.error.code, c.error.message) if c.error.code else None
            return cls(kind="state", state=JobState.from_pb(c.state), error=error, **common)
        if kind == "progress":
            return cls(kind=kind, progress=Progress.from_pb(m.progress), **common)
        if kind == "validation":
            v = m.validation
            return cls(kind=kind, validation=Validation(v.step, v.epoch, v.loss), **common)
        if kind == "evaluation":
            return cls(kind=kind, evaluation=Evaluation.from_pb(m.evaluation), **common)
        return cls(kind="log", log=m.log.text, **common)


# ---- serve service


@dataclass(frozen=True)
class Push:
    target: str
    address: str
    remote_name: str
    create_time: datetime | None


@dataclass(frozen=True)
class Model:
    name: str
    job: str
    base_model: str
    method: str
    format: str  # gguf, safetensors, attached
    directory: str
    files: dict[str, int]  # path -> size in bytes
    modelfile: str
    template_family: str
    notes: list[str]
    pushes: list[Push]
    create_time: datetime | None
    # The largest KL divergence of the export from the trained model on the probe, and the bound.
    max_kl_divergence: float | None = None
    kl_tolerance: float | None = None
    # What a chat without a system message gets (the Modelfile's SYSTEM); "" for none.
    system_prompt: str = ""

    @classmethod
    def from_pb(cls, m: serve_pb.Model) -> Model:
        verified = m.HasField("verification")
        return cls(
            name=m.name,
            job=m.job,
            base_model=m.base_model,
            method=m.method,
            format=m.format,
            directory=m.directory,
            files={f.path: f.size_bytes for f in m.files},
            modelfile=m.modelfile,
            template_family=m.template_family,
            notes=list(m.notes),
            pushes=[Push(p.target, p.address, p.remote_name, _time(p.create_time)) for p in m.pushes],
            create_time=_time(m.create_time),
            max_kl_divergence=m.verification.max_kl_divergence if verified else None,
            kl_tolerance=m.verification.tolerance if verified else None,
            system_prompt=m.system_prompt,
        )


@dataclass(frozen=True)
class Piece:
    """A piece of a streamed answer; the last one has ``finish_reason`` ("stop": an end-of-turn
    token, "length": the token limit)."""

    text: str
    token_count: int
    backend: str
    finish_reason: str | None = None

    @classmethod
    def from_pb(cls, m: serve_pb.ChatResponse | serve_pb.GenerateResponse) -> Piece:
        reason = serve_pb.FinishReason.Name(m.finish_reason).removeprefix("FINISH_REASON_").lower()
        return cls(m.text, m.token_count, m.backend, None if reason == "unspecified" else reason)


@dataclass(frozen=True)
class Answer:
    text: str
    # "stop" (the model ended its turn) or "length" (max_new_tokens was reached).
    finish_reason: str
    # "ollama", "llama.cpp" or "transformers".
    backend: str
    token_count: int = 0
