"""A model tuned under one system prompt answers a bare user message as it was evaluated:
the prompt the training data shared becomes the exported Modelfile's SYSTEM and the serve
service's default for the model (issue 18), on the real SmolLM2 with the demo's data, whose
420 conversations all open with the same triage instruction."""

from __future__ import annotations

import json

import pytest

from conftest import run_job, ticket_lines
from tunewright.core.basemodel import DEFAULT_BASE_MODEL, load_tokenizer, resolve_base_model
from tunewright.core.chat import render
from tunewright.core.modelfile import ollama_template, render_like_ollama
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb

pytestmark = pytest.mark.real_model

HELD_OUT = 5


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return resolve_base_model(DEFAULT_BASE_MODEL, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tuned(services, smollm2, tmp_path_factory):
    path = tmp_path_factory.mktemp("system-data") / "tickets.jsonl"
    path.write_text("\n".join(ticket_lines(60)) + "\n")
    dataset = services.client.create_dataset(services.client.upload(path).name).name
    finished = run_job(services.client, smollm2, dataset, max_steps=12, batch_size=8, learning_rate=1e-3)
    assert finished.state == trainer_pb.JOB_STATE_SUCCEEDED, finished.error
    return finished.name


@pytest.fixture(scope="module")
def exported(services, tuned):
    return services.client.export_model(tuned, model_id="tickets-system")


def system_prompt() -> str:
    return json.loads(ticket_lines(1)[0])["messages"][0]["content"]


def test_the_shared_system_prompt_is_the_models_default(exported):
    assert exported.format == "gguf" and exported.system_prompt == system_prompt()
    assert f'SYSTEM """{system_prompt()}"""' in exported.modelfile
    assert any("100% of the training examples" in note for note in exported.notes), exported.notes


def test_ollama_renders_a_bare_message_as_the_model_was_trained(exported, smollm2):
    """With the Modelfile's SYSTEM, Ollama's rendering of a bare user message is the Jinja
    rendering of the training conversation's prompt (system prompt and all)."""
    tokenizer = load_tokenizer(smollm2)
    template = ollama_template(tokenizer)
    assert template.default_system != system_prompt()  # SmolLM2's own, replaced at export
    from dataclasses import replace

    trained = replace(template, default_system=exported.system_prompt)
    user = {"role": "user", "content": "Checkout has been down for everyone since 9am."}
    bos = trained.bos_text or ""
    expected = render(tokenizer, [{"role": "system", "content": system_prompt()}, user], generation_prompt=True)
    assert bos + render_like_ollama(trained, [user]) == expected


def test_a_bare_user_message_gets_the_evaluated_answer(services, tuned, exported):
    """The job evaluated the tuned model on test conversations that carry the system prompt;
    the export, asked the same questions with no system message, answers the same."""
    predictions = services.client.predictions(tuned)[:HELD_OUT]
    assert len(predictions) == HELD_OUT
    agreed = 0
    for prediction in predictions:
        question = next(m for m in prediction["messages"] if m["role"] == "user")
        bare = services.client.ask(exported.name, [question], max_new_tokens=48)
        told = services.client.ask(
            exported.name, [{"role": "system", "content": system_prompt()}, question], max_new_tokens=48
        )
        assert bare.backend == "llama.cpp"
        # The same prompt reaches the engine either way.
        assert bare.text == told.text
        assert bare.text.startswith("urgency:"), bare.text
        agreed += bare.text.splitlines()[0] == prediction["tuned"].splitlines()[0]
    # llama.cpp's F16 and the trainer's float32 may part on a near tie; the first line is the label.
    assert agreed >= HELD_OUT - 1


def test_the_export_can_keep_the_base_models_system_prompt(services, tuned, smollm2):
    model = services.client.export_model(tuned, model_id="tickets-base-system", system_prompt="", format="attached")
    assert model.system_prompt == ollama_template(load_tokenizer(smollm2)).default_system
    assert not any("training examples" in note for note in model.notes)
