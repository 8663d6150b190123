"""The built-in ``gguf`` export format: the merged model as one GGUF file, for llama.cpp
and Ollama."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_exporters(registry):
    from tunewright.plugins.gguf.format import GgufFormat

    registry.add_format(GgufFormat())
