"""One job's worker process: ``python -m tunewright.trainer.worker JOB_DIR --events-fd N``.

It pulls the dataset from the data service over gRPC, trains with the job's method,
evaluates base against tuned on the test split, and publishes the artifact folder with a
rename. It reports to the trainer as JSON lines on the events pipe; its own log goes to
stderr, which the trainer keeps as ``JOB_DIR/worker.log``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import msgspec
import structlog

from tunewright import contract
from tunewright.contract import (
    ARTIFACT,
    FORMAT_VERSION,
    JOB_SPEC,
    MANIFEST,
    PREDICTIONS,
    PROBE,
    WORKER_LOG,
    Done,
    Evaluation,
    Failed,
    JobSpec,
    Log,
    Manifest,
    Probe,
    Progress,
    Score,
    Validation,
    WorkerEvent,
)
from tunewright.core.basemodel import load_tokenizer, resolve_base_model
from tunewright.core.chat import (
    AssistantNotFound,
    TokenizedExample,
    prompt_and_reference,
    shared_system_prompt,
    tokenize_example,
)
from tunewright.core.errors import TunewrightError
from tunewright.core.files import write_bytes_atomic, write_lines_atomic
from tunewright.core.logging import configure_logging
from tunewright.core.security import ChannelSecurity, open_channel
from tunewright.data.v1 import data_service_pb2 as data_pb
from tunewright.data.v1 import data_service_pb2_grpc as data_grpc
from tunewright.methods import Method, detect_runtime
from tunewright.parameters import build_config
from tunewright.plugin_manager import get_method, load_methods

log = structlog.get_logger(__name__)

# The base model's answers and score, kept for a resumed run of the job.
BASE_EVALUATION = "base-evaluation.json"


class JobFailure(Exception):
    """Ends the job FAILED with an UPPER_SNAKE code and a message the user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Events:
    def __init__(self, fd: int) -> None:
        self._out = os.fdopen(fd, "wb", buffering=0)

    def emit(self, event: WorkerEvent) -> None:
        self._out.write(contract.encode_event(event))

    def log(self, text: str) -> None:
        log.info(text)
        self.emit(Log(text=text))


def fetch_splits(address: str, dataset: str) -> dict[str, list[list[dict[str, str]] | str]]:
    """The train, validation and test examples of ``dataset``, read over one channel: each a
    conversation (a list of messages) or, from a text dataset, a string."""
    splits = {"train": data_pb.SPLIT_TRAIN, "validation": data_pb.SPLIT_VALIDATION, "test": data_pb.SPLIT_TEST}
    with open_channel(address, ChannelSecurity.from_env()) as channel:
        stub = data_grpc.DataServiceStub(channel)
        try:
            return {
                name: [
                    r.example.text or [{"role": m.role, "content": m.content} for m in r.example.messages]
                    for r in stub.ReadDataset(data_pb.ReadDatasetRequest(name=dataset, split=split), timeout=300)
                ]
                for name, split in splits.items()
            }
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise JobFailure("DATASET_NOT_FOUND", f"{dataset} no longer exists on the data service") from error
            raise JobFailure(
                "DATASET_UNAVAILABLE",
                f"could not read {dataset} from the data service at {address}: {error.code().name} {error.details()}; "
                "check that the data service runs, then create the job again",
            ) from error


def fetch_dataset_record(address: str, dataset: str) -> dict[str, Any]:
    """The data service's record of ``dataset``, JSON-mapped, for the artifact's manifest."""
    from google.protobuf import json_format

    with open_channel(address, ChannelSecurity.from_env()) as channel:
        try:
            found = data_grpc.DataServiceStub(channel).GetDataset(data_pb.GetDatasetRequest(name=dataset), timeout=60)
        except grpc.RpcError as error:
            raise JobFailure(
                "DATASET_UNAVAILABLE", f"could not read {dataset}'s record: {error.code().name} {error.details()}"
            ) from error
    return json_format.MessageToDict(found.dataset, preserving_proto_field_name=True)


