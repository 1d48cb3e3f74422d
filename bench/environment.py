"""What a result was measured on: the command, the machine, the versions, the code."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def command_line() -> str:
    python = sys.executable
    with contextlib.suppress(ValueError):
        python = str(Path(python).relative_to(REPO))
    return shlex.join([python, "-m", "bench.run", *sys.argv[1:]])


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]  # MemTotal: N kB
        mem = round(int(first.split()[1]) / 1024**2, 1)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gib": mem,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def versions(external: bool) -> dict[str, Any]:
    from hitl_router.localkafka.broker import KAFKA_VERSION

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in (
        "hitl-router",
        "faust-streaming",
        "aiokafka",
        "kafka-python",
        "confluent-kafka",
        "numpy",
        "orjson",
        "msgspec",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["kafka_broker"] = "external (--bootstrap)" if external else KAFKA_VERSION
    java = shutil.which("java")
    if java and not external:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
        out["java"] = (proc.stderr or proc.stdout).splitlines()[0] if proc.returncode == 0 else None
    return out


def source_state() -> dict[str, Any]:
    """Which code was measured: the commit, uncommitted changes, a hash of hitl_router/."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "hitl_router").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    out: dict[str, Any] = {"hitl_router_sha256": digest.hexdigest()[:16]}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "hitl_router"], capture_output=True)
        out["commit"] = head.stdout.decode().strip() or None
        out["hitl_router_uncommitted_changes"] = bool(dirty.stdout.strip())
    return out
