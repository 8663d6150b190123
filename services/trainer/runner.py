"""Runs queued jobs one at a time, each in its own worker process.

The runner thread never trains: it starts ``tunewright.trainer.worker`` (forked from the
fork server where it can, see ``forkserver``), turns the worker's events into stored job
events, and decides how the job ends from what the worker said and how it exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec
import structlog

from tunewright import contract
from tunewright.contract import JOB_SPEC, WORKER_LOG, Done, Failed, Hyperparameters, JobSpec
from tunewright.core.errors import FailedPrecondition
from tunewright.core.files import write_bytes_atomic
from tunewright.core.forkserver import PASSED_FD, ForkedWorker, ForkServer, usable
from tunewright.core.metrics import Metrics
from tunewright.methods import Method
from tunewright.trainer import checkpoints
from tunewright.trainer.memory import MemoryWatch, gib, oom_kills
from tunewright.trainer.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore

log = structlog.get_logger(__name__)

KILL_AFTER_SECONDS = 10.0
# A worker that dies without reporting an error (a signal, the out-of-memory killer, a crash
# in native code) is run again, up to this many runs in all, before its job is FAILED.
MAX_WORKER_ATTEMPTS = 3
WORKER_PID = "worker.pid"
# What a worker imports that takes seconds: its fork server imports them before the first fork.
WORKER_PRELOAD = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "peft",
    "safetensors.torch",
)
# Building a checkpoint's artifact loads the base model and saves what was trained.
CHECKPOINT_ARTIFACT_SECONDS = 600


def process_start_time(pid: int) -> int | None:
    """When the process started, in clock ticks since boot; None if there is no such process.
    With its pid it names one process: a pid is reused, a pid and a start time are not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the fields after the command name, which may hold spaces, start at field 3.
    return int(stat.rsplit(")", 1)[1].split()[19])


def write_pid_file(path: Path, pid: int) -> None:
    """``PID START_TIME``, for ending the very same process later (``worker_pid`` reads the pid)."""
    path.write_text(f"{pid} {process_start_time(pid)}\n")


