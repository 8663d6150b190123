"""A stand-in Ollama server for tests: a stdlib HTTP server on a loopback port that speaks
the part of Ollama's API tunewright uses, so the real ``ollama`` client can be tested over
real sockets where no Ollama can be installed.

It follows Ollama's server (server/routes.go, server/create.go, types/model/name.go) for
status codes, error texts and the shapes of answers: an error found before a stream starts
is an HTTP status with ``{"error": ...}``; one found after is a last ``{"error": ...}`` line
on the HTTP 200 stream. Where Ollama quietly accepts what later breaks, the double refuses
with HTTP 400 so tests catch it: ``from`` sent together with ``files`` (Ollama builds from
``from`` and ignores the upload) and a ``parameters.stop`` that is not a list.

It records what it received (``requests``, ``uploads``, ``creates``, ``answers``) and has
knobs to inject failures (``corrupt_uploads``, ``create_errors``, ``answer_errors``,
``refused_names``, ``quantizes_gguf``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.9.0"
QUANTIZE_TYPES = {"q4_K_M", "q4_K_S", "q8_0"}
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_CREATED_AT = "2025-01-01T00:00:00Z"


def listed(name: str) -> str | None:
    """How Ollama lists a model called ``name`` (None for a name Ollama refuses), after
    types/model/name.go: defaults filled in, then the default host and namespace dropped."""
    rest, tag = name, "latest"
    if name.rfind(":") > name.rfind("/"):
        rest, tag = name.rsplit(":", 1)
    parts = rest.split("/")
    if len(parts) > 3:
        return None
    host, namespace, model = ["registry.ollama.ai", "library"][: 3 - len(parts)] + parts
    if not (_HOST.fullmatch(host) and _NAMESPACE.fullmatch(namespace) and _PART.fullmatch(model)):
        return None
    if not _PART.fullmatch(tag):
        return None
    if host != "registry.ollama.ai":
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace != "library":
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


@dataclass
class StoredModel:
    name: str
    files: dict[str, str]
    template: str | None
    system: str | None
    parameters: dict[str, Any]
    quantize: str | None


@dataclass
class OllamaDouble:
    """The double's state, its records and its failure knobs."""

    host: str = ""
    blobs: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, StoredModel] = field(default_factory=dict)
    # Records: every (method, path); the digest of every blob upload; every create body;
    # every chat and generate body.
    requests: list[tuple[str, str]] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    creates: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    # Knobs. The next ``corrupt_uploads`` blob uploads arrive with a byte changed (digest
    # mismatch); each queued create error / answer error fails one stream after it started.
    corrupt_uploads: int = 0
    create_errors: list[str] = field(default_factory=list)
    answer_errors: list[str] = field(default_factory=list)
    # Names refused as Ollama refuses an invalid name, though they pass its rules here.
    refused_names: set[str] = field(default_factory=set)
    # Older Ollama quantizes an F16 GGUF at create; recent releases refuse with HTTP 400.
    quantizes_gguf: bool = True
    # The tokens every answer streams, one per line.
    reply: tuple[str, ...] = ("Hello", ",", " world", "!")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def model(self, name: str) -> StoredModel | None:
        key = listed(name)
        return self.models.get(key.casefold()) if key else None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 as Ollama speaks it: keep-alive, streams sent chunked.
    protocol_version = "HTTP/1.1"
    double: OllamaDouble

    def log_message(self, *args: Any) -> None:
        # Quiet: pytest shows what a failing test needs.
        pass

    def do_HEAD(self) -> None:
        self._dispatch({"/api/blobs/": self._head_blob})

    def do_GET(self) -> None:
        self._dispatch({"/api/tags": self._tags, "/api/version": self._version})

    def do_POST(self) -> None:
        self._dispatch(
            {
                "/api/blobs/": self._post_blob,
                "/api/create": self._create,
                "/api/show": self._show,
                "/api/chat": self._chat,
                "/api/generate": self._generate,
            }
        )

    def do_DELETE(self) -> None:
        self._dispatch({"/api/delete": self._delete})

    def _dispatch(self, routes: dict[str, Any]) -> None:
        body = self._body()
        with self.double.lock:
            self.double.requests.append((self.command, self.path))
        for prefix, handle in routes.items():
            if self.path == prefix or (prefix.endswith("/") and self.path.startswith(prefix)):
                try:
                    handle(body)
                except _Refused as refused:
                    self._json(refused.status, {"error": refused.message})
                return
        # Gin's answer for a route it does not have.
        self._send(404, b"404 page not found", "text/plain")

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json; charset=utf-8")

    def _stream(self, lines: Iterator[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines:
            data = json.dumps(line).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _request(self, body: bytes) -> dict[str, Any]:
        if not body:
            raise _Refused(400, "missing request body")
        try:
            request = json.loads(body)
        except json.JSONDecodeError as error:
            raise _Refused(400, str(error)) from error
        if not isinstance(request, dict):
            raise _Refused(400, "request body must be a JSON object")
        return request

    def _digest(self) -> str:
        digest = self.path.removeprefix("/api/blobs/")
        if not _DIGEST.fullmatch(digest):
            raise _Refused(400, "invalid digest format")
        return digest.replace("-", ":", 1)

    def _head_blob(self, body: bytes) -> None:
        digest = self._digest()
        if digest not in self.double.blobs:
            raise _Refused(404, f'blob "{digest}" not found')
        self._send(200, b"", "text/plain")

    def _post_blob(self, body: bytes) -> None:
        digest = self._digest()
        double = self.double
        with double.lock:
            double.uploads.append(digest)
            if digest in double.blobs:
                self._send(200, b"", "text/plain")
                return
            if double.corrupt_uploads:
                double.corrupt_uploads -= 1
                body = bytes([body[0] ^ 0xFF]) + body[1:] if body else b"\x00"
            got = "sha256:" + hashlib.sha256(body).hexdigest()
            if got != digest:
                raise _Refused(400, f'digest mismatch, expected "{digest}", got "{got}"')
            double.blobs[digest] = body
        self._send(201, b"", "text/plain")

    def _create(self, body: bytes) -> None:
        request = self._request(body)
        double = self.double
        with double.lock:
            double.creates.append(request)
        name = request.get("model") or request.get("name") or ""
        files: dict[str, str] = request.get("files") or {}
        parameters: dict[str, Any] = request.get("parameters") or {}
        quantize = request.get("quantize")
        for path, digest in files.items():
            if path in ("", ".") or path.startswith("/") or ".." in path.split("/") or any(c in path for c in "\\:"):
                raise _Refused(400, f"file path must be relative: {path}")
            if not _DIGEST.fullmatch(digest or ""):
                raise _Refused(400, f"invalid digest for {path}: invalid digest format")
        shown = listed(name)
        if shown is None or name in double.refused_names:
            raise _Refused(400, "invalid model name")
        if request.get("from") and files:
            raise _Refused(400, "both 'from' and 'files' were sent: Ollama would build from 'from' and ignore 'files'")
        if not request.get("from") and not files:
            raise _Refused(400, "neither 'from' or 'files' was specified")
        for path, digest in files.items():
            if digest not in double.blobs:
                raise _Refused(400, f"blob not found for {path} (digest {digest})")
        if "stop" in parameters and not (
            isinstance(parameters["stop"], list) and all(isinstance(s, str) for s in parameters["stop"])
        ):
            raise _Refused(400, "parameters.stop must be a list of strings")
        if quantize and not double.quantizes_gguf:
            raise _Refused(
                400,
                "create-time quantization is only supported for safetensors imports; quantize GGUF models "
                "with llama.cpp tools before importing",
            )
        if quantize and quantize not in QUANTIZE_TYPES:
            raise _Refused(400, f"unsupported quantization type {quantize}")
        with double.lock:
            failure = double.create_errors.pop(0) if double.create_errors else None

        statuses = ["parsing GGUF"]
        if quantize:
            statuses.append(f"quantizing F16 model to {quantize.upper()}")
        statuses += [f"using existing layer {digest}" for digest in files.values()]
        for layer in (request.get("template"), request.get("system"), parameters or None):
            if layer is not None:
                statuses.append(f"creating new layer sha256:{hashlib.sha256(json.dumps(layer).encode()).hexdigest()}")
        statuses += ["writing manifest", "success"]

        def lines() -> Iterator[dict[str, Any]]:
            yield {"status": statuses[0]}
            if failure is not None:
                yield {"error": failure}
                return
            with double.lock:
                # Like Ollama, a second model of the same name in other case keeps the first's casing.
                existing = double.models.get(shown.casefold())
                double.models[shown.casefold()] = StoredModel(
                    name=existing.name if existing else shown,
                    files=dict(files),
                    template=request.get("template"),
                    system=request.get("system"),
                    parameters=dict(parameters),
                    quantize=quantize,
                )
            for status in statuses[1:]:
                yield {"status": status}

        if request.get("stream", True):
            self._stream(lines())
            return
        last = list(lines())[-1]
        self._json(500 if "error" in last else 200, last)

    def _tags(self, body: bytes) -> None:
        with self.double.lock:
            models = list(self.double.models.values())
        self._json(
            200,
            {
                "models": [
                    {
                        "name": m.name,
                        "model": m.name,
                        "modified_at": _CREATED_AT,
                        "size": sum(len(self.double.blobs[d]) for d in m.files.values()),
                        "digest": hashlib.sha256(m.name.encode()).hexdigest(),
                        "details": _details(m),
                    }
                    for m in models
                ]
            },
        )

    def _version(self, body: bytes) -> None:
        self._json(200, {"version": VERSION})

    def _named(self, request: dict[str, Any], status: int, message: str) -> StoredModel:
        name = request.get("model") or request.get("name") or ""
        with self.double.lock:
            found = self.double.model(name)
        if found is None:
            raise _Refused(status, message.format(name=name))
        return found

    def _show(self, body: bytes) -> None:
        found = self._named(self._request(body), 404, "model '{name}' not found")
        # Ollama shows parameters as "name value" lines, strings quoted, a list one line per item.
        lines = []
        for key, value in found.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}")
        self._json(
            200,
            {
                "modelfile": f"FROM {next(iter(found.files.values()))}\n",
                "template": found.template or "{{ .Prompt }}",
                "system": found.system or "",
                "parameters": "\n".join(lines),
                "details": _details(found),
                "model_info": {"general.architecture": "llama"},
                "modified_at": _CREATED_AT,
            },
        )

    def _delete(self, body: bytes) -> None:
        found = self._named(self._request(body), 404, "model '{name}' not found")
        with self.double.lock:
            del self.double.models[found.name.casefold()]
        self._send(200, b"", "text/plain")

    def _chat(self, body: bytes) -> None:
        self._answer(body, lambda text: {"message": {"role": "assistant", "content": text}})

    def _generate(self, body: bytes) -> None:
        self._answer(body, lambda text: {"response": text})

    def _answer(self, body: bytes, content: Any) -> None:
        request = self._request(body)
        found = self._named(request, 404, 'model "{name}" not found, try pulling it first')
        double = self.double
        with double.lock:
            double.answers.append(request)
            failure = double.answer_errors.pop(0) if double.answer_errors else None
        limit = (request.get("options") or {}).get("num_predict", -1)
        # A negative num_predict means no limit, as in Ollama.
        tokens = list(double.reply if limit < 0 else double.reply[:limit])
        reason = "length" if len(tokens) < len(double.reply) else "stop"
        head = {"model": found.name, "created_at": _CREATED_AT}
        final = {
            **head,
            **content(""),
            "done": True,
            "done_reason": reason,
            "total_duration": 1000,
            "prompt_eval_count": 3,
            "eval_count": len(tokens),
        }

        def lines() -> Iterator[dict[str, Any]]:
            for index, token in enumerate(tokens):
                yield {**head, **content(token), "done": False}
                if failure is not None and index == 0:
                    yield {"error": failure}
                    return
            yield final

        if request.get("stream", True):
            self._stream(lines())
            return
        self._json(200, {**final, **content("".join(tokens))})


def _details(model: StoredModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1M",
        "quantization_level": (model.quantize or "F16").upper(),
    }


@contextmanager
def serve(double: OllamaDouble | None = None) -> Iterator[OllamaDouble]:
    """Runs the double on 127.0.0.1 on a free port; ``double.host`` is its address."""
    double = double or OllamaDouble()
    handler = type("Handler", (_Handler,), {"double": double})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ollama-double", daemon=True)
    thread.start()
    double.host = f"http://127.0.0.1:{server.server_port}"
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
