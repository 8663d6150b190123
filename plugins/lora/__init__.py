"""The built-in ``lora`` method."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_methods(register):
    # Imported here, not at module level: the servers load every plugin at start, and a
    # method's module may pull in heavy libraries.
    from tunewright.plugins.lora.method import LoraMethod

    register(LoraMethod())
