"""Registering an exported GGUF with an Ollama server, and answering through one, with the
official ``ollama`` client.

Registration follows Ollama's JSON create API: the client hashes the GGUF and uploads it as
a blob (``POST /api/blobs/sha256:<hex>``), then ``POST /api/create`` names that blob under
``files`` with the template, system prompt and parameters, and its NDJSON status lines are
read until ``success``.

Invariants:

- The model name and the quantize type are checked before anything goes on the network, so
  a request Ollama would refuse fails here with the field named.
- ``from`` is never sent: with both ``from`` and ``files`` Ollama builds from ``from`` and
  ignores the upload. ``parameters.stop`` is always a JSON list (a bare string is accepted
  at create time and breaks at run time). Template and system are left out when None.
- This module never deletes, moves or rewrites the GGUF, so a failed registration can be
  retried as it is.
- Every failure of the client (no server, an HTTP error, an error line in a stream, an
  answer that is not Ollama's protocol) becomes a typed error with an UPPER_SNAKE reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydantic
from ollama import Client, ResponseError

from tunewright.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    TunewrightError,
    Unavailable,
)
from tunewright.core.generation import LENGTH, STOP, Options, Piece

# The key under ``files``: its ``.gguf`` ending is what selects Ollama's GGUF import.
GGUF_FILE = "model.gguf"
# The only types Ollama quantizes to at create time (and only from F16, BF16 or F32 input).
QUANTIZE_TYPES = ("q4_K_M", "q4_K_S", "q8_0")
# Connecting fails fast; reading has no limit, since quantizing a large model can go
# minutes without a status line and an answer streams for as long as the model writes.
TIMEOUT = httpx.Timeout(None, connect=10.0)

# Ollama's model name: [host/][namespace/]model[:tag], each part starting with a letter,
# digit or '_' (types/model/name.go). A namespace may not hold '.'; a host may hold ':port'.
_NAME_PARTS = {
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}
_NAME_RULES = {
    "host": "1-350 letters, digits, '_', '-', '.' or ':'",
    "namespace": "1-80 letters, digits, '_' or '-'",
    "model": "1-80 letters, digits, '_', '-' or '.'",
    "tag": "1-80 letters, digits, '_', '-' or '.'",
}
# What Ollama fills in for missing parts, and leaves out again when it lists a model.
_DEFAULT_HOST, _DEFAULT_NAMESPACE, _DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


@dataclass(frozen=True)
class Registered:
    """A GGUF registered with Ollama."""

    # The name as ``ollama list`` shows it (``support-bot:latest``): the name to chat with.
    model: str
    # The blob holding the GGUF, "sha256:<hex>".
    digest: str
    # Ollama's status lines, in order, ending with "success".
    statuses: tuple[str, ...]


def register(
    host: str,
    name: str,
    gguf: Path,
    template: str | None,
    system: str | None,
    stops: list[str],
    num_ctx: int | None,
    quantize: str | None,
) -> Registered:
    """Uploads ``gguf`` to the Ollama at ``host`` and creates the model ``name`` from it."""
    _check_name(name)
    if quantize is not None and quantize not in QUANTIZE_TYPES:
        raise InvalidArgument(
            f"quantize {quantize!r} is not one Ollama can apply at create time; use one of "
            f"{', '.join(QUANTIZE_TYPES)}, or leave it empty to keep the GGUF's own precision",
            reason="OLLAMA_INVALID_QUANTIZE",
            violations=[FieldViolation("options.quantize", f"not one of: {', '.join(QUANTIZE_TYPES)}")],
        )
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FailedPrecondition(
            f"there is no GGUF at {gguf} to register with Ollama; export the model first", reason="GGUF_MISSING"
        )
    parameters: dict[str, Any] = {}
    if stops:
        parameters["stop"] = list(stops)
    if num_ctx is not None:
        parameters["num_ctx"] = num_ctx
    with _client(host) as client:
        digest = _upload(client, host, gguf)
        statuses = _create(client, host, name, digest, template, system, parameters, quantize)
        model = _confirm_listed(client, host, name)
    return Registered(model=model, digest=digest, statuses=statuses)


def reachable(host: str, timeout: float) -> bool:
    """Whether an Ollama server answers at ``host`` within ``timeout`` seconds."""
    try:
        with Client(host, timeout=timeout) as client:
            client.list()
    except (ConnectionError, ResponseError, httpx.HTTPError, httpx.InvalidURL, ValueError):
        # ValueError covers a malformed host and an answer that is not Ollama's JSON.
        return False
    return True


def chat(host: str, model: str, messages: list[dict[str, str]], options: Options) -> Iterator[Piece]:
    """Streams Ollama's answer to ``messages``; Ollama renders them with the model's template."""
    with _client(host) as client:
        stream = client.chat(model=model, messages=messages, options=_ollama_options(options), stream=True)
        yield from _pieces(stream, host, model, lambda part: part.message.content)


def generate(host: str, model: str, prompt: str, options: Options) -> Iterator[Piece]:
    """Streams Ollama's continuation of ``prompt``."""
    with _client(host) as client:
        stream = client.generate(model=model, prompt=prompt, options=_ollama_options(options), stream=True)
        yield from _pieces(stream, host, model, lambda part: part.response)


