"""A fork server: imports heavy libraries once, then forks a process for each request.

Importing torch, transformers and peft takes a job's worker 10 to 12 seconds of CPU on a
2-core machine before it reads its first example, and llama.cpp's GGUF converter 9 of its 14
seconds on a small model; a one-step job or a small export spends most of its life importing.
A fork server (``python -m tunewright.core.forkserver``) imports them once and forks each
process from that state, which then starts its real work within a second.

A forked process is the same as one started with ``python -m MODULE ARGS`` (or ``python
SCRIPT ARGS``): it runs the module or script as ``__main__`` with the request's arguments and
environment, in a session of its own (so that its caller can stop its whole process group),
with its standard output and error going where the caller says, and its exit status passed
back to the caller. What a fork server must not do is anything that cannot be forked: it
starts no threads, opens no gRPC channel (grpc is not imported before the fork) and never
touches a GPU. Where there is an NVIDIA driver callers do not use one at all (``usable``):
a CUDA runtime touched while importing (bitsandbytes does) cannot be used in a forked child.

Each request is one SOCK_SEQPACKET message: a JSON object (what to run, its arguments, its
environment) and three or four descriptors (standard output, standard error, the request's
own status socket, and optionally one more that the process finds as descriptor 3). The status
socket gets ``pid N`` once the process has its own session, then ``exit CODE`` (negative:
killed by that signal) when it ends.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# Set to 0 to start every process as a new interpreter instead.
ENABLE = "TUNEWRIGHT_FORK_WORKERS"
MAX_REQUEST_BYTES = 1 << 20
# Standard output, standard error, the request's status socket, and the one passed on, if any.
MAX_DESCRIPTORS = 4
# Where a forked process finds the descriptor passed on to it.
PASSED_FD = 3


def usable() -> bool:
    """Whether callers should fork their processes here: Linux, no NVIDIA driver, not turned off."""
    if os.environ.get(ENABLE, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    return not Path("/proc/driver/nvidia").exists()


class ForkedWorker:
    """A process forked by a fork server, with the part of ``subprocess.Popen`` callers use.

    Any number of threads may wait for it: one thread of its own reads the exit status."""

    def __init__(self, status: socket.socket, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()
        threading.Thread(target=self._read_exit, args=(status,), name=f"forked-{pid}", daemon=True).start()

    def _read_exit(self, status: socket.socket) -> None:
        with status:
            message = status.recv(64)
        if message.startswith(b"exit "):
            self.returncode = int(message.split()[1])
        else:
            # The fork server died before its child: end the child, whose status is lost with it.
            log.warning("the fork server ended before its process; stopping that process", pid=self.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            _wait_for_exit(self.pid)
            self.returncode = -signal.SIGKILL
        self._ended.set()

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked process {self.pid}", timeout)
        assert self.returncode is not None
        return self.returncode

    def poll(self) -> int | None:
        return self.returncode if self._ended.is_set() else None


def _wait_for_exit(pid: int) -> None:
    """Waits for a process that is not this one's child to end."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        selector = selectors.DefaultSelector()
        selector.register(handle, selectors.EVENT_READ)
        selector.select(timeout=30)
        selector.close()
    finally:
        os.close(handle)


