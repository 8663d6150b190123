"""A small Python client for the three services, used by the demo and the tests."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from tunewright.data.v1 import data_service_pb2 as data_pb
from tunewright.data.v1 import data_service_pb2_grpc as data_grpc
from tunewright.serve.v1 import serve_service_pb2 as serve_pb
from tunewright.serve.v1 import serve_service_pb2_grpc as serve_grpc
from tunewright.trainer.v1 import trainer_service_pb2 as trainer_pb
from tunewright.trainer.v1 import trainer_service_pb2_grpc as trainer_grpc

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Answer:
    text: str
    # serve_pb.FinishReason: FINISH_REASON_STOP or FINISH_REASON_LENGTH.
    finish_reason: int
    # "ollama", "llama.cpp" or "transformers".
    backend: str


class Client:
    def __init__(self, data: str, trainer: str, serve: str) -> None:
        self._channels = [grpc.insecure_channel(a) for a in (data, trainer, serve)]
        self.data = data_grpc.DataServiceStub(self._channels[0])
        self.trainer = trainer_grpc.TrainerServiceStub(self._channels[1])
        self.serve = serve_grpc.ServeServiceStub(self._channels[2])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def upload(self, path: Path, request_id: str = "") -> data_pb.File:
        content = Path(path).read_bytes()
        return self.upload_bytes(Path(path).name, content, request_id)

    def upload_bytes(
        self,
        filename: str,
        content: bytes,
        request_id: str = "",
        size_bytes: int | None = None,
        sha256: str | None = None,
    ) -> data_pb.File:
        header = data_pb.UploadFileHeader(
            request_id=request_id or uuid.uuid4().hex,
            filename=filename,
            size_bytes=len(content) if size_bytes is None else size_bytes,
            sha256=hashlib.sha256(content).hexdigest() if sha256 is None else sha256,
        )

        def messages() -> Iterator[data_pb.UploadFileRequest]:
            yield data_pb.UploadFileRequest(header=header)
            for start in range(0, len(content), CHUNK_BYTES):
                yield data_pb.UploadFileRequest(chunk=content[start : start + CHUNK_BYTES])

        return self.data.UploadFile(messages(), timeout=300).file

    def create_dataset(self, file: str, **kwargs) -> data_pb.Dataset:
        request = data_pb.CreateDatasetRequest(request_id=uuid.uuid4().hex, file=file, **kwargs)
        return self.data.CreateDataset(request, timeout=300).dataset

    def read_artifact_file(self, job: str, path: str) -> bytes:
        chunks = [
            m.chunk
            for m in self.trainer.ReadArtifact(trainer_pb.ReadArtifactRequest(name=job, path=path), timeout=300)
            if m.WhichOneof("content") == "chunk"
        ]
        return b"".join(chunks)

    def ask(self, model: str, messages: list[dict[str, str]], max_new_tokens: int = 64) -> Answer:
        """The whole answer to a conversation, greedy, with how it ended and who answered."""
        pieces = list(
            self.serve.Chat(
                serve_pb.ChatRequest(
                    model=model,
                    messages=[serve_pb.ChatMessage(**m) for m in messages],
                    options=serve_pb.GenerationOptions(max_new_tokens=max_new_tokens),
                ),
                timeout=600,
            )
        )
        return Answer("".join(p.text for p in pieces), pieces[-1].finish_reason, pieces[-1].backend)

    def chat_text(self, model: str, messages: list[dict[str, str]], max_new_tokens: int = 64) -> tuple[str, int]:
        answer = self.ask(model, messages, max_new_tokens)
        return answer.text, answer.finish_reason
