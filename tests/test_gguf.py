"""GGUF export of a model fine-tuned from the real SmolLM2, proved with llama.cpp; registration
with Ollama (the protocol double, and a real server when OLLAMA_HOST answers); and answers
through the engine a model was pushed to, else llama.cpp.

The parity figures asserted here are the issue's: with F16, top-1 next-token agreement of
at least 99% over the distinct positions of held-out prompts, and greedy 24-token
continuations identical on at least 95% of them, save where the Hugging Face model nearly
ties between two tokens (less than 0.1 apart) and llama.cpp takes the other. Q8_0 is held
to a looser floor; bench/README.md has the measured figures of both.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import grpc
import pytest
from gguf import GGUFReader
from ollama_double import serve

from conftest import rich_error, run_job, ticket_lines
from tunewright.core.basemodel import DEFAULT_BASE_MODEL, load_tokenizer, resolve_base_model
from tunewright.core.chat import prompt_and_reference, render
from tunewright.serve.llamacpp import NEAR_TIE, parity
from tunewright.serve.v1 import serve_service_pb2 as pb
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb

pytestmark = pytest.mark.real_model

HELD_OUT = 20  # prompts
CONTINUATION = 24  # greedy tokens


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return resolve_base_model(DEFAULT_BASE_MODEL, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def job(services, smollm2, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf-data") / "d.jsonl"
    path.write_text("\n".join(ticket_lines(60)) + "\n")
    dataset = services.client.create_dataset(services.client.upload(path).name).name
    # A gentle learning rate: the model moves (the export is of a fine-tuned model) but keeps
    # SmolLM2's habit of ending its turn, which the stop test relies on.
    finished = run_job(services.client, smollm2, dataset, max_steps=6, batch_size=8, learning_rate=2e-4, evaluate=False)
    assert finished.state == trainer_pb.JOB_STATE_SUCCEEDED, finished.error
    return finished.name


def export(services, job, model_id, **request) -> pb.Model:
    return services.client.serve.ExportModel(
        pb.ExportModelRequest(job=job, model_id=model_id, **request), timeout=900
    ).model


@pytest.fixture(scope="module")
def f16(services, job):
    return export(services, job, "tickets-f16")  # the default: GGUF, F16


@pytest.fixture(scope="module")
def q8(services, job):
    return export(services, job, "tickets-q8", format="gguf", options={"type": "q8_0"})


@pytest.fixture(scope="module")
def hf(services, job):
    """The same merged model as a Hugging Face folder: what the GGUF is compared with."""
    return export(services, job, "tickets-hf", format="safetensors")


def held_out_prompts(tokenizer) -> list[list[int]]:
    conversations = [json.loads(line)["messages"] for line in ticket_lines(400)[-HELD_OUT:]]
    return [
        tokenizer(render(tokenizer, prompt_and_reference(c)[0], generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
        for c in conversations
    ]


def test_the_gguf_is_labelled_as_llama_cpp_needs(f16, q8, smollm2):
    assert f16.format == "gguf" and f16.template_family == "chatml"
    assert {"model.gguf", "Modelfile", "tokenizer.json"} <= {f.path for f in f16.files}
    assert f16.modelfile.startswith("FROM ./model.gguf\n")
    assert f16.verification.max_kl_divergence <= f16.verification.tolerance
    tokenizer = load_tokenizer(smollm2)
    for model, file_type in ((f16, 1), (q8, 7)):  # llama.cpp's LLAMA_FTYPE_MOSTLY_F16 and _Q8_0
        reader = GGUFReader(Path(model.directory) / "model.gguf")
        fields = {name: field.contents() for name, field in reader.fields.items() if name != "tokenizer.ggml.scores"}
        assert fields["general.architecture"] == "llama" and fields["general.file_type"] == file_type
        assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
        assert len(fields["tokenizer.ggml.tokens"]) == 49152 and len(fields["tokenizer.ggml.merges"]) == 48900
        assert fields["tokenizer.ggml.bos_token_id"] == 1
        assert tokenizer.convert_ids_to_tokens(fields["tokenizer.ggml.eos_token_id"]) == "<|im_end|>"
        assert fields["tokenizer.ggml.add_bos_token"] is False
        assert fields["tokenizer.chat_template"] == tokenizer.chat_template
        names = {tensor.name for tensor in reader.tensors}
        assert "token_embd.weight" in names and "output.weight" not in names  # tied embeddings
        assert fields["llama.attention.head_count"] == 9 and fields["llama.attention.head_count_kv"] == 3


def test_f16_gguf_run_by_llama_cpp_matches_the_hugging_face_model(f16, hf, smollm2):
    prompts = held_out_prompts(load_tokenizer(smollm2))
    measured = parity(Path(f16.directory) / "model.gguf", Path(hf.directory), prompts, CONTINUATION)
    assert measured.top1_agreement >= 0.99, measured
    # A continuation may part from the Hugging Face model's only where that model nearly ties
    # (F16 moves logits by up to about 0.07 here); most part nowhere.
    assert measured.identical_up_to_near_ties >= 0.95, measured
    assert measured.identical_continuations >= 0.85, measured


def test_q8_0_gguf_stays_close(q8, hf, smollm2):
    prompts = held_out_prompts(load_tokenizer(smollm2))
    measured = parity(Path(q8.directory) / "model.gguf", Path(hf.directory), prompts, CONTINUATION)
    # Q8_0 rounds every weight to 8 bits: near-ties flip and a greedy continuation then
    # parts ways, so only the per-position agreement is held to a floor; bench/README.md
    # has the measured figures (about 96% top-1 on this model).
    assert measured.top1_agreement >= 0.9, measured


def chat(services, model: str, content: str, max_new_tokens: int = 64) -> list[pb.ChatResponse]:
    return list(
        services.client.serve.Chat(
            pb.ChatRequest(
                model=model,
                messages=[pb.ChatMessage(role="user", content=content)],
                options=pb.GenerationOptions(max_new_tokens=max_new_tokens),
            ),
            timeout=600,
        )
    )


def test_llama_cpp_answers_and_stops_where_the_hugging_face_model_does(services, f16, hf):
    """The GGUF served by llama.cpp gives the same greedy answer as the same model served by
    transformers, and ends its turn at the same token: the end-of-turn stops are in place.
    F16 moves a logit by up to about 0.07 here, so where transformers itself hesitates
    between two tokens (a near-tie) the answers may part; that is allowed only at a near-tie,
    and measured rather than assumed. (The demo checks that its trained model stops on every
    test ticket.)"""
    questions = ["Say hello.", "What is 2 + 2?"] + [
        json.loads(line)["messages"][-2]["content"] for line in ticket_lines(400)[-3:]
    ]
    stopped = identical = 0
    for question in questions:
        gguf, transformers = chat(services, f16.name, question, 96), chat(services, hf.name, question, 96)
        assert {p.backend for p in gguf} == {"llama.cpp"} and {p.backend for p in transformers} == {"transformers"}
        if [p.text for p in gguf] != [p.text for p in transformers]:
            assert_parted_at_a_near_tie(hf, question, [p.text for p in gguf], [p.text for p in transformers])
            continue
        identical += 1
        assert gguf[-1].finish_reason == transformers[-1].finish_reason, question
        stopped += gguf[-1].finish_reason == pb.FINISH_REASON_STOP
    assert identical >= 4, f"{identical} of {len(questions)} answers identical"
    assert stopped >= 2  # "Say hello." and "What is 2 + 2?" at least


def assert_parted_at_a_near_tie(hf, question: str, gguf: list[str], transformers: list[str]) -> None:
    """Both engines stream one message per token. Where the streams first differ, the token
    llama.cpp chose must be transformers' runner-up, within NEAR_TIE of its choice."""
    import torch

    from tunewright.core.basemodel import load_model

    part = next((i for i, (a, b) in enumerate(zip(gguf, transformers, strict=False)) if a != b), None)
    assert part is not None, f"{question!r}: one engine ended its answer where the other went on"
    tokenizer = load_tokenizer(Path(hf.directory))
    messages = [{"role": "system", "content": hf.system_prompt}] if hf.system_prompt else []
    prompt = render(tokenizer, [*messages, {"role": "user", "content": question}], generation_prompt=True)
    ids = tokenizer(prompt + "".join(transformers[:part]), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = load_model(Path(hf.directory)).eval()(input_ids=torch.tensor([ids])).logits[0, -1]
    top = torch.topk(logits, 2)
    choice, runner_up = (tokenizer.decode([int(i)]) for i in top.indices)
    margin = float(top.values[0] - top.values[1])
    assert (transformers[part], gguf[part]) == (choice, runner_up) and margin < NEAR_TIE, (
        f"{question!r}: the answers part after {''.join(transformers[:part])!r}: transformers {transformers[part]!r}, "
        f"llama.cpp {gguf[part]!r}; transformers' top two are {choice!r} and {runner_up!r}, {margin:.4f} apart"
    )


def test_push_registers_with_ollama_and_answers_come_through_it(services, f16, double):
    response = services.client.serve.PushModel(
        pb.PushModelRequest(model=f16.name, target="ollama", options={"host": double.host, "name": "tickets"})
    )
    assert response.status[-1] == "success"
    (push,) = response.model.pushes
    assert (push.target, push.address, push.remote_name) == ("ollama", double.host, "tickets:latest")
    (create,) = double.creates
    gguf = Path(f16.directory) / "model.gguf"
    assert create["files"] == {"model.gguf": "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()}
    assert "from" not in create
    assert create["template"].startswith("{{- range .Messages }}<|im_start|>")
    # The system prompt every training ticket opens with, not SmolLM2's own.
    assert create["system"] == json.loads(ticket_lines(1)[0])["messages"][0]["content"]
    assert set(create["parameters"]["stop"]) >= {"<|im_end|>"}
    # Answers go through Ollama while it answers ...
    assert {p.backend for p in chat(services, f16.name, "hi", 8)} == {"ollama"}


def test_answers_fall_back_to_llama_cpp_when_ollama_is_gone(services, q8):
    with serve() as double:
        services.client.serve.PushModel(
            pb.PushModelRequest(model=q8.name, options={"host": double.host, "name": "tickets-q8"})
        )
        assert {p.backend for p in chat(services, q8.name, "hi", 8)} == {"ollama"}
    # The server is gone: the GGUF answers in-process.
    assert {p.backend for p in chat(services, q8.name, "hi", 8)} == {"llama.cpp"}


def test_a_failed_push_is_a_clear_status_and_leaves_the_export_intact(services, f16, double):
    gguf = Path(f16.directory) / "model.gguf"
    before = gguf.stat().st_size, gguf.stat().st_mtime_ns

    def pushes() -> int:
        models = services.client.serve.ListModels(pb.ListModelsRequest()).models
        return len(next(m for m in models if m.name == f16.name).pushes)

    pushed_before = pushes()
    with pytest.raises(grpc.RpcError) as caught:
        services.client.serve.PushModel(
            pb.PushModelRequest(model=f16.name, options={"host": double.host, "name": "Bad Name!"})
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_error(caught.value)[1][0][0] == "options.name"
    with pytest.raises(grpc.RpcError) as caught:
        services.client.serve.PushModel(
            pb.PushModelRequest(model=f16.name, options={"host": "http://127.0.0.1:9", "name": "tickets"})
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:9" in caught.value.details()
    assert (gguf.stat().st_size, gguf.stat().st_mtime_ns) == before
    assert pushes() == pushed_before


def test_register_and_chat_with_a_real_ollama(services, f16):
    """Against a real Ollama: `ollama serve`, then
    OLLAMA_HOST=http://127.0.0.1:11434 .venv/bin/python -m pytest tests/test_gguf.py -k real_ollama"""
    from tunewright.core import ollama

    host = os.environ.get("OLLAMA_HOST", "")
    if not host or not ollama.reachable(host if "://" in host else f"http://{host}", timeout=2.0):
        pytest.skip(
            f"no Ollama answers at OLLAMA_HOST={host or '(unset)'}; start `ollama serve` and run "
            "OLLAMA_HOST=http://127.0.0.1:11434 .venv/bin/python -m pytest tests/test_gguf.py -k real_ollama"
        )
    name = f"tunewright-test-{uuid.uuid4().hex[:8]}"
    response = services.client.serve.PushModel(
        pb.PushModelRequest(model=f16.name, options={"host": host, "name": name})
    )
    try:
        assert response.model.pushes[-1].remote_name == f"{name}:latest"
        reply = chat(services, f16.name, "Our API is down for every customer.")
        assert {p.backend for p in reply} == {"ollama"}
        assert reply[-1].finish_reason == pb.FINISH_REASON_STOP
    finally:
        import ollama as client

        client.Client(host if "://" in host else f"http://{host}").delete(f"{name}:latest")
