"""Label Studio's own virtualenv, at ``<cache>/label-studio-<version>`` (``<cache>`` as for
the local Kafka).

Label Studio cannot live in the project's venv: it pins ``python-json-logger==2.0.4``
(we pin 4.x) and, through its exact ``label-studio-sdk`` pin and opencv, ``numpy<2.3``
(we pin 2.4). So it gets a venv of its own (about 1 GB, about 90 s to build), made once
under a lock and marked complete only when ``label-studio`` imports at the pinned version.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from hitl_router.errors import LabelStudioError
from hitl_router.localkafka.broker import _locked, cache_dir

log = logging.getLogger(__name__)

LS_VERSION = "1.23.2"
REQUIREMENT = f"label-studio=={LS_VERSION}"
_COMPLETE = ".complete"
_LOCK = ".lock"  # created by _locked(); never removed while someone may hold it


def venv_dir() -> Path:
    """Where the venv lives: ``<cache>/label-studio-<LS_VERSION>``."""
    return cache_dir() / f"label-studio-{LS_VERSION}"


def executable(root: Path | None = None) -> Path:
    """The ``label-studio`` console script of the venv at ``root`` (default :func:`venv_dir`)."""
    return (root or venv_dir()) / "bin" / "label-studio"


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(
    cmd: list[str], what: str, timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing its output; a timeout, a missing executable or a non-zero exit
    raise LabelStudioError (kind ``setup``) with the output's tail."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise LabelStudioError(f"`{what}` did not finish within {timeout:g}s") from exc
    except OSError as exc:
        raise LabelStudioError(f"`{what}` could not run: {exc}") from exc
    if proc.returncode != 0:
        raise LabelStudioError(
            f"`{what}` failed (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}"
        )
    return proc


def install() -> Path:
    """Build the venv once (a no-op when complete, also across processes); return the path
    of its ``label-studio`` executable."""
    root = venv_dir()
    if (root / _COMPLETE).exists():
        return executable(root)
    with _locked(root):
        if not (root / _COMPLETE).exists():
            _build(root)
    return executable(root)


def _clear(root: Path) -> None:
    """Remove an incomplete leftover in ``root`` but keep the lock file being held.

    The venv cannot be built elsewhere and renamed (its scripts name their absolute path).
    """
    for child in root.iterdir():
        if child.name == _LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _build(root: Path) -> None:
    _clear(root)
    log.info("installing %s into %s (about 90 s, 1 GB)", REQUIREMENT, root)
    # from a venv, `-m venv` bases the new one on the base interpreter, not on our venv
    _run([sys.executable, "-m", "venv", str(root)], f"{sys.executable} -m venv {root}", 300)
    python = str(root / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run(
        [python, "-m", "pip", "install", "-q", REQUIREMENT],
        f"pip install {REQUIREMENT} (into {root}; the next install() starts it afresh)",
        1800,
        env,
    )
    probe = "import importlib.metadata as m; print(m.version('label-studio'))"
    version = _run([python, "-c", probe], "label-studio version check", 60, env).stdout.strip()
    if version != LS_VERSION or not executable(root).is_file():
        raise LabelStudioError(
            f"pip installed label-studio {version!r} into {root}, expected {LS_VERSION} "
            f"with bin/label-studio; the next install() starts it afresh"
        )
    (root / _COMPLETE).write_text(f"label-studio {version}\n")
    log.info("installed label-studio %s into %s", version, root)
