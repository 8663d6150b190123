"""The built-in ``prefix`` method: prefix tuning through peft."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_methods(register):
    from tunewright.plugins.prefix.method import PrefixMethod

    register(PrefixMethod())
