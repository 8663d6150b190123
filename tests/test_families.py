"""Every model family's tiny model (tests/families.py) is what it claims to be: transformers
loads it; its tokenizer gives the original tokenizer's ids (llama.cpp's recorded ones) and
llama.cpp's ids on conversations rendered with the family's chat template. What llama.cpp's
converter makes of it, once trained, is test_architectures.py's.

One row per family, as in test_method_matrix.py: a family added to FAMILIES gets every test,
and one that cannot be built here is skipped with the reason its row gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from families import (
    CONVERSATIONS,
    FAMILIES,
    Family,
    recorded_ids,
    render_all,
    vocabulary_data,
)


def hf_ids(tokenizer, text: str) -> list[int]:
    # As training tokenizes a rendered conversation: the template writes the special tokens.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def first_difference(tokenizer, expected: list[int], actual: list[int]) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b), min(len(expected), len(actual))
    )
    window = slice(max(0, at - 3), at + 4)
    return (
        f"from token {at}: {tokenizer.convert_ids_to_tokens(expected[window])} "
        f"against {tokenizer.convert_ids_to_tokens(actual[window])}"
    )


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    loaded = {}

    def get(folder: Path):
        if folder not in loaded:
            loaded[folder] = AutoTokenizer.from_pretrained(folder)
        return loaded[folder]

    return get


@pytest.fixture(scope="module")
def llama_cpp_ids():
    """``llama_cpp_ids(gguf, text)``: llama.cpp's tokenizer (Ollama's) on the text, reading
    special tokens as the template writes them, from the file's vocabulary alone."""
    from llama_cpp import Llama

    loaded = {}

    def ids(path: Path, text: str) -> list[int]:
        if path not in loaded:
            loaded[path] = Llama(model_path=str(path), vocab_only=True, verbose=False)
        return loaded[path].tokenize(text.encode("utf-8"), add_bos=False, special=True)

    yield ids
    for engine in loaded.values():
        engine.close()


@pytest.mark.parametrize("name", FAMILIES)
def test_family_loads_in_transformers_with_its_template(name, family_model, tokenizers):
    import torch
    from transformers import AutoModelForCausalLM

    family: Family = FAMILIES[name]
    folder = family_model(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = tokenizers(folder)
    assert type(model).__name__ == family.architecture
    assert model.config.vocab_size == len(vocabulary_data(family.vocabulary).tokens)
    assert max(tokenizer.get_vocab().values()) < model.config.vocab_size
    assert model.get_input_embeddings().weight.dtype == torch.float32  # saved bf16, loaded as asked
    # Each special token the template writes is one token, as in the real family.
    template = json.loads(family.template_path.read_text(encoding="utf-8"))
    rendered = "".join(render_all(tokenizer))
    written = [token for token in template.get("special_tokens", []) if token in rendered]
    assert written, "the template writes none of its special tokens"
    for token in written:
        assert len(hf_ids(tokenizer, token)) == 1, f"{token!r} is not one token"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([hf_ids(tokenizer, rendered)[:64]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_gives_the_original_tokenizers_ids(name, family_model, tokenizers):
    """llama.cpp keeps, for most vocabularies, test texts with the ids the original Hugging
    Face tokenizer gave them (convert_hf_to_gguf_update.py writes them)."""
    family = FAMILIES[name]
    tokenizer = tokenizers(family_model(name))
    recorded = recorded_ids(family.vocabulary)
    if not recorded:
        pytest.skip(f"llama.cpp records no original ids for the {family.vocabulary.name} vocabulary")
    for text, expected in recorded:
        actual = hf_ids(tokenizer, text)
        assert actual == expected, f"{text!r}: {first_difference(tokenizer, expected, actual)}"


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_gives_llama_cpps_ids_on_rendered_conversations(name, family_model, tokenizers, llama_cpp_ids):
    """Against the vocabulary file itself, with llama.cpp's tokenizer (Ollama's)."""
    family = FAMILIES[name]
    tokenizer = tokenizers(family_model(name))
    if family.vocabulary.pre:
        pytest.skip(
            f"the {family.vocabulary.name} vocabulary file names no pre-tokenizer, so llama.cpp splits it "
            "with its default; test_architectures.py compares the converted GGUF's tokenizer instead"
        )
    data = vocabulary_data(family.vocabulary)
    # The family's own tokens that the vocabulary file has as placeholders tokenize differently there.
    renamed = [t[0] if isinstance(t, tuple) else t for i, t in family.tokens.items() if data.tokens[i] != t]
    texts = [m["content"] for conversation in CONVERSATIONS for m in conversation] + render_all(tokenizer)
    compared = 0
    for text in texts:
        if any(token in text for token in renamed):
            continue
        expected = hf_ids(tokenizer, text)
        actual = llama_cpp_ids(family.vocabulary.path(), text)
        assert actual == expected, f"{text!r}: {first_difference(tokenizer, expected, actual)}"
        compared += 1
    assert compared >= len(CONVERSATIONS)
