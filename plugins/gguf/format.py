"""The merged model as a GGUF file, written by llama.cpp's own converter.

The converter (``convert_hf_to_gguf.py`` with its ``gguf-py``) ships in the
llama-cpp-python source distribution, the same llama.cpp that serves the file here;
``make install`` unpacks it into ``<venv>/share/llama.cpp``. It knows what a hand-written
conversion gets wrong: the Q and K permutation for llama.cpp's rotary layout, tied
embeddings, the pre-tokenizer name (``smollm`` for SmolLM2: the hash of the tokenizer's
behaviour picks it), the embedded Jinja chat template, ``general.file_type``. It runs as
its own process and puts its own ``gguf-py`` first on the path, so the installed ``gguf``
package cannot shadow the version it was written against. That process is forked from a fork
server that has imported what the converter imports (``tunewright.core.forkserver``): the
imports are 9 of a small model's 14 seconds, and an export runs the converter twice.

Every architecture the converter converts is exported; the list is the converter's own
(``TEXT_MODEL_MAP`` in its ``conversion`` package), so a newer llama.cpp brings its new
architectures with it. Another architecture is refused before any merge is paid for, with
the format to use instead. What differs between families (tied embeddings, Gemma's
embedding scale, fused projections) is the converter's business; what training needs to
know about them is in ``tunewright.core.families``.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tunewright.core.errors import FailedPrecondition
from tunewright.core.families import gguf_model_name
from tunewright.core.forkserver import ForkServer, usable
from tunewright.core.modelfile import modelfile_text
from tunewright.exporters import Exported, MergedModel

TYPES = ("f16", "q8_0", "bf16")
# Named in the refusal of an architecture the converter does not know, as examples.
COMMON = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "GraniteForCausalLM",
    "Olmo2ForCausalLM",
)
FILE = "model.gguf"
CONVERTER_ENV = "TUNEWRIGHT_LLAMA_CPP"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
# What the converter imports that takes seconds (its own packages from its folder).
CONVERTER_PRELOAD = (
    "torch",
    "transformers",
    "transformers.core_model_loading",
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.tokenization_auto",
    "gguf",
    "conversion",
    "conversion.base",
)


@dataclass
class GgufOptions:
    type: str = field(
        default="f16",
        metadata={
            "help": "Tensor type: f16 (what Ollama can quantize further), q8_0 (half the size), or bf16.",
            "choices": TYPES,
        },
    )


def converter_folder() -> Path:
    """Where llama.cpp's converter was unpacked: $TUNEWRIGHT_LLAMA_CPP, else <venv>/share/llama.cpp."""
    return Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "share" / "llama.cpp")


class GgufFormat:
    name = "gguf"
    description = "The merged model as one GGUF file (llama.cpp's converter), with a Modelfile for Ollama."
    config_class = GgufOptions

    def check(self, base_folder: Path, config: GgufOptions) -> None:
        if not (converter_folder() / "convert_hf_to_gguf.py").is_file():
            raise FailedPrecondition(
                f"llama.cpp's converter is not at {converter_folder()}; run `make install`, or set "
                f"{CONVERTER_ENV} to a llama.cpp checkout",
                reason="GGUF_CONVERTER_MISSING",
            )
        architecture = (json.loads((base_folder / "config.json").read_text()).get("architectures") or ["?"])[0]
        supported = supported_architectures(converter_folder())
        if architecture not in supported:
            raise FailedPrecondition(
                f"llama.cpp's converter does not convert {architecture}, so it cannot be exported as GGUF; "
                f"export with format 'safetensors' instead. It converts {len(supported)} architectures (all in "
                f"this error's 'supported' metadata; or run {converter_folder() / 'convert_hf_to_gguf.py'} "
                "--print-supported-models), among them " + ", ".join(a for a in COMMON if a in supported),
                reason="UNSUPPORTED_ARCHITECTURE",
                metadata={"architecture": architecture, "supported": ",".join(supported)},
            )
        problem = _vocabulary_problem(base_folder)
        if problem:
            raise FailedPrecondition(
                f"llama.cpp's converter does not know this model's tokenizer, so a GGUF would tokenize "
                f"differently from training: {problem}; export with format 'safetensors' instead",
                reason="UNSUPPORTED_TOKENIZER",
            )

    def write(self, model: MergedModel, config: GgufOptions, out: Path) -> Exported:
        name = gguf_model_name(model.base_name, model.architecture)
        result = _convert(model.folder, out / FILE, ["--outtype", config.type, "--model-name", name])
        if result.returncode != 0 or not (out / FILE).is_file():
            raise FailedPrecondition(
                f"llama.cpp's converter could not write the GGUF (exit {result.returncode}): {_last_lines(result)}",
                reason="GGUF_CONVERSION_FAILED",
            )
        # The tokenizer stays beside the GGUF: the llama.cpp backend renders and tokenizes
        # with it, so the tokens evaluated are exactly the ones the model was trained on.
        for name in TOKENIZER_FILES:
            if (model.folder / name).is_file():
                shutil.move(str(model.folder / name), out / name)
        text = modelfile_text(f"./{FILE}", model.template, model.context_length)
        (out / "Modelfile").write_text(text)
        return Exported(modelfile=text, gguf=FILE, notes=[model.template.note] if model.template.note else [])


