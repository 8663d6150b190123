"""What every tunewright gRPC server has: error mapping, request logging, health,
reflection, limits and a graceful stop on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from tunewright.core import errors
from tunewright.core.metrics import Metrics
from tunewright.core.security import ServerSecurity

log = structlog.get_logger(__name__)

ERROR_DOMAIN = "tunewright"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Each call holds a server thread while it runs, a stream (WatchJob, Chat, ReadDataset ...)
# for as long as it is open. Streams may hold at most MAX_STREAMS threads: one more is refused
# with RESOURCE_EXHAUSTED by the interceptor, so UNARY_THREADS are always left for unary calls
# and health checks, however many watchers a dashboard opens. A call beyond all the threads is
# refused with RESOURCE_EXHAUSTED by gRPC itself, at once, instead of waiting in a queue.
MAX_STREAMS = 1024
UNARY_THREADS = 64
MAX_WORKERS = MAX_STREAMS + UNARY_THREADS
MAX_CONCURRENT_RPCS = MAX_WORKERS
GRACE_SECONDS = 10.0

_STATUS_OF: dict[type[errors.TunewrightError], tuple[grpc.StatusCode, int]] = {
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    errors.AlreadyExists: (grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    errors.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
}


def status_of(error: BaseException) -> tuple[grpc.StatusCode, int]:
    for cls, codes in _STATUS_OF.items():
        if isinstance(error, cls):
            return codes
    return grpc.StatusCode.INTERNAL, code_pb2.INTERNAL


def to_rpc_status(error: errors.TunewrightError) -> status_pb2.Status:
    """A rich status: ErrorInfo with the reason, and BadRequest with each field violation."""
    _, code = status_of(error)
    details = []
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    details.append(info)
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    packed = []
    for detail in details:
        container = any_pb2.Any()
        container.Pack(detail)
        packed.append(container)
    return status_pb2.Status(code=code, message=error.message, details=packed)


def _abort(context: grpc.ServicerContext, error: BaseException, request_id: str) -> None:
    if isinstance(error, errors.TunewrightError):
        status = to_rpc_status(error)
    else:
        log.exception("unhandled error")
        status = status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal error; the server log has the details under request_id={request_id}",
        )
    context.abort_with_status(rpc_status.to_status(status))


class ServiceInterceptor(grpc.ServerInterceptor):
    """Binds request ids to the log, writes one line per call, maps domain errors to statuses."""

    def __init__(self, service: str, metrics: Metrics | None = None, security: ServerSecurity | None = None) -> None:
        self.service = service
        self.metrics = metrics
        self.security = security or ServerSecurity()
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())

        def start(context: grpc.ServicerContext) -> tuple[str, float]:
            request_id = metadata.get("x-request-id") or uuid.uuid4().hex[:16]
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(service=self.service, rpc=method, request_id=request_id)
            return request_id, time.monotonic()

        def finish(outcome: str, started: float, **extra: Any) -> None:
            seconds = time.monotonic() - started
            log.info("rpc", outcome=outcome, duration_ms=round(seconds * 1000, 1), **extra)
            if self.metrics is not None:
                self.metrics.rpcs.labels(method, outcome).inc()
                self.metrics.rpc_seconds.labels(method).observe(seconds)

        def fail(error: Exception, context: grpc.ServicerContext, request_id: str, started: float) -> None:
            if _is_abort(error):
                code = context.code()
                finish(code.name if code is not None else "UNKNOWN", started)
                raise error
            finish(status_of(error)[0].name, started, error=str(error))
            _abort(context, error, request_id)

        def wrap_unary(behavior: Callable) -> Callable:
            def wrapped(request_or_iterator, context):
                request_id, started = start(context)
                try:
                    response = behavior(request_or_iterator, context)
                except Exception as error:  # noqa: BLE001 - mapped to a status right here
                    fail(error, context, request_id, started)
                finish("OK", started)
                return response

            return wrapped

        def wrap_stream(behavior: Callable) -> Callable:
            def wrapped(request_or_iterator, context) -> Iterator:
                request_id, started = start(context)
                if not self.streams.acquire(blocking=False):
                    message = (
                        f"the {self.service} service holds {MAX_STREAMS} open streams, its limit; "
                        "close some (or share one watch among your views) and retry"
                    )
                    finish("RESOURCE_EXHAUSTED", started, error=message)
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
                try:
                    yield from behavior(request_or_iterator, context)
                except GeneratorExit:  # the client went away mid-stream
                    finish("CANCELLED", started)
                    raise
                except Exception as error:  # noqa: BLE001 - mapped to a status right here
                    fail(error, context, request_id, started)
                finally:
                    self.streams.release()
                finish("OK", started)

            return wrapped

        denied = self.security.authorize(method, metadata)
        if denied is None:
            unary, stream = wrap_unary, wrap_stream
        else:
            code, message = denied

            def refuse(request_or_iterator, context):
                _, started = start(context)
                finish(code.name, started, error=message)  # the token itself is never logged
                context.abort(code, message)

            def refuse_stream(request_or_iterator, context) -> Iterator:
                refuse(request_or_iterator, context)
                yield  # never reached: abort raises

            def unary(_behavior: Callable) -> Callable:
                return refuse

            def stream(_behavior: Callable) -> Callable:
                return refuse_stream

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises a plain Exception after setting the status; let it through.
    return type(error) is Exception and not error.args


class Server:
    """A started gRPC server with its health servicer, so callers can flip it to NOT_SERVING."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        names: list[str],
        metrics: Metrics,
        metrics_port: int | None = None,
        executor: futures.ThreadPoolExecutor | None = None,
    ):
        self.grpc_server = server
        self.executor = executor
        self.port = port
        self.health = health_servicer
        self.service_names = names
        self.metrics = metrics
        # Where /metrics answers over HTTP; None when the service was started without it.
        self.metrics_port = metrics_port

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        if self.executor is not None:
            # Its threads (up to one per stream that was open) end now, not when the server is
            # collected: a process that starts servers again and again keeps no idle ones.
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.stop()

    def wait_for_termination(self) -> None:
        self.grpc_server.wait_for_termination()


