"""The trainer's domain: checking job requests up front, and the job lifecycle."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psutil
import structlog

from tunewright import contract
from tunewright.contract import ARTIFACT, MANIFEST, Hyperparameters
from tunewright.core.basemodel import base_model_config, check_base_model
from tunewright.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from tunewright.estimate import DataShape, Estimate, ModelShape, estimate, host_runtime
from tunewright.methods import Method
from tunewright.parameters import build_config, config_to_dict
from tunewright.plugin_manager import get_method
from tunewright.trainer import checkpoints
from tunewright.trainer.memory import gib
from tunewright.trainer.runner import JobRunner
from tunewright.trainer.store import TERMINAL, Event, JobRecord, JobStore

log = structlog.get_logger(__name__)

# Each limit keeps a request from asking for something this machine cannot do.
LIMITS = {
    "epochs": (1, 100),
    "batch_size": (1, 1024),
    "max_seq_length": (16, 131072),
    "max_steps": (0, 10_000_000),
    "eval_max_new_tokens": (1, 4096),
    "micro_batch_size": (0, 1024),
    "checkpoint_every": (0, 10_000_000),
    "keep_checkpoints": (1, 1000),
    "processes": (1, 64),
}


PRECISIONS = ("auto", "bf16", "fp32")
CHECKPOINTING = ("auto", "on", "off")
# A watch with nothing new checks at least this often whether its client is still there.
WATCH_WAKE_SECONDS = 5.0


def resolve_hyperparameters(given: dict[str, Any], method: Method) -> Hyperparameters:
    """Fills defaults (the learning rate from the method) and checks ranges."""
    values = {"learning_rate": method.default_learning_rate, **given}
    violations = []
    for name, (low, high) in LIMITS.items():
        if name in values and not low <= values[name] <= high:
            violations.append(
                FieldViolation(f"hyperparameters.{name}", f"must be between {low} and {high}, got {values[name]}")
            )
    if not 0 < values["learning_rate"] < 1:
        violations.append(
            FieldViolation("hyperparameters.learning_rate", f"must be in (0, 1), got {values['learning_rate']}")
        )
    if values.get("precision", "auto") not in PRECISIONS:
        violations.append(
            FieldViolation(
                "hyperparameters.precision", f"must be one of {', '.join(PRECISIONS)}, got {values['precision']!r}"
            )
        )
    if values.get("gradient_checkpointing", "auto") not in CHECKPOINTING:
        violations.append(
            FieldViolation(
                "hyperparameters.gradient_checkpointing",
                f"must be one of {', '.join(CHECKPOINTING)}, got {values['gradient_checkpointing']!r}",
            )
        )
    if values.get("gradient_checkpointing") == "on" and not method.capabilities.takes_position_ids:
        violations.append(
            FieldViolation(
                "hyperparameters.gradient_checkpointing",
                f"method {method.name!r} puts a learned prefix into every layer's attention, so a layer "
                "cannot be recomputed alone; leave gradient_checkpointing unset (auto) or off",
            )
        )
    if values.get("packing") and not method.capabilities.takes_position_ids:
        violations.append(
            FieldViolation(
                "hyperparameters.packing",
                f"method {method.name!r} takes no position ids, so its examples cannot be packed apart; "
                "leave packing unset for this method",
            )
        )
    batch_size = values.get("batch_size", Hyperparameters().batch_size)
    if values.get("processes", 1) > batch_size:
        violations.append(
            FieldViolation(
                "hyperparameters.processes",
                f"must be at most batch_size ({batch_size}), got {values['processes']}: each process trains a "
                "share of every batch",
            )
        )
    if values.get("micro_batch_size", 0) > batch_size:
        violations.append(
            FieldViolation(
                "hyperparameters.micro_batch_size",
                f"must be at most batch_size ({batch_size}), got {values['micro_batch_size']}; "
                "it splits each batch, it does not grow it",
            )
        )
    if violations:
        raise InvalidArgument(
            "; ".join(f"{v.field} {v.description}" for v in violations),
            reason="INVALID_HYPERPARAMETER",
            violations=violations,
        )
    return Hyperparameters(**values)


def check_method_can_run(method: Method) -> None:
    """Refuses a method this trainer cannot run, before anything is queued: a library it
    needs is not installed, or it needs a GPU and there is none. Checks without importing."""
    missing = [name for name in method.capabilities.required_packages if importlib.util.find_spec(name) is None]
    if missing:
        raise FailedPrecondition(
            f"method {method.name!r} needs {', '.join(missing)}, which the trainer host does not have; "
            "install them (make install does) and restart the trainer",
            reason="METHOD_DEPENDENCY_MISSING",
            violations=[FieldViolation("method", f"needs {', '.join(missing)}")],
        )
    if method.capabilities.requires_gpu and not _has_cuda():
        raise FailedPrecondition(
            f"method {method.name!r} needs a CUDA GPU and the trainer has none", reason="GPU_REQUIRED"
        )


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class MemoryFix:
    """A change to a job request, and what the job would take with it."""

    change: str
    description: str
    estimate: Estimate
    fits: bool


@dataclass(frozen=True)
class JobEstimate:
    estimate: Estimate
    # What the trainer lets a job use, and where that figure comes from.
    limit_bytes: int
    limit_source: str
    fixes: list[MemoryFix]

    @property
    def fits(self) -> bool:
        return self.estimate.peak_bytes <= self.limit_bytes


@dataclass(frozen=True)
class _Request:
    """A job request checked as CreateJob checks it."""

    base_model: str
    dataset: Any  # the data service's Dataset message
    method: Method
    config: Any
    hp: Hyperparameters
    # The base model's shape, read once for every estimate of the request and its variants;
    # None where the method has no footprint or the config could not be read.
    shape: ModelShape | None = None


class Trainer:
    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        methods: dict[str, Method],
        get_dataset: Callable[[str], Any],
        models_dirs: Sequence[Path],
    ) -> None:
        self.store = store
        self.runner = runner
        self.methods = methods
        # The data service's Dataset message for a name, or None when there is none.
        self.get_dataset = get_dataset
        # The only folders a job's base_model may name (built-in names are always allowed).
        self.models_dirs = list(models_dirs)

    def create_job(
        self,
        request_id: str,
        base_model: str,
        dataset: str,
        method_name: str,
        method_parameters: dict[str, Any],
        hyperparameters: dict[str, Any],
        check_memory: bool = True,
    ) -> JobRecord:
        if existing := self.store.by_request(request_id):
            return existing
        request = self._with_checkpointing_decided(
            self._checked(base_model, dataset, method_name, method_parameters, hyperparameters)
        )
        if check_memory:
            self._refuse_what_does_not_fit(request)
        job, _ = self.store.create(
            request_id,
            base_model,
            dataset,
            request.method.name,
            config_to_dict(request.config),
            contract.to_builtins(request.hp),
        )
        return job

    def _checked(
        self,
        base_model: str,
        dataset: str,
        method_name: str,
        method_parameters: dict[str, Any],
        hyperparameters: dict[str, Any],
    ) -> _Request:
        method = get_method(self.methods, method_name)
        config = build_config(method, method_parameters)
        hp = resolve_hyperparameters(hyperparameters, method)
        check_base_model(base_model, models_dirs=self.models_dirs)
        check_method_can_run(method)
        found = self.get_dataset(dataset) if dataset.startswith("datasets/") else None
        if found is None:
            raise NotFound(
                f"{dataset!r} does not exist on the data service; create it with CreateDataset",
                reason="DATASET_NOT_FOUND",
                violations=[FieldViolation("dataset", "no such dataset")],
            )
        shape = None
        # A config the estimate cannot read is read again, and its error raised, where an
        # estimate is asked for.
        with contextlib.suppress(ValueError):
            if hasattr(method, "footprint"):
                shape = ModelShape.from_config(base_model_config(base_model, self.runner.model_cache))
        return _Request(base_model, found, method, config, hp, shape)

    def estimate_job(
        self,
        base_model: str,
        dataset: str,
        method_name: str,
        method_parameters: dict[str, Any],
        hyperparameters: dict[str, Any],
    ) -> JobEstimate:
        request = self._checked(base_model, dataset, method_name, method_parameters, hyperparameters)
        if not hasattr(request.method, "footprint"):
            raise FailedPrecondition(
                f"method {request.method.name!r} does not describe its memory (it has no footprint), "
                "so no estimate can be made for it",
                reason="NO_ESTIMATE",
            )
        decided = self._with_checkpointing_decided(request)
        try:
            found = self._job_estimate(decided)
        except ValueError as error:
            raise FailedPrecondition(f"{base_model!r} cannot be estimated: {error}", reason="NO_ESTIMATE") from error
        if request.hp.gradient_checkpointing == "auto":
            found.estimate.notes.append(f"gradient_checkpointing auto: {decided.hp.gradient_checkpointing}")
        return found

    def _with_checkpointing_decided(self, request: _Request) -> _Request:
        """The request with gradient_checkpointing "auto" decided: "on" when the job would not
        fit the trainer's memory without it and would with it, else "off"."""
        if request.hp.gradient_checkpointing != "auto":
            return request
        off = dataclasses.replace(request, hp=msgspec.structs.replace(request.hp, gradient_checkpointing="off"))
        if not hasattr(request.method, "footprint") or not request.method.capabilities.takes_position_ids:
            return off
        on = dataclasses.replace(request, hp=msgspec.structs.replace(request.hp, gradient_checkpointing="on"))
        try:
            limit, _ = self.memory_limit()
            if self._estimate(off).peak_bytes > limit >= self._estimate(on).peak_bytes:
                return on
        except ValueError as error:  # a config the estimate cannot read
            log.warning("no memory estimate", error=str(error))
        return off

    def _job_estimate(self, request: _Request) -> JobEstimate:
        guess = self._estimate(request)
        limit, source = self.memory_limit()
        fixes = self._fixes(request, limit) if guess.peak_bytes > limit else []
        return JobEstimate(guess, limit, source, fixes)

    def _estimate(self, request: _Request) -> Estimate:
        shape = request.shape or ModelShape.from_config(base_model_config(request.base_model, self.runner.model_cache))
        runtime = host_runtime()
        stats = request.dataset.stats
        data = DataShape.from_split_stats(stats.train, stats.validation, stats.test)
        guess = estimate(shape, request.method.footprint(shape, request.config, runtime), data, request.hp, runtime)
        tokenizer = request.dataset.tokenizer_model
        if tokenizer and tokenizer != request.base_model:
            guess.notes.append(
                f"the dataset's tokens were counted with {tokenizer}'s tokenizer, not {request.base_model}'s"
            )
        return guess

    def memory_limit(self) -> tuple[int, str]:
        """The memory a job may use: the trainer's --memory-limit, else what the host has
        free now."""
        if self.runner.memory_limit_bytes:
            return self.runner.memory_limit_bytes, "the trainer's --memory-limit"
        return psutil.virtual_memory().available, "the memory the trainer host has free"

    def _refuse_what_does_not_fit(self, request: _Request) -> None:
        if not hasattr(request.method, "footprint"):
            return  # a method that does not describe its memory is only watched while it runs
        try:
            found = self._job_estimate(request)
        except ValueError as error:  # a config the estimate cannot read: the job is only watched
            log.warning("no memory estimate", error=str(error))
            return
        if found.fits:
            return
        guess = found.estimate
        parts = ", ".join(f"{part} {gib(size)}" for part, size in guess.breakdown.items() if size)
        fitting = [fix for fix in found.fixes if fix.fits]
        advice = (
            "; ".join(f"{fix.change} ({fix.description}: about {gib(fix.estimate.peak_bytes)})" for fix in fitting)
            or "nothing in this request's reach fits: a smaller base model, or a trainer with more memory"
        )
        raise ResourceExhausted(
            f"this job would need about {gib(guess.peak_bytes)} of memory at its peak ({parts}), and "
            f"{found.limit_source} is {gib(found.limit_bytes)}. What would fit: {advice}. "
            "EstimateJob (tunewright jobs estimate) shows the whole estimate",
            reason="JOB_DOES_NOT_FIT",
            violations=[FieldViolation(fix.change.partition("=")[0], fix.description) for fix in fitting],
            metadata={
                "peak_memory_bytes": str(guess.peak_bytes),
                "memory_limit_bytes": str(found.limit_bytes),
            },
        )

    def _fixes(self, request: _Request, limit: int) -> list[MemoryFix]:
        """Changes that make the job fit, each the smallest of its kind that does (or the
        closest where none does), in the order a user would try them."""
        fixes = []
        hp, config = request.hp, request.config
        rows = hp.micro_batch_size or hp.batch_size

        def attempt(change: str, description: str, **changed: Any) -> MemoryFix:
            guess = self._estimate(dataclasses.replace(request, **changed))
            return MemoryFix(change, description, guess, guess.peak_bytes <= limit)

        def smallest(candidates: list[MemoryFix]) -> MemoryFix | None:
            return next((fix for fix in candidates if fix.fits), candidates[-1] if candidates else None)

        micro = [
            attempt(
                f"hyperparameters.micro_batch_size={size}",
                f"passes of {size} examples, gradients accumulated over the batch of {hp.batch_size}",
                hp=msgspec.structs.replace(hp, micro_batch_size=size),
            )
            for size in _halvings(rows)
        ]
        fixes.append(smallest(micro))
        can_recompute = request.method.capabilities.takes_position_ids
        if can_recompute and hp.gradient_checkpointing != "on" and not getattr(config, "gradient_checkpointing", False):
            fixes.append(
                attempt(
                    "hyperparameters.gradient_checkpointing=on",
                    "activations recomputed in the backward pass, about a third more arithmetic",
                    hp=msgspec.structs.replace(hp, gradient_checkpointing="on"),
                )
            )
        qlora = self.methods.get("qlora")
        if qlora is not None and request.method.name in ("lora", "full", "unsloth") and hasattr(qlora, "footprint"):
            # The adapter's settings carry over; qlora keeps its own checkpointing (on).
            shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
            known = {f.name for f in dataclasses.fields(qlora.config_class)} - {"gradient_checkpointing"}
            qlora_config = build_config(qlora, {k: v for k, v in shared.items() if k in known})
            fixes.append(
                attempt(
                    "method=qlora",
                    "LoRA on a 4-bit copy of the base, with gradient checkpointing",
                    method=qlora,
                    config=qlora_config,
                )
            )
        longest = min(request.dataset.stats.train.max_tokens, hp.max_seq_length)
        lengths = [
            attempt(
                f"hyperparameters.max_seq_length={length}",
                f"examples cut to {length} tokens "
                f"(up to {_longer_than(request.dataset.stats.train, length)} training examples are longer)",
                hp=msgspec.structs.replace(hp, max_seq_length=length),
            )
            for length in _halvings(longest, floor=64)
        ]
        fixes.append(smallest(lengths))
        return sorted((fix for fix in fixes if fix is not None), key=lambda fix: not fix.fits)

    def cancel_job(self, job_id: str) -> JobRecord:
        job = self.store.get(job_id)
        if job.state in TERMINAL or not self.runner.cancel(job_id):
            job = self.store.get(job_id)
            raise FailedPrecondition(
                f"jobs/{job_id} has already finished ({job.state}); only queued or running jobs can be cancelled",
                reason="JOB_FINISHED",
            )
        return self.wait_until(job_id, lambda j: j.state in TERMINAL, timeout=30) or self.store.get(job_id)

    def wait_until(self, job_id: str, done: Callable[[JobRecord], bool], timeout: float) -> JobRecord | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            generation = self.store.job_generation(job_id)
            job = self.store.get(job_id)
            if done(job):
                return job
            self.store.wait_for_job_change(job_id, generation, timeout=0.5)
        return None

    def watch(self, job_id: str, after: int, is_active: Callable[[], bool]) -> Iterator[Event]:
        """Stored events after ``after``, then new ones as they come, until the job ends."""
        self.store.get(job_id)
        generation = self.store.job_generation(job_id)
        while is_active():
            events = self.store.events_after(job_id, after)
            yield from events
            if events:
                after = events[-1].seq
                continue
            if self.store.get(job_id).state in TERMINAL:
                return
            # Nothing new: sleep until this job changes. A thousand watchers cost nothing while
            # it is quiet, whatever other jobs do; the timeout bounds how long a cancelled
            # watch lingers.
            generation = self.store.wait_for_job_change(job_id, generation, timeout=WATCH_WAKE_SECONDS)

    def artifact_files(self, job_id: str, path: str) -> list[tuple[str, Path]]:
        job = self.store.get(job_id)
        if job.state != "SUCCEEDED":
            raise FailedPrecondition(
                f"jobs/{job_id} is {job.state}; artifacts exist once it has SUCCEEDED", reason="JOB_NOT_SUCCEEDED"
            )
        return _files(self.runner.job_dir(job_id) / ARTIFACT, path, f"jobs/{job_id}")

    def checkpoint_artifact_files(self, job_id: str, step: int, path: str) -> list[tuple[str, Path]]:
        """The artifact of the job's checkpoint at ``step``, built on first use by a worker
        process (the method's save, the probe and the manifest, as a finished job has)."""
        found = {c.step: c for c in self.checkpoints(job_id)}.get(step)
        if found is None:
            raise NotFound(
                f"jobs/{job_id} has no checkpoint at step {step}; ListCheckpoints lists the ones kept",
                reason="CHECKPOINT_NOT_FOUND",
            )
        root = found.path / ARTIFACT
        if not (root / MANIFEST).exists():
            self.runner.build_checkpoint_artifact(job_id, step)
        return _files(root, path, f"the checkpoint at step {step} of jobs/{job_id}")

    def checkpoints(self, job_id: str) -> list[checkpoints.Checkpoint]:
        self.store.get(job_id)  # NOT_FOUND for an unknown job
        return checkpoints.complete(self.runner.job_dir(job_id) / checkpoints.CHECKPOINTS)


def _halvings(start: int, floor: int = 1) -> list[int]:
    """start // 2, start // 4, ... down to ``floor``."""
    sizes, size = [], start // 2
    while size >= floor:
        sizes.append(size)
        size //= 2
    return sizes


def _longer_than(split: Any, length: int) -> int:
    """Examples of a split's length histogram in buckets above ``length`` (an upper bound)."""
    return sum(bucket.examples for bucket in split.length_histogram if bucket.max_tokens > length)


def _files(root: Path, path: str, what: str) -> list[tuple[str, Path]]:
    """The files under ``root`` by relative path, or only ``path``."""
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    if path:
        files = [(rel, p) for rel, p in files if rel == path]
        if not files:
            raise NotFound(
                f"{what} has no artifact file {path!r}",
                reason="ARTIFACT_FILE_NOT_FOUND",
                violations=[FieldViolation("path", "no such file in the artifact")],
            )
    return files


HYPERPARAMETER_NAMES = [f.name for f in msgspec.structs.fields(Hyperparameters)]
