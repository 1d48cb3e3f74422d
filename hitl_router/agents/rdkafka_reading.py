"""Read the batched topics with librdkafka (``confluent-kafka``), under Faust's group.

Faust's aiokafka consumer keeps what it does around the data: group membership, Faust's
assignor, rebalances, committed offsets and the committer. It is told not to fetch the
partitions of the batched topics (they are paused in aiokafka as soon as they are
assigned); :class:`RdkafkaReader`, a librdkafka consumer in *assign* mode (it never joins
a group, never commits), reads them instead, from the offsets Faust seeks to after each
rebalance. librdkafka fetches and decodes in C, off the GIL, ahead of the worker; the
fetch loop of :class:`~hitl_router.agents.batching.BatchingConsumer` takes a batch at a
time as :class:`Record` tuples.

Every call on the librdkafka consumer runs in one thread of this module, in order, so
an assignment never races a read: a read that began before the last assignment carries
the older *generation* and is dropped by the fetch loop (the assignment reads again what
it held).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from hitl_router.agents.rdkafka_publishing import security_config
from hitl_router.router.config import Config

#: a library's logger (librdkafka's own is ``rdkafka``): rate-limited as they are
log = logging.getLogger("rdkafka.reader")


class Record(NamedTuple):
    """One message read (aiokafka's ``ConsumerRecord`` attributes the agents use)."""

    topic: str
    partition: int
    offset: int
    #: milliseconds (the record's CreateTime or LogAppendTime)
    timestamp: int
    key: bytes | None
    value: bytes | None


def consumer_config(config: Config, group: str, max_fetch_bytes: int) -> dict[str, Any]:
    """librdkafka settings of the reader for ``config``: the worker's fetch wait and
    minimum, reads from the earliest offset when Faust knows none (as its consumer),
    uncommitted records too (as aiokafka), no commits of its own. ``group`` only names
    it: a consumer in assign mode joins no group."""
    worker = config.worker
    out: dict[str, Any] = {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "client.id": f"{group}-reader",
        "group.id": f"{group}-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_uncommitted",
        "fetch.wait.max.ms": worker.fetch_max_wait_ms,
        "fetch.min.bytes": worker.fetch_min_bytes,
        "max.partition.fetch.bytes": max_fetch_bytes,
        # prefetched ahead of the worker: at most 32 MB (librdkafka's default: 64), ~40,000
        # predictions of 800 bytes, 2 s of a worker's work. Not by a count: a partition
        # over queued.min.messages is not fetched for fetch.queue.backoff.ms (1 s), which
        # starved the worker (measured: 7,600 msgs/s with a limit of 4 batches)
        "queued.max.messages.kbytes": 32 * 1024,
    }
    out.update(security_config(config.kafka.security))
    return out


class RdkafkaReader:
    """A librdkafka consumer in assign mode, driven from the event loop."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._conf = {**conf, "logger": logging.getLogger("rdkafka")}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rdkafka-reader")
        self._consumer: Consumer | None = None
        #: bumped by every assignment (in the reader's thread)
        self.generation = 0
        self._assigned: frozenset[tuple[str, int]] = frozenset()
        #: the generation whose first records were logged
        self._reported = 0

    @property
    def assigned(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition)s of the last assignment."""
        return self._assigned

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _ensure(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._conf)
        return self._consumer

    async def assign(self, positions: Mapping[tuple[str, int], int | None]) -> None:
        """Read exactly these partitions, each from its offset (None: its beginning);
        records read before this are of an older generation."""
        await self._call(self._assign, dict(positions))

    def _assign(self, positions: dict[tuple[str, int], int | None]) -> None:
        ordered = sorted(positions.items())
        tps = [TopicPartition(t, p, OFFSET_BEGINNING if o is None else o) for (t, p), o in ordered]
        self._ensure().assign(tps)
        self.generation += 1
        self._assigned = frozenset(positions)
        if ordered:
            log.info(
                "librdkafka reads %d partition(s) from Faust's offsets: %s",
                len(ordered),
                ", ".join(f"{t}[{p}]@{'start' if o is None else o}" for (t, p), o in ordered),
            )

    async def read(self, max_records: int, timeout_s: float) -> tuple[int, list[Record]]:
        """Up to ``max_records`` records, those already fetched at once, else waiting at
        most ``timeout_s`` for the first; with the generation they were read in."""
        return await self._call(self._read, max_records, timeout_s)  # type: ignore[no-any-return]

    def _read(self, max_records: int, timeout_s: float) -> tuple[int, list[Record]]:
        generation = self.generation
        if not self._assigned:
            return generation, []
        consume = self._ensure().consume
        # what is queued, at once; else wait for the first record only (``consume(n, t)``
        # waits until it has n records or t is up: at low rates that is latency)
        messages = consume(max_records, 0)
        if not messages:
            messages = consume(1, timeout_s)
            if messages:
                messages += consume(max_records - 1, 0)
        out = []
        append = out.append
        for m in messages:
            error = m.error()
            if error is not None:
                _check(error)
                continue
            append(
                Record(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())
            )
        if out and self._reported != generation:
            self._reported = generation
            log.info("librdkafka read its first %d record(s) since the last assignment", len(out))
        return generation, out

    def high_watermark(self, topic: str, partition: int) -> int | None:
        """The partition's end offset as of its last fetch (no request)."""
        consumer = self._consumer
        if consumer is None:
            return None
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        return high if high >= 0 else None

    async def close(self) -> None:
        """Close the consumer (no commit: it has none) and the reader's thread."""
        if self._consumer is not None:
            await self._call(self._consumer.close)
            self._consumer = None
        self._executor.shutdown(wait=False)


def _check(error: KafkaError) -> None:
    """A consumer error read as a message: librdkafka retries the transient ones (broker
    down, a topic's leader moving) itself — logged, rate-limited like its own log; a
    fatal one stops the worker."""
    if error.fatal():
        raise KafkaException(error)
    if error.code() != KafkaError._PARTITION_EOF:
        log.warning("reading the batched topics: %s (%s)", error.str(), error.name())
