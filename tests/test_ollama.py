"""Registering a GGUF with Ollama and answering through it, with the real ``ollama`` client
over real sockets, against the protocol double in ollama_double.py. The test against a real
Ollama, with a real exported GGUF, is in test_gguf.py."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import httpx
import ollama
import pytest
from ollama_double import OllamaDouble

from tunewright.core import ollama as ollama_export
from tunewright.core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tunewright.core.generation import LENGTH, STOP, Options

# Ollama's own ChatML template (test data: what the exporter derives is tested elsewhere).
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
STOPS = ["<|im_end|>", "<|im_start|>"]
SYSTEM = "You are a support assistant."


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    # The double does not read GGUF; any bytes with the magic will do.
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


def register(host: str, gguf: Path, name: str = "support-bot", **overrides):
    arguments = dict(template=CHATML_TEMPLATE, system=SYSTEM, stops=STOPS, num_ctx=4096, quantize=None)
    arguments.update(overrides)
    return ollama_export.register(host, name, gguf, **arguments)


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def snapshot(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_register_uploads_the_gguf_once_and_creates_the_model_from_it(double: OllamaDouble, gguf: Path):
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()

    registered = register(double.host, gguf)

    assert registered.model == "support-bot:latest"
    assert registered.digest == digest
    assert registered.statuses[0] == "parsing GGUF" and registered.statuses[-1] == "success"
    assert double.uploads == [digest]
    [create] = double.creates
    assert create["files"] == {"model.gguf": digest}
    assert "from" not in create
    assert create["template"] == CHATML_TEMPLATE
    assert create["system"] == SYSTEM
    assert create["parameters"] == {"stop": STOPS, "num_ctx": 4096}
    assert "quantize" not in create
    assert create["stream"] is True
    # What Ollama kept, read back through the client as a user would.
    shown = ollama.Client(double.host).show("support-bot")
    assert shown.template == CHATML_TEMPLATE
    assert shown.parameters.splitlines()[0].split() == ["stop", '"<|im_end|>"']


def test_quantize_is_passed_through_and_absent_fields_are_left_out(double: OllamaDouble, gguf: Path):
    registered = register(double.host, gguf, template=None, system=None, stops=[], num_ctx=None, quantize="q8_0")

    [create] = double.creates
    assert create["quantize"] == "q8_0"
    assert not {"template", "system", "parameters", "from"} & create.keys()
    assert "quantizing F16 model to Q8_0" in registered.statuses


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("support-bot", "support-bot:latest"),
        ("me/support-bot:v1", "me/support-bot:v1"),
        ("_bot.v2", "_bot.v2:latest"),
        ("localhost:5000/me/bot:v2", "localhost:5000/me/bot:v2"),
        ("registry.ollama.ai/library/bot", "bot:latest"),
    ],
)
def test_registered_model_is_named_as_ollama_lists_it(double: OllamaDouble, gguf: Path, name: str, shown: str):
    assert register(double.host, gguf, name=name).model == shown


@pytest.mark.parametrize(
    "name",
    ["", "-bot", "bot:", "a" * 81, "bot:" + "t" * 81, "my.team/bot", "a/b/c/d", "support bot", "bot:v1:v2", "ns//bot"],
)
def test_a_bad_name_is_refused_before_any_request(double: OllamaDouble, gguf: Path, name: str):
    with pytest.raises(InvalidArgument) as caught:
        register(double.host, gguf, name=name)

    assert caught.value.reason == "OLLAMA_INVALID_NAME"
    assert [v.field for v in caught.value.violations] == ["options.name"]
    assert double.requests == []


def test_an_unknown_quantize_type_is_refused_before_any_request(double: OllamaDouble, gguf: Path):
    with pytest.raises(InvalidArgument) as caught:
        register(double.host, gguf, quantize="q4_0")

    assert caught.value.reason == "OLLAMA_INVALID_QUANTIZE"
    assert [v.field for v in caught.value.violations] == ["options.quantize"]
    assert "q4_K_M" in caught.value.message
    assert double.requests == []


def test_a_missing_gguf_is_refused_before_any_request(double: OllamaDouble, tmp_path: Path):
    with pytest.raises(FailedPrecondition) as caught:
        register(double.host, tmp_path / "absent.gguf")

    assert caught.value.reason == "GGUF_MISSING"
    assert double.requests == []


def test_an_unreachable_host_is_unavailable_and_named(gguf: Path):
    host = closed_port()

    with pytest.raises(Unavailable) as caught:
        register(host, gguf)

    assert caught.value.reason == "OLLAMA_UNREACHABLE"
    assert host in caught.value.message and "ollama serve" in caught.value.message
    assert ollama_export.reachable(host, timeout=2.0) is False


def test_reachable_answers_for_a_running_server(double: OllamaDouble):
    assert ollama_export.reachable(double.host, timeout=2.0) is True


def test_a_corrupted_upload_is_retryable_and_leaves_the_gguf_intact(double: OllamaDouble, gguf: Path):
    before = snapshot(gguf)
    double.corrupt_uploads = 1

    with pytest.raises(Unavailable) as caught:
        register(double.host, gguf)

    assert caught.value.reason == "OLLAMA_BLOB_CORRUPTED"
    assert "digest mismatch" in caught.value.message
    assert double.creates == []
    assert snapshot(gguf) == before
    registered = register(double.host, gguf)
    assert registered.statuses[-1] == "success"
    assert double.uploads == [registered.digest, registered.digest]


def test_a_name_the_server_refuses_names_the_field(double: OllamaDouble, gguf: Path):
    double.refused_names.add("support-bot")

    with pytest.raises(InvalidArgument) as caught:
        register(double.host, gguf)

    assert caught.value.reason == "OLLAMA_REFUSED_NAME"
    assert [v.field for v in caught.value.violations] == ["options.name"]
    assert "invalid model name" in caught.value.message


def test_a_server_that_will_not_quantize_a_gguf_names_the_field(double: OllamaDouble, gguf: Path):
    double.quantizes_gguf = False

    with pytest.raises(InvalidArgument) as caught:
        register(double.host, gguf, quantize="q4_K_M")

    assert caught.value.reason == "OLLAMA_REFUSED_QUANTIZE"
    assert [v.field for v in caught.value.violations] == ["options.quantize"]


def test_an_error_line_in_the_create_stream_fails_the_registration_and_a_retry_succeeds(
    double: OllamaDouble, gguf: Path
):
    before = snapshot(gguf)
    double.create_errors.append("unsupported architecture")

    with pytest.raises(FailedPrecondition) as caught:
        register(double.host, gguf)

    assert caught.value.reason == "OLLAMA_CREATE_FAILED"
    assert "unsupported architecture" in caught.value.message
    assert double.models == {}
    assert snapshot(gguf) == before
    assert register(double.host, gguf).model == "support-bot:latest"


def test_a_server_that_is_not_ollama_is_an_ollama_error(double: OllamaDouble, gguf: Path):
    # Every path under this prefix is a route the server does not have: HTTP 404.
    with pytest.raises(Unavailable) as caught:
        register(f"{double.host}/not-ollama", gguf)

    assert caught.value.reason == "OLLAMA_ERROR"
    assert "HTTP 404" in caught.value.message


def test_chat_streams_pieces_with_ollama_options(double: OllamaDouble, gguf: Path):
    model = register(double.host, gguf).model
    messages = [{"role": "user", "content": "Hi"}]

    pieces = list(ollama_export.chat(double.host, model, messages, Options(max_new_tokens=64)))

    assert "".join(p.text for p in pieces) == "Hello, world!"
    assert [p.finish_reason for p in pieces] == [None, None, None, None, STOP]
    assert [p.token_count for p in pieces] == [1, 2, 3, 4, 4]
    [answer] = double.answers
    assert answer["messages"] == messages
    assert answer["options"] == {"num_predict": 64, "temperature": 0.0, "top_p": 1.0, "seed": 0}


def test_generate_stops_at_max_new_tokens_with_length(double: OllamaDouble, gguf: Path):
    model = register(double.host, gguf).model

    pieces = list(ollama_export.generate(double.host, model, "Say hello", Options(max_new_tokens=2, temperature=0.7)))

    assert "".join(p.text for p in pieces) == "Hello,"
    assert (pieces[-1].finish_reason, pieces[-1].token_count) == (LENGTH, 2)
    assert double.answers[0]["prompt"] == "Say hello"
    assert double.answers[0]["options"]["temperature"] == 0.7


def test_chat_with_an_unknown_model_is_not_found(double: OllamaDouble):
    with pytest.raises(NotFound) as caught:
        list(ollama_export.chat(double.host, "nobody:latest", [{"role": "user", "content": "Hi"}], Options()))

    assert caught.value.reason == "OLLAMA_MODEL_NOT_FOUND"


def test_an_error_line_while_answering_is_unavailable(double: OllamaDouble, gguf: Path):
    model = register(double.host, gguf).model
    double.answer_errors.append("llama runner process has terminated")

    pieces = []
    with pytest.raises(Unavailable) as caught:
        pieces.extend(ollama_export.generate(double.host, model, "Say hello", Options()))

    assert caught.value.reason == "OLLAMA_ERROR"
    assert "llama runner process has terminated" in caught.value.message
    assert [p.text for p in pieces] == ["Hello"]


def test_chat_with_no_server_is_unavailable():
    with pytest.raises(Unavailable) as caught:
        list(ollama_export.chat(closed_port(), "bot:latest", [{"role": "user", "content": "Hi"}], Options()))

    assert caught.value.reason == "OLLAMA_UNREACHABLE"


def test_the_double_answers_as_ollama_documents(double: OllamaDouble, gguf: Path):
    client = ollama.Client(double.host)
    digest = client.create_blob(gguf)
    blobs = f"{double.host}/api/blobs"
    assert httpx.head(f"{blobs}/{digest}").status_code == 200
    assert httpx.head(f"{blobs}/sha256:{'0' * 64}").status_code == 404
    assert httpx.head(f"{blobs}/sha256:short").status_code == 400
    assert httpx.get(f"{double.host}/api/version").json()["version"]
    # Not streamed, create answers with one object.
    assert client.create("bot", files={"model.gguf": digest}, stream=False).status == "success"
    assert [m.model for m in client.list().models] == ["bot:latest"]
    with pytest.raises(ollama.ResponseError) as both:
        client.create("bot", from_="bot", files={"model.gguf": digest})
    assert both.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as bare_stop:
        client.create("bot", files={"model.gguf": digest}, parameters={"stop": "<|im_end|>"})
    assert bare_stop.value.status_code == 400
    assert client.delete("bot").status == "success"
    with pytest.raises(ollama.ResponseError) as gone:
        client.show("bot")
    assert gone.value.status_code == 404
