"""Node side: run filesystem I/O in detached workers that can be abandoned, never waited for.

A process blocked in the kernel on hung storage (state D) cannot be killed, and a parent that
waits for it hangs too. So every call that may touch a filesystem (statfs, a read, a write,
the shutdown ioctl) runs in a forked *worker* in its own session, with its standard streams on
``/dev/null``: it shares no pipe and no process group with the command lifekit's runner is
waiting for. The worker reports each step it starts and its result on a private pipe; the
caller waits until a deadline and then reports which step was still pending and the worker's
pid, and exits. A stuck worker is left to the node's init, which reaps it once the storage
answers (or the node loses power). Stdlib only: it runs on the node, under any Python >= 3.11.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Worker", "alive_since", "start_worker", "wait_workers"]


@dataclass
class Worker:
    """One started worker and what it said so far."""

    pid: int
    fd: int
    deadline: float
    steps: list[str] = field(default_factory=list)
    result: dict[str, object] | None = None
    buffer: bytes = b""

    @property
    def done(self) -> bool:
        return self.result is not None

    def report(self) -> dict[str, object]:
        """What the caller prints: the result, or which step was pending at the deadline."""
        if self.result is not None:
            return self.result
        return {
            "ok": False,
            "timeout": True,
            "step": self.steps[-1] if self.steps else "start",
            "stuck": [self.pid, process_start(self.pid)],
        }


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks (with the pid, its identity), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def alive_since(pid: int, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs (pid reuse proof)."""
    return start is not None and process_start(pid) == start


def start_worker(
    job: Callable[[Callable[[str], None]], dict[str, object]], timeout: float
) -> Worker:
    """Fork a detached worker running ``job(step)``; ``step(name)`` announces each step."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        status = 0
        try:
            os.close(read_fd)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for target in (0, 1, 2):
                os.dup2(null, target)

            def step(name: str) -> None:
                os.write(write_fd, json.dumps({"step": name}).encode() + b"\n")

            try:
                result = job(step)
            except OSError as exc:
                result = {"ok": False, "error": f"{exc.strerror or exc} ({exc.filename or ''})"}
            os.write(write_fd, json.dumps({"result": result}).encode() + b"\n")
        except BaseException:  # noqa: BLE001 - a forked child must never return into the caller
            status = 1
        os._exit(status)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return Worker(pid=pid, fd=read_fd, deadline=time.monotonic() + timeout)


def _read(worker: Worker) -> bool:
    """Read what the worker wrote; return whether its pipe reached end of file."""
    try:
        data = os.read(worker.fd, 65536)
    except BlockingIOError:
        return False
    worker.buffer += data
    while b"\n" in worker.buffer:
        line, _, worker.buffer = worker.buffer.partition(b"\n")
        message = json.loads(line)
        if "step" in message:
            worker.steps.append(str(message["step"]))
        else:
            worker.result = message["result"]
    return not data


def wait_workers(workers: list[Worker]) -> None:
    """Wait until every worker answered or passed its deadline; reap those that answered."""
    pending = {worker.fd: worker for worker in workers}
    while pending:
        now = time.monotonic()
        for fd, worker in list(pending.items()):
            if worker.deadline <= now:
                os.close(fd)
                del pending[fd]
        if not pending:
            break
        wait = min(worker.deadline for worker in pending.values()) - now
        readable, _, _ = select.select(list(pending), [], [], max(wait, 0))
        for fd in readable:
            worker = pending[fd]
            if _read(worker) or worker.done:
                os.close(fd)
                del pending[fd]
    for worker in workers:
        if worker.done:
            # It exits right after its last write; a short bounded wait reaps it.
            for _ in range(200):
                if os.waitpid(worker.pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.005)
