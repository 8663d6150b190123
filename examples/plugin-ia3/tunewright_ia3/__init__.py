"""IA3 (peft) as a tunewright method: learned per-channel scales on keys, values and the MLP."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewright import hookimpl
from tunewright.core.basemodel import load_model
from tunewright.methods import ArtifactKind, Capabilities, ParameterError, Runtime
from tunewright.plugins.peft_adapters import load_adapter, merge_adapter, save_adapter


@dataclass
class IA3Config:
    target_modules: list[str] = field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"],
        metadata={"help": "Layers whose activations get a learned scale."},
    )
    feedforward_modules: list[str] = field(
        default_factory=lambda: ["down_proj"],
        metadata={"help": "The subset of target_modules that are feed-forward layers (scaled on their input)."},
    )

    def __post_init__(self) -> None:
        if not set(self.feedforward_modules) <= set(self.target_modules):
            raise ParameterError("feedforward_modules", "must be a subset of target_modules")


class IA3Method:
    name = "ia3"
    description = "IA3 (peft): learns one scale per channel of keys, values and MLP inputs; tiny and mergeable."
    config_class = IA3Config
    capabilities = Capabilities(
        artifact_kind=ArtifactKind.ADAPTER, mergeable=True, exportable=True, required_packages=("peft",)
    )
    default_learning_rate = 3e-3

    def load_base(self, folder: Path, config: IA3Config, runtime: Runtime) -> Any:
        return load_model(folder).to(runtime.device)

    def prepare(self, model: Any, config: IA3Config) -> Any:
        import peft

        peft_config = peft.IA3Config(
            target_modules=list(config.target_modules),
            feedforward_modules=list(config.feedforward_modules),
            task_type="CAUSAL_LM",
        )
        return peft.get_peft_model(model, peft_config)

    # Saving, loading and merging are the same for every peft adapter; tunewright provides them.
    def save(self, model: Any, config: IA3Config, directory: Path) -> None:
        save_adapter(model, directory)

    def load_trained(self, folder: Path, config: IA3Config, directory: Path, runtime: Runtime, trainable: bool) -> Any:
        return load_adapter(self.load_base(folder, config, runtime), directory, trainable)

    def merge(self, folder: Path, config: IA3Config, directory: Path) -> Any:
        return merge_adapter(load_model(folder), directory)


@hookimpl
def tunewright_register_methods(register):
    register(IA3Method())
