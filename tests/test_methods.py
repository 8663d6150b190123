"""Plugins and method parameters, without gRPC."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest

from tunewright import hookimpl, hookspecs
from tunewright.core.errors import InvalidArgument
from tunewright.methods import Capabilities, build_config, parameter_specs
from tunewright.plugin_manager import BLOCK_ENV, collect_methods, plugin_manager


@dataclass
class EchoConfig:
    steps: int = field(default=1, metadata={"help": "How many."})


class EchoMethod:
    name = "echo"
    description = "A throwaway method for tests."
    config_class = EchoConfig
    capabilities = Capabilities(mergeable=False, exportable=False)
    default_learning_rate = 1e-3

    def prepare(self, model, config):
        return model

    def save(self, model, config, directory):
        pass

    def merge(self, base_model, directory):
        return base_model


class EchoPlugin:
    @hookimpl
    def tunewright_register_methods(self, register):
        register(EchoMethod())


def test_builtin_lora_is_a_plugin_with_a_parameter_schema():
    methods = collect_methods(plugin_manager(load_entrypoints=False))
    assert "lora" in methods
    specs = {s.name: s for s in parameter_specs(methods["lora"].config_class)}
    assert specs["r"].type == "int" and specs["r"].default == 16 and specs["r"].description
    assert specs["target_modules"].type == "string_list"


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
    with pytest.raises(InvalidArgument) as caught:
        build_config(method, {"dropout": 2.0})
    assert "dropout" in caught.value.message
    config = build_config(method, {"r": 4, "alpha": 8, "target_modules": ["q_proj"]})
    assert (config.r, config.alpha, config.target_modules) == (4, 8.0, ["q_proj"])


def test_every_hook_is_documented():
    hooks = [obj for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("tunewright_")]
    assert hooks
    for hook in hooks:
        assert hook.__doc__ and len(hook.__doc__.strip()) > 40, hook.__name__
