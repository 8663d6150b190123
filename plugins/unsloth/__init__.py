"""The built-in ``unsloth`` method: LoRA trained through Unsloth's patched model code.

This module and its registration never import Unsloth: Unsloth patches transformers and
peft when imported, so only a job's worker process imports it (see ``method.py``).
"""

from tunewright import hookimpl


@hookimpl
def tunewright_register_methods(register):
    from tunewright.plugins.unsloth.method import UnslothMethod

    register(UnslothMethod())
