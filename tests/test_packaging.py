"""The wheel cannot forget a plugin: packages are discovered (setup.py), and every built-in
method imports and registers from an installed, non-editable wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

from conftest import REPO

CHECK = """
import json, sys
import tunewright
from tunewright.plugin_manager import DEFAULT_PLUGINS, load_data_formats, load_exporters, load_methods
methods = load_methods()
exporters = load_exporters()
data = load_data_formats()
plugins = [*methods.values(), *exporters.formats.values(), *exporters.targets.values(), *data.formats.values(),
           *data.readers.values()]
print(json.dumps({
    "package": tunewright.__file__,
    "methods": sorted(methods),
    "formats": sorted(exporters.formats),
    "targets": sorted(exporters.targets),
    "data_formats": sorted(data.formats),
    "readers": sorted(data.readers),
    "modules": [sys.modules[type(p).__module__].__file__ for p in plugins],
    "default_plugins": list(DEFAULT_PLUGINS),
}))
"""


def test_every_builtin_plugin_imports_from_an_installed_wheel(tmp_path):
    built = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", built, REPO],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = built.glob("tunewright-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    plugin_folders = sorted(p.parent.name for p in (REPO / "plugins").glob("*/__init__.py"))
    assert plugin_folders == ["formats", "full", "gguf", "lora", "ollama", "prefix", "qlora", "safetensors", "unsloth"]
    for folder in plugin_folders:
        assert f"tunewright/plugins/{folder}/__init__.py" in names, folder
    for service in ("data", "trainer", "serve"):
        assert f"tunewright/{service}/v1/{service}_service_pb2.py" in names, service

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Run from elsewhere, with the installed wheel ahead of the editable checkout.
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert found["package"].startswith(str(site))
    assert found["methods"] == ["full", "lora", "prefix", "qlora", "unsloth"]
    assert (found["formats"], found["targets"]) == (["gguf", "safetensors"], ["ollama"])
    assert found["data_formats"] == ["alpaca", "chat", "prompt_completion", "sharegpt", "text"]
    assert found["readers"] == ["csv", "jsonl", "parquet", "txt"]
    assert all(module.startswith(str(site)) for module in found["modules"]), found["modules"]
    assert sorted(name.rsplit(".", 1)[-1] for name in found["default_plugins"]) == plugin_folders
