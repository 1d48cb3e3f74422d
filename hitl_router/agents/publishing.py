"""Publish a batch's outputs with aiokafka's batch API, one record batch per partition.

``producer.send()`` per message costs an ``await`` and a trip through the accumulator
each (measured: the largest share of the worker's time after decoding). Here outputs are
grouped by (topic, partition) — the partition is Kafka's default one (Java-compatible
murmur2 of the key, computed for the whole batch with numpy by
:func:`~hitl_router.router.partitioning.partitions_of`), so keyed outputs land where
``send()`` would put them — appended to ``BatchBuilder``s and handed over with one
``send_batch`` each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hitl_router.router.outputs import Output
from hitl_router.router.partitioning import partitions_of


class BatchPublisher:
    """Sends :class:`Output` lists through an ``aiokafka.AIOKafkaProducer``."""

    #: below this many outputs for one partition, they are sent one by one
    min_batch: int = 64

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self._partitions: dict[str, list[int]] = {}

    async def _partitions_for(self, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            parts = self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        return parts

    async def deliver(self, outputs: Sequence[Output]) -> None:
        """Publish and wait until the broker acknowledged every output; raise the first
        failure if one was not.

        Only the last future of each partition is awaited: a partition's outputs go out
        in order, in batches that complete in order (aiokafka keeps one request in
        flight per broker and puts a retried batch back at the head of its partition's
        queue), so when the last is done, so are the others. Awaiting every output's
        future instead (``gather``) scheduled a callback per output when its batch
        completed. The others are still checked, and awaited should one not be done."""
        futures, tails = await self.publish(outputs)
        if tails:
            await asyncio.gather(*tails, return_exceptions=True)
        failure: BaseException | None = None
        for future in futures:
            if not future.done():
                await asyncio.wait([future])
            error = future.exception()
            if error is not None and failure is None:
                failure = error
        if failure is not None:
            raise failure

    async def publish(
        self, outputs: Sequence[Output]
    ) -> tuple[list[asyncio.Future[Any]], list[asyncio.Future[Any]]]:
        """Queue every output: returns the futures that resolve when the broker has them,
        and the last one of each partition."""
        by_topic: dict[str, list[Output]] = {}
        for o in outputs:
            by_topic.setdefault(o.topic, []).append(o)
        grouped: dict[tuple[str, int], list[Output]] = {}
        for topic, outs in by_topic.items():
            parts = self._partitions.get(topic) or await self._partitions_for(topic)
            keyed = [o for o in outs if o.key is not None]
            indexes = partitions_of([o.key for o in keyed], len(parts)).tolist()
            for o, i in zip(keyed, indexes, strict=True):
                grouped.setdefault((topic, parts[i]), []).append(o)
            if len(keyed) < len(outs):  # unkeyed: a random partition, as aiokafka does
                for o in outs:
                    if o.key is None:
                        p = self.producer._partitioner(None, parts, parts)
                        grouped.setdefault((topic, p), []).append(o)
        # few outputs for a partition: join its open batch with send(), which only waits
        # when that batch is full (send_batch would queue a batch of its own behind it
        # and wait for the previous one to drain) — in this task: a task per partition
        # took 10–20 ms of the loop per batch to queue a few outputs each
        futures: list[asyncio.Future[Any]] = []
        tails: list[asyncio.Future[Any]] = []
        send = self.producer.send
        large = []
        for (topic, p), outs in grouped.items():
            if len(outs) < self.min_batch:
                for o in outs:
                    futures.append(await send(topic, o.value, key=o.key, partition=p))
                tails.append(futures[-1])
            else:
                large.append(self._send_batches(topic, p, outs))
        # each partition waits for its own free slot (aiokafka queues one batch per
        # partition): in parallel, or a batch would wait out one round trip per partition
        for batch_futures in await asyncio.gather(*large):
            futures.extend(batch_futures)
            tails.append(batch_futures[-1])
        return futures, tails

    async def _send_batches(
        self, topic: str, p: int, outs: list[Output]
    ) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = []
        create_batch, send_batch = self.producer.create_batch, self.producer.send_batch
        batch = create_batch()
        for o in outs:
            if batch.append(key=o.key, value=o.value, timestamp=None) is None:
                futures.append(await send_batch(batch, topic, partition=p))
                batch = create_batch()
                if batch.append(key=o.key, value=o.value, timestamp=None) is None:
                    # larger than a whole batch: send() sizes a batch to fit it
                    futures.append(await self.producer.send(topic, o.value, key=o.key, partition=p))
                    batch = create_batch()
        if batch.record_count():
            futures.append(await send_batch(batch, topic, partition=p))
        return futures
