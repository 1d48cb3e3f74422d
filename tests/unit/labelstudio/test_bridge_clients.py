"""The bridge moves its bytes as the workers do: librdkafka reads its topics and sends
its labels and dead letters unless ``worker.consumer``/``worker.producer`` say aiokafka."""

from __future__ import annotations

import pytest

from hitl_router.agents.bridge import _Bridge, build_bridge
from hitl_router.agents.rdkafka_publishing import RdkafkaPublisher
from hitl_router.router.config import parse_config

QUEUES = [{"name": "uncertain", "when": {"max_prob_below": 0.7}}]


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HITL_TEST_LS_TOKEN", "tok-1234")


def _bridge(worker: dict[str, str]):
    config = parse_config(
        {"queues": QUEUES, "label_studio": {"token_env": "HITL_TEST_LS_TOKEN"}, "worker": worker}
    )
    return config, build_bridge(config, web_port=65535)


def test_the_bridge_reads_its_topics_with_librdkafka_by_default(token):
    config, app = _bridge({})
    assert app.reader_conf is not None
    assert app.reader_conf["group.id"] == f"{config.label_studio.group_id}-reader"
    assert set(app.batch_topics) == {config.queues[0].topic, config.topics.eval}
    _, aiokafka = _bridge({"consumer": "aiokafka"})
    assert aiokafka.reader_conf is None


def test_the_bridge_sends_with_the_workers_producer(token):
    """librdkafka's by default (``worker.producer: aiokafka`` takes the workers' other
    branch of ``output_publisher``, which needs the started app's aiokafka producer)."""
    config, app = _bridge({})
    bridge = _Bridge(app, config, None, None, None)  # type: ignore[arg-type]
    publisher = bridge.publisher()
    try:
        assert isinstance(publisher, RdkafkaPublisher)
        assert bridge.publisher() is publisher  # made once
    finally:
        publisher.close(0.1)


def test_the_bridge_keeps_its_files_out_of_the_working_directory(token, tmp_path, monkeypatch):
    """Faust's default datadir is ``<id>-data`` in the directory the command started in."""
    monkeypatch.chdir(tmp_path)
    config, app = _bridge({})
    datadir = app.conf.datadir.resolve()
    assert not datadir.is_relative_to(tmp_path)
    assert config.label_studio.group_id in datadir.name
    assert list(tmp_path.iterdir()) == []
