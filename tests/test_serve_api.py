"""Export and generation through the serve service, with a job trained on the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from safetensors import safe_open

from conftest import rich_error, run_job, ticket_lines
from tunewright.core.basemodel import load_model
from tunewright.plugins.lora.method import LoraMethod
from tunewright.serve.v1 import serve_service_pb2 as pb
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb


@pytest.fixture(scope="module")
def trained_job(services, tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-data") / "d.jsonl"
    path.write_text("\n".join(ticket_lines(24)) + "\n")
    dataset = services.client.create_dataset(services.client.upload(path).name).name
    job = run_job(services.client, tiny_model, dataset, epochs=1, evaluate=False)
    assert job.state == trainer_pb.JOB_STATE_SUCCEEDED, job.error
    return job.name


@pytest.fixture(scope="module")
def exported(services, trained_job):
    return services.client.serve.ExportModel(pb.ExportModelRequest(request_id="export-1", job=trained_job)).model


def test_export_writes_merged_safetensors_tokenizer_and_modelfile(services, exported, trained_job, tiny_model):
    assert exported.name == "models/" + trained_job.split("/")[1] and exported.job == trained_job
    folder = Path(exported.directory)
    names = {f.path for f in exported.files}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "Modelfile"} <= names
    with safe_open(folder / "model.safetensors", "pt") as merged:
        keys = list(merged.keys())
    assert keys and not any("lora" in k for k in keys)  # merged: no adapter weights left
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile == exported.modelfile
    assert modelfile.startswith("FROM .\n") and "TEMPLATE" in modelfile
    # The tiny model's trained tokenizer is unknown to llama.cpp's converter: no GGUF, so
    # the default falls back to the safetensors folder.
    assert exported.format == "safetensors"
    # The merged model was checked against the trained one before it was stored.
    assert exported.verification.tolerance == pytest.approx(1e-4)
    assert 0 <= exported.verification.max_kl_divergence <= exported.verification.tolerance
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    # Every training ticket opens with the same instruction: it replaces the template's
    # default ("You are a tiny test model.").
    instruction = json.loads(ticket_lines(1)[0])["messages"][0]["content"]
    assert f'SYSTEM """{instruction}"""' in modelfile and exported.system_prompt == instruction
    again = services.client.serve.ExportModel(pb.ExportModelRequest(request_id="export-1", job=trained_job)).model
    assert again.name == exported.name
    listed = [m.name for m in services.client.serve.ListModels(pb.ListModelsRequest()).models]
    assert listed.count(exported.name) == 1


def test_merged_weights_differ_from_the_base(exported, tiny_model):
    import torch

    with (
        safe_open(Path(exported.directory) / "model.safetensors", "pt") as merged,
        safe_open(tiny_model / "model.safetensors", "pt") as base,
    ):
        name = next(k for k in base.keys() if k.endswith("self_attn.q_proj.weight"))  # noqa: SIM118 - safe_open is not iterable
        assert not torch.equal(merged.get_tensor(name), base.get_tensor(name))


def test_generate_and_chat_stream_tokens(services, exported):
    serve = services.client.serve
    options = pb.GenerationOptions(max_new_tokens=6)
    pieces = list(serve.Generate(pb.GenerateRequest(model=exported.name, prompt="Hello", options=options)))
    assert {p.backend for p in pieces} == {"transformers"}  # a safetensors export, pushed nowhere
    assert pieces and pieces[-1].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert all(p.finish_reason == pb.FINISH_REASON_UNSPECIFIED for p in pieces[:-1])
    assert pieces[-1].token_count <= 6
    chat = list(
        serve.Chat(
            pb.ChatRequest(
                model=exported.name, options=options, messages=[pb.ChatMessage(role="user", content="Our API is down")]
            )
        )
    )
    assert chat[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    sampled = pb.GenerationOptions(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3)
    first = "".join(
        p.text for p in serve.Generate(pb.GenerateRequest(model=exported.name, prompt="Hi", options=sampled))
    )
    second = "".join(
        p.text for p in serve.Generate(pb.GenerateRequest(model=exported.name, prompt="Hi", options=sampled))
    )
    assert first == second  # same seed, same text


def test_serve_errors(services, exported):
    serve = services.client.serve
    with pytest.raises(grpc.RpcError) as caught:
        list(serve.Chat(pb.ChatRequest(model=exported.name, messages=[pb.ChatMessage(role="robot", content="x")])))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "messages[0].role" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        list(serve.Generate(pb.GenerateRequest(model="models/nope", prompt="x")))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        serve.ExportModel(pb.ExportModelRequest(job="jobs/nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        serve.ExportModel(pb.ExportModelRequest(job=exported.job, model_id="Bad Name!"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        serve.ExportModel(pb.ExportModelRequest(job=exported.job, model_id="other", format="onnx"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_error(caught.value) == (
        "UNKNOWN_EXPORT_FORMAT",
        [("format", "not one of: gguf, safetensors, attached")],
    )
    with pytest.raises(grpc.RpcError) as caught:
        serve.ExportModel(pb.ExportModelRequest(job=exported.job, model_id="other", format="gguf"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reason, _ = rich_error(caught.value)
    assert reason == "UNSUPPORTED_TOKENIZER" and "format 'safetensors'" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        serve.ExportModel(
            pb.ExportModelRequest(job=exported.job, model_id="other", format="safetensors", options={"type": "q8_0"})
        )
    assert rich_error(caught.value)[0] == "INVALID_OPTION"
    assert "other" not in [m.name.split("/")[1] for m in serve.ListModels(pb.ListModelsRequest()).models]
    with pytest.raises(grpc.RpcError) as caught:
        serve.PushModel(pb.PushModelRequest(model=exported.name, target="ollama"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_error(caught.value)[0] == "FORMAT_NOT_ACCEPTED" and "'gguf'" in caught.value.details()


def test_list_export_formats_describes_formats_targets_and_options(services):
    listed = services.client.serve.ListExportFormats(pb.ListExportFormatsRequest())
    formats = {f.name: f for f in listed.formats}
    assert set(formats) == {"gguf", "safetensors"}
    gguf_type = next(o for o in formats["gguf"].options if o.name == "type")
    assert gguf_type.default_value == "f16" and list(gguf_type.choices) == ["f16", "q8_0", "bf16"]
    (ollama,) = listed.targets
    assert ollama.name == "ollama" and list(ollama.formats) == ["gguf"]
    assert {o.name for o in ollama.options} == {"host", "name", "quantize", "num_ctx"}


def test_an_adapter_can_also_be_served_attached(services, trained_job):
    """The same LoRA job, not merged: the serve service attaches the adapter to the base
    when it answers, and the result is checked against the trained model first."""
    serve = services.client.serve
    model = serve.ExportModel(pb.ExportModelRequest(job=trained_job, model_id="attached", format="attached")).model
    assert model.format == "attached" and not model.modelfile
    assert {f.path for f in model.files} >= {"manifest.json", "adapter/adapter_model.safetensors"}
    assert model.verification.max_kl_divergence <= model.verification.tolerance
    answer = services.client.ask(model.name, [{"role": "user", "content": "hi"}], max_new_tokens=4)
    assert answer.finish_reason in ("stop", "length") and answer.backend == "transformers"


def test_a_broken_export_is_refused_and_nothing_is_stored(services, trained_job, monkeypatch):
    """If a merge does not reproduce the trained model (here: the adapter left out), the
    export fails FAILED_PRECONDITION and no model is recorded."""
    monkeypatch.setattr(LoraMethod, "merge", lambda self, folder, config, directory: load_model(folder))
    serve = services.client.serve
    before = [m.name for m in serve.ListModels(pb.ListModelsRequest(page_size=1000)).models]
    with pytest.raises(grpc.RpcError) as caught:
        serve.ExportModel(pb.ExportModelRequest(job=trained_job, model_id="broken"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_error(caught.value)[0] == "EXPORT_MISMATCH" and "KL" in caught.value.details()
    assert [m.name for m in serve.ListModels(pb.ListModelsRequest(page_size=1000)).models] == before