def read_spec(job_dir: Path) -> JobSpec:
    try:
        return contract.from_json((job_dir / JOB_SPEC).read_bytes(), JobSpec)
    except (OSError, msgspec.DecodeError) as error:
        raise JobFailure("BAD_JOB_SPEC", f"{job_dir / JOB_SPEC} is unreadable: {error}") from error


def import_first(method: Method) -> None:
    """Imports the libraries a method needs before any other (Unsloth patches transformers
    and peft when imported, so it must come before them)."""
    for module in method.capabilities.import_first:
        importlib.import_module(module)


def score(
    model: Any, tokenizer: Any, conversations: list, tokenized: list, hp: Any, references: list[str], layout: str
):
    from tunewright.trainer import training

    started = time.monotonic()
    answers = training.generate_answers(model, tokenizer, conversations, hp.eval_max_new_tokens)
    loss = training.mean_loss(model, tokenized, tokenizer.pad_token_id, layout=layout)
    seconds = time.monotonic() - started
    return answers, Score(loss=loss, seconds=seconds, **training.score(answers, references))


def evaluate_base(
    job_dir: Path, events: Events, model, tokenizer, test: list, tokenized: list, references: list[str], hp, layout: str
):
    """The base model's answers and score on the test split. They are kept in the job's
    folder, so a job resumed after a crash does not evaluate its base again."""
    kept = job_dir / BASE_EVALUATION
    if kept.exists():
        saved = json.loads(kept.read_text())
        events.log("the base model's evaluation is kept from the job's earlier run")
        return saved["answers"], msgspec.convert(saved["score"], Score)
    events.log(f"evaluating the base model on {len(test)} test examples")
    answers, base_score = score(model, tokenizer, test, tokenized, hp, references, layout)
    events.log(f"evaluated the base model in {base_score.seconds:.1f} s")
    write_bytes_atomic(kept, json.dumps({"answers": answers, "score": msgspec.to_builtins(base_score)}).encode())
    return answers, base_score


def build_artifact(
    model, method: Method, config, spec: JobSpec, tokenizer, splits: dict[str, list], staging: Path, dataset: dict
) -> None:
    """Writes into ``staging`` what the method trained, the probe and the manifest: what
    the serve service exports. The manifest names the system prompt the training data
    shared, which the export makes the model's default."""
    from tunewright.core import probe

    kind = method.capabilities.artifact_kind
    shutil.rmtree(staging, ignore_errors=True)
    method.save(model, config, staging / kind.folder)
    # The probe: what the trained model computes on one held-out example, for whoever
    # rebuilds it from this artifact to check against.
    probe_input = probe.probe_ids(tokenizer, probe_conversation(splits))
    probe_dtype = probe.compute_dtype(model)
    shared = shared_system_prompt(splits["train"])
    probe.write_probe(staging / PROBE, probe_input, probe.logits_at(model.eval(), probe_input))
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        job_id=spec.job_id,
        base_model=spec.base_model,
        method=method.name,
        method_parameters=spec.method_parameters,
        hyperparameters=spec.hyperparameters,
        artifact_kind=kind,
        trained=kind.folder,
        probe=Probe(file=PROBE, compute_dtype=probe_dtype, tolerance=probe.TOLERANCE[probe_dtype]),
        dataset=dataset,
        system_prompt=shared[0] if shared else None,
        system_prompt_share=shared[1] if shared else None,
    )
    write_bytes_atomic(staging / MANIFEST, contract.to_json(manifest))


def probe_conversation(splits: dict[str, list]) -> list[dict[str, str]]:
    """The held-out example the probe runs on, as a conversation (a text example becomes
    the user's message)."""
    example = (splits["test"] or splits["validation"] or splits["train"])[0]
    return [{"role": "user", "content": example}] if isinstance(example, str) else example