def create_server(
    address: str,
    register: Callable[[grpc.Server], None],
    service_full_names: list[str],
    metrics: Metrics | None = None,
    metrics_address: str | None = None,
    security: ServerSecurity | None = None,
) -> Server:
    """Builds and starts a server on ``address`` ("127.0.0.1:0" picks a free port).

    ``register`` adds the service's servicers; ``service_full_names`` are the names
    announced through health checking and reflection. ``metrics`` (a new one when not
    given) counts every RPC; with ``metrics_address`` it is served over HTTP there.
    ``security`` asks for tokens and serves TLS (``tunewright.core.security``).
    """
    # "tunewright.trainer.v1.TrainerService" -> "trainer", the name on every log line.
    service = service_full_names[0].split(".")[1]
    metrics = metrics or Metrics(service)
    executor = futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="rpc")
    server = grpc.server(
        executor,
        interceptors=[ServiceInterceptor(service, metrics, security)],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_full_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    credentials = security.server_credentials() if security else None
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise errors.FailedPrecondition(f"could not listen on {address}: is the port in use?", reason="PORT_IN_USE")
    server.start()
    for name in ["", *service_full_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_port = metrics.serve(metrics_address) if metrics_address else None
    return Server(server, port, health_servicer, service_full_names, metrics, metrics_port, executor)


def serve_until_signalled(server: Server, on_stop: Callable[[], None] | None = None) -> None:
    """Blocks until SIGTERM or SIGINT, then stops gracefully: health goes NOT_SERVING,
    new calls are refused, calls in flight get ``GRACE_SECONDS`` to finish."""
    stopping = threading.Event()

    def handle(signum, _frame):
        log.info("stopping", signal=signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    log.info("serving", port=server.port, services=server.service_names, metrics_port=server.metrics_port)
    stopping.wait()
    if on_stop is not None:
        on_stop()
    server.stop()
    log.info("stopped")
