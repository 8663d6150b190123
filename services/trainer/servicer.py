"""gRPC mapping of the trainer service."""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from tunewright.contract import ArtifactKind
from tunewright.core.files import sha256_file
from tunewright.core.ids import parse_job_or_checkpoint, parse_name
from tunewright.core.timeutil import to_timestamp
from tunewright.methods import Method
from tunewright.parameters import default_json, parameter_specs
from tunewright.trainer.service import HYPERPARAMETER_NAMES, JobEstimate, Trainer
from tunewright.trainer.store import Event, JobRecord
from tunewright.trainer.v1 import trainer_service_pb2 as pb
from tunewright.trainer.v1 import trainer_service_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrainerService"].full_name
CHUNK_BYTES = 1 << 20

_TYPES = {
    "int": pb.PARAMETER_TYPE_INT,
    "float": pb.PARAMETER_TYPE_FLOAT,
    "bool": pb.PARAMETER_TYPE_BOOL,
    "string": pb.PARAMETER_TYPE_STRING,
    "string_list": pb.PARAMETER_TYPE_STRING_LIST,
}
_STATES = {
    "QUEUED": pb.JOB_STATE_QUEUED,
    "RUNNING": pb.JOB_STATE_RUNNING,
    "SUCCEEDED": pb.JOB_STATE_SUCCEEDED,
    "FAILED": pb.JOB_STATE_FAILED,
    "CANCELLED": pb.JOB_STATE_CANCELLED,
}


def job_id_of(name: str) -> str:
    """Parses "jobs/{id}" and binds the id to this call's log lines."""
    job_id = parse_name(name, "jobs")
    structlog.contextvars.bind_contextvars(job_id=job_id)
    return job_id


_KINDS = {
    ArtifactKind.ADAPTER: pb.ARTIFACT_KIND_ADAPTER,
    ArtifactKind.FULL: pb.ARTIFACT_KIND_FULL,
    ArtifactKind.PROMPT: pb.ARTIFACT_KIND_PROMPT,
}


def method_pb(method: Method) -> pb.Method:
    caps = method.capabilities
    return pb.Method(
        name=method.name,
        description=method.description,
        parameters=[
            pb.ParameterSpec(
                name=s.name,
                type=_TYPES[s.type],
                description=s.description,
                default_json=default_json(s),
                choices=s.choices,
            )
            for s in parameter_specs(method.config_class)
        ],
        capabilities=pb.MethodCapabilities(
            mergeable=caps.mergeable,
            exportable=caps.exportable,
            requires_gpu=caps.requires_gpu,
            artifact_kind=_KINDS[caps.artifact_kind],
            quantized_base=caps.quantized_base,
            required_packages=caps.required_packages,
            not_exportable_reason=caps.not_exportable_reason,
        ),
        default_learning_rate=method.default_learning_rate,
    )


def value_from_pb(value: pb.ParameterValue) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_list_value":
        return list(value.string_list_value.values)
    return getattr(value, kind) if kind else None


def value_pb(value: Any) -> pb.ParameterValue:
    if isinstance(value, bool):
        return pb.ParameterValue(bool_value=value)
    if isinstance(value, int):
        return pb.ParameterValue(int_value=value)
    if isinstance(value, float):
        return pb.ParameterValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return pb.ParameterValue(string_list_value=pb.StringList(values=list(value)))
    return pb.ParameterValue(string_value=str(value))


def score_pb(score: dict[str, float]) -> pb.ModelScore:
    return pb.ModelScore(**score)


def evaluation_pb(evaluation: dict[str, Any]) -> pb.Evaluation:
    return pb.Evaluation(
        example_count=evaluation["example_count"],
        base=score_pb(evaluation["base"]),
        tuned=score_pb(evaluation["tuned"]),
    )


def job_pb(job: JobRecord) -> pb.Job:
    message = pb.Job(
        name=f"jobs/{job.id}",
        state=_STATES[job.state],
        base_model=job.base_model,
        dataset=job.dataset,
        method=job.method,
        method_parameters={k: value_pb(v) for k, v in job.method_parameters.items()},
        hyperparameters=pb.ResolvedHyperparameters(**job.hyperparameters),
        create_time=to_timestamp(job.create_time),
        start_time=to_timestamp(job.start_time),
        end_time=to_timestamp(job.end_time),
        queue_position=job.queue_position,
    )
    if job.error_code:
        message.error.CopyFrom(pb.JobError(code=job.error_code, message=job.error_message or ""))
    if job.progress:
        message.progress.CopyFrom(pb.TrainingProgress(**job.progress))
    if job.evaluation:
        message.evaluation.CopyFrom(evaluation_pb(job.evaluation))
    return message