def _listed_name(name: str) -> str:
    """``name`` as Ollama lists it: tag filled in, its default host and namespace left out."""
    rest, tag = _split_tag(name)
    segments = rest.split("/")
    host, namespace, model = [_DEFAULT_HOST, _DEFAULT_NAMESPACE][: 3 - len(segments)] + segments
    if host.casefold() != _DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag or _DEFAULT_TAG}"
    if namespace.casefold() != _DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag or _DEFAULT_TAG}"
    return f"{model}:{tag or _DEFAULT_TAG}"


def _split_tag(name: str) -> tuple[str, str | None]:
    # A ':' after the last '/' starts the tag; one before it is a host's port.
    if name.rfind(":") > name.rfind("/"):
        rest, _, tag = name.rpartition(":")
        return rest, tag
    return name, None


def _check_name(name: str) -> None:
    rest, tag = _split_tag(name)
    segments = rest.split("/")
    problem = None
    if len(segments) > 3:
        problem = "has more than host/namespace/model before the tag"
    else:
        kinds = ("host", "namespace", "model")[-len(segments) :]
        parts = [*zip(kinds, segments, strict=True), *([("tag", tag)] if tag is not None else [])]
        for kind, part in parts:
            if not _NAME_PARTS[kind].fullmatch(part):
                problem = (
                    f"has the {kind} {part!r}, which must be {_NAME_RULES[kind]}, starting with a letter, digit or '_'"
                )
                break
    if problem:
        raise InvalidArgument(
            f"the Ollama model name {name!r} {problem}; Ollama names are [host/][namespace/]model[:tag]",
            reason="OLLAMA_INVALID_NAME",
            violations=[FieldViolation("options.name", problem)],
        )


def _client(host: str) -> Client:
    try:
        return Client(host, timeout=TIMEOUT)
    except (ValueError, httpx.InvalidURL) as error:
        raise FailedPrecondition(
            f"the Ollama host {host!r} is not an address ({error}); set it as host[:port] or http(s)://host[:port]",
            reason="OLLAMA_BAD_HOST",
        ) from error


@contextmanager
def _calling(host: str, what: str) -> Iterator[None]:
    """Turns the failures that are not Ollama's own answers into typed errors."""
    try:
        yield
    except (ConnectionError, httpx.TransportError) as error:
        # The client raises the builtin ConnectionError for a refused connection on plain
        # requests, but lets httpx's errors through from streams and for timeouts.
        raise Unavailable(
            f"no Ollama answered at {host} while {what} ({error}); start it (`ollama serve`) or point the "
            "service at the right host, then retry",
            reason="OLLAMA_UNREACHABLE",
            metadata={"host": host},
        ) from error
    except (json.JSONDecodeError, pydantic.ValidationError) as error:
        raise Unavailable(
            f"the server at {host} answered {what} with something that is not Ollama's protocol ({error}); "
            "check that the host is an Ollama server",
            reason="OLLAMA_ERROR",
            metadata={"host": host},
        ) from error


def _http_error(error: ResponseError, host: str, what: str) -> TunewrightError:
    return Unavailable(
        f"Ollama at {host} failed while {what}: HTTP {error.status_code}: {error.error}; check the server's log, "
        "then retry",
        reason="OLLAMA_ERROR",
        metadata={"host": host, "status": str(error.status_code)},
    )


def _upload(client: Client, host: str, gguf: Path) -> str:
    with _calling(host, f"uploading {gguf.name}"):
        try:
            return client.create_blob(gguf)
        except ResponseError as error:
            if error.status_code == 400 and "digest mismatch" in error.error:
                raise Unavailable(
                    f"Ollama at {host} received a copy of {gguf} that does not match its sha256 ({error.error}); "
                    "the local file is unchanged, retry the registration",
                    reason="OLLAMA_BLOB_CORRUPTED",
                    metadata={"host": host},
                ) from error
            raise _http_error(error, host, f"uploading {gguf.name}") from error


