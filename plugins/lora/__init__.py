"""The built-in ``lora`` method."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_methods(register):
    from tunewright.plugins.lora.method import LoraMethod

    register(LoraMethod())