class ForkServer:
    """The caller's side: starts the fork server on first use and asks it for processes.

    ``preload`` are the modules it imports before the first fork, after putting ``path``
    first on its ``sys.path``; ``env`` is its environment (what a library reads as it is
    imported comes from there, the rest from each request's)."""

    def __init__(self, env: Mapping[str, str], preload: Sequence[str], path: Sequence[str] = ()) -> None:
        self._env = dict(env)
        self._preload = json.dumps({"modules": list(preload), "path": [str(p) for p in path]})
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The fork server's process id; None before the first launch and after ``close``."""
        return self._process.pid if self._process is not None else None

    def _started(self) -> socket.socket:
        if self._control is not None and self._process is not None and self._process.poll() is None:
            return self._control
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tunewright.core.forkserver", str(theirs.fileno()), self._preload],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=self._env,
                # Out of its caller's process group: a Ctrl-C meant for the caller does not
                # end it. It ends when the caller closes its socket, or dies.
                start_new_session=True,
            )
        self._control = ours
        log.info("fork server started", pid=self._process.pid)
        return ours

    def launch(
        self,
        target: str,
        args: Sequence[str],
        env: Mapping[str, str],
        stdout: int,
        stderr: int,
        passed: int | None = None,
    ) -> ForkedWorker:
        """Forks a process that runs ``python -m TARGET ARGS``, or ``python TARGET ARGS`` for
        a ``.py`` file, with ``passed`` as its descriptor 3 (``PASSED_FD``); returns once the
        process has its own session."""
        request = json.dumps({"target": target, "args": list(args), "env": dict(env)}).encode()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        descriptors = [stdout, stderr, theirs.fileno(), *([] if passed is None else [passed])]
        with theirs, self._lock:
            socket.send_fds(self._started(), [request], descriptors)
        message = ours.recv(64)
        if not message.startswith(b"pid "):
            ours.close()
            raise RuntimeError(f"the fork server could not start {target}; see its caller's log")
        return ForkedWorker(ours, int(message.split()[1]))

    def close(self) -> None:
        """Stops the fork server; workers already forked run on (the runner stops those)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


# The fork server's side.


def _preload(modules: Sequence[str], path: Sequence[str]) -> None:
    started = time.monotonic()
    sys.path[:0] = path
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:  # the process imports what it needs anyway; only slower
            print(f"fork server: could not preload {module}: {error}", file=sys.stderr, flush=True)
    print(f"fork server: ready in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)


def _run_child(request: dict, descriptors: list[int], ready: int, others: list[int]) -> None:
    """In the forked child: becomes the requested process, and never returns."""
    code = 1
    try:
        os.setsid()
        os.write(ready, b"1")
        os.close(ready)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in others:
            os.close(fd)
        stdout, stderr, status, *passed = descriptors
        os.close(status)
        null = os.open(os.devnull, os.O_RDONLY)
        # In this order: the passed descriptor's place may hold standard output or error.
        for source, target in ((null, 0), (stdout, 1), (stderr, 2), *((fd, PASSED_FD) for fd in passed)):
            os.dup2(source, target)
        for fd in {null, stdout, stderr, *passed} - {0, 1, 2, *([PASSED_FD] if passed else [])}:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        target = request["target"]
        sys.argv = [target, *request["args"]]
        if target.endswith(".py"):
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(control: socket.socket) -> None:
    """Forks a process for each request until the caller closes its end of ``control``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[int, socket.socket] = {}
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                request, descriptors, _, _ = socket.recv_fds(control, MAX_REQUEST_BYTES, MAX_DESCRIPTORS)
                if not request:
                    return  # the caller is gone; what was forked runs on in its own session
                _fork(json.loads(request), descriptors, children, [control.fileno(), wake_read, wake_write])
            else:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
        _reap(children)


def _fork(request: dict, descriptors: list[int], children: dict[int, socket.socket], own: list[int]) -> None:
    status = socket.socket(fileno=descriptors[2])
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_read)
        _run_child(request, descriptors, ready_write, own + [s.fileno() for s in children.values()])
    os.close(ready_write)
    os.read(ready_read, 1)  # the child has its own session: its process group can be signalled
    os.close(ready_read)
    for fd in descriptors[:2] + descriptors[3:]:
        os.close(fd)
    children[pid] = status
    with contextlib.suppress(OSError):
        status.send(f"pid {pid}".encode())


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status = children.pop(pid, None)
        if status is not None:
            with contextlib.suppress(OSError):
                status.send(f"exit {os.waitstatus_to_exitcode(wait_status)}".encode())
            status.close()


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    preload = json.loads(sys.argv[2])
    _preload(preload["modules"], preload["path"])
    serve(control)


if __name__ == "__main__":
    main()