def build_checkpoint_artifact(job_dir: Path, step: int, events: Events) -> None:
    """Builds the artifact of the job's checkpoint at ``step`` into its folder
    (``checkpoints/step-N/artifact``), so that it can be exported like a finished job's: the
    base model, prepared by the method, with the checkpoint's trained weights."""
    spec = read_spec(job_dir)
    method = get_method(load_methods(), spec.method)
    config = build_config(method, spec.method_parameters)
    import_first(method)

    import torch

    from tunewright.trainer import checkpoints

    found = {c.step: c for c in checkpoints.complete(job_dir / checkpoints.CHECKPOINTS)}.get(step)
    if found is None:
        raise JobFailure("CHECKPOINT_NOT_FOUND", f"{job_dir.name} has no checkpoint at step {step}")
    splits = fetch_splits(spec.data_service, spec.dataset)
    folder = resolve_base_model(spec.base_model, Path(spec.model_cache))
    torch.manual_seed(spec.hyperparameters.seed)
    model = method.prepare(method.load_base(folder, config, detect_runtime()), config)
    checkpoints.load_weights(found, model)
    events.log(f"building the artifact of the checkpoint at step {step}")
    staging = found.path / f".{ARTIFACT}.tmp"
    dataset = fetch_dataset_record(spec.data_service, spec.dataset)
    build_artifact(model, method, config, spec, load_tokenizer(folder), splits, staging, dataset)
    shutil.rmtree(found.path / ARTIFACT, ignore_errors=True)
    staging.rename(found.path / ARTIFACT)


