"""How a worker's memory ends: the trainer's own limit, and the kernel's out-of-memory killer.

A worker that takes more memory than the machine has is ended by the kernel with SIGKILL,
which looks like any other crash. Two things tell them apart here:

- ``MemoryWatch``: with a memory limit on the trainer (``--memory-limit``), a thread follows
  the resident memory of the worker's process group and SIGKILLs it above the limit, before
  the kernel has to choose a process to kill (which may be another service, or the trainer).
- ``oom_kills``: the kernel's count of processes its out-of-memory killer ended since boot
  (``oom_kill`` in /proc/vmstat, Linux 4.13 and later, also counting kills by a cgroup's
  limit). If it went up while a worker that died of SIGKILL ran, the worker is taken to be one
  of them. On a host where other processes are OOM-killed at the same time this can be wrong,
  which is why the report says "probably".
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import psutil

POLL_SECONDS = 0.25


def oom_kills() -> int | None:
    """Processes ended by the kernel's out-of-memory killer since boot; None where unknown."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def group_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (torchrun's processes), in bytes."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class MemoryWatch:
    """Follows a worker's resident memory; above ``limit_bytes`` it SIGKILLs the worker's
    process group. ``peak_bytes`` is the most it saw; ``exceeded`` whether it killed."""

    def __init__(self, pid: int, limit_bytes: int) -> None:
        self.pid = pid
        self.limit_bytes = limit_bytes
        self.peak_bytes = 0
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"memory-watch-{pid}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            rss = group_rss_bytes(self.pid)
            self.peak_bytes = max(self.peak_bytes, rss)
            if rss > self.limit_bytes:
                self.exceeded = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                return
            self._stop.wait(POLL_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit, K/M/G/T (powers of 1024, with or
    without "iB"); ``8G`` and ``8GiB`` are 8 * 2**30."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number = cleaned.rstrip("KMGT")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write it as 8G, 8GiB, 512M or a number of bytes") from None
    if unit not in units or value <= 0:
        raise ValueError(f"{text!r} is not a size; write it as 8G, 8GiB, 512M or a number of bytes")
    return int(value * units[unit])
