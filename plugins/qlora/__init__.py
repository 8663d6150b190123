"""The built-in ``qlora`` method: LoRA on a 4-bit base through bitsandbytes."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_methods(register):
    from tunewright.plugins.qlora.method import QloraMethod

    register(QloraMethod())
