"""Quix Streams' own virtualenv, at ``<cache>/quixstreams-<version>`` (``<cache>`` as for the
local Kafka: ``hitl_router.localkafka.broker.cache_dir()``).

quixstreams 3.28.1 pins ``confluent-kafka<2.13`` and ``pydantic<2.14``; the project's venv
has confluent-kafka 2.16.1 (the benchmark's other librdkafka contenders) and pydantic 2.14
(through label-studio-sdk). So the Quix app gets a venv of its own, built once under a lock
and marked complete (``.complete``, with its ``pip freeze``) only when quixstreams imports
at the pinned version. ``bench.quix_app`` runs in it with ``PYTHONPATH`` at the repository
(it imports only ``bench.anchor_rules``, orjson and numpy besides quixstreams).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

QUIX_VERSION = "3.28.1"
#: exact pins: Quix, the newest confluent-kafka and pydantic it allows, and the project's
#: numpy and orjson (the per-message rules use both)
REQUIREMENTS = (
    f"quixstreams=={QUIX_VERSION}",
    "confluent-kafka==2.12.2",
    "pydantic==2.13.5",
    "numpy==2.4.6",
    "orjson==3.13.0",
)
_COMPLETE = ".complete"
_LOCK = ".lock"


class QuixVenvError(RuntimeError):
    pass


def venv_dir() -> Path:
    from hitl_router.localkafka.broker import cache_dir

    return cache_dir() / f"quixstreams-{QUIX_VERSION}"


def python(root: Path | None = None) -> Path:
    return (root or venv_dir()) / "bin" / "python"


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], timeout: float) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QuixVenvError(f"`{' '.join(cmd)}` failed: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise QuixVenvError(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{tail}")
    return proc.stdout


def install() -> Path:
    """Build the venv once (a no-op when complete, also across processes); return its
    python."""
    root = venv_dir()
    if not (root / _COMPLETE).exists():
        with _locked(root):
            if not (root / _COMPLETE).exists():
                _build(root)
    return python(root)


def versions() -> str | None:
    """What the built venv holds of the pinned packages (from its ``pip freeze``)."""
    marker = venv_dir() / _COMPLETE
    if not marker.exists():
        return None
    pinned = {r.split("==")[0].lower() for r in REQUIREMENTS}
    found = [
        line.replace("==", " ")
        for line in marker.read_text().splitlines()[1:]
        if line.split("==")[0].lower() in pinned
    ]
    return ", ".join(found) or None


def _build(root: Path) -> None:
    for child in root.iterdir():  # an incomplete leftover; keep the lock being held
        if child.name != _LOCK:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    log.info("installing %s into %s", " ".join(REQUIREMENTS), root)
    # from a venv, `-m venv` bases the new one on the base interpreter, not on our venv
    _run([sys.executable, "-m", "venv", str(root)], 300)
    py = str(python(root))
    _run([py, "-m", "pip", "install", "-q", *REQUIREMENTS], 1800)
    probe = "import quixstreams, confluent_kafka; print(quixstreams.__version__)"
    version = _run([py, "-c", probe], 120).strip()
    if version != QUIX_VERSION:
        raise QuixVenvError(f"{root}: quixstreams {version!r} installed, {QUIX_VERSION} expected")
    freeze = _run([py, "-m", "pip", "freeze"], 120)
    (root / _COMPLETE).write_text(f"quixstreams {version}\n{freeze}")
    log.info("installed quixstreams %s into %s", version, root)
