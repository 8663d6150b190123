"""The trainer's domain: checking job requests up front, and the job lifecycle."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from tunewright import contract
from tunewright.contract import ARTIFACT, MANIFEST, Hyperparameters
from tunewright.core.basemodel import check_base_model
from tunewright.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from tunewright.methods import Method
from tunewright.parameters import build_config, config_to_dict
from tunewright.plugin_manager import get_method
from tunewright.trainer import checkpoints
from tunewright.trainer.runner import JobRunner
from tunewright.trainer.store import TERMINAL, Event, JobRecord, JobStore

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


class Trainer:
    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        methods: dict[str, Method],
        dataset_exists: Callable[[str], bool],
        models_dirs: Sequence[Path],
    ) -> None:
        self.store = store
        self.runner = runner
        self.methods = methods
        self.dataset_exists = dataset_exists
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
    ) -> JobRecord:
        if existing := self.store.by_request(request_id):
            return existing
        method = get_method(self.methods, method_name)
        config = build_config(method, method_parameters)
        hp = resolve_hyperparameters(hyperparameters, method)
        check_base_model(base_model, models_dirs=self.models_dirs)
        check_method_can_run(method)
        if not dataset.startswith("datasets/") or not self.dataset_exists(dataset):
            raise NotFound(
                f"{dataset!r} does not exist on the data service; create it with CreateDataset",
                reason="DATASET_NOT_FOUND",
                violations=[FieldViolation("dataset", "no such dataset")],
            )
        job, _ = self.store.create(
            request_id, base_model, dataset, method.name, config_to_dict(config), contract.to_builtins(hp)
        )
        return job

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
            job = self.store.get(job_id)
            if done(job):
                return job
            with self.store.changed:
                self.store.changed.wait(timeout=0.5)
        return None

    def watch(self, job_id: str, after: int, is_active: Callable[[], bool]) -> Iterator[Event]:
        """Stored events after ``after``, then new ones as they come, until the job ends."""
        self.store.get(job_id)
        generation = self.store.generation
        while is_active():
            events = self.store.events_after(job_id, after)
            yield from events
            if events:
                after = events[-1].seq
                continue
            if self.store.get(job_id).state in TERMINAL:
                return
            # Nothing new: sleep until the store changes. A thousand watchers cost nothing while
            # the job is quiet; the timeout only bounds how long a cancelled watch lingers.
            generation = self.store.wait_for_change(generation, timeout=WATCH_WAKE_SECONDS)

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