def event_pb(event: Event) -> pb.WatchJobResponse:
    message = pb.WatchJobResponse(sequence=event.seq, time=to_timestamp(event.time))
    payload = event.payload
    if event.kind == "state":
        error = payload.get("error")
        message.state_change.CopyFrom(
            pb.StateChange(state=_STATES[payload["state"]], error=pb.JobError(**error) if error else None)
        )
    elif event.kind == "progress":
        message.progress.CopyFrom(pb.TrainingProgress(**payload))
    elif event.kind == "evaluation":
        message.evaluation.CopyFrom(evaluation_pb(payload))
    elif event.kind == "validation":
        message.validation.CopyFrom(pb.ValidationLoss(**payload))
    else:
        message.log.CopyFrom(pb.LogMessage(text=payload.get("text", "")))
    return message


def job_estimate_pb(found: JobEstimate) -> pb.JobEstimate:
    guess = found.estimate
    return pb.JobEstimate(
        peak_memory_bytes=guess.peak_bytes,
        device_memory_bytes=guess.device_bytes,
        breakdown=[pb.MemoryPart(name=name, bytes=size) for name, size in guess.breakdown.items()],
        seconds_per_step=guess.seconds_per_step,
        steps=guess.steps,
        training_seconds=guess.training_seconds,
        total_seconds=guess.total_seconds,
        tokens_per_second=guess.tokens_per_second,
        largest_pass_rows=guess.largest_pass[0],
        largest_pass_tokens=guess.largest_pass[1],
        memory_limit_bytes=found.limit_bytes,
        fits=found.fits,
        fixes=[
            pb.MemoryFix(
                change=fix.change,
                description=fix.description,
                peak_memory_bytes=fix.estimate.peak_bytes,
                seconds_per_step=fix.estimate.seconds_per_step,
                fits=fix.fits,
            )
            for fix in found.fixes
        ],
        notes=guess.notes,
    )


def _given_hyperparameters(hp: pb.Hyperparameters) -> dict[str, Any]:
    return {name: getattr(hp, name) for name in HYPERPARAMETER_NAMES if hp.HasField(name)}


class TrainerServicer(pb_grpc.TrainerServiceServicer):
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def ListMethods(self, request, context):
        return pb.ListMethodsResponse(methods=[method_pb(m) for m in self.trainer.methods.values()])

    def CreateJob(self, request, context):
        job = self.trainer.create_job(
            request.request_id,
            request.base_model,
            request.dataset,
            request.method,
            {k: value_from_pb(v) for k, v in request.method_parameters.items()},
            _given_hyperparameters(request.hyperparameters),
            check_memory=not request.ignore_memory_estimate,
        )
        structlog.contextvars.bind_contextvars(job_id=job.id)
        return pb.CreateJobResponse(job=job_pb(job))

    def EstimateJob(self, request, context):
        found = self.trainer.estimate_job(
            request.base_model,
            request.dataset,
            request.method,
            {k: value_from_pb(v) for k, v in request.method_parameters.items()},
            _given_hyperparameters(request.hyperparameters),
        )
        return pb.EstimateJobResponse(estimate=job_estimate_pb(found))

    def GetJob(self, request, context):
        return pb.GetJobResponse(job=job_pb(self.trainer.store.get(job_id_of(request.name))))

    def ListJobs(self, request, context):
        jobs, token = self.trainer.store.list(request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=[job_pb(j) for j in jobs], next_page_token=token)

    def CancelJob(self, request, context):
        return pb.CancelJobResponse(job=job_pb(self.trainer.cancel_job(job_id_of(request.name))))

    def WatchJob(self, request, context):
        job_id = job_id_of(request.name)
        for event in self.trainer.watch(job_id, request.after_sequence, context.is_active):
            yield event_pb(event)

    def ReadArtifact(self, request, context):
        job, checkpoint = parse_job_or_checkpoint(request.name)
        job_id = job_id_of(job)
        if checkpoint is None:
            files = self.trainer.artifact_files(job_id, request.path)
        else:
            files = self.trainer.checkpoint_artifact_files(job_id, checkpoint, request.path)
        for relative, path in files:
            yield pb.ReadArtifactResponse(
                file=pb.ArtifactFile(path=relative, size_bytes=path.stat().st_size, sha256=sha256_file(path))
            )
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield pb.ReadArtifactResponse(chunk=chunk)

    def ListCheckpoints(self, request, context):
        job_id = job_id_of(request.name)
        return pb.ListCheckpointsResponse(
            checkpoints=[
                pb.Checkpoint(
                    name=f"jobs/{job_id}/checkpoints/{c.step}",
                    step=c.step,
                    epoch=c.epoch,
                    loss=c.loss,
                    validation_loss=c.validation_loss,
                    create_time=to_timestamp(c.created),
                    size_bytes=c.size_bytes,
                )
                for c in self.trainer.checkpoints(job_id)
            ]
        )


def register(trainer: Trainer):
    def add(server: grpc.Server) -> None:
        pb_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(trainer), server)

    return add
