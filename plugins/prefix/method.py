"""Prefix tuning through peft: a learned sequence of key and value vectors is prepended
to the attention of every layer; the base model's weights stay as they were.

A prefix is not a change to any weight, so it cannot be merged, and Ollama and llama.cpp
cannot load it. The serve service answers with it by loading the base and attaching the
prefix (``load_trained``), and refuses to export it for Ollama up front.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewright.core.basemodel import load_model
from tunewright.estimate import FLOAT32, Footprint, ModelShape
from tunewright.methods import ArtifactKind, Capabilities, Runtime
from tunewright.plugins.peft_adapters import load_adapter, save_adapter
from tunewright.plugins.prefix.config import PrefixConfig


class PrefixDecoder:
    """A prefix-tuned model that continues a sequence token by token.

    peft's prefix model rebuilds the prefix cache on every call, so it cannot take the
    ``past_key_values`` of an earlier call. This starts the cache with the prefix on the
    first call and then lets the base model extend it, which is what peft's own
    ``generate`` does.
    """

    def __init__(self, peft_model: Any) -> None:
        self.peft_model = peft_model
        self.base = peft_model.get_base_model()
        self.config = self.base.config

    def __call__(self, input_ids: Any, past_key_values: Any = None, use_cache: bool = True, **kwargs: Any) -> Any:
        if past_key_values is None:
            past_key_values = self.peft_model.get_prompt(batch_size=input_ids.shape[0])
        return self.base(input_ids=input_ids, past_key_values=past_key_values, use_cache=use_cache, **kwargs)

    def parameters(self):
        return self.peft_model.parameters()

    def eval(self) -> PrefixDecoder:
        self.peft_model.eval()
        return self


class PrefixMethod:
    name = "prefix"
    description = (
        "Prefix tuning (peft): learns key and value vectors prepended to every layer; the base stays untouched. "
        "Cannot be merged or exported for Ollama; the serve service attaches it to the base."
    )
    config_class = PrefixConfig
    capabilities = Capabilities(
        artifact_kind=ArtifactKind.PROMPT,
        mergeable=False,
        # peft prepends the learned prefix itself and drops position ids.
        takes_position_ids=False,
        exportable=False,
        not_exportable_reason=(
            "prefix tuning learns key and value vectors that are prepended to every layer's attention; "
            "they are not weights of the model, so they cannot be merged into it, and Ollama and llama.cpp "
            "have no way to load them. Export it with format 'attached' to answer with it through the serve "
            "service, or train with lora to get a model Ollama can run"
        ),
        required_packages=("peft",),
    )
    default_learning_rate = 1e-2

    def load_base(self, folder: Path, config: PrefixConfig, runtime: Runtime) -> Any:
        return load_model(folder).to(runtime.device)

    def footprint(self, shape: ModelShape, config: PrefixConfig, runtime: Runtime) -> Footprint:
        # A key and a value vector a layer for each virtual token, or the MLP that makes them.
        prefix = shape.layers * 2 * shape.kv_heads * shape.head_dim
        trainable = config.num_virtual_tokens * prefix
        if config.prefix_projection:
            hidden = config.encoder_hidden_size
            trainable = config.num_virtual_tokens * shape.hidden + shape.hidden * hidden + hidden * prefix
        return Footprint(
            trainable=trainable,
            frozen_bytes=shape.params * FLOAT32,
            # No adapter keeps the linear layers' inputs: less is saved than with LoRA, and
            # less computed (bench/memory.py).
            activation_scale=0.7,
            slowdown=0.8,
            extra_positions=config.num_virtual_tokens,
        )

    def prepare(self, model: Any, config: PrefixConfig) -> Any:
        import peft

        peft_config = peft.PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=config.num_virtual_tokens,
            prefix_projection=config.prefix_projection,
            encoder_hidden_size=config.encoder_hidden_size,
        )
        return peft.get_peft_model(model, peft_config)

    def save(self, model: Any, config: PrefixConfig, directory: Path) -> None:
        save_adapter(model, directory)

    def load_trained(
        self, folder: Path, config: PrefixConfig, directory: Path, runtime: Runtime, trainable: bool
    ) -> Any:
        base = self.load_base(folder, config, runtime)
        if not trainable:
            return PrefixDecoder(load_adapter(base, directory, trainable=False))
        # peft will not load a saved prefix as trainable. What it saved is the prefix itself
        # (after the projection MLP, if there was one), so training goes on from those
        # values directly, without the MLP: the model computes exactly what was saved.
        import peft
        from safetensors.torch import load_file

        model = peft.get_peft_model(
            base,
            peft.PrefixTuningConfig(
                task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens, prefix_projection=False
            ),
        )
        peft.set_peft_model_state_dict(model, load_file(Path(directory) / "adapter_model.safetensors"))
        return model

    def merge(self, folder: Path, config: PrefixConfig, directory: Path) -> Any:
        raise NotImplementedError(self.capabilities.not_exportable_reason)