def worker_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def _event_or_none(line: bytes) -> contract.WorkerEvent | None:
    try:
        return contract.decode_event(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        jobs_dir: Path,
        data_service: str,
        model_cache: Path,
        metrics: Metrics | None = None,
        max_running: int = 1,
        methods: Mapping[str, Method] | None = None,
        memory_limit_bytes: int | None = None,
    ) -> None:
        if max_running < 1:
            raise ValueError("max_running must be at least 1")
        self.store = store
        self.metrics = metrics
        self.jobs_dir = Path(jobs_dir)
        self.data_service = data_service
        self.model_cache = Path(model_cache)
        # A worker whose resident memory passes this is stopped, and its job FAILED OUT_OF_MEMORY.
        self.memory_limit_bytes = memory_limit_bytes
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        # The workers running now, by job id.
        self._running: dict[str, subprocess.Popen | ForkedWorker] = {}
        # Jobs marked RUNNING whose worker is not started yet: a cancel then waits for it.
        self._starting: set[str] = set()
        self._cancelled: set[str] = set()
        # Runs of each job's worker so far in this trainer's life.
        self._attempts: dict[str, int] = {}
        self._artifact_lock = threading.Lock()
        self._forkserver = ForkServer(self._worker_env(), WORKER_PRELOAD) if usable() else None
        # A method that must import a library before transformers and peft (Unsloth patches
        # them) cannot start from the fork server, which has imported them.
        self._fresh_interpreter = {name for name, m in (methods or {}).items() if m.capabilities.import_first}
        # One thread a slot: each takes the oldest queued job, so the queue is first come, first served.
        self._threads = [
            threading.Thread(target=self._loop, name=f"job-runner-{slot}", daemon=True) for slot in range(max_running)
        ]

    def _measure(self, event: contract.WorkerEvent) -> None:
        if self.metrics is None:
            return
        if isinstance(event, contract.Progress):
            self.metrics.training_steps.inc()
            self.metrics.training_loss.set(event.loss)
            self.metrics.training_tokens_per_second.set(event.tokens_per_second)
        elif isinstance(event, contract.Validation):
            self.metrics.validation_loss.set(event.loss)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def build_checkpoint_artifact(self, job_id: str, step: int) -> None:
        """Builds the artifact of a checkpoint in a worker process (``worker
        --checkpoint-artifact``), one at a time; its log goes to the job's worker.log."""
        job_dir = self.job_dir(job_id)
        with self._artifact_lock, open(job_dir / WORKER_LOG, "ab") as worker_log:
            finished = subprocess.run(
                [sys.executable, "-m", "tunewright.trainer.worker", str(job_dir), "--checkpoint-artifact", str(step)],
                stdin=subprocess.DEVNULL,
                stdout=worker_log,
                stderr=subprocess.PIPE,
                env=self._worker_env(),
                timeout=CHECKPOINT_ARTIFACT_SECONDS,
                check=False,
            )
            worker_log.write(finished.stderr)
        if finished.returncode != 0:
            reasons = [e for e in map(_event_or_none, finished.stderr.splitlines()) if isinstance(e, Failed)]
            why = reasons[-1].message if reasons else f"the worker exited with code {finished.returncode}"
            raise FailedPrecondition(
                f"could not build the artifact of the checkpoint at step {step} of jobs/{job_id}: {why}; "
                f"see {job_dir / WORKER_LOG}",
                reason="CHECKPOINT_ARTIFACT_FAILED",
            )

    @staticmethod
    def _worker_env() -> dict[str, str]:
        # Nothing is fetched from a model hub at run time.
        return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}

    def _checkpoint_step(self, job_id: str) -> int:
        """The step of the job's latest complete checkpoint; 0 without one."""
        found = checkpoints.latest(self.job_dir(job_id) / checkpoints.CHECKPOINTS)
        return found.step if found else 0

    def start(self) -> None:
        for job_id in self.store.requeue_interrupted():
            log.warning("requeued interrupted job", job_id=job_id)
            self._end_orphan(job_id)
        for thread in self._threads:
            thread.start()

    def _end_orphan(self, job_id: str) -> None:
        """Ends the worker a dead trainer left running for ``job_id``: it would go on writing
        into the job's folder while the job runs again. Checked by its start time, so a
        recycled process id is never hit."""
        pid_file = self.job_dir(job_id) / WORKER_PID
        try:
            pid, started = map(int, pid_file.read_text().split())
        except (OSError, ValueError):
            return
        if process_start_time(pid) == started:
            log.warning("ending the orphaned worker of a dead trainer", job_id=job_id, pid=pid)
            self._terminate_group(pid)
        pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stops the runner. Running jobs' workers are stopped and the jobs queued again, so
        the next start of the trainer resumes them from their last checkpoints."""
        self._stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()
        with self._lock:
            running = list(self._running.values())
        for process in running:
            self._terminate(process)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=KILL_AFTER_SECONDS + 5)
        if self._forkserver is not None:
            self._forkserver.close()

    def cancel(self, job_id: str) -> bool:
        """Cancels a queued or running job; False if it had already finished."""
        if self.store.set_state(job_id, CANCELLED, only_from=(QUEUED,)):
            return True
        with self._lock:
            process = self._running.get(job_id)
            if process is None:
                if job_id not in self._starting:
                    return False
                # Between RUNNING and the worker's start: _run stops the worker once started.
                self._cancelled.add(job_id)
                return True
            self._cancelled.add(job_id)
        self._terminate(process)
        return True

    def _terminate(self, process: subprocess.Popen | ForkedWorker) -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=KILL_AFTER_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @staticmethod
    def _terminate_group(pid: int) -> None:
        """SIGTERM, then SIGKILL, to a worker's process group that is not this process's child."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + KILL_AFTER_SECONDS
            while time.monotonic() < deadline:
                os.killpg(pid, 0)  # raises ProcessLookupError once the group is gone
                time.sleep(0.1)
            os.killpg(pid, signal.SIGKILL)

    def _out_of_memory(
        self, code: int, watch: MemoryWatch | None, oom_kills_before: int | None, last: contract.Progress | None
    ) -> str | None:
        """Why the worker ran out of memory, for the job's error; None if it did not. A job
        that ran out once runs out again: it is not run again, the user changes it."""
        if code != -signal.SIGKILL:
            return None
        peak = max(watch.peak_bytes if watch else 0, last.peak_memory_bytes if last else 0)
        where = f"at step {last.step}" if last else "before its first step"
        fixes = (
            "lower micro_batch_size (batch_size stays, in more passes) or max_seq_length, or train with "
            "method qlora (a 4-bit base)"
        )
        if watch is not None and watch.exceeded:
            return (
                f"the worker passed the trainer's memory limit ({gib(watch.limit_bytes)}, --memory-limit) {where}, "
                f"at {gib(peak)} resident, and was stopped; {fixes}, or give the trainer a higher limit"
            )
        after = oom_kills()
        if oom_kills_before is not None and after is not None and after > oom_kills_before:
            return (
                f"the worker was killed {where}, probably by the kernel's out-of-memory killer (it ended a "
                f"process while this worker ran); its peak so far was {gib(peak)} resident; {fixes}"
            )
        return None

    def _launch(self, job_dir: Path, spec: JobSpec, events_fd: int) -> subprocess.Popen | ForkedWorker:
        """Starts the job's worker, in a session of its own, writing its events to ``events_fd``
        and its log to the job's worker.log: forked from the fork server when it is one process
        and may be, else as a new interpreter (torchrun's for several)."""
        env = self._worker_env()
        module = "tunewright.trainer.worker"
        worker = ["-m", module, str(job_dir)]
        processes = spec.hyperparameters.processes
        forkable = self._forkserver is not None and spec.method not in self._fresh_interpreter
        with open(job_dir / WORKER_LOG, "ab") as worker_log:
            if processes == 1 and forkable:
                try:
                    log_fd, args = worker_log.fileno(), [str(job_dir), "--events-fd", str(PASSED_FD)]
                    return self._forkserver.launch(module, args, env, log_fd, log_fd, events_fd)
                except (OSError, RuntimeError) as problem:
                    log.warning("could not fork the worker; starting it as a new interpreter", problem=str(problem))
            if processes == 1:
                command = [sys.executable, *worker, "--events-fd", str(events_fd)]
                pass_fds, stdout = (events_fd,), worker_log
            else:
                # torchrun starts the processes and closes every descriptor but the standard
                # three: the first process writes its events to standard output.
                launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                command = [sys.executable, *launcher, *worker, "--events-fd", "1"]
                pass_fds, stdout = (), events_fd
            return subprocess.Popen(
                command,
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=worker_log,
                env=env,
                start_new_session=True,
            )

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.store.next_queued()
            if job is None:
                with self.store.changed:
                    self.store.changed.wait(timeout=1.0)
                continue
            try:
                self._run(job)
            except Exception:  # noqa: BLE001 - one job's failure must not stop the queue
                log.exception("runner error", job_id=job.id)
                self.store.set_state(
                    job.id, FAILED, "RUNNER_ERROR", "the trainer could not run this job; see the trainer log"
                )

    def _run(self, job: JobRecord) -> None:
        with self._lock:
            if not self.store.set_state(job.id, RUNNING, only_from=(QUEUED,)):
                return
            self._starting.add(job.id)
        try:
            self._start_and_follow(job)
        finally:
            with self._lock:
                self._starting.discard(job.id)

    def _start_and_follow(self, job: JobRecord) -> None:
        bound = log.bind(job_id=job.id)
        job_dir = self.job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        spec = JobSpec(
            job_id=job.id,
            base_model=job.base_model,
            dataset=job.dataset,
            method=job.method,
            method_parameters=job.method_parameters,
            hyperparameters=msgspec.convert(job.hyperparameters, Hyperparameters),
            data_service=self.data_service,
            model_cache=str(self.model_cache),
        )
        write_bytes_atomic(job_dir / JOB_SPEC, contract.to_json(spec))
        checkpoint_before = self._checkpoint_step(job.id)
        read_fd, write_fd = os.pipe()
        oom_kills_before = oom_kills()
        process = self._launch(job_dir, spec, write_fd)
        os.close(write_fd)
        watch = MemoryWatch(process.pid, self.memory_limit_bytes) if self.memory_limit_bytes else None
        with self._lock:
            self._running[job.id] = process
            self._starting.discard(job.id)
            cancelled_while_starting = job.id in self._cancelled
        if cancelled_while_starting:
            # Stopped from another thread, so that its events are still read here until it exits.
            threading.Thread(target=self._terminate, args=(process,), daemon=True).start()
        write_pid_file(job_dir / WORKER_PID, process.pid)
        self._attempts[job.id] = self._attempts.get(job.id, 0) + 1
        bound.info("worker started", pid=process.pid, attempt=self._attempts[job.id])
        error: Failed | None = None
        done = False
        last: contract.Progress | None = None
        with os.fdopen(read_fd, "rb") as events:
            for line in events:
                try:
                    event = contract.decode_event(line)
                except (msgspec.DecodeError, msgspec.ValidationError) as problem:
                    bound.warning("unreadable worker event", line=line[:200], problem=str(problem))
                    continue
                if isinstance(event, Failed):
                    error = event
                elif isinstance(event, Done):
                    done = True
                else:
                    self.store.record(job.id, contract.event_kind(event), contract.event_payload(event))
                    self._measure(event)
                    if isinstance(event, contract.Progress):
                        last = event
        code = process.wait()
        if watch is not None:
            watch.stop()
        (job_dir / WORKER_PID).unlink(missing_ok=True)
        with self._lock:
            del self._running[job.id]
            cancelled = job.id in self._cancelled
            self._cancelled.discard(job.id)
        bound.info("worker exited", exit_code=code)
        if cancelled:
            self.store.set_state(job.id, CANCELLED)
        elif self._stopping.is_set():
            self.store.requeue(
                job.id,
                "the trainer stopped while this job ran; it resumes from its last checkpoint when the trainer is back",
            )
        elif code == 0 and done:
            self.store.set_state(job.id, SUCCEEDED)
        elif error is not None:
            self.store.set_state(job.id, FAILED, error.code, error.message)
        elif (out_of_memory := self._out_of_memory(code, watch, oom_kills_before, last)) is not None:
            self.store.set_state(job.id, FAILED, "OUT_OF_MEMORY", out_of_memory)
        else:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            checkpoint = self._checkpoint_step(job.id)
            if checkpoint > checkpoint_before:
                # It got somewhere: only runs that end without a new checkpoint count to the limit.
                self._attempts[job.id] = 1
            attempts = self._attempts.get(job.id, 1)
            if attempts < MAX_WORKER_ATTEMPTS:
                where = f"from its checkpoint at step {checkpoint}" if checkpoint else "from the start"
                self.store.requeue(
                    job.id,
                    f"the worker {how} without reporting an error; running it again {where} "
                    f"(run {attempts + 1} of at most {MAX_WORKER_ATTEMPTS} without a new checkpoint)",
                )
                return
            self.store.set_state(
                job.id,
                FAILED,
                "WORKER_CRASHED",
                f"the worker {how} without reporting an error, {attempts} times in a row without writing a "
                f"checkpoint; see {job_dir / WORKER_LOG}",
            )
        self._attempts.pop(job.id, None)
