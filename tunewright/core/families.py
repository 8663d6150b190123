"""What training must know about a model family, kept in one place.

Almost everything that differs between families is someone else's business and stays there:
transformers' model classes compute each family's forward pass (Gemma's embedding scale,
Qwen's attention biases, tied embeddings), and llama.cpp's converter writes each family's
GGUF (the Q/K permutation, Gemma's scaled embeddings, which tensors are tied). tunewright
decides only what those cannot decide for it, by the model's config, never by its name:

- Layer names a user gives as LoRA targets. Phi-3 fuses the query, key and value
  projections into one ``qkv_proj`` and the gate and up projections into ``gate_up_proj``;
  ``q_proj`` or ``up_proj`` name the fused layer there, so a target list written for Llama
  works unchanged (adapting the whole fused layer: a LoRA update cannot cover a slice of
  one). ``all-linear`` covers every family as it is.
- The attention implementation. Gemma 2 soft-caps attention logits; PyTorch's SDPA kernel
  has no cap and transformers' SDPA path drops it, so a model trained with it is not the
  model llama.cpp runs. Models that soft-cap train with eager attention.
- The name a GGUF file carries. llama.cpp recognises one tokenizer behaviour by the model's
  name (``general.name``), not by the vocabulary: Phi-3's special tokens swallow the
  whitespace after them (``rstrip``) only in a file whose name holds "phi3" or "phi-3".
  The converter names the file after the folder it converts, a merged copy here, so a
  Phi-3 export is named for the family explicitly, and llama.cpp then tokenizes what
  training tokenized.
- Tied embeddings need no special case: the methods never adapt the output head
  (``all-linear`` leaves it out), so a merge keeps input and output embeddings one tensor
  and the converter writes it once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# A fused layer and the separate layers it stands for (Phi-3's naming).
FUSED_LAYERS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def lora_target_names(layer_names: Iterable[str], requested: list[str]) -> tuple[list[str], list[str]]:
    """(targets, missing): ``requested`` as the model names its layers, and the names it has
    no layer for. A separate projection's name stands for the fused layer holding it."""
    present = set(layer_names)
    targets, missing = [], []
    for name in requested:
        if name not in present:
            name = next((fused for fused, parts in FUSED_LAYERS.items() if name in parts and fused in present), name)
        if name not in present:
            missing.append(name)
        elif name not in targets:
            targets.append(name)
    return targets, missing


def attention_implementation(config: Any) -> str | None:
    """The attention implementation a model must train with, or None for transformers' choice."""
    if getattr(config, "attn_logit_softcapping", None) or getattr(
        getattr(config, "text_config", None), "attn_logit_softcapping", None
    ):
        return "eager"
    return None


# Architectures whose GGUF must carry "phi3" in its name for llama.cpp to strip whitespace
# after special tokens as their tokenizer does (llama.cpp's llama-vocab.cpp).
_NAMED_FOR_PHI3 = ("Phi3ForCausalLM", "PhiMoEForCausalLM")


def gguf_model_name(base_name: str, architecture: str) -> str:
    """The name to give a GGUF of ``architecture`` fine-tuned from ``base_name``."""
    name = base_name or architecture
    if architecture in _NAMED_FOR_PHI3 and not any(mark in name.lower() for mark in ("phi3", "phi-3")):
        name = f"{name} (phi3)"
    return name