def join_process_group(events: Events) -> tuple[int, int]:
    """(rank, number of processes): (0, 1) for a plain worker; under torchrun, this process
    joins the job's process group (gloo on a CPU, NCCL on GPUs, one GPU a process)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank()
    events.log(f"training in {world} processes (torch.distributed, {backend}); this is process {rank}")
    return rank, world


def tokenize_split(tokenizer, name: str, examples: list, max_seq_length: int) -> list[TokenizedExample]:
    """A split's examples tokenized for training; a reply the chat template does not write
    fails the job naming the example."""
    tokenized = []
    for number, example in enumerate(examples, start=1):
        try:
            tokenized.append(tokenize_example(tokenizer, example, max_seq_length))
        except AssistantNotFound as error:
            raise JobFailure(error.reason, f"{name} example {number}: {error.message}") from error
    return tokenized


def run(job_dir: Path, events: Events) -> None:
    spec = read_spec(job_dir)
    hp = spec.hyperparameters
    method = get_method(load_methods(), spec.method)
    config = build_config(method, spec.method_parameters)
    import_first(method)

    import torch

    from tunewright.trainer import checkpoints, training

    training.keep_freed_memory()
    rank, world = join_process_group(events)
    # Under torchrun only the first process reports, evaluates, checkpoints and publishes;
    # the others train their share of every batch.
    lead = rank == 0
    torch.manual_seed(hp.seed)
    events.log(f"reading {spec.dataset} from the data service")
    splits = fetch_splits(spec.data_service, spec.dataset)
    events.log("examples: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    if shared := shared_system_prompt(splits["train"]):
        events.log(
            f"{shared[1]:.0%} of the training examples open with the same system prompt; exports of this job "
            f"make it the model's default system prompt: {shared[0][:80]!r}"
        )

    try:
        folder = resolve_base_model(spec.base_model, Path(spec.model_cache))
    except TunewrightError as error:
        raise JobFailure(error.reason, error.message) from error
    runtime = detect_runtime()
    events.log(f"loading base model {spec.base_model} for {method.name} on {runtime.device}")
    model = method.load_base(folder, config, runtime)
    tokenizer = load_tokenizer(folder)

    tokenized = {name: tokenize_split(tokenizer, name, convs, hp.max_seq_length) for name, convs in splits.items()}
    train_examples = [e for e in tokenized["train"] if e.trained_tokens]
    if not train_examples:
        raise JobFailure(
            "NO_TRAINABLE_EXAMPLES",
            f"no training example keeps an assistant token within max_seq_length={hp.max_seq_length}; raise max_seq_length",
        )
    if len(train_examples) < len(tokenized["train"]):
        events.log(
            f"{len(tokenized['train']) - len(train_examples)} training example(s) lost every assistant token to max_seq_length and were skipped"
        )

    layout, layout_why = training.layout_for(hp.packing, method.capabilities.takes_position_ids, hp.group_by_length)
    test = splits["test"]
    texts = any(isinstance(example, str) for example in splits["train"])
    evaluate = hp.evaluate and bool(test) and not texts
    references = [] if texts else [prompt_and_reference(c)[1] for c in test]
    if hp.evaluate and not test:
        events.log("the dataset has no test split, so there is no evaluation")
    if hp.evaluate and test and texts:
        events.log("a text dataset has no answers to compare: its test loss is logged before and after training")
        if lead:
            loss = training.mean_loss(model, tokenized["test"], tokenizer.pad_token_id, layout=layout)
            events.log(f"test loss of the base model: {loss:.4f}")
    if evaluate and lead:
        base_answers, base_score = evaluate_base(
            job_dir, events, model, tokenizer, test, tokenized["test"], references, hp, layout
        )

    try:
        model = method.prepare(model, config)
    except ValueError as error:
        raise JobFailure("INVALID_METHOD_PARAMETER", f"method {method.name!r}: {error}") from error
    if hp.gradient_checkpointing == "on":
        if training.checkpoint_activations(model):
            events.log("gradient checkpointing on: each layer's activations are recomputed in the backward pass")
        else:
            events.log("gradient checkpointing was asked for, but this model cannot recompute its layers")

    last = {"loss": math.nan, "validation_loss": None}

    def on_progress(progress: Progress) -> None:
        if not math.isfinite(progress.loss):
            raise JobFailure(
                "TRAINING_DIVERGED", f"the loss became {progress.loss} at step {progress.step}; lower learning_rate"
            )
        last["loss"] = progress.loss
        events.emit(progress)

    events.log(f"training {method.name} for {training.total_steps(len(train_examples), hp)} steps")
    if 0 < hp.micro_batch_size < hp.batch_size:
        passes = -(-hp.batch_size // hp.micro_batch_size)
        events.log(f"accumulating gradients over {passes} passes of at most {hp.micro_batch_size} examples a step")

    def on_validation(step: int, epoch: float) -> None:
        if not lead:
            return
        loss = training.mean_loss(model, tokenized["validation"], tokenizer.pad_token_id, layout=layout)
        last["validation_loss"] = loss
        events.emit(Validation(step=step, epoch=epoch, loss=loss))
        events.log(f"validation loss {loss:.4f} at step {step}")

    dtype, why = training.autocast_dtype(hp.precision, runtime)
    events.log(why)
    events.log(layout_why)
    training_run = training.TrainingRun(
        model, train_examples, hp, tokenizer.pad_token_id, autocast=dtype, layout=layout
    )
    folder = job_dir / checkpoints.CHECKPOINTS
    resume_from = checkpoints.latest(folder)
    if resume_from is not None:
        try:
            checkpoints.load(resume_from, training_run, model)
        except ValueError as error:
            raise JobFailure("CHECKPOINT_MISMATCH", f"cannot resume: {error}") from error
        events.log(
            f"resumed from the checkpoint at step {resume_from.step} of {training_run.steps} (epoch {resume_from.epoch:.2f})"
        )
    policy = checkpoints.Policy(hp.checkpoint_every)

    def after_step(current: training.TrainingRun, epoch_ended: bool) -> None:
        if not lead or not policy.due(current.position.step, epoch_ended):
            return
        started = time.monotonic()
        trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
        checkpoints.save(folder, current, trained, last["loss"], last["validation_loss"] if epoch_ended else None)
        checkpoints.prune(folder, hp.keep_checkpoints)
        seconds = time.monotonic() - started
        policy.written(seconds)
        events.log(f"checkpoint at step {current.position.step} written in {seconds:.2f} s")

    training_started = time.monotonic()
    training_run.run(on_progress, on_validation if tokenized["validation"] else None, after_step)
    events.log(f"trained in {time.monotonic() - training_started:.1f} s, validation included")
    if world > 1:
        torch.distributed.destroy_process_group()
        if not lead:
            return

    staging = job_dir / f".{ARTIFACT}.tmp"
    dataset = fetch_dataset_record(spec.data_service, spec.dataset)
    build_artifact(model, method, config, spec, tokenizer, splits, staging, dataset)
    if hp.evaluate and test and texts:
        loss = training.mean_loss(model, tokenized["test"], tokenizer.pad_token_id, layout=layout)
        events.log(f"test loss of the fine-tuned model: {loss:.4f}")

    if evaluate:
        events.log("evaluating the fine-tuned model")
        tuned_answers, tuned_score = score(model, tokenizer, test, tokenized["test"], hp, references, layout)
        events.log(f"evaluated the fine-tuned model in {tuned_score.seconds:.1f} s")
        write_lines_atomic(
            staging / PREDICTIONS,
            (
                json.dumps({"index": i, "messages": c, "reference": r, "base": b, "tuned": t}, ensure_ascii=False)
                for i, (c, r, b, t) in enumerate(zip(test, references, base_answers, tuned_answers, strict=True))
            ),
        )
        events.emit(Evaluation(example_count=len(test), base=base_score, tuned=tuned_score))

    shutil.rmtree(job_dir / ARTIFACT, ignore_errors=True)
    staging.rename(job_dir / ARTIFACT)
    events.emit(Done())


def events_fd(given: int | None) -> int:
    """Where this process writes its events. Under torchrun (which closes every other
    descriptor) the runner reads them from standard output, "--events-fd 1": the first
    process keeps that for its events and sends what libraries print to stderr instead;
    the other processes report nothing. Without --events-fd, events go to stderr."""
    if given is None:
        return os.dup(sys.stderr.fileno())
    if given != 1:
        return given
    events = os.dup(1)
    os.dup2(2, 1)
    if os.environ.get("RANK", "0") != "0":
        os.close(events)
        return os.open(os.devnull, os.O_WRONLY)
    return events


# prctl(2)'s option for a signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_torchrun() -> None:
    """Under torchrun, has the kernel SIGKILL this process when torchrun dies.

    torchrun starts each process in a session of its own, so when torchrun itself is killed
    (SIGKILL, the OOM killer) no signal reaches them: they would train on alone, holding the
    job's event pipe open so that the trainer could not see the job end. A graceful stop
    (SIGTERM) is forwarded by torchrun and does not need this. Linux only."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    try:
        command = Path(f"/proc/{launcher}/cmdline").read_bytes()
    except OSError:
        return
    if b"torch.distributed." not in command and b"torchrun" not in command:
        return  # another launcher, or torchrun already gone and this process adopted
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not ask to die with torchrun", errno=ctypes.get_errno())
        return
    if os.getppid() != launcher:  # torchrun died before the request took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    die_with_torchrun()
    parser = argparse.ArgumentParser(prog="python -m tunewright.trainer.worker")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--events-fd", type=int, help="where to write the events (JSON lines); stderr if not given")
    parser.add_argument(
        "--checkpoint-artifact", type=int, metavar="STEP", help="only build the artifact of the checkpoint at STEP"
    )
    args = parser.parse_args(argv)
    configure_logging("trainer-worker", json=True)
    structlog.contextvars.bind_contextvars(job_id=args.job_dir.name)
    torch_threads = os.environ.get("TUNEWRIGHT_TORCH_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    events = Events(events_fd(args.events_fd))
    try:
        if args.checkpoint_artifact is not None:
            build_checkpoint_artifact(args.job_dir, args.checkpoint_artifact, events)
        else:
            run(args.job_dir, events)
    except JobFailure as failure:
        events.emit(Failed(code=failure.code, message=failure.message))
        return 1
    except TunewrightError as error:
        events.emit(Failed(code=error.reason, message=error.message))
        return 1
    except MemoryError:
        events.emit(
            Failed(code="OUT_OF_MEMORY", message="the worker ran out of memory; lower batch_size or max_seq_length")
        )
        return 1
    except Exception as error:  # noqa: BLE001 - reported to the user, with the traceback in worker.log
        log.exception("job failed")
        events.emit(
            Failed(
                code="WORKER_ERROR",
                message=f"{type(error).__name__}: {error} (traceback in {args.job_dir / WORKER_LOG})",
            )
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
