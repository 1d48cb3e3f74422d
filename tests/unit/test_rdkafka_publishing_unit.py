"""librdkafka's publisher without a broker: its settings for a config, and how the
delivery reports of one ``deliver`` are counted and resolved (with the broker:
tests/integration/test_publishing.py and the fault tests)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError

from hitl_router.agents.rdkafka_publishing import _Delivery, producer_config, security_config
from hitl_router.errors import ConfigError
from hitl_router.router.config import parse_config
from hitl_router.router.kafka_security import SecurityConfig


def test_producer_config_follows_the_worker_settings():
    conf = producer_config(parse_config({"kafka": {"bootstrap_servers": "k1:9092,k2:9092"}}), 90)
    assert conf["bootstrap.servers"] == "k1:9092,k2:9092"
    assert conf["linger.ms"] == 5 and conf["acks"] == "all"
    assert conf["partitioner"] == "murmur2_random"  # the Java client's, as send()
    assert conf["message.timeout.ms"] == 90_000
    assert conf["batch.size"] == 256 * 1024
    assert conf["security.protocol"] == "PLAINTEXT"
    # a batch is never larger than what every output topic must take (the preflight)
    small = producer_config(
        parse_config({"limits": {"max_output_bytes": 20_000, "dead_letter_raw_bytes": 500}}), 90
    )
    assert small["batch.size"] == 20_000 + 4096
    assert small["message.max.bytes"] == 1_000_000
    large = producer_config(parse_config({"limits": {"max_output_bytes": 4_000_000}}), 90)
    assert large["message.max.bytes"] == 4_000_000 + 4096


def test_security_config_reads_the_password_when_configured(monkeypatch, tmp_path):
    security = SecurityConfig(
        "SASL_SSL",
        "SCRAM-SHA-256",
        username="router",
        password_env="HITL_TEST_PW",
        cert_file="c.pem",
        key_file="k.pem",
    )
    monkeypatch.setenv("HITL_TEST_PW", "s3cret pw")
    assert security_config(security) == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "probe",  # no CA file: the system's store
        "ssl.certificate.location": "c.pem",
        "ssl.key.location": "k.pem",
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "router",
        "sasl.password": "s3cret pw",
    }
    monkeypatch.delenv("HITL_TEST_PW")
    with pytest.raises(ConfigError, match="kafka.security.password_env"):
        security_config(security)


def _msg(topic: str = "t", partition: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic=lambda: topic, partition=lambda: partition)


def test_a_delivery_resolves_once_every_report_is_in():
    async def run() -> None:
        loop = asyncio.get_running_loop()
        resent: list[object] = []
        d = _Delivery(loop, lambda delivery, msg: resent.append(msg))
        d(None, _msg())
        d(None, _msg())  # both reports before the last output was produced
        await asyncio.sleep(0)
        assert not d.future.done()
        d.n = 3
        d.placed(None, _msg())  # the third: resolved on the loop
        await asyncio.sleep(0)
        assert d.future.done() and d.error is None

        late = _Delivery(loop, lambda delivery, msg: resent.append(msg))
        late(None, _msg())
        late.n = 1  # every report in before n was set: deliver resolves it itself
        assert late.done + late.lost == late.n and not late.future.done()

    asyncio.run(run())


def test_a_vanished_partition_is_resent_not_counted_and_errors_keep_the_first():
    async def run() -> None:
        loop = asyncio.get_running_loop()
        resent: list[object] = []
        d = _Delivery(loop, lambda delivery, msg: resent.append(msg))
        d.n = 3
        gone = KafkaError(KafkaError._UNKNOWN_PARTITION)
        d(gone, _msg("out", 2))  # placed by the partitioner: produced again
        await asyncio.sleep(0)
        assert len(resent) == 1 and d.done == 0
        d.placed(gone, _msg("log", 4))  # its own partition: an error like any other
        d(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), _msg("out", 1))
        assert d.error is not None and d.error[1:] == ("log", 4)
        assert d.error[0].code() == KafkaError._UNKNOWN_PARTITION
        assert not d.future.done()
        d.fail(KafkaError(KafkaError._FAIL), "out")  # the resend refused: counted on the loop
        assert d.future.done() and d.error[1:] == ("log", 4)

    asyncio.run(run())


def test_an_output_whose_partition_librdkafka_destroyed_is_resent():
    """A topic re-created smaller can fail the outputs already queued for a removed
    partition with _DESTROY instead of _UNKNOWN_PARTITION: produced again all the same."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        resent: list[object] = []
        d = _Delivery(loop, lambda delivery, msg: resent.append(msg))
        d.n = 1
        d(KafkaError(KafkaError._DESTROY), _msg("out", 2))
        await asyncio.sleep(0)
        assert len(resent) == 1 and d.error is None and not d.future.done()

    asyncio.run(run())


def test_reader_config_follows_the_worker_settings():
    from hitl_router.agents.rdkafka_reading import consumer_config

    config = parse_config({"worker": {"fetch_max_wait_ms": 20, "fetch_min_bytes": 1}})
    conf = consumer_config(config, "hitl-router", 4 * 1024 * 1024)
    assert conf["fetch.wait.max.ms"] == 20 and conf["fetch.min.bytes"] == 1
    assert conf["max.partition.fetch.bytes"] == 4 * 1024 * 1024
    # prefetch bounded in bytes; a bound in messages paused fetches for a second
    assert conf["queued.max.messages.kbytes"] == 32 * 1024 and "queued.min.messages" not in conf
    # assign mode: it reads from Faust's offsets and never commits
    assert conf["enable.auto.commit"] is False and conf["enable.auto.offset.store"] is False
    assert conf["auto.offset.reset"] == "earliest"
    assert conf["isolation.level"] == "read_uncommitted"  # as aiokafka under Faust
    assert conf["group.id"] == "hitl-router-reader"


def test_librdkafka_reads_the_batched_topics_of_every_agent_by_default():
    """The default reader is librdkafka's, for agents with Faust tables too (the label
    loop, dedup: the reader is assigned only the partitions Faust has not paused, so it
    waits for their recovery); ``worker.consumer: aiokafka`` leaves them to Faust."""
    from hitl_router.agents.app import build_app

    config = parse_config({})
    assert config.worker.consumer == "librdkafka"
    for agents in (["router", "sampler"], ["labels"]):
        conf = build_app(config, agents=agents, web_port=65535).reader_conf
        assert conf is not None and conf["enable.auto.commit"] is False
    dedup = parse_config({"dedup": {"retention_s": 60}})
    assert build_app(dedup, agents=["router"], web_port=65535).reader_conf is not None
    aiokafka = parse_config({"worker": {"consumer": "aiokafka"}})
    assert build_app(aiokafka, agents=["router"], web_port=65535).reader_conf is None
