"""Both publishers against the real broker — librdkafka's (:class:`RdkafkaPublisher`,
the worker's default) and aiokafka's (:class:`BatchPublisher`): every output lands on
its key's partition (or on the partition it names); a failed output fails ``deliver``
even when later outputs of its partition succeed; outputs queued for a partition that
vanished (topic deleted, re-created smaller) are sent again. (A delivery that cannot
complete in time: tests/integration/test_faults.py, with the broker stopped.)"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from hitl_router.agents.publishing import BatchPublisher
from hitl_router.agents.rdkafka_publishing import RdkafkaPublisher, producer_config
from hitl_router.errors import DeliveryError
from hitl_router.router.config import parse_config
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


PRODUCERS = pytest.mark.parametrize("producer", ["librdkafka", "aiokafka"])


class _Publisher:
    """A started publisher of either kind, with its producer's view of a topic."""

    def __init__(self, producer: str, bootstrap: str, timeout_s: float) -> None:
        self.kind, self.bootstrap, self.timeout_s = producer, bootstrap, timeout_s

    async def __aenter__(self) -> BatchPublisher | RdkafkaPublisher:
        if self.kind == "librdkafka":  # the worker's settings for this broker
            config = parse_config({"kafka": {"bootstrap_servers": self.bootstrap}})
            self.rd = RdkafkaPublisher(producer_config(config, 2 * self.timeout_s), self.timeout_s)
            return self.rd
        self.aio = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            linger_ms=5,
            acks="all",
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        await self.aio.start()
        return BatchPublisher(self.aio, self.timeout_s)

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "librdkafka":
            self.rd.close(0)
        else:
            await self.aio.stop()


async def _deliver(
    producer: str, bootstrap: str, outputs: list[Output], timeout_s: float = 30.0
) -> None:
    async with _Publisher(producer, bootstrap, timeout_s) as publisher:
        await publisher.deliver(outputs)


@PRODUCERS
def test_deliver_writes_every_output_to_its_keys_partition(
    producer: str, kafka_bootstrap: str
) -> None:
    small, large = _topic(kafka_bootstrap, 3), _topic(kafka_bootstrap, 2)
    outputs = [Output(small, f"s{i}".encode(), b"x%d" % i) for i in range(20)]  # send()
    outputs += [Output(large, f"l{i}".encode(), b"y%d" % i) for i in range(500)]  # batches
    outputs += [Output(small, None, b"unkeyed")]
    asyncio.run(_deliver(producer, kafka_bootstrap, outputs))
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


@PRODUCERS
def test_an_output_with_its_own_partition_lands_there(producer: str, kafka_bootstrap: str) -> None:
    """A table's changelog record names its partition (the table's, not its key's), and
    may be a tombstone; a partition the topic lacks fails the delivery, naming it."""
    topic = _topic(kafka_bootstrap, 3)
    keys = [f"c{i}".encode() for i in range(200)]
    default = partitions_of(keys, 3).tolist()
    # each key's own partition is one past Kafka's default one: never where send() puts it
    placed = [
        Output(topic, k, b"v%d" % i, None, (d + 1) % 3)
        for i, (k, d) in enumerate(zip(keys, default, strict=True))
    ]
    placed.append(Output(topic, keys[0], None, None, (default[0] + 1) % 3))  # tombstone
    keyed = [Output(topic, b"plain", b"p")]
    asyncio.run(_deliver(producer, kafka_bootstrap, [*placed, *keyed]))
    records = drain(kafka_bootstrap, [topic], until=len(placed) + 1, idle=1.0)
    got = {
        p: [(r.key, r.value) for r in sorted(records, key=lambda r: r.offset) if r.partition == p]
        for p in range(3)
    }
    for p in range(3):  # in the order given, the tombstone last on its partition
        want = [(o.key, o.value) for o in placed if o.partition == p]
        if p == partitions_of([b"plain"], 3).tolist()[0]:
            want.append((b"plain", b"p"))
        assert got[p] == want
    assert (keys[0], None) in got[(default[0] + 1) % 3]
    gone = {  # librdkafka refuses it when produced, aiokafka's publisher before that
        "librdkafka": rf"producer refused an output to {topic}(\[3\])?: .*Unknown partition",
        "aiokafka": rf"{topic}\[3\] does not exist: {topic} has 3",
    }
    with pytest.raises(DeliveryError, match=gone[producer]):
        asyncio.run(_deliver(producer, kafka_bootstrap, [Output(topic, b"k", b"v", None, 3)]))


@PRODUCERS
def test_a_rejected_output_fails_deliver_though_its_partition_goes_on(
    producer: str, kafka_bootstrap: str
) -> None:
    """The broker refuses the first output of the partition (larger than the topic's
    max.message.bytes). aiokafka's publisher sends the next ones in later batches, which
    the broker takes: only the last output's future is awaited, and the failure must
    still surface. librdkafka puts all six in one request, refused whole: every report
    is an error, and the first one is named."""
    topic = _topic(kafka_bootstrap, 1, **{"max.message.bytes": "20000"})
    big = Output(topic, b"k", b"z" * 50_000)
    rest = [Output(topic, b"k", b"ok%d" % i) for i in range(5)]
    with pytest.raises(DeliveryError, match=rf"refused an output to {topic}\[0\]") as info:
        asyncio.run(_deliver(producer, kafka_bootstrap, [big, *rest]))
    if producer == "librdkafka":
        assert "Message size too large (MSG_SIZE_TOO_LARGE)" in str(info.value)
        return
    assert isinstance(info.value.__cause__, KafkaError)
    records = drain(kafka_bootstrap, [topic], until=len(rest), idle=1.0)
    assert [r.value for r in records] == [o.value for o in rest]


@PRODUCERS
def test_outputs_for_a_vanished_partition_are_sent_again(
    producer: str, kafka_bootstrap: str
) -> None:
    """The producer knows the topic with 3 partitions; it is deleted and re-created with
    1. Outputs computed for partitions 1 and 2 cannot be delivered there: they go to
    the topic as it is now, within the delivery timeout."""
    topic = _topic(kafka_bootstrap, 3)

    async def run() -> float:
        async with _Publisher(producer, kafka_bootstrap, 20.0) as publisher:
            await publisher.deliver([Output(topic, b"warm", b"up")])  # metadata: 3 partitions
            admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            try:
                admin.delete_topics([topic])
                deadline = time.monotonic() + 30
                while topic in admin.list_topics():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
                admin.create_topics([NewTopic(topic, 1, 1)])
            finally:
                admin.close()
            if isinstance(publisher, BatchPublisher):
                assert publisher.producer.client.cluster.partitions_for_topic(topic) == {0, 1, 2}
            started = time.monotonic()
            await publisher.deliver(outputs)
            return time.monotonic() - started

    outputs = [Output(topic, f"k{i}".encode(), b"v%d" % i) for i in range(300)]
    assert len(set(partitions_of([o.key for o in outputs], 3).tolist())) == 3
    took = asyncio.run(run())
    records = drain(kafka_bootstrap, [topic], until=len(outputs), idle=1.0)
    values = [r.value for r in records]
    assert set(values) == {o.value for o in outputs}  # every output, on the new topic
    assert {r.partition for r in records} == {0}
    print(f"re-sent to the re-created topic in {took:.1f} s")
