"""Label Studio's own virtualenv, at ``<cache>/label-studio-<version>`` (``<cache>`` as for
the local Kafka), built by :mod:`hitl_router.toolvenv`.

Label Studio cannot live in the project's venv: it pins ``python-json-logger==2.0.4``
(we pin 4.x) and, through its exact ``label-studio-sdk`` pin and opencv, ``numpy<2.3``
(we pin 2.4). So it gets a venv of its own (about 1 GB, about 90 s to build), made once
under a lock and marked complete only when ``label-studio`` is installed at the pinned
version.
"""

from __future__ import annotations

from pathlib import Path

from hitl_router import toolvenv
from hitl_router.errors import LabelStudioError
from hitl_router.localkafka.broker import cache_dir

LS_VERSION = "1.23.2"
REQUIREMENT = f"label-studio=={LS_VERSION}"


def venv_dir() -> Path:
    """Where the venv lives: ``<cache>/label-studio-<LS_VERSION>``."""
    return cache_dir() / f"label-studio-{LS_VERSION}"


def executable(root: Path | None = None) -> Path:
    """The ``label-studio`` console script of the venv at ``root`` (default :func:`venv_dir`)."""
    return (root or venv_dir()) / "bin" / "label-studio"


def install() -> Path:
    """Build the venv once (a no-op when complete, also across processes); return the path
    of its ``label-studio`` executable. A failure raises :class:`LabelStudioError` (kind
    ``setup``) with pip's output."""
    root = toolvenv.ensure(venv_dir(), [REQUIREMENT], "label-studio", LS_VERSION, LabelStudioError)
    return executable(root)
