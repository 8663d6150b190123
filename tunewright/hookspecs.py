"""The hooks a tunewright plugin can implement.

A plugin is a module or object with functions marked ``@tunewright.hookimpl``. Built-in
methods are plugins too (``tunewright.plugin_manager.DEFAULT_PLUGINS``); third-party packages
add theirs through the entry-point group ``tunewright``::

    [project.entry-points.tunewright]
    my_method = "my_package.plugin"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

from tunewright import PROJECT_NAME

if TYPE_CHECKING:
    from tunewright.dataformats import DataFormatRegistry
    from tunewright.exporters import ExporterRegistry
    from tunewright.methods import Method

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def tunewright_register_methods(register: Callable[[Method], None]) -> None:
    """Register fine-tuning methods by calling ``register(method)`` once per method.

    ``method`` follows the ``tunewright.methods.Method`` protocol: a unique ``name``,
    a ``description``, a dataclass ``config_class`` whose fields are the method's
    parameters, its ``capabilities``, and the ``prepare``/``save``/``merge`` functions.
    """


@hookspec
def tunewright_register_exporters(registry: ExporterRegistry) -> None:
    """Register export formats and push targets on ``registry``.

    ``registry.add_format(export_format)`` adds a layout the serve service can write a
    fine-tuned model in (``tunewright.exporters.ExportFormat``: ``name``, ``description``,
    an options dataclass ``config_class``, ``check`` and ``write``);
    ``registry.add_target(target)`` adds a place an export can be pushed to and answered
    through (``tunewright.exporters.PushTarget``).
    """


@hookspec
def tunewright_register_data_formats(registry: DataFormatRegistry) -> None:
    """Register the data formats and file readers the data service reads on ``registry``.

    ``registry.add_format(data_format)`` adds a record layout (``tunewright.dataformats.DataFormat``:
    ``name``, ``description``, ``fields``, ``detect`` and ``parse`` into the one example shape);
    ``registry.add_reader(reader)`` adds a file type (``tunewright.dataformats.Reader``).
    """
