"""The merged model as a Hugging Face folder: safetensors weights, config, the tokenizer with
its chat template (also in tokenizer_config.json, where Ollama's safetensors import reads
it), and a Modelfile with ``FROM .``.

Ollama converts such a folder itself, for some architectures only and with less care for
the tokenizer than a GGUF gets (see docs/ollama.md); it is the format for transformers,
vLLM and other Python stacks.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tunewright.core.modelfile import modelfile_text
from tunewright.exporters import Exported, MergedModel


@dataclass
class SafetensorsOptions:
    """The safetensors format has no options."""


class SafetensorsFormat:
    name = "safetensors"
    description = "The merged model as a Hugging Face folder (safetensors, tokenizer, Modelfile with FROM .)."
    config_class = SafetensorsOptions

    def check(self, base_folder: Path, config: SafetensorsOptions) -> None:
        return None

    def write(self, model: MergedModel, config: SafetensorsOptions, out: Path) -> Exported:
        for item in model.folder.iterdir():
            shutil.move(str(item), out / item.name)
        text = modelfile_text(".", model.template, model.context_length)
        (out / "Modelfile").write_text(text)
        return Exported(modelfile=text, notes=[model.template.note] if model.template.note else [])
