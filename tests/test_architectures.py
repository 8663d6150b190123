"""The architecture matrix: every model family a user brings, all the way to Ollama.

For each family in tests/families.py (a tiny random model with the family's real tokenizer
and chat template) through the real services: upload, a lora job, GGUF export, then

- llama.cpp against the trained model (the same job exported as safetensors): top-1
  next-token agreement of at least 99% over rendered conversations, F16;
- llama.cpp's own tokenizer (the one Ollama uses), from the exported GGUF, giving the
  trained tokenizer's ids on the rendered conversations;
- the exported Modelfile's template rendered by Go's text/template, byte for byte against
  the Jinja template, where a Go template was written;
- an answer through the serve service.

Every family is trained by every other method too (full, qlora, unsloth, prefix), one step
each, all queued at once and run two at a time (test_method_matrix.py holds the methods to
their promises on the tiny Llama). A family that cannot be built here is skipped with its row's reason, and
its row is not done. And the refusals: an architecture llama.cpp's converter does not
convert is refused at export with UNSUPPORTED_ARCHITECTURE before any merge.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import grpc
import pytest
from families import CONVERSATIONS, FAMILIES, read_gguf_metadata, render_all, vocabulary_data
from jinja2 import TemplateError
from test_families import first_difference, hf_ids
from test_modelfile import FAMILIES as TEMPLATE_FORMATS

from conftest import Services, create_job, finished_job, rich_error, run_job, ticket_lines
from tunewright.core.basemodel import load_tokenizer
from tunewright.core.modelfile import ollama_chat
from tunewright.serve.llamacpp import parity
from tunewright.serve.v1 import serve_service_pb2 as pb
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb

# Methods that train each family besides lora (which every row exports). Each applies to
# every family here; a method that cannot train a model says why when the job is created.
OTHER_METHODS = ("full", "qlora", "unsloth", "prefix")
# They train one family per architecture: the methods act on the model's modules, which the
# tokenizer and template that tell the Llama-architecture families apart do not change
# (and test_method_matrix.py trains a Llama with every method besides).
METHOD_FAMILIES = list({family.architecture: name for name, family in FAMILIES.items()}.values())


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """The services, with a trainer that runs two jobs at once, each worker on one torch
    thread: most of a one-step job on a tiny model is its worker starting (single-threaded
    imports), and two workers of two threads each would fight over this machine's two cores."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEWRIGHT_TORCH_THREADS", "1")  # read by each worker as it starts
        running = Services(tmp_path_factory.mktemp("services"), max_running_jobs=2)
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="module")
def dataset(services, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("families-data") / "tickets.jsonl"
    path.write_text("\n".join(ticket_lines(24)) + "\n")
    return services.client.create_dataset(services.client.upload(path).name).name


@pytest.fixture(scope="module")
def exported(services, dataset, family_model):
    """``exported(name)``: (the lora job, its GGUF export, its safetensors export), once per family."""
    done: dict[str, tuple[str, pb.Model, pb.Model]] = {}

    def get(name: str):
        if name not in done:
            base = family_model(name)
            job = run_job(services.client, base, dataset, "lora", max_steps=2, batch_size=4, evaluate=False)
            assert job.state == trainer_pb.JOB_STATE_SUCCEEDED, f"{name}: {job.error}"

            def export(format: str) -> pb.Model:
                request = pb.ExportModelRequest(
                    job=job.name, model_id=f"{name.replace('.', '-')}-{format}", format=format
                )
                return services.client.serve.ExportModel(request, timeout=900).model

            done[name] = (job.name, export("gguf"), export("safetensors"))
        return done[name]

    return get


def gguf_path(model: pb.Model) -> Path:
    (name,) = [f.path for f in model.files if f.path.endswith(".gguf")]
    return Path(model.directory) / name


@pytest.mark.parametrize("name", FAMILIES)
def test_trains_and_exports_as_gguf_with_its_template(name, exported):
    job, gguf, _ = exported(name)
    template_file = Path(FAMILIES[name].template).stem
    assert gguf.format == "gguf", gguf.notes
    assert gguf.template_family == (TEMPLATE_FORMATS[template_file] or ""), gguf.notes
    assert gguf.modelfile.startswith("FROM ./model.gguf\n")
    metadata = read_gguf_metadata(gguf_path(gguf))
    assert metadata["general.file_type"] == 1  # F16
    vocabulary = vocabulary_data(FAMILIES[name].vocabulary)
    if vocabulary.model == "gpt2":
        # The converter recognised the pre-tokenizer by how the tokenizer splits its test text.
        assert metadata["tokenizer.ggml.pre"] == vocabulary.pre
    # Every end-of-turn token the template writes is a stop.
    tokenizer = load_tokenizer(Path(gguf.directory))
    from tunewright.core.chat import end_of_turn_tokens

    for token in end_of_turn_tokens(tokenizer):
        assert f"PARAMETER stop {json.dumps(token)}" in gguf.modelfile


@pytest.mark.parametrize("name", FAMILIES)
def test_llama_cpp_computes_what_the_trained_model_does(name, exported):
    _, gguf, hf = exported(name)
    tokenizer = load_tokenizer(Path(hf.directory))
    prompts = [hf_ids(tokenizer, text) for text in render_all(tokenizer)]
    measured = parity(gguf_path(gguf), Path(hf.directory), prompts, continuation_tokens=8)
    assert measured.top1_agreement >= 0.99, measured


@pytest.mark.parametrize("name", FAMILIES)
def test_llama_cpp_tokenizes_like_training(name, exported):
    """llama.cpp's tokenizer from the exported GGUF, which is what Ollama tokenizes with."""
    from llama_cpp import Llama

    _, gguf, _ = exported(name)
    tokenizer = load_tokenizer(Path(gguf.directory))
    engine = Llama(model_path=str(gguf_path(gguf)), vocab_only=True, verbose=False)
    try:
        for text in render_all(tokenizer):
            expected = hf_ids(tokenizer, text)
            actual = engine.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            assert actual == expected, f"{text[:60]!r}: {first_difference(tokenizer, expected, actual)}"
    finally:
        engine.close()


@pytest.mark.parametrize("name", FAMILIES)
def test_the_modelfile_template_renders_like_the_jinja_template(name, exported, go_render):
    """On chat requests (conversations that end with the user's turn). Contents are given
    without whitespace at their edges: Ollama's templates cannot trim, and an export whose
    template trims says so in its note (test_modelfile.py holds every stored template to that)."""
    from tunewright.core.chat import render
    from tunewright.core.modelfile import ollama_template

    _, gguf, _ = exported(name)
    tokenizer = load_tokenizer(Path(gguf.directory))
    template = ollama_template(tokenizer)
    if template.template is None:
        pytest.skip(f"{name}: no Go template, Ollama renders the Jinja template itself: {template.note}")
    requests = [
        [{**m, "content": m["content"].strip()} for m in conversation[: i + 1]]
        for conversation in CONVERSATIONS
        for i, m in enumerate(conversation)
        if m["role"] == "user"
    ]
    for conversation in requests:
        try:
            expected = render(tokenizer, conversation, generation_prompt=True)
        except TemplateError:  # a template that refuses a system message
            conversation = [m for m in conversation if m["role"] != "system"]
            expected = render(tokenizer, conversation, generation_prompt=True)
        system, messages = ollama_chat(template.default_system, conversation)
        rendered = go_render(template.template, messages, system)
        assert (template.bos_text or "") + rendered == expected, conversation


@pytest.mark.parametrize("name", FAMILIES)
def test_the_serve_service_answers(name, services, exported):
    _, gguf, _ = exported(name)
    answer = services.client.ask(gguf.name, [{"role": "user", "content": "Is checkout down?"}], max_new_tokens=6)
    assert answer.backend == "llama.cpp" and answer.token_count > 0


@pytest.fixture(scope="module")
def method_jobs(services, dataset, family_model) -> dict[tuple[str, str], str]:
    """The job of each of METHOD_FAMILIES that can be built here with each of OTHER_METHODS,
    by (family, method), all created at once."""
    return {
        (name, method): create_job(
            services.client, family_model(name), dataset, method, max_steps=1, batch_size=4, evaluate=False
        )
        for name in METHOD_FAMILIES
        if not FAMILIES[name].why_not_built()
        for method in OTHER_METHODS
    }


@pytest.mark.parametrize("method", OTHER_METHODS)
@pytest.mark.parametrize("name", METHOD_FAMILIES)
def test_every_method_trains_the_family(name, method, services, family_model, method_jobs):
    family_model(name)  # skips, with the reason, a family that cannot be built here
    job = finished_job(services.client, method_jobs[name, method])
    assert job.state == trainer_pb.JOB_STATE_SUCCEEDED, f"{name} with {method}: {job.error}"
    assert job.progress.step == 1 and math.isfinite(job.progress.loss) and job.progress.loss > 0


@pytest.fixture(scope="module")
def unconvertible(services, dataset, tiny_model, tmp_path_factory):
    """A lora job on an OPT model: transformers trains it, llama.cpp's converter has no
    conversion for it."""
    import torch
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    folder = tmp_path_factory.mktemp("opt")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    OPTForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for file in Path(tiny_model).iterdir():
        if "token" in file.name or file.suffix == ".jinja":
            shutil.copy2(file, folder / file.name)
    job = run_job(services.client, folder, dataset, "lora", max_steps=1, batch_size=4, evaluate=False)
    assert job.state == trainer_pb.JOB_STATE_SUCCEEDED, job.error
    return job.name


def test_an_architecture_the_converter_refuses_is_refused_before_any_merge(services, unconvertible):
    with pytest.raises(grpc.RpcError) as raised:
        services.client.serve.ExportModel(pb.ExportModelRequest(job=unconvertible, format="gguf"), timeout=300)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reason, _ = rich_error(raised.value)
    assert reason == "UNSUPPORTED_ARCHITECTURE"
    details = raised.value.details()
    assert "OPTForCausalLM" in details and "safetensors" in details and "Qwen2ForCausalLM" in details
    # Nothing was stored, and the default format falls back to one that takes it.
    assert not [m for m in services.client.list_models() if m.job == unconvertible]
    model = services.client.serve.ExportModel(pb.ExportModelRequest(job=unconvertible), timeout=300).model
    assert model.format == "safetensors"
