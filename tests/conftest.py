"""Shared fixtures. The real local Kafka is started once per session, on its own
ports and in its own directory, and stopped at the end. Set HITL_TEST_BOOTSTRAP to
use a broker you already run instead.

Likewise one local Label Studio (``label_studio``), with an admin and one annotator of
known tokens; set HITL_TEST_LABEL_STUDIO_URL and HITL_TEST_LABEL_STUDIO_TOKEN to use one
you run instead (then there is no annotator). Its first setup on a machine installs Label
Studio (about 90 s) and migrates a fresh database (about 60 s): modules using it should
raise their pytest timeout above the default 300 s."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hitl_router.locallabelstudio import LabelStudioServer, LocalLabelStudio

REPO = Path(__file__).resolve().parents[1]
ANNOTATOR_EMAIL = "annotator@hitl-router.local"
ANNOTATOR_TOKEN = "a11071a70250000000000000000000000000000a"


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


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLabelStudio]:
    """The local Label Studio itself (to add users while it runs); skipped when the tests
    use one you run (HITL_TEST_LABEL_STUDIO_URL)."""
    from hitl_router.locallabelstudio import LocalLabelStudio, install

    if os.environ.get("HITL_TEST_LABEL_STUDIO_URL"):
        pytest.skip("needs the local Label Studio (HITL_TEST_LABEL_STUDIO_URL is set)")
    server = LocalLabelStudio(
        free_port(), tmp_path_factory.mktemp("label-studio"), executable=install()
    )
    server.start(timeout=180)
    try:
        server.add_user(ANNOTATOR_EMAIL, "annotator-pass-123", ANNOTATOR_TOKEN)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio(request: pytest.FixtureRequest) -> LabelStudioServer:
    """One Label Studio for the session: its URL, the admin's token, an annotator's."""
    from hitl_router.locallabelstudio import LabelStudioServer, whoami

    existing = os.environ.get("HITL_TEST_LABEL_STUDIO_URL")
    if existing:
        url = existing.rstrip("/")
        token = os.environ.get("HITL_TEST_LABEL_STUDIO_TOKEN", "")
        return LabelStudioServer(url, token, admin_id=int(whoami(url, token)["id"]))
    server = request.getfixturevalue("label_studio_server")
    return LabelStudioServer(
        url=server.url,
        token=server.token,
        annotator_email=ANNOTATOR_EMAIL,
        annotator_token=ANNOTATOR_TOKEN,
        annotator_id=int(server.whoami(ANNOTATOR_TOKEN)["id"]),
        admin_id=int(server.whoami(server.token)["id"]),
    )
