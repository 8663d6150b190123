"""The plugin manager: built-in methods, exporters and data formats, third-party entry points, and
blocking by name."""

from __future__ import annotations

import importlib
import os

import pluggy

from tunewright import PROJECT_NAME, hookspecs
from tunewright.core.errors import FieldViolation, InvalidArgument
from tunewright.dataformats import DataFormatRegistry
from tunewright.exporters import ExporterRegistry
from tunewright.methods import Method

# Built-in methods, exporters and data formats are ordinary plugins, loaded before third-party ones.
DEFAULT_PLUGINS = (
    "tunewright.plugins.lora",
    "tunewright.plugins.qlora",
    "tunewright.plugins.unsloth",
    "tunewright.plugins.prefix",
    "tunewright.plugins.full",
    "tunewright.plugins.safetensors",
    "tunewright.plugins.gguf",
    "tunewright.plugins.ollama",
    "tunewright.plugins.formats",
)

# Comma-separated plugin names (module names, or entry-point names) not to load.
BLOCK_ENV = "TUNEWRIGHT_BLOCK_PLUGINS"


def plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in filter(None, (part.strip() for part in os.environ.get(BLOCK_ENV, "").split(","))):
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.is_blocked(module_name):
            pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(PROJECT_NAME)
    pm.check_pending()
    return pm


def collect_methods(pm: pluggy.PluginManager) -> dict[str, Method]:
    methods: dict[str, Method] = {}

    def register(method: Method) -> None:
        if not isinstance(method, Method):
            raise TypeError(f"{method!r} does not follow tunewright.methods.Method")
        if method.name in methods:
            raise ValueError(f"two plugins register a method named {method.name!r}")
        methods[method.name] = method

    pm.hook.tunewright_register_methods(register=register)
    return dict(sorted(methods.items()))


def load_methods() -> dict[str, Method]:
    return collect_methods(plugin_manager())


def collect_exporters(pm: pluggy.PluginManager) -> ExporterRegistry:
    registry = ExporterRegistry()
    pm.hook.tunewright_register_exporters(registry=registry)
    return registry


def load_exporters() -> ExporterRegistry:
    return collect_exporters(plugin_manager())


def collect_data_formats(pm: pluggy.PluginManager) -> DataFormatRegistry:
    registry = DataFormatRegistry()
    pm.hook.tunewright_register_data_formats(registry=registry)
    return registry


def load_data_formats() -> DataFormatRegistry:
    return collect_data_formats(plugin_manager())


def get_method(methods: dict[str, Method], name: str, field: str = "method") -> Method:
    if name not in methods:
        known = ", ".join(methods) or "none"
        raise InvalidArgument(
            f"unknown method {name!r}; installed methods: {known}",
            reason="UNKNOWN_METHOD",
            violations=[FieldViolation(field, f"not one of: {known}")],
        )
    return methods[name]