def _convert(source: Path, outfile: Path, arguments: list[str]) -> subprocess.CompletedProcess:
    """Runs the converter; what it printed, standard output and error together, is ``stderr``."""
    script = str(converter_folder() / "convert_hf_to_gguf.py")
    args = [str(source), "--outfile", str(outfile), *arguments]
    env = _converter_env()
    server = _converter_server(converter_folder())
    if server is not None:
        with tempfile.TemporaryFile() as printed:
            try:
                code = server.launch(script, args, env, printed.fileno(), printed.fileno()).wait()
            except (OSError, RuntimeError):
                pass  # run as a new interpreter below
            else:
                printed.seek(0)
                return subprocess.CompletedProcess([script, *args], code, "", printed.read().decode(errors="replace"))
    return subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, check=False)


def _converter_env() -> dict[str, str]:
    # The converter puts its own gguf-py first on sys.path itself (unless NO_LOCAL_GGUF is set).
    env = {key: value for key, value in os.environ.items() if key != "NO_LOCAL_GGUF"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@functools.cache
def _converter_server(folder: Path) -> ForkServer | None:
    """The converter's fork server in this process, started at the first conversion; None
    where processes are not forked."""
    if not usable():
        return None
    return ForkServer(_converter_env(), CONVERTER_PRELOAD, [folder / "gguf-py", folder])


@functools.cache
def supported_architectures(folder: Path) -> tuple[str, ...]:
    """The Hugging Face architectures (``config.json``'s ``architectures``) the converter in
    ``folder`` converts to a text model.

    Read from the dict literal ``TEXT_MODEL_MAP`` in its ``conversion/__init__.py``, which
    takes milliseconds; importing the package (or ``--print-supported-models``) imports torch
    and every model module, about 4 s. A converter laid out otherwise is asked with
    ``--print-supported-models``."""
    package = folder / "conversion" / "__init__.py"
    if package.is_file():
        for node in ast.walk(ast.parse(package.read_text())):
            if isinstance(node, ast.AnnAssign | ast.Assign) and "TEXT_MODEL_MAP" in ast.unparse(node).split("=")[0]:
                return tuple(sorted(ast.literal_eval(node.value)))
    command = [sys.executable, str(folder / "convert_hf_to_gguf.py"), "--print-supported-models"]
    printed = subprocess.run(command, capture_output=True, text=True, check=False)
    # It logs "TEXT models:" then one "  - Name" line per architecture, then "MMPROJ models:".
    text = (printed.stdout + printed.stderr).partition("TEXT models:")[2].partition("MMPROJ models:")[0]
    return tuple(sorted(line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")))


def _last_lines(result: subprocess.CompletedProcess) -> str:
    return " | ".join(result.stderr.strip().splitlines()[-3:])[-1500:]


@functools.cache
def _vocabulary_problem(base_folder: Path) -> str:
    """Why the converter cannot write this base model's tokenizer, or "" when it can.

    It picks the pre-tokenizer by hashing how the tokenizer splits a test text, and refuses
    one it does not know; a vocabulary-only conversion finds out in about a second, before
    a merge is paid for. Checked once per base model folder."""
    with tempfile.TemporaryDirectory() as scratch:
        result = _convert(base_folder, Path(scratch) / "vocab.gguf", ["--vocab-only"])
    return "" if result.returncode == 0 else _last_lines(result)