def _create(
    client: Client,
    host: str,
    name: str,
    digest: str,
    template: str | None,
    system: str | None,
    parameters: dict[str, Any],
    quantize: str | None,
) -> tuple[str, ...]:
    statuses: list[str] = []
    with _calling(host, f"creating {name}"):
        try:
            progress = client.create(
                model=name,
                files={GGUF_FILE: digest},
                template=template,
                system=system,
                parameters=parameters or None,
                quantize=quantize,
                stream=True,
            )
            statuses.extend(line.status for line in progress if line.status)
        except ResponseError as error:
            raise _create_refused(error, host, name) from error
    if not statuses or statuses[-1] != "success":
        raise Unavailable(
            f"Ollama at {host} stopped creating {name} without reporting success (last status: "
            f"{statuses[-1] if statuses else 'none'}); retry the registration",
            reason="OLLAMA_CREATE_INCOMPLETE",
            metadata={"host": host},
        )
    return tuple(statuses)


def _create_refused(error: ResponseError, host: str, name: str) -> TunewrightError:
    text = error.error
    if error.status_code == -1:
        # An error line after streaming started: Ollama accepted the request, then failed
        # building the model from this GGUF.
        return FailedPrecondition(
            f"Ollama at {host} failed to create {name}: {text}; the GGUF is kept, fix the cause and retry",
            reason="OLLAMA_CREATE_FAILED",
            metadata={"host": host},
        )
    if error.status_code == 400 and "name" in text.lower():
        return InvalidArgument(
            f"Ollama at {host} refused the model name {name!r}: {text}; choose another name",
            reason="OLLAMA_REFUSED_NAME",
            violations=[FieldViolation("options.name", text)],
        )
    if error.status_code == 400 and "quantiz" in text.lower():
        # Recent Ollama releases quantize only safetensors imports and refuse it for a GGUF.
        return InvalidArgument(
            f"Ollama at {host} refused to quantize {name}: {text}; register without quantize",
            reason="OLLAMA_REFUSED_QUANTIZE",
            violations=[FieldViolation("options.quantize", text)],
        )
    if error.status_code == 400:
        return FailedPrecondition(
            f"Ollama at {host} refused to create {name}: {text}", reason="OLLAMA_CREATE_FAILED", metadata={"host": host}
        )
    return _http_error(error, host, f"creating {name}")


def _confirm_listed(client: Client, host: str, name: str) -> str:
    """The created model as Ollama lists it, proving the create took effect."""
    wanted = _listed_name(name).casefold()
    with _calling(host, "listing models"):
        try:
            models = client.list().models
        except ResponseError as error:
            raise _http_error(error, host, "listing models") from error
    for model in models:
        # Ollama matches names without regard to case and keeps an existing model's casing.
        if model.model and model.model.casefold() == wanted:
            return model.model
    raise Unavailable(
        f"Ollama at {host} reported creating {name} but does not list it; retry the registration",
        reason="OLLAMA_CREATE_INCOMPLETE",
        metadata={"host": host},
    )


def _ollama_options(options: Options) -> dict[str, Any]:
    # Temperature 0 is greedy decoding in Ollama as in the embedded backend.
    return {
        "num_predict": options.max_new_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "seed": options.seed,
    }


def _pieces(stream: Iterable[Any], host: str, model: str, text_of: Callable[[Any], str | None]) -> Iterator[Piece]:
    """Pieces from Ollama's stream. Until the last, ``token_count`` counts the chunks (Ollama
    sends about one token each); the last carries Ollama's own ``eval_count``."""
    count = 0
    with _calling(host, f"answering with {model}"):
        try:
            for part in stream:
                text = text_of(part) or ""
                if part.done:
                    tokens = part.eval_count if part.eval_count is not None else count + bool(text)
                    yield Piece(text, tokens, LENGTH if part.done_reason == "length" else STOP)
                    return
                if text:
                    count += 1
                    yield Piece(text, count)
        except ResponseError as error:
            raise _answer_failed(error, host, model) from error
    raise Unavailable(
        f"Ollama at {host} ended the answer of {model} without its final message; retry",
        reason="OLLAMA_STREAM_INCOMPLETE",
        metadata={"host": host},
    )


def _answer_failed(error: ResponseError, host: str, model: str) -> TunewrightError:
    if error.status_code == 404:
        return NotFound(
            f"Ollama at {host} has no model {model}: {error.error}; register the export with Ollama first",
            reason="OLLAMA_MODEL_NOT_FOUND",
            metadata={"host": host},
        )
    if error.status_code == 400:
        return FailedPrecondition(
            f"Ollama at {host} refused to answer with {model}: {error.error}",
            reason="OLLAMA_REFUSED",
            metadata={"host": host},
        )
    if error.status_code == -1:
        return Unavailable(
            f"Ollama at {host} failed while answering with {model}: {error.error}; retry",
            reason="OLLAMA_ERROR",
            metadata={"host": host},
        )
    return _http_error(error, host, f"answering with {model}")
