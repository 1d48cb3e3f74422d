"""Subprocesses of the benchmark: started in their own session, dying with their parent,
always stopped at exit, and their CPU time read from ``/proc``."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PYTHON = sys.executable
PIPE = subprocess.PIPE
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
_RUNNING: list[Proc] = []
#: Set by the signal handler of ``bench.run``: every wait loop gives up when it is set.
INTERRUPTED = threading.Event()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class Proc:
    """One subprocess, its output in ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: Path, **popen: object) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            stdout=popen.pop("stdout", self._log),
            stderr=self._log,
            stdin=popen.pop("stdin", subprocess.DEVNULL),
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children
            preexec_fn=_die_with_parent,
            **popen,  # type: ignore[call-overload]
        )
        self.started = time.time()
        self.killed = False  # did it need SIGKILL?
        #: what stops it; a profiler wrapping the process takes SIGINT to its whole group
        #: (it writes its output, the process under it shuts down)
        self.stop_signal = signal.SIGTERM
        self.signal_group = False
        _RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.signal_group:
                os.killpg(self.pid, self.stop_signal)  # its own session: pgid == pid
            else:
                self.popen.send_signal(self.stop_signal)

    def stop(self, grace: float = 20.0) -> int | None:
        """``stop_signal`` (SIGTERM), then SIGKILL after ``grace`` seconds; returns the
        exit code."""
        if self.alive():
            self.signal_stop()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
                self.killed = True
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()
        if self in _RUNNING:
            _RUNNING.remove(self)
        return self.popen.returncode

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)


def stop_all(procs: list[Proc] | None = None, grace: float = 20.0) -> float:
    """Stop ``procs`` (default: every running one): SIGTERM to all at once, SIGKILL to
    whichever is still running ``grace`` seconds later. Returns the seconds it took."""
    targets = list(_RUNNING if procs is None else procs)
    t0 = time.monotonic()
    for p in targets:
        if p.alive():
            p.signal_stop()
    for p in targets:
        p.stop(grace=max(0.0, t0 + grace - time.monotonic()))
    return time.monotonic() - t0


def cpu_seconds(pid: int | None, main_thread: bool = False) -> float:
    """User + system CPU seconds of a live process (0.0 if it is gone); with
    ``main_thread``, of its main thread only (the one Python's event loop runs on)."""
    if pid is None:
        return 0.0
    try:
        path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
        stat = Path(path).read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def run_delay_seconds(pid: int | None) -> float:
    """Seconds the main thread of ``pid`` waited, runnable, for a CPU (schedstat)."""
    if pid is None:
        return 0.0
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass(frozen=True)
class Usage:
    """CPU seconds of some processes, of the broker, of this process and of the whole
    machine (busy and total, summed over CPUs) at one instant."""

    at: float
    procs: float
    #: of the processes' main threads
    main: float
    #: the main threads' waits for a CPU while runnable
    main_waited: float
    broker: float
    this: float
    busy: float
    total: float

    @classmethod
    def now(cls, pids: list[int], broker_pid: int | None) -> Usage:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        idle = fields[3] + fields[4]  # idle + iowait
        t = os.times()
        return cls(
            at=time.time(),
            procs=sum(cpu_seconds(pid) for pid in pids),
            main=sum(cpu_seconds(pid, main_thread=True) for pid in pids),
            main_waited=sum(run_delay_seconds(pid) for pid in pids),
            broker=cpu_seconds(broker_pid),
            this=t.user + t.system,
            busy=(sum(fields) - idle) / _CLK_TCK,
            total=sum(fields) / _CLK_TCK,
        )

    def since(self, start: Usage) -> dict[str, float]:
        """Cores used on average between ``start`` and now: by the processes, the broker,
        the whole machine, and everything else on it (``others``)."""
        wall = max(self.at - start.at, 1e-9)
        ncpu = len(os.sched_getaffinity(0))
        machine = (self.busy - start.busy) / max(self.total - start.total, 1e-9) * ncpu
        mine = (self.procs - start.procs) + (self.broker - start.broker) + (self.this - start.this)
        return {
            "procs_cores": (self.procs - start.procs) / wall,
            "broker_cores": (self.broker - start.broker) / wall,
            "machine_busy_cores": machine,
            "others_cores": max(0.0, machine - mine / wall),
        }
