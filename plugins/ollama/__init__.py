"""The built-in ``ollama`` push target: registers a GGUF export with an Ollama server and
answers through it."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_exporters(registry):
    from tunewright.plugins.ollama.target import OllamaTarget

    registry.add_target(OllamaTarget())
