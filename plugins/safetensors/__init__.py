"""The built-in ``safetensors`` export format: the merged model as a Hugging Face folder."""

from tunewright import hookimpl


@hookimpl
def tunewright_register_exporters(registry):
    from tunewright.plugins.safetensors.format import SafetensorsFormat

    registry.add_format(SafetensorsFormat())
