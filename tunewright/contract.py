"""The typed contract between the trainer server, its job workers and the serve service.

Three things cross a process boundary as JSON, and each is defined here, once:

- ``JobSpec``: what a job asks for. The trainer writes it to ``JOB_DIR/job.json``; the
  worker reads it.
- Worker events (``Progress``, ``Evaluation``, ``Log``, ``Failed``, ``Done``): one JSON
  line each on the worker's events pipe, tagged by ``kind``.
- ``Manifest``: what a succeeded job's artifact holds. The worker writes it; the serve
  service reads it after ``ReadArtifact`` and acts on ``artifact_kind``.

Decoding is strict: a missing field, an unknown one or a wrong type is an error naming the
field, never a silently absent value. ``Manifest.format_version`` lets a serve service refuse
an artifact written by a newer tunewright instead of misreading it. The module imports no
torch, so the trainer server starts without it.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import msgspec

# The folder a succeeded job publishes inside its job folder, and the files in it.
ARTIFACT = "artifact"
MANIFEST = "manifest.json"
PREDICTIONS = "eval_predictions.jsonl"
# Logits of the trained model on one held-out example: whoever loads or merges the
# result checks that it still computes them (see ``Probe``).
PROBE = "probe.safetensors"
JOB_SPEC = "job.json"
WORKER_LOG = "worker.log"

# Raised when an artifact's layout changes in a way an older reader would misread.
FORMAT_VERSION = 1

T = TypeVar("T")


class ArtifactKind(enum.StrEnum):
    """What a method saves, which decides how the serve service uses it."""

    # Weights added to the base's (LoRA, IA3): merged for export, or attached when serving.
    ADAPTER = "adapter"
    # A whole model's weights: used as they are; the base only lends its tokenizer.
    FULL = "full"
    # Virtual tokens or per-layer prefixes: attached to the base when serving, never merged.
    PROMPT = "prompt"

    @property
    def folder(self) -> str:
        """The folder inside the artifact that holds what the method saved."""
        return {"adapter": "adapter", "full": "model", "prompt": "prompt"}[self.value]


class _Frozen(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Hyperparameters(_Frozen):
    """Settings every method shares; see trainer_service.proto for their meaning."""

    epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_seq_length: int = 512
    seed: int = 0
    max_steps: int = 0
    evaluate: bool = True
    eval_max_new_tokens: int = 48
    # Examples per forward/backward pass; gradients accumulate over the step. 0: batch_size.
    micro_batch_size: int = 0
    # "auto" (bf16 where the device has it), "bf16" or "fp32": the training passes' arithmetic.
    precision: str = "auto"
    # Pack each pass's examples into one row (attention kept within each example) instead of padding.
    packing: bool = False
    # Steps between checkpoints; 0: as often as costs under 5% of training time.
    checkpoint_every: int = 0
    # The latest checkpoints kept, besides the one with the lowest validation loss.
    keep_checkpoints: int = 2
    # Processes that train the job together (torchrun, DDP); each takes a share of every batch.
    processes: int = 1
    # Batches drawn among examples of similar length (less padding); shuffled all the same.
    group_by_length: bool = True
    # "on", "off", or "auto": on where the job would not fit the trainer's memory without it.
    gradient_checkpointing: str = "auto"


class JobSpec(_Frozen):
    job_id: str
    base_model: str
    dataset: str
    method: str
    # Plain JSON values, already checked against the method's config class by CreateJob.
    method_parameters: dict[str, Any]
    hyperparameters: Hyperparameters
    data_service: str
    model_cache: str


class Probe(_Frozen):
    """Where the probe logits are and how exactly a reload must reproduce them.

    ``tolerance`` bounds the KL divergence (nats, largest over the probe's positions) of
    whatever is rebuilt from the artifact (reloaded or merged) from the trained model. It
    depends on the precision the trained model computed in: a model that ran in bfloat16
    is rebuilt in float32, and the two differ by bfloat16 rounding (``core/probe.py``).
    """

    file: str
    compute_dtype: str
    tolerance: float


class Manifest(_Frozen):
    format_version: int
    job_id: str
    base_model: str
    method: str
    method_parameters: dict[str, Any]
    hyperparameters: Hyperparameters
    artifact_kind: ArtifactKind
    # Folder inside the artifact that holds what the method saved.
    trained: str
    probe: Probe | None = None
    # The data service's record of the dataset the job trained on (GetDataset's Dataset,
    # JSON-mapped): its source file's sha256, format, cleaning options, split seed and
    # statistics, so that a model can be traced back to its data.
    dataset: dict[str, Any] | None = None
    # The system prompt the training data shared (the first message of at least
    # SHARED_SYSTEM_SHARE of the training conversations) and the share that had it; the
    # export makes it the model's default. None: the data shared none.
    system_prompt: str | None = None
    system_prompt_share: float | None = None


# Worker events, tagged by "kind" on the wire.


class _Event(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class Progress(_Event, tag="progress"):
    step: int
    total_steps: int
    epoch: float
    # Mean cross-entropy (nats per token) over the trained tokens of the step's batch.
    loss: float
    learning_rate: float
    tokens_per_second: float
    # Resident memory of the worker on a CPU, PyTorch's allocations on a GPU.
    peak_memory_bytes: int = 0


class Validation(_Event, tag="validation"):
    """The loss over the whole validation split, at the end of an epoch or of training."""

    step: int
    epoch: float
    loss: float


class Score(_Frozen):
    loss: float
    exact_match: float
    first_line_match: float
    # Wall-clock seconds of this evaluation (answers and test loss); 0 in records from before.
    seconds: float = 0.0


class Evaluation(_Event, tag="evaluation"):
    example_count: int
    base: Score
    tuned: Score


class Log(_Event, tag="log"):
    text: str


class Failed(_Event, tag="error"):
    """Ends the job FAILED with an UPPER_SNAKE code and a message the user can act on."""

    code: str
    message: str


class Done(_Event, tag="done"):
    pass


WorkerEvent = Progress | Validation | Evaluation | Log | Failed | Done

_event_decoder = msgspec.json.Decoder(WorkerEvent)
_encoder = msgspec.json.Encoder()


def encode_event(event: WorkerEvent) -> bytes:
    return _encoder.encode(event) + b"\n"


def decode_event(line: bytes | str) -> WorkerEvent:
    """Raises ``msgspec.ValidationError`` (naming the field) or ``msgspec.DecodeError``."""
    return _event_decoder.decode(line)


def event_kind(event: WorkerEvent) -> str:
    """The event's tag on the wire: "progress", "validation", "evaluation", "log", "error" or "done"."""
    return type(event).__struct_config__.tag


def event_payload(event: WorkerEvent) -> dict[str, Any]:
    """The event's fields as plain JSON values, without its tag, as the job store keeps them."""
    payload = msgspec.to_builtins(event)
    payload.pop("kind", None)
    return payload


def to_json(value: msgspec.Struct) -> bytes:
    return msgspec.json.format(_encoder.encode(value), indent=2) + b"\n"


def from_json(data: bytes | str, kind: type[T]) -> T:
    """Decodes a ``JobSpec`` or ``Manifest``; raises ``msgspec.ValidationError`` naming the field."""
    return msgspec.json.decode(data, type=kind)


def to_builtins(value: msgspec.Struct) -> dict[str, Any]:
    return msgspec.to_builtins(value)
