"""gRPC mapping of the serve service."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc

from tunewright.core.errors import FieldViolation, InvalidArgument
from tunewright.core.ids import parse_name
from tunewright.core.metrics import Metrics
from tunewright.core.timeutil import to_timestamp
from tunewright.parameters import ParameterSpec, default_json, parameter_specs
from tunewright.serve.answering import Answerer
from tunewright.serve.answers import DEFAULT_MAX_NEW_TOKENS, LENGTH, MAX_NEW_TOKENS, STOP, Options, Piece
from tunewright.serve.export import Exporter
from tunewright.serve.store import ModelRecord, ModelStore
from tunewright.serve.v1 import serve_service_pb2 as pb
from tunewright.serve.v1 import serve_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ServeService"].full_name
ROLES = ("system", "user", "assistant")
_FINISH = {STOP: pb.FINISH_REASON_STOP, LENGTH: pb.FINISH_REASON_LENGTH, None: pb.FINISH_REASON_UNSPECIFIED}


def model_pb(record: ModelRecord) -> pb.Model:
    return pb.Model(
        name=f"models/{record.id}",
        job=record.job,
        base_model=record.base_model,
        method=record.method,
        directory=record.directory,
        files=[pb.ModelFile(path=p, size_bytes=s) for p, s in record.files],
        modelfile=record.modelfile,
        create_time=to_timestamp(record.create_time),
        format=record.format,
        verification=(
            pb.Verification(max_kl_divergence=record.max_divergence, tolerance=record.tolerance)
            if record.max_divergence is not None
            else None
        ),
        template_family=(record.chat_template.family or "") if record.chat_template else "",
        notes=record.notes,
        system_prompt=record.system_prompt
        or ((record.chat_template.default_system or "") if record.chat_template else ""),
        pushes=[
            pb.Push(
                target=p.target,
                address=p.address,
                remote_name=p.remote_name,
                create_time=to_timestamp(p.create_time),
            )
            for p in record.pushes
        ],
    )


def option_pb(spec: ParameterSpec) -> pb.ExportOption:
    default = spec.default if isinstance(spec.default, str) else default_json(spec)
    return pb.ExportOption(
        name=spec.name, type=spec.type, description=spec.description, default_value=default, choices=spec.choices
    )


def options_from_pb(options: pb.GenerationOptions) -> Options:
    violations = []
    if not 0 <= options.max_new_tokens <= MAX_NEW_TOKENS:
        violations.append(FieldViolation("options.max_new_tokens", f"must be between 0 (default) and {MAX_NEW_TOKENS}"))
    if options.temperature < 0:
        violations.append(FieldViolation("options.temperature", "must not be negative (0 is greedy)"))
    if not 0 <= options.top_p <= 1:
        violations.append(FieldViolation("options.top_p", "must be between 0 and 1"))
    if violations:
        raise InvalidArgument(
            "; ".join(f"{v.field} {v.description}" for v in violations),
            reason="INVALID_GENERATION_OPTIONS",
            violations=violations,
        )
    return Options(
        options.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, options.temperature, options.top_p or 1.0, options.seed
    )


class ServeServicer(pb_grpc.ServeServiceServicer):
    def __init__(self, store: ModelStore, exporter: Exporter, answerer: Answerer, metrics: Metrics) -> None:
        self.store = store
        self.exporter = exporter
        self.answerer = answerer
        self.metrics = metrics

    def _measured(self, backend: str, pieces: Iterator[Piece]) -> Iterator[Piece]:
        """Passes the pieces on, counting the tokens and the rate after the first piece."""
        first = last = None
        tokens = 0
        for piece in pieces:
            last = time.monotonic()
            first = first or last
            tokens = piece.token_count
            yield piece
        self.metrics.generated_tokens.labels(backend).inc(tokens)
        if tokens > 1 and last > first:
            self.metrics.generation_tokens_per_second.labels(backend).observe((tokens - 1) / (last - first))

    def _record(self, name: str) -> ModelRecord:
        return self.store.get(parse_name(name, "models", field="model"))

    def ExportModel(self, request, context):
        try:
            record = self.exporter.export(
                request.request_id,
                request.job,
                request.model_id,
                request.format,
                dict(request.options),
                request.system_prompt if request.HasField("system_prompt") else None,
            )
        except Exception:
            self.metrics.exports.labels(request.format or "default", "error").inc()
            raise
        self.metrics.exports.labels(record.format, "ok").inc()
        return pb.ExportModelResponse(model=model_pb(record))

    def ListExportFormats(self, request, context):
        return pb.ListExportFormatsResponse(
            formats=[
                pb.ExportFormat(
                    name=f.name,
                    description=f.description,
                    options=[option_pb(s) for s in parameter_specs(f.config_class)],
                )
                for f in self.exporter.formats.values()
            ],
            targets=[
                pb.PushTarget(
                    name=t.name,
                    description=t.description,
                    options=[option_pb(s) for s in parameter_specs(t.config_class)],
                    formats=t.formats,
                )
                for t in self.exporter.targets.values()
            ],
        )

    def PushModel(self, request, context):
        record, status = self.exporter.push(request.model, request.target, dict(request.options))
        return pb.PushModelResponse(model=model_pb(record), status=status)

    def ListModels(self, request, context):
        records, token = self.store.list(request.page_size, request.page_token)
        return pb.ListModelsResponse(models=[model_pb(r) for r in records], next_page_token=token)

    def Generate(self, request, context):
        record = self._record(request.model)
        if not request.prompt:
            raise InvalidArgument(
                "prompt is empty", reason="EMPTY_PROMPT", violations=[FieldViolation("prompt", "required")]
            )
        backend, pieces = self.answerer.generate(record, request.prompt, options_from_pb(request.options))
        for piece in self._measured(backend, pieces):
            yield pb.GenerateResponse(
                text=piece.text,
                finish_reason=_FINISH[piece.finish_reason],
                token_count=piece.token_count,
                backend=backend,
            )

    def Chat(self, request, context):
        record = self._record(request.model)
        violations = [
            FieldViolation(f"messages[{i}].role", f"{m.role!r} is not one of {', '.join(ROLES)}")
            for i, m in enumerate(request.messages)
            if m.role not in ROLES
        ]
        if not request.messages:
            violations.append(FieldViolation("messages", "at least one message is required"))
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                reason="INVALID_MESSAGES",
                violations=violations,
            )
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        backend, pieces = self.answerer.chat(record, messages, options_from_pb(request.options))
        for piece in self._measured(backend, pieces):
            yield pb.ChatResponse(
                text=piece.text,
                finish_reason=_FINISH[piece.finish_reason],
                token_count=piece.token_count,
                backend=backend,
            )


def register(servicer: ServeServicer):
    def add(server: grpc.Server) -> None:
        pb_grpc.add_ServeServiceServicer_to_server(servicer, server)

    return add
