"""QLoRA's two traps, on the tiny Llama without gRPC: merging must go through the
dequantized 4-bit base, and an evaluation pass must not cut the gradient path."""

from __future__ import annotations

import pytest
import torch

from tunewright.core import probe
from tunewright.methods import Runtime
from tunewright.parameters import build_config
from tunewright.plugin_manager import collect_methods, plugin_manager
from tunewright.plugins.lora.method import LoraMethod

CPU = Runtime("cpu", bf16=False)


@pytest.fixture(scope="module")
def qlora():
    return collect_methods(plugin_manager(load_entrypoints=False))["qlora"]


@pytest.fixture(scope="module")
def trained_adapter(qlora, tiny_model, tmp_path_factory):
    """A QLoRA adapter with non-zero updates, computed in float32 so that merging can be
    compared exactly, and the logits of the unmerged model it came from."""
    import peft

    config = build_config(qlora, {"compute_dtype": "float32"})
    model = qlora.prepare(qlora.load_base(tiny_model, config, CPU), config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    directory = tmp_path_factory.mktemp("qlora-adapter")
    qlora.save(model, config, directory)
    ids = list(range(5, 45))
    assert isinstance(model, peft.PeftModel)
    return config, directory, ids, probe.logits_at(model.eval(), ids)


def test_merged_logits_match_the_unmerged_adapter(qlora, trained_adapter, tiny_model):
    config, directory, ids, unmerged = trained_adapter
    merged = qlora.merge(tiny_model, config, directory)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    # Stated tolerance: float32 rounding only, the same bound an export is held to.
    assert probe.divergence(unmerged, probe.logits_at(merged, ids)) <= probe.TOLERANCE["float32"]
    assert torch.allclose(unmerged, probe.logits_at(merged, ids), atol=1e-4)


def test_merging_into_the_original_weights_would_be_wrong(trained_adapter, tiny_model):
    """The adapter corrects the 4-bit base; folded into the float32 originals instead (what
    plain LoRA's merge does), the model is not the one that was trained."""
    _, directory, ids, unmerged = trained_adapter
    wrong = LoraMethod().merge(tiny_model, None, directory)
    assert probe.divergence(unmerged, probe.logits_at(wrong, ids)) > 10 * probe.TOLERANCE["float32"]


def test_an_evaluation_pass_does_not_change_the_gradients(qlora, tiny_model):
    """bitsandbytes repacks 4-bit weights for a kernel without a backward on the first
    eval-mode forward. The base model's evaluation comes before training, so the method
    must keep the trainable layout: training after an evaluation pass computes the same
    gradients as training without one."""
    config = build_config(qlora, {})
    ids = torch.tensor([list(range(5, 25))])

    def gradients(evaluate_first: bool) -> dict[str, torch.Tensor]:
        base = qlora.load_base(tiny_model, config, Runtime("cpu", bf16=True))
        if evaluate_first:
            with torch.no_grad():
                base.eval()(input_ids=ids)
        torch.manual_seed(0)
        model = qlora.prepare(base, config)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.1)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if "layers.0." in n and "lora_A" in n}

    plain, after_evaluation = gradients(False), gradients(True)
    assert plain
    for name, gradient in plain.items():
        assert torch.allclose(gradient, after_evaluation[name], atol=1e-6), name
