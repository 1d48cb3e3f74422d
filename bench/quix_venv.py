"""Quix Streams' own virtualenv, at ``<cache>/quixstreams-<version>`` (``<cache>`` as for the
local Kafka: ``hitl_router.localkafka.broker.cache_dir()``).

quixstreams 3.28.1 pins ``confluent-kafka<2.13`` and ``pydantic<2.14``; the project's venv
has confluent-kafka 2.16.1 (the benchmark's other librdkafka contenders) and pydantic 2.14
(through label-studio-sdk). So the Quix app gets a venv of its own
(:mod:`hitl_router.toolvenv`: built once under a lock, marked complete with its ``pip
freeze`` only when quixstreams is installed at the pinned version). ``bench.quix_app`` runs
in it with ``PYTHONPATH`` at the repository (it imports only ``bench.anchor_rules``, orjson
and numpy besides quixstreams).
"""

from __future__ import annotations

from pathlib import Path

from hitl_router import toolvenv

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


class QuixVenvError(RuntimeError):
    pass


def venv_dir() -> Path:
    from hitl_router.localkafka.broker import cache_dir

    return cache_dir() / f"quixstreams-{QUIX_VERSION}"


def python(root: Path | None = None) -> Path:
    return (root or venv_dir()) / "bin" / "python"


def install() -> Path:
    """Build the venv once (a no-op when complete, also across processes); return its
    python."""
    root = toolvenv.ensure(venv_dir(), REQUIREMENTS, "quixstreams", QUIX_VERSION, QuixVenvError)
    return python(root)


def versions() -> str | None:
    """What the built venv holds of the pinned packages (from its ``pip freeze``)."""
    freeze = toolvenv.frozen(venv_dir())
    if freeze is None:
        return None
    pinned = {r.split("==")[0].lower() for r in REQUIREMENTS}
    found = [line.replace("==", " ") for line in freeze if line.split("==")[0].lower() in pinned]
    return ", ".join(found) or None
