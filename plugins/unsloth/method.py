"""LoRA through Unsloth: its loader patches the model with faster kernels (Triton on CUDA;
bfloat16 and chunked cross-entropy on the CPU), and training runs on the patched model.

Unsloth patches transformers and peft when it is imported, so only ``load_base`` and
``prepare`` import it, and they run only in a job's worker, which imports it before any
other library (``Capabilities.import_first``). What Unsloth saves is an ordinary peft LoRA
adapter, so ``load_trained`` for serving and ``merge`` use plain peft and never import
Unsloth: the serve service stays unpatched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunewright.core.basemodel import load_model
from tunewright.estimate import Footprint, ModelShape
from tunewright.methods import ArtifactKind, Capabilities, Runtime
from tunewright.plugins.peft_adapters import (
    check_target_modules,
    load_adapter,
    merge_adapter,
    save_adapter,
)
from tunewright.plugins.unsloth.config import UnslothConfig

# For the estimate, measured with bench/memory.py: a step's time relative to the arithmetic
# count, and what importing Unsloth and its dependencies adds to a worker's memory.
UNSLOTH_SLOWDOWN = 0.6
UNSLOTH_IMPORT_BYTES = 400 * 2**20


def _fast_language_model() -> Any:
    # Unsloth's statistics call fetches a file from a model hub; nothing here may.
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import unsloth  # noqa: F401 - first, so that its patches apply
    from unsloth import FastLanguageModel

    return FastLanguageModel


class UnslothMethod:
    name = "unsloth"
    description = (
        "LoRA through Unsloth: the same adapter as lora, trained faster by Unsloth's kernels "
        "(bfloat16 on CPUs that have it); merges with plain peft."
    )
    config_class = UnslothConfig
    capabilities = Capabilities(
        artifact_kind=ArtifactKind.ADAPTER,
        mergeable=True,
        exportable=True,
        required_packages=("peft", "unsloth", "unsloth_zoo"),
        import_first=("unsloth",),
    )
    default_learning_rate = 1e-3

    def load_base(self, folder: Path, config: UnslothConfig, runtime: Runtime) -> Any:
        fast = _fast_language_model()
        max_positions = json.loads((Path(folder) / "config.json").read_text()).get("max_position_embeddings", 2048)
        model, _tokenizer = fast.from_pretrained(
            str(folder),
            max_seq_length=max_positions,
            dtype=None,  # Unsloth's choice: bfloat16 where the device has it
            load_in_4bit=False,
            local_files_only=True,
            trust_remote_code=False,
            use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        )
        return model

    def footprint(self, shape: ModelShape, config: UnslothConfig, runtime: Runtime) -> Footprint:
        width = 2 if runtime.bf16 else 4  # Unsloth loads the base in bfloat16 where the device has it
        return Footprint(
            trainable=shape.lora_params(config.r, config.target_modules),
            frozen_bytes=shape.params * width,
            checkpointing=config.gradient_checkpointing,
            slowdown=UNSLOTH_SLOWDOWN,
            runtime_bytes=UNSLOTH_IMPORT_BYTES,
        )

    def prepare(self, model: Any, config: UnslothConfig) -> Any:
        import torch

        targets = check_target_modules(model, config.target_modules)
        return _fast_language_model().get_peft_model(
            model,
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=targets,
            use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
            random_state=torch.initial_seed(),  # the job's seed, which the worker set
        )

    def save(self, model: Any, config: UnslothConfig, directory: Path) -> None:
        save_adapter(model, directory)

    def load_trained(
        self, folder: Path, config: UnslothConfig, directory: Path, runtime: Runtime, trainable: bool
    ) -> Any:
        if trainable:  # resuming, in a worker: back onto Unsloth's patched model
            return load_adapter(self.load_base(folder, config, runtime), directory, trainable=True)
        return load_adapter(load_model(folder).to(runtime.device), directory, trainable=False)

    def merge(self, folder: Path, config: UnslothConfig, directory: Path) -> Any:
        return merge_adapter(load_model(folder), directory)
