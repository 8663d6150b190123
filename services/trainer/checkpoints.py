"""A job's checkpoints: what a worker needs to resume its training exactly, on disk.

``JOB_DIR/checkpoints/step-00000042/`` holds

- ``trained.safetensors``: the parameters the method trains, by name;
- ``run.pt``: the ``TrainingRun``'s state (optimizer, schedule, data order and position,
  random number generators);
- ``checkpoint.json``: the step and its metrics, written last.

A checkpoint is written into a hidden ``.step-00000042.tmp`` folder, flushed to disk, then
renamed into place, so a folder under its final name is always complete; a crash during a
write leaves only the hidden folder, which is ignored and later removed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewright.core import timeutil
from tunewright.core.files import fsync_path

CHECKPOINTS = "checkpoints"
TRAINED = "trained.safetensors"
RUN_STATE = "run.pt"
INFO = "checkpoint.json"
PREFIX = "step-"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    epoch: float
    # The training loss of the step it was taken after.
    loss: float
    # The validation loss, when the checkpoint was taken right after a validation.
    validation_loss: float | None
    # ISO-8601, UTC.
    created: str
    size_bytes: int
    path: Path


class Policy:
    """When a job writes a checkpoint: after every ``every`` steps and at the end of every
    epoch; or, with ``every`` 0, at the end of every epoch and whenever the training since
    the last checkpoint took ``COST_FACTOR`` times as long as writing that one did (a minute
    at the soonest), which keeps checkpoints under 5% of training time."""

    COST_FACTOR = 20
    FIRST_AFTER_SECONDS = 60.0

    def __init__(self, every: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.interval = self.FIRST_AFTER_SECONDS
        self.last = clock()

    def due(self, step: int, epoch_ended: bool) -> bool:
        if epoch_ended:
            return True
        if self.every:
            return step % self.every == 0
        return self.clock() - self.last >= self.interval

    def written(self, seconds: float) -> None:
        """Tells the policy a checkpoint was just written, in ``seconds``."""
        self.last = self.clock()
        self.interval = max(self.FIRST_AFTER_SECONDS, self.COST_FACTOR * seconds)


def folder_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save(
    folder: Path, run: Any, trained: dict[str, Any], loss: float, validation_loss: float | None = None
) -> Checkpoint:
    """Writes ``run``'s checkpoint (a ``TrainingRun``, with ``trained``: name -> tensor)
    under ``folder``, atomically."""
    import torch
    from safetensors.torch import save_file

    step = run.position.step
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / folder_name(step)
    staging = folder / f".{folder_name(step)}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file({name: tensor.detach().contiguous() for name, tensor in trained.items()}, staging / TRAINED)
    torch.save(run.state_dict(), staging / RUN_STATE)
    info = {
        "step": step,
        "epoch": run.epoch,
        "loss": loss,
        "validation_loss": validation_loss,
        "created": timeutil.now(),
    }
    (staging / INFO).write_text(json.dumps(info))
    for path in (staging / TRAINED, staging / RUN_STATE, staging / INFO, staging):
        fsync_path(path)
    if final.exists():  # the same step, written again by a run resumed from before it
        shutil.rmtree(final)
    staging.rename(final)
    fsync_path(folder)
    return _read(final)


def _read(path: Path) -> Checkpoint | None:
    try:
        info = json.loads((path / INFO).read_text())
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except (OSError, ValueError):
        return None
    return Checkpoint(
        step=info["step"],
        epoch=info["epoch"],
        loss=info["loss"],
        validation_loss=info["validation_loss"],
        created=info["created"],
        size_bytes=size,
        path=path,
    )


def complete(folder: Path) -> list[Checkpoint]:
    """The complete checkpoints under ``folder``, oldest step first."""
    if not folder.is_dir():
        return []
    found = (_read(path) for path in folder.iterdir() if path.name.startswith(PREFIX))
    return sorted((c for c in found if c is not None), key=lambda c: c.step)


def latest(folder: Path) -> Checkpoint | None:
    found = complete(folder)
    return found[-1] if found else None


def load(checkpoint: Checkpoint, run: Any, model: Any) -> None:
    """Puts ``checkpoint``'s trained weights into ``model`` and its state into ``run``."""
    import torch

    load_weights(checkpoint, model)
    run.load_state_dict(torch.load(checkpoint.path / RUN_STATE, weights_only=True))


def load_weights(checkpoint: Checkpoint, model: Any) -> None:
    """Puts ``checkpoint``'s trained weights into ``model``. Refuses a checkpoint whose
    weights are not exactly the model's trainable parameters (another method or method
    parameters wrote it)."""
    import torch
    from safetensors.torch import load_file

    trained = load_file(checkpoint.path / TRAINED)
    expected = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if trained.keys() != expected.keys() or any(trained[n].shape != p.shape for n, p in expected.items()):
        raise ValueError(f"{checkpoint.path} holds other weights than this job trains")
    with torch.no_grad():
        for name, parameter in expected.items():
            parameter.copy_(trained[name])


def prune(folder: Path, keep: int) -> list[Path]:
    """Removes all but the last ``keep`` complete checkpoints and the one with the lowest
    validation loss, and any a crash left half-written. Returns what it removed."""
    found = complete(folder)
    kept = {c.path for c in found[-keep:]} if keep > 0 else set()
    validated = [c for c in found if c.validation_loss is not None]
    if validated:
        kept.add(min(validated, key=lambda c: c.validation_loss).path)
    removed = [c.path for c in found if c.path not in kept]
    if folder.is_dir():
        removed += [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
