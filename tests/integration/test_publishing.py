"""BatchPublisher against the real broker: every output lands on its key's partition,
and a failed output fails ``deliver`` even when later outputs of its partition succeed."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from hitl_router.agents.publishing import BatchPublisher
from hitl_router.router.outputs import Output
from hitl_router.router.partitioning import partitions_of
from tests.integration.helpers import drain


def _topic(bootstrap: str, partitions: int, **configs: str) -> str:
    name = f"pub-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        admin.close()
    return name


async def _deliver(bootstrap: str, outputs: list[Output]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    try:
        await BatchPublisher(producer).deliver(outputs)
    finally:
        await producer.stop()


def test_deliver_writes_every_output_to_its_keys_partition(kafka_bootstrap: str) -> None:
    small, large = _topic(kafka_bootstrap, 3), _topic(kafka_bootstrap, 2)
    outputs = [Output(small, f"s{i}".encode(), b"x%d" % i) for i in range(20)]  # send()
    outputs += [Output(large, f"l{i}".encode(), b"y%d" % i) for i in range(500)]  # batches
    outputs += [Output(small, None, b"unkeyed")]
    asyncio.run(_deliver(kafka_bootstrap, outputs))
    records = drain(kafka_bootstrap, [small, large], until=len(outputs), idle=1.0)
    assert sorted(r.value for r in records) == sorted(o.value for o in outputs)
    for topic, n in ((small, 3), (large, 2)):
        given = [o for o in outputs if o.topic == topic and o.key is not None]
        expected = partitions_of([o.key for o in given], n).tolist()
        keyed = [r for r in records if r.topic == topic and r.key is not None]
        for p in range(n):  # each partition holds its outputs, in the order given
            got = [r.value for r in sorted(keyed, key=lambda r: r.offset) if r.partition == p]
            want = [o.value for o, q in zip(given, expected, strict=True) if q == p]
            assert got == want


def test_a_rejected_output_fails_deliver_though_its_partition_goes_on(
    kafka_bootstrap: str,
) -> None:
    """The broker refuses the first output of the partition (larger than the topic's
    max.message.bytes) and takes the next ones, in later batches: only the last output's
    future is awaited, and the failure must still surface."""
    topic = _topic(kafka_bootstrap, 1, **{"max.message.bytes": "20000"})
    big = Output(topic, b"k", b"z" * 50_000)
    rest = [Output(topic, b"k", b"ok%d" % i) for i in range(5)]
    with pytest.raises(KafkaError):
        asyncio.run(_deliver(kafka_bootstrap, [big, *rest]))
    records = drain(kafka_bootstrap, [topic], until=len(rest), idle=1.0)
    assert [r.value for r in records] == [o.value for o in rest]
