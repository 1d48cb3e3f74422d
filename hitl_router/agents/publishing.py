"""Publish a batch's outputs with aiokafka's batch API, one record batch per partition.

``producer.send()`` per message costs an ``await`` and a trip through the accumulator
each (measured: the largest share of the worker's time after decoding). Here outputs are
grouped by (topic, partition) — the partition is Kafka's default one (Java-compatible
murmur2 of the key, computed for the whole batch with numpy by
:func:`~hitl_router.router.partitioning.partitions_of`), so keyed outputs land where
``send()`` would put them — appended to ``BatchBuilder``s and handed over with one
``send_batch`` each.

Partitions are read from the producer's cluster metadata at every publish, never
cached: when an output topic is deleted and re-created with fewer partitions, outputs
queued for a partition that no longer exists could never be delivered (aiokafka keeps
them until they expire); :meth:`BatchPublisher.deliver` sends them again to the
topic's partitions as they are now (at-least-once: consumers de-duplicate by key).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError, KafkaTimeoutError, UnknownTopicOrPartitionError

from hitl_router.agents.clock import RunningClock
from hitl_router.errors import DeliveryError
from hitl_router.router.outputs import Output
from hitl_router.router.partitioning import partitions_of

log = logging.getLogger(__name__)

#: how often a pending delivery looks for partitions that vanished
_CHECK_EVERY_S = 1.0


@dataclass
class _Group:
    """The outputs queued for one (topic, partition), and their futures."""

    topic: str
    partition: int
    outputs: list[Output]
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    #: outputs whose ``send`` found the partition gone (before any future existed)
    unsent: list[Output] = field(default_factory=list)


class BatchPublisher:
    """Sends :class:`Output` lists through an ``aiokafka.AIOKafkaProducer``."""

    #: below this many outputs for one partition, they are sent one by one
    min_batch: int = 64

    def __init__(
        self, producer: Any, delivery_timeout_s: float = 30.0, clock: RunningClock | None = None
    ) -> None:
        self.producer = producer
        self.delivery_timeout_s = delivery_timeout_s
        self.clock = clock or RunningClock()
        #: (topic, partition)s found gone: batches the producer still holds for them are
        #: failed (they could never be delivered, and Faust's flush before every commit
        #: would wait for them until they expire)
        self._gone: set[tuple[str, int]] = set()

    async def _partitions_for(self, topic: str) -> list[int]:
        parts = self.producer.client.cluster.partitions_for_topic(topic)
        if not parts:  # unknown to this producer yet (or gone): ask the broker
            parts = await self.producer.partitions_for(topic)
        return sorted(parts)

    async def deliver(self, outputs: Sequence[Output]) -> None:
        """Publish and wait until the broker acknowledged every output; raise
        :class:`~hitl_router.errors.DeliveryError` if one failed or was not acknowledged
        within ``delivery_timeout_s``.

        Only the last future of each partition is awaited: a partition's outputs go out
        in order, in batches that complete in order (aiokafka keeps one request in
        flight per broker and puts a retried batch back at the head of its partition's
        queue), so when the last is done, so are the others. Awaiting every output's
        future instead (``gather``) scheduled a callback per output when its batch
        completed. The others are still checked, and awaited should one not be done."""
        clock = self.clock
        clock.start()
        deadline = clock.now() + self.delivery_timeout_s
        try:
            groups = await self.publish(outputs, deadline)
        except KafkaError as exc:  # e.g. no room in the producer's buffer in time
            raise DeliveryError(
                f"{len(outputs)} outputs not delivered: the producer could not take them ({exc!r})"
            ) from exc
        live = list(groups)
        late = False
        while True:
            pending = [g.futures[-1] for g in live if g.futures and not g.futures[-1].done()]
            orphans = [g for g in live if g.unsent]
            if self._gone:  # a queue failed as gone by this or another delivery's check
                orphans += [g for g in live if not g.unsent and _failed_as_gone(g)]
            if not pending and not orphans:
                break
            remaining = deadline - clock.now()
            if remaining <= 0 and pending and not late:
                # one last look: a process frozen past its deadline (SIGSTOP, a paused VM)
                # finds, once it runs again, answers the broker sent meanwhile
                late = True
                remaining = _CHECK_EVERY_S
            elif remaining <= 0:
                _abandon(live)
                raise DeliveryError(self._timeout_message(len(outputs), live))
            if pending:
                await asyncio.wait(pending, timeout=min(_CHECK_EVERY_S, remaining))
            orphans += await self._vanished([g for g in live if g not in orphans])
            if orphans:
                live = [g for g in live if g not in orphans]
                for g in orphans:  # nobody awaits them now
                    for future in g.futures:
                        future.add_done_callback(_retrieved)
                self._gone.update((g.topic, g.partition) for g in orphans)
                resend = [o for g in orphans for o in g.outputs]  # every one: its partition is gone
                log.warning(
                    "%d outputs were queued for partitions that no longer exist (%s); "
                    "sending them to the topics' partitions as they are now",
                    len(resend),
                    sorted({f"{g.topic}[{g.partition}]" for g in orphans}),
                )
                live += await self.publish(resend, deadline)
            if self._gone:
                self._drop_gone()
        for g in live:
            for future in g.futures:
                if not future.done():
                    await asyncio.wait([future], timeout=max(deadline - clock.now(), 0.0))
                if not future.done():
                    _abandon(live)
                    raise DeliveryError(self._timeout_message(len(outputs), [g]))
                error = future.exception()
                if error is not None:
                    _abandon(live)
                    raise DeliveryError(
                        f"outputs not delivered: the broker refused an output to "
                        f"{g.topic}[{g.partition}]: {error!r}"
                    ) from error

    def _timeout_message(self, n: int, groups: Sequence[_Group]) -> str:
        waiting = sorted(
            {f"{g.topic}[{g.partition}]" for g in groups if g.unsent or not _all_done(g)}
        )
        return (
            f"{n} outputs not delivered: not acknowledged by the broker within "
            f"{self.delivery_timeout_s:g} s (worker.delivery_timeout_s); still waiting on "
            f"{', '.join(waiting[:10])}"
        )

    def _drop_gone(self) -> None:
        """Fail the producer's queued batches for partitions that no longer exist (a
        batch refused in flight is queued again by aiokafka, so this runs at every check
        while any is known). A partition that exists again is forgotten."""
        cluster = self.producer.client.cluster
        accumulator = self.producer._message_accumulator
        for topic, p in list(self._gone):
            parts = cluster.partitions_for_topic(topic)
            if parts and p in parts:
                self._gone.discard((topic, p))
                continue
            for batch in accumulator._batches.pop((topic, p), ()):
                if batch.retry_count:  # sent once: aiokafka's callback removes it from here
                    accumulator._pending_batches.add(batch)
                batch.failure(UnknownTopicOrPartitionError(f"{topic}[{p}] no longer exists"))

    async def _vanished(self, groups: Sequence[_Group]) -> list[_Group]:
        """The groups with outputs still pending on a partition their topic no longer
        has (deleted and re-created smaller). A topic the producer knows no partition of
        (deleted, not yet re-created) is asked for again, not judged."""
        cluster = self.producer.client.cluster
        out = []
        asked = False
        for g in groups:
            if _all_done(g):
                continue
            parts = cluster.partitions_for_topic(g.topic)
            if not parts:
                if not asked:
                    self.producer.client.force_metadata_update()
                    asked = True
                continue
            if g.partition not in parts:
                out.append(g)
        return out

    async def publish(self, outputs: Sequence[Output], deadline: float) -> list[_Group]:
        """Queue every output, grouped per (topic, partition) (an output's own
        ``partition``, else Kafka's default one for its key), each group with the
        futures that resolve when the broker has its outputs. ``deadline`` (on
        :attr:`clock`): how long queueing may wait for room in the producer."""
        by_topic: dict[str, list[Output]] = {}
        for o in outputs:
            by_topic.setdefault(o.topic, []).append(o)
        grouped: dict[tuple[str, int], _Group] = {}
        for topic, outs in by_topic.items():
            parts = await self._partitions_for(topic)
            placed = [o for o in outs if o.partition is not None]
            if placed:  # a table's changelog: the partition is the table's, not the key's
                outs = [o for o in outs if o.partition is None]
                for o in placed:
                    if o.partition not in parts:
                        raise DeliveryError(
                            f"{topic}[{o.partition}] does not exist: {topic} has "
                            f"{len(parts)} partitions"
                        )
                    _group(grouped, topic, o.partition).outputs.append(o)
            keyed = [o for o in outs if o.key is not None]
            indexes = partitions_of([o.key for o in keyed], len(parts)).tolist()
            for o, i in zip(keyed, indexes, strict=True):
                _group(grouped, topic, parts[i]).outputs.append(o)
            if len(keyed) < len(outs):  # unkeyed: a random partition, as aiokafka does
                for o in outs:
                    if o.key is None:
                        p = self.producer._partitioner(None, parts, parts)
                        _group(grouped, topic, p).outputs.append(o)
        # few outputs for a partition: join its open batch with send(), which only waits
        # when that batch is full (send_batch would queue a batch of its own behind it
        # and wait for the previous one to drain) — in this task: a task per partition
        # took 10–20 ms of the loop per batch to queue a few outputs each
        large = []
        for g in grouped.values():
            if len(g.outputs) < self.min_batch:
                for j, o in enumerate(g.outputs):
                    future = await self._send(g, o, deadline)
                    if future is None:
                        g.unsent = g.outputs[j:]
                        break
                    g.futures.append(future)
            else:
                large.append(self._send_batches(g, deadline))
        # each partition waits for its own free slot (aiokafka queues one batch per
        # partition): in parallel, or a batch would wait out one round trip per partition
        await asyncio.gather(*large)
        return list(grouped.values())

    async def _send(self, g: _Group, o: Output, deadline: float) -> asyncio.Future[Any] | None:
        """``send`` to the group's partition; None when the producer no longer knows
        that partition (aiokafka asserts it)."""
        while True:
            try:
                future: asyncio.Future[Any] = await self.producer.send(
                    g.topic,
                    o.value,
                    key=o.key,
                    partition=g.partition,
                    headers=list(o.headers) if o.headers else None,  # aiokafka: a list
                )
            except (AssertionError, UnknownTopicOrPartitionError):
                # "Unrecognized partition" (the metadata changed), or the partition's
                # queue was failed as gone (:meth:`_drop_gone`): sent again by deliver
                return None
            except KafkaTimeoutError:
                self._still_time(deadline)
                continue
            return future

    def _still_time(self, deadline: float) -> None:
        """aiokafka gave up waiting for room for a batch: its wait shrinks faster than
        its timeout says (it subtracts the time since its start at every turn) and counts
        time the process was frozen. Waiting again is right until our own deadline."""
        if self.clock.now() >= deadline:
            raise KafkaTimeoutError("no room in the producer's buffer before the deadline")

    async def _send_batches(self, g: _Group, deadline: float) -> None:
        create_batch = self.producer.create_batch
        batch, first = create_batch(), 0  # first: index of the batch's first output
        for j, o in enumerate(g.outputs):
            headers = list(o.headers) if o.headers else []
            if batch.append(key=o.key, value=o.value, timestamp=None, headers=headers) is None:
                if not await self._send_batch(g, batch, first, deadline):
                    return
                batch, first = create_batch(), j
                if batch.append(key=o.key, value=o.value, timestamp=None, headers=headers) is None:
                    # larger than a whole batch: send() sizes a batch to fit it
                    future = await self._send(g, o, deadline)
                    if future is None:
                        g.unsent = g.outputs[j:]
                        return
                    g.futures.append(future)
                    batch, first = create_batch(), j + 1
        if batch.record_count():
            await self._send_batch(g, batch, first, deadline)

    async def _send_batch(self, g: _Group, batch: Any, first: int, deadline: float) -> bool:
        while True:
            try:
                future = await self.producer.send_batch(batch, g.topic, partition=g.partition)
            except (AssertionError, UnknownTopicOrPartitionError):  # as in _send
                g.unsent = g.outputs[first:]
                return False
            except KafkaTimeoutError:
                self._still_time(deadline)
                continue
            g.futures.append(future)
            return True


def _group(grouped: dict[tuple[str, int], _Group], topic: str, p: int) -> _Group:
    g = grouped.get((topic, p))
    if g is None:
        g = grouped[(topic, p)] = _Group(topic, p, [])
    return g


def _failed_as_gone(g: _Group) -> bool:
    """Did :meth:`BatchPublisher._drop_gone` fail some of this group's outputs? (aiokafka
    itself retries an unknown partition; it never fails a future with that error.)"""
    return any(
        f.done() and not f.cancelled() and isinstance(f.exception(), UnknownTopicOrPartitionError)
        for f in g.futures
    )


def _abandon(groups: Sequence[_Group]) -> None:
    """The delivery failed: nobody awaits these futures any more (asyncio would log each
    unretrieved failure at exit)."""
    for g in groups:
        for future in g.futures:
            future.add_done_callback(_retrieved)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _all_done(g: _Group) -> bool:
    return not g.unsent and all(f.done() for f in g.futures)
