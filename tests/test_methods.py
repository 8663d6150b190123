"""Plugins and method parameters, without gRPC."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest

from tunewright import hookimpl, hookspecs
from tunewright.core.errors import InvalidArgument
from tunewright.methods import ArtifactKind, Capabilities
from tunewright.parameters import build_config, parameter_specs
from tunewright.plugin_manager import BLOCK_ENV, DEFAULT_PLUGINS, collect_exporters, collect_methods, plugin_manager


@dataclass
class EchoConfig:
    steps: int = field(default=1, metadata={"help": "How many."})


class EchoMethod:
    name = "echo"
    description = "A throwaway method for tests."
    config_class = EchoConfig
    capabilities = Capabilities(
        artifact_kind=ArtifactKind.ADAPTER, mergeable=False, exportable=False, not_exportable_reason="a test"
    )
    default_learning_rate = 1e-3

    def load_base(self, folder, config, runtime):
        return None

    def prepare(self, model, config):
        return model

    def save(self, model, config, directory):
        pass

    def load_trained(self, folder, config, directory, runtime, trainable):
        return None

    def merge(self, folder, config, directory):
        raise NotImplementedError


class EchoPlugin:
    @hookimpl
    def tunewright_register_methods(self, register):
        register(EchoMethod())


def test_the_five_builtin_methods_are_plugins_with_parameter_schemas():
    methods = collect_methods(plugin_manager(load_entrypoints=False))
    assert set(methods) == {"lora", "qlora", "unsloth", "prefix", "full"}
    assert len(DEFAULT_PLUGINS) == 9  # three exporters (safetensors, gguf, ollama) and the data formats
    specs = {s.name: s for s in parameter_specs(methods["lora"].config_class)}
    assert specs["r"].type == "int" and specs["r"].default == 16 and specs["r"].description
    assert specs["target_modules"].type == "string_list" and specs["target_modules"].default == ["all-linear"]
    qlora = {s.name: s for s in parameter_specs(methods["qlora"].config_class)}
    assert qlora["quant_type"].choices == ("nf4", "fp4") and qlora["quant_type"].default == "nf4"
    for method in methods.values():
        assert method.description and all(spec.description for spec in parameter_specs(method.config_class))


def test_capabilities_say_how_each_method_is_served():
    methods = collect_methods(plugin_manager(load_entrypoints=False))
    kinds = {name: m.capabilities.artifact_kind for name, m in methods.items()}
    assert kinds == {
        "lora": ArtifactKind.ADAPTER,
        "qlora": ArtifactKind.ADAPTER,
        "unsloth": ArtifactKind.ADAPTER,
        "prefix": ArtifactKind.PROMPT,
        "full": ArtifactKind.FULL,
    }
    assert [n for n, m in methods.items() if not m.capabilities.exportable] == ["prefix"]
    assert "not weights" in methods["prefix"].capabilities.not_exportable_reason
    assert (
        methods["qlora"].capabilities.quantized_base
        and "bitsandbytes" in methods["qlora"].capabilities.required_packages
    )
    assert methods["unsloth"].capabilities.import_first == ("unsloth",)


def test_capabilities_refuse_contradictions():
    with pytest.raises(ValueError, match="needs mergeable"):
        Capabilities(artifact_kind=ArtifactKind.ADAPTER, mergeable=False, exportable=True)
    with pytest.raises(ValueError, match="say why"):
        Capabilities(artifact_kind=ArtifactKind.ADAPTER, mergeable=True, exportable=False)
    with pytest.raises(ValueError, match="cannot be merged"):
        Capabilities(artifact_kind=ArtifactKind.PROMPT, mergeable=True, exportable=True)


def test_a_registered_plugin_adds_its_method_and_unregistering_removes_it():
    pm = plugin_manager(load_entrypoints=False)
    plugin = EchoPlugin()
    pm.register(plugin, name="echo-plugin")
    try:
        assert "echo" in collect_methods(pm)
    finally:
        pm.unregister(plugin)
    assert "echo" not in collect_methods(pm)


def test_plugins_can_be_blocked_by_name(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "tunewright.plugins.lora")
    assert "lora" not in collect_methods(plugin_manager(load_entrypoints=False))


def test_two_methods_with_one_name_are_refused():
    pm = plugin_manager(load_entrypoints=False)
    pm.register(EchoPlugin(), name="a")
    pm.register(EchoPlugin(), name="b")
    with pytest.raises(ValueError, match="two plugins"):
        collect_methods(pm)


def test_unknown_and_mistyped_parameters_name_the_field():
    method = collect_methods(plugin_manager(load_entrypoints=False))["lora"]
    with pytest.raises(InvalidArgument) as caught:
        build_config(method, {"rank": 8, "r": "eight", "dropout": 2.0})
    fields = {v.field for v in caught.value.violations}
    assert fields == {"method_parameters.rank", "method_parameters.r"}
    config = build_config(method, {"r": 4, "alpha": 8, "target_modules": ["q_proj"]})
    assert (config.r, config.alpha, config.target_modules) == (4, 8.0, ["q_proj"])


@pytest.mark.parametrize(
    ("method", "values", "field"),
    [
        ("lora", {"r": 0}, "r"),
        ("lora", {"dropout": 2.0}, "dropout"),
        ("lora", {"target_modules": ["all-linear", "q_proj"]}, "target_modules"),
        ("qlora", {"r": 0}, "r"),
        ("qlora", {"quant_type": "int3"}, "quant_type"),
        ("qlora", {"compute_dtype": "float8"}, "compute_dtype"),
        ("unsloth", {"alpha": -1.0}, "alpha"),
        ("prefix", {"num_virtual_tokens": 0}, "num_virtual_tokens"),
        ("full", {"train_embeddings": "yes"}, "train_embeddings"),
    ],
)
def test_bad_values_are_refused_naming_the_field(method, values, field):
    with pytest.raises(InvalidArgument) as caught:
        build_config(collect_methods(plugin_manager(load_entrypoints=False))[method], values)
    assert caught.value.reason == "INVALID_METHOD_PARAMETER"
    assert [v.field for v in caught.value.violations] == [f"method_parameters.{field}"]


def test_every_hook_is_documented():
    hooks = [obj for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("tunewright_")]
    assert hooks
    for hook in hooks:
        assert hook.__doc__ and len(hook.__doc__.strip()) > 40, hook.__name__


class TarballFormat:
    """A throwaway export format, as a team would add a layout of its own."""

    name = "tarball"
    description = "The merged model in one tar file."
    config_class = EchoConfig

    def check(self, base_folder, config):
        return None

    def write(self, model, config, out):
        raise NotImplementedError


class TarballPlugin:
    @hookimpl
    def tunewright_register_exporters(self, registry):
        registry.add_format(TarballFormat())


def test_a_plugin_adds_an_export_format_beside_the_built_in_ones():
    pm = plugin_manager(load_entrypoints=False)
    pm.register(TarballPlugin(), name="tarball-plugin")
    exporters = collect_exporters(pm)
    assert set(exporters.formats) == {"gguf", "safetensors", "tarball"}
    assert set(exporters.targets) == {"ollama"}
    pm.register(TarballPlugin(), name="tarball-again")
    with pytest.raises(ValueError, match="two plugins register an export format named 'tarball'"):
        collect_exporters(pm)
