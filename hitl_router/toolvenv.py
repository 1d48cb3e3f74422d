"""A virtualenv of its own for a tool whose pins clash with the project's: Label Studio's
server (:mod:`hitl_router.locallabelstudio`) and the benchmark's Quix Streams app
(``bench/quix_venv.py``).

It lives at ``<cache>/<name>`` (``<cache>`` as for the local Kafka), is built once under a
lock (a no-op when complete, also across processes), with the leftovers of an interrupted
build cleared first, and is marked complete (``.complete``: the distribution and its
version, then its ``pip freeze``) only when the distribution is installed at the pinned
version. It cannot be built elsewhere and renamed: its scripts name their absolute path.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hitl_router.errors import RouterError
from hitl_router.localkafka.broker import _locked
from hitl_router.localprom.binaries import _tail

log = logging.getLogger(__name__)

#: makes the error a failed command raises, from its message
Error = Callable[[str], Exception]
COMPLETE = ".complete"
_LOCK = ".lock"  # created by _locked(); never removed while someone may hold it


def run(
    cmd: list[str],
    what: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    error: Error = RouterError,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing its output; a timeout, a missing executable or a non-zero exit
    raise ``error`` with the output's tail."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise error(f"`{what}` did not finish within {timeout:g}s") from exc
    except OSError as exc:
        raise error(f"`{what}` could not run: {exc}") from exc
    if proc.returncode != 0:
        raise error(
            f"`{what}` failed (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
        )
    return proc


def ensure(root: Path, requirements: Sequence[str], dist: str, version: str, error: Error) -> Path:
    """The venv at ``root`` holding ``requirements``, with ``dist`` at ``version``; built
    now if it is not complete. Returns ``root``."""
    if not (root / COMPLETE).exists():
        with _locked(root):
            if not (root / COMPLETE).exists():
                _build(root, requirements, dist, version, error)
    return root


def frozen(root: Path) -> list[str] | None:
    """The ``pip freeze`` of a complete venv (None: not built)."""
    marker = root / COMPLETE
    return marker.read_text().splitlines()[1:] if marker.exists() else None


def _build(root: Path, requirements: Sequence[str], dist: str, version: str, error: Error) -> None:
    for child in root.iterdir():  # an incomplete leftover; keep the lock being held
        if child.name == _LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    wanted = " ".join(requirements)
    log.info("installing %s into %s", wanted, root)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # from a venv, `-m venv` bases the new one on the base interpreter, not on our venv
    run([sys.executable, "-m", "venv", str(root)], f"python -m venv {root}", 300, env, error)
    python = str(root / "bin" / "python")
    run(
        [python, "-m", "pip", "install", "-q", *requirements],
        f"pip install {wanted} (into {root}; the next install starts it afresh)",
        1800,
        env,
        error,
    )
    probe = f"import importlib.metadata as m; print(m.version({dist!r}))"
    found = run([python, "-c", probe], f"{dist} version check", 120, env, error).stdout.strip()
    if found != version:
        raise error(
            f"pip installed {dist} {found!r} into {root}, expected {version}; "
            "the next install starts it afresh"
        )
    freeze = run([python, "-m", "pip", "freeze"], "pip freeze", 120, env, error).stdout
    (root / COMPLETE).write_text(f"{dist} {found}\n{freeze}")
    log.info("installed %s %s into %s", dist, found, root)
