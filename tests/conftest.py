"""Shared fixtures. The real local Kafka is started once per session, on its own
ports and in its own directory, and stopped at the end. Set HITL_TEST_BOOTSTRAP to
use a broker you already run instead."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("HITL_TEST_BOOTSTRAP")
    if existing:
        yield existing
        return
    from hitl_router.localkafka.broker import LocalKafka

    broker = LocalKafka(
        port=free_port(), controller_port=free_port(), run_dir=tmp_path_factory.mktemp("kafka")
    )
    broker.start(timeout=120)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
