"""The built-in ``full`` method: every weight of the model is trained."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_methods(register):
    from tunewright.plugins.full.method import FullMethod

    register(FullMethod())
