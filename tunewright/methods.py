"""What a fine-tuning method is: the protocol every method plugin follows.

A method decides everything that differs between ways of fine-tuning: how the base model
is loaded (plainly, 4-bit, through Unsloth's loader), what becomes trainable, what is saved
and in which form, how a saved result is loaded back, and how it is folded into plain
weights. The trainer owns the rest and does it the same way for every method: data,
batching, the optimizer and schedule, progress, evaluation, publishing the artifact.

Where each function runs:

- ``load_base``, ``prepare`` and ``save`` run only in a job's worker process. A method
  whose library patches others when imported (Unsloth) imports it there and nowhere else.
- ``load_trained`` runs in the worker (``trainable=True``, to resume) and in the serve
  service (``trainable=False``, to answer with a result that cannot be merged).
- ``merge`` runs in the serve service. Neither may import a library that patches others.

``docs/architecture.md`` ("Writing a method") walks through a complete plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tunewright.contract import ArtifactKind
from tunewright.parameters import ParameterError

__all__ = ["ArtifactKind", "Capabilities", "Method", "ParameterError", "Runtime", "detect_runtime"]


@dataclass(frozen=True)
class Capabilities:
    """What a method can and cannot do, so the services refuse impossible requests before
    any work starts."""

    # What ``save`` writes: decides whether serve merges it, loads it as weights, or
    # attaches it to the base when answering.
    artifact_kind: ArtifactKind
    # ``merge`` folds the result into plain full-precision weights of the base's shape.
    mergeable: bool
    # The merged model can be exported for Ollama and llama.cpp.
    exportable: bool
    # Says why not, in words a user can act on, when ``exportable`` is false.
    not_exportable_reason: str = ""
    # Needs a CUDA GPU; CreateJob refuses the method on a trainer without one.
    requires_gpu: bool = False
    # Trains against a quantized copy of the base; merging dequantizes that copy first.
    quantized_base: bool = False
    # Import names that must be installed where the method runs; CreateJob checks them
    # without importing them.
    required_packages: tuple[str, ...] = field(default_factory=tuple)
    # Libraries that patch others when imported and so must come first: the worker imports
    # them before anything else, and no server process ever imports them.
    import_first: tuple[str, ...] = field(default_factory=tuple)
    # The prepared model takes ``position_ids`` and ``logits_to_keep`` as a transformers
    # causal LM does, so the trainer can left-pad or pack its batches and compute logits only
    # where a token is trained. Prompt-learning methods, which put virtual tokens before the
    # input and ignore position ids, say False: they get right-padded batches.
    takes_position_ids: bool = True

    def __post_init__(self) -> None:
        if self.exportable and not self.mergeable:
            raise ValueError("a method that cannot merge cannot be exported: exportable needs mergeable")
        if not self.exportable and not self.not_exportable_reason:
            raise ValueError("a method that cannot be exported must say why in not_exportable_reason")
        if self.artifact_kind is ArtifactKind.PROMPT and self.mergeable:
            raise ValueError("a prompt or prefix is not weights: it cannot be merged")


@dataclass(frozen=True)
class Runtime:
    """Where a model runs, so a method can choose its loading and precision."""

    device: str  # "cpu" or "cuda"
    # The device does bfloat16 arithmetic natively (AVX512-BF16 or AMX on a CPU, Ampere
    # or newer on CUDA), so bfloat16 compute is faster rather than emulated.
    bf16: bool

    @property
    def compute_dtype(self) -> Any:
        """torch.bfloat16 where the device has it, else torch.float32."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32


@cache
def detect_runtime() -> Runtime:
    import torch

    if torch.cuda.is_available():
        return Runtime("cuda", torch.cuda.is_bf16_supported())
    return Runtime("cpu", cpu_has_bf16())


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


@runtime_checkable
class Method(Protocol):
    name: str
    description: str
    # A dataclass; its fields (int, float, bool, str or list of str, help text in
    # ``metadata["help"]``) are the method's parameters in ListMethods. ``__post_init__``
    # refuses bad values by raising ``ParameterError(field, why)``.
    config_class: type
    capabilities: Capabilities
    default_learning_rate: float

    def load_base(self, folder: Path, config: Any, runtime: Runtime) -> Any:
        """The base model in ``folder`` (config.json, safetensors), loaded to be trained."""

    def prepare(self, model: Any, config: Any) -> Any:
        """Returns the model to train; only its parameters with requires_grad are optimized."""

    def save(self, model: Any, config: Any, directory: Path) -> None:
        """Writes what was trained into ``directory``, as ``capabilities.artifact_kind`` says."""

    def load_trained(self, folder: Path, config: Any, directory: Path, runtime: Runtime, trainable: bool) -> Any:
        """The base in ``folder`` with what ``save`` wrote to ``directory``: trainable to resume
        a job, or for inference, where ``model(input_ids=..., past_key_values=..., use_cache=True)``
        must continue a sequence token by token as a transformers causal LM does."""

    def merge(self, folder: Path, config: Any, directory: Path) -> Any:
        """A plain transformers model, in full precision, with the result in ``directory``
        folded into the base in ``folder``. Only called when ``capabilities.mergeable``."""

    # Optional, and so not declared here (a protocol's members are all required):
    #
    #     def footprint(self, shape: ModelShape, config: Any, runtime: Runtime) -> Footprint
    #
    # what the method does with a model of ``shape`` (tunewright.estimate), for the estimate
    # before a job. It runs in the trainer service: arithmetic only, no torch.
