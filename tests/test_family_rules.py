"""The few things training decides per model family (tunewright.core.families), decided by
the model's config and layers, never by its name."""

from __future__ import annotations

import pytest

from tunewright.core.families import attention_implementation, lora_target_names
from tunewright.plugins.peft_adapters import check_target_modules


def tiny(config_class, **extra):
    from transformers import AutoModelForCausalLM

    config = config_class(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    return AutoModelForCausalLM.from_config(config)


def test_separate_projections_name_phi3s_fused_layers():
    from transformers import Phi3Config

    model = tiny(Phi3Config, pad_token_id=0)
    assert check_target_modules(model, ["q_proj", "v_proj", "up_proj", "o_proj"]) == [
        "qkv_proj",
        "gate_up_proj",
        "o_proj",
    ]
    with pytest.raises(ValueError, match="lm_head_proj"):
        check_target_modules(model, ["lm_head_proj"])


def test_a_model_with_separate_projections_keeps_them():
    from transformers import LlamaConfig

    model = tiny(LlamaConfig)
    assert check_target_modules(model, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]
    assert lora_target_names({"q_proj", "qkv_proj"}, ["q_proj"]) == (["q_proj"], [])


def test_models_that_soft_cap_attention_train_with_eager_attention():
    from transformers import Gemma2Config, LlamaConfig, Qwen2Config

    assert attention_implementation(Gemma2Config()) == "eager"
    assert attention_implementation(Gemma2Config(attn_logit_softcapping=None)) is None
    assert attention_implementation(LlamaConfig()) is None
    assert attention_implementation(Qwen2Config()) is None
