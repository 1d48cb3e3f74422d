"""Kafka plumbing of the benchmark: topics, the prefill, and reading a contender's outputs."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bench.agreement import Fates

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Admin:
    """kafka-python's admin client, for topics and consumer groups (blocking calls)."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaAdminClient

        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hitl-bench-admin")

    def create_topics(
        self, names: Iterable[str], partitions: int, configs: dict[str, str] | None = None
    ) -> None:
        spec = {
            n: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}
            for n in names
        }
        self._admin.create_topics(spec, timeout_ms=30_000, wait_for_metadata=True)

    def delete_topics_containing(self, tag: str) -> list[str]:
        """Delete every topic whose name contains ``tag``: ours, and those the workers
        created for themselves (labels, Faust's ``…-__assignor-__leader``)."""
        doomed = [t for t in self._admin.list_topics() if tag in t]
        if doomed:
            self._admin.delete_topics(doomed, timeout_ms=30_000, raise_errors=False)
        return doomed

    def members_reading(self, group: str, topic: str) -> int:
        """How many members of ``group`` hold partitions of ``topic`` (0 unless Stable)."""
        from kafka.errors import KafkaError

        try:
            info = self._admin.describe_groups([group]).get(group) or {}
        except KafkaError:  # e.g. no coordinator yet: the offsets topic is being created
            return 0
        if info.get("error") or info.get("group_state") != "Stable":
            return 0
        count = 0
        for member in info.get("members") or []:
            assignment = member.get("member_assignment") or {}
            parts = (
                assignment.get("assigned_partitions", []) if isinstance(assignment, dict) else []
            )
            count += any(p.get("topic") == topic and p.get("partitions") for p in parts)
        return count

    def close(self) -> None:
        self._admin.close()


def partition_of_each(keys: Sequence[bytes | None], partitions: int) -> list[int]:
    """The partition a Kafka producer's default partitioner gives each message: murmur2 of
    its key, a random one for no key (as aiokafka's ``DefaultPartitioner``)."""
    from hitl_router.router.partitioning import partitions_of

    keyed = [i for i, k in enumerate(keys) if k is not None]
    out = [random.randrange(partitions) for _ in keys]
    chosen = partitions_of([keys[i] for i in keyed], partitions).tolist()
    for i, p in zip(keyed, chosen, strict=True):
        out[i] = p
    return out


async def prefill(
    bootstrap: str,
    topic: str,
    messages: Sequence[bytes],
    keys: Sequence[bytes | None],
    partitions: int,
) -> float:
    """Send ``messages`` keyed by ``keys`` (partitioned like any Kafka producer: murmur2 of
    the key) in whole batches, the fastest aiokafka goes; return the achieved msgs/s."""
    per_partition: list[list[int]] = [[] for _ in range(partitions)]
    for i, p in enumerate(partition_of_each(keys, partitions)):
        per_partition[p].append(i)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = []
        for partition, indexes in enumerate(per_partition):
            batch = producer.create_batch()
            for i in indexes:
                if batch.append(key=keys[i], value=messages[i], timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=keys[i], value=messages[i], timestamp=None)
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(messages) / max(time.perf_counter() - t0, 1e-9)


@dataclass
class OutputStats:
    """What a contender wrote: counts per topic, distinct ids, CreateTime stamps (ms), and,
    with ``labels`` (topic → fate), each key's fate."""

    by_topic: Counter[str] = field(default_factory=Counter)
    keys: set[bytes] = field(default_factory=set)
    unkeyed: int = 0
    stamps: array = field(default_factory=lambda: array("q"))
    labels: Mapping[str, str] | None = None
    fates: Fates = field(default_factory=Fates)

    @property
    def total(self) -> int:
        return sum(self.by_topic.values())

    @property
    def distinct(self) -> int:
        """Inputs accounted for: distinct keys plus unkeyed records (e.g. dead letters of
        messages without a usable id)."""
        return len(self.keys) + self.unkeyed

    def add(self, topic: str, key: bytes | None, timestamp_ms: int) -> None:
        self.by_topic[topic] += 1
        if key is None:
            self.unkeyed += 1
        else:
            self.keys.add(key)
        self.stamps.append(timestamp_ms)
        if self.labels is not None:
            self.fates.add(self.labels[topic], key)


#: what :func:`settle` writes: 4 KiB and more, so the third append of each partition
#: writes its first index entries (Kafka indexes every ``index.interval.bytes``, 4,096)
SETTLE_RECORD = b"hitl-bench-settle:" + b"." * 5000


def settle(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Make freshly created output topics behave like long-lived ones.

    The first index entries of a new partition are written to freshly mapped pages of
    its ``.index`` and ``.timeindex`` files, and the page faults stall the broker's
    request handlers (jstack: ``OffsetIndex.append``, ``TimeIndex.maybeAppend``). Measured
    here: 36 new partitions written at 2,000 msgs/s held every produce request for
    0.4–1.5 s, and for 0 s with the same topics written before. So each partition gets
    three records, one request each (its first index entries come with the third);
    :class:`OutputReader` starts after them and never counts them."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    for _ in range(3):
        for topic in topics:
            for partition in range(partitions):
                producer.produce(topic, SETTLE_RECORD, partition=partition)
        if producer.flush(60.0):
            raise RuntimeError(f"settling {list(topics)}: records not delivered in 60 s")


def quiesce() -> None:
    """Write back what earlier contenders left dirty in the page cache (``os.sync``) before
    the next one starts. Each run writes a few hundred MB through the
    broker, and the kernel writes them back ~30 s later: measured as 0.25 cores of *other
    load* in the middle of a later contender's run, its CPU per message up by a third."""
    import os

    os.sync()


class OutputReader:
    """Reads every partition of a contender's output topics from where they ended when it
    started (after :func:`settle`'s records; no group); with ``labels`` (topic → fate
    label), it records each key's fate."""

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        partitions: int,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.stats = OutputStats(labels=labels)
        self._consumer: AIOKafkaConsumer | None = None
        self._base: dict[TopicPartition, int] = {}
        self._tps = [TopicPartition(t, p) for t in self.topics for p in range(partitions)]

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            fetch_max_wait_ms=100,
        )
        await self._consumer.start()
        self._base = await self._consumer.end_offsets(self._tps)

    async def _assign(self) -> AIOKafkaConsumer:
        """Assign every partition on first read (not before: while a contender runs, only its
        end offsets are asked for, and no fetches compete with it)."""
        assert self._consumer is not None
        if not self._consumer.assignment():
            self._consumer.assign(self._tps)
            for tp in self._tps:
                self._consumer.seek(tp, self._base[tp])
        return self._consumer

    async def end_total(self) -> int:
        """Records written to all output partitions since the start (cheap: offsets only)."""
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(self._tps)
        return sum(ends.values()) - sum(self._base.values())

    async def drain(
        self, timeout: float = 300.0, handle: Callable[[Any], None] | None = None
    ) -> None:
        """Read everything up to the current end offsets (each record also to ``handle``)."""
        consumer = await self._assign()
        ends = await consumer.end_offsets(self._tps)
        deadline = time.monotonic() + timeout
        while True:
            behind = [tp for tp in self._tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading outputs of {self.topics} took over {timeout:.0f}s")
            batches = await consumer.getmany(*behind, timeout_ms=500)
            add = self.stats.add
            for tp, records in batches.items():
                for r in records:
                    add(tp.topic, r.key, r.timestamp)
                    if handle is not None:
                        handle(r)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's stop() can re-raise the cancellation of its own fetch task
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except KafkaError as exc:
            log.warning("closing the output reader: %s", exc)
