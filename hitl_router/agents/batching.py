"""Faust's own Kafka consumer, handing agents one batch per fetch instead of one event
per message — fetched by aiokafka, or by librdkafka (``reader_conf``,
:mod:`~hitl_router.agents.rdkafka_reading`) under aiokafka's group membership.

Measured here (BENCHMARKS.md): Faust's per-message path — ``Consumer._drain_messages``
awaiting ``wait_first(callback(message), ...)`` (two tasks per message), the conductor,
the channel queue, ``Stream`` and ``Event`` — caps a no-op agent at a fraction of what a
raw aiokafka loop moves. So for the topics it is told to batch, :class:`BatchingConsumer`
keeps what Faust does around the data (group membership and rebalances, the consumer
thread, read offsets and gaps, flow control, acked offsets and Faust's committer, end
offsets for lag) and changes the hand-off: the records of one fetch become one
:class:`Batch` — aiokafka's own records, no Faust ``ConsumerMessage`` or sensor per
message — sent as a single value on an in-memory Faust channel per agent. Agents stay
Faust agents (``@app.agent(channel)``) and do their work once per batch, vectorised.

A batch's messages are acked only when every agent has finished it *and* every output it
produced has been acknowledged by the broker: at-least-once. They are acked together,
one update of Faust's acked offsets per partition (what ``Consumer.ack`` does per
message). Up to ``max_in_flight`` × ``max_poll_records`` messages may be in flight
(decided or being delivered) before the fetch loop waits for the oldest batch: a budget
in messages, not batches, so small batches at low rates never wait on delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from time import monotonic
from typing import Any

from aiokafka import TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from hitl_router.agents.rdkafka_reading import RdkafkaReader
from hitl_router.agents.settling import Batch, BatchSink, InFlight, gaps, unread
from hitl_router.router.config import WorkerConfig

__all__ = ["Batch", "BatchSink", "BatchingConsumer"]

log = logging.getLogger(__name__)
_WORKER = WorkerConfig()  # the defaults
#: a read whose partitions Faust keeps paused this long is logged (once; it keeps waiting)
HELD_WARNING_S = 10.0


class _ConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread with a configurable fetch wait.

    Faust hard-codes ``fetch_max_wait_ms=1500``. aiokafka leaves partitions that still
    hold buffered records out of the next fetch, so when every input partition is
    buffered the fetch asks only for idle ones (Faust's own assignor partition is always
    idle) and the broker holds it for the full wait: measured as 0.4–0.9 s stalls at
    full speed and a p50 latency above a second at half speed (BENCHMARKS.md)."""

    fetch_max_wait_ms: int = 1500
    fetch_min_bytes: int = 1  # aiokafka's default

    async def on_partitions_assigned(
        self, assigned: set[Any], generation_id: int = 0
    ) -> None:  # pragma: no cover - needs Kafka
        """In the consumer thread, before Faust hears of the assignment: pause what
        librdkafka reads, so aiokafka never fetches it (aiokafka's pause; Faust's own
        pause only filters what was fetched)."""
        elsewhere = self.consumer.read_elsewhere  # the topics librdkafka reads
        paused = [TopicPartition(t.topic, t.partition) for t in assigned if t.topic in elsewhere]
        if paused:
            self._ensure_consumer().pause(*paused)
        await super().on_partitions_assigned(assigned, generation_id)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        consumer._fetch_min_bytes = self.fetch_min_bytes
        return consumer

    async def seek_to_committed(self) -> Any:
        return await self.call_thread(self._seek_to_committed_or_beginning)

    async def _seek_to_committed_or_beginning(self) -> Any:
        """After a rebalance, Faust seeks every partition to its committed offset, so that
        what was fetched and not acked (batches forgotten by :meth:`BatchingConsumer.
        wait_empty`) is read again. aiokafka's ``seek_to_committed`` leaves a partition
        with no committed offset alone: its position stays past those records, and
        Faust's committer (``Consumer._new_offset`` checks for a gap at the head only
        when there is a committed offset) then commits past them. Measured on the label
        loop: a worker killed before its group ever committed a partition lost the
        labels of that partition in about half of the runs. Such a partition is read
        again from its beginning — what ``auto_offset_reset: earliest`` means for a
        group that never committed."""
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if not offset]  # None or 0
        if fresh:
            await consumer.seek_to_beginning(*fresh)
            log.debug("no committed offset: %s read from the beginning", fresh)
        return committed


class BatchingConsumer(Consumer):
    """Faust's aiokafka consumer; messages of ``batch_topics`` go to their sinks a batch
    at a time, every other topic takes Faust's usual per-message path."""

    #: topic → (number of agents, function delivering a batch to them)
    batch_topics: Mapping[str, tuple[int, BatchSink]] = {}
    #: seconds a stop or rebalance waits for batches in flight before forgetting them
    settle_grace: float = 5.0
    # from the config's ``worker`` section (WorkerConfig documents them); the app sets them
    max_in_flight: int = _WORKER.max_in_flight
    #: how long the broker may hold a fetch waiting for data (Faust's own: 1500)
    fetch_max_wait_ms: int = _WORKER.fetch_max_wait_ms
    #: how much data the broker waits for before it answers a fetch (aiokafka's own: 1)
    fetch_min_bytes: int = _WORKER.fetch_min_bytes
    #: a backstop in wall time: a batch's deliveries not done this long after its agents
    #: finished fail it (the publisher's own deadline, in running time, fails them first)
    delivery_timeout_s: float = 3 * _WORKER.delivery_timeout_s + 60.0
    #: librdkafka settings of the reader of ``batch_topics`` (``worker.consumer:
    #: librdkafka``); None: aiokafka fetches them, as every other topic
    reader_conf: Mapping[str, Any] | None = None

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        thread = _ConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        thread.fetch_min_bytes = self.fetch_min_bytes
        return thread

    @property
    def read_elsewhere(self) -> Mapping[str, Any]:
        """The topics librdkafka reads (none unless ``reader_conf`` is set)."""
        return self.batch_topics if self.reader_conf is not None else {}

    def _ensure_reader(self) -> RdkafkaReader | None:
        """The reader of ``batch_topics`` with ``reader_conf``, made at first use (the
        app sets ``reader_conf`` once the consumer exists)."""
        if self._reader is None and self.reader_conf is not None:
            self._reader = RdkafkaReader(self.reader_conf)
        return self._reader

    def __post_init__(self) -> None:  # pragma: no cover - mode calls it after __init__
        super().__post_init__()
        self._in_flight: InFlight | None = None
        #: partitions of batched topics assigned and not yet sought to their committed
        #: offsets: their records are not handed over (see :meth:`perform_seek`)
        self._unsought: set[Any] = set()
        #: seeks asked for by others, done by the fetch loop between two fetches
        self._seeks: list[asyncio.Future[None]] = []
        self._drain_task: asyncio.Task[Any] | None = None
        self._reader: RdkafkaReader | None = None

    async def on_partitions_assigned(
        self, assigned: set[Any], generation_id: int = 0
    ) -> None:  # pragma: no cover - needs Kafka
        self._unsought.update(tp for tp in assigned if tp.topic in self.batch_topics)
        await super().on_partitions_assigned(assigned, generation_id)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:  # pragma: no cover
        self._unsought.difference_update(revoked)
        reader = self._ensure_reader()
        if reader is not None:
            # nothing is read until the seek after the rebalance assigns what this worker
            # then holds, from Faust's committed offsets (aiokafka revokes everything)
            await reader.assign({})
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:  # pragma: no cover - needs Kafka
        """Seek every partition to its committed offset (Faust's), done by the fetch loop
        between two fetches, and only then read the partitions assigned before it.

        After a rebalance Faust's recovery resumes the stream partitions *then* seeks
        them (``Recovery._resume_streams``), with the flow running when tables were just
        recovered: a fetch in between handed over records the seek then had read again.
        Measured in the demo (dedup's table in the routing group): up to ~800 predictions
        decided twice after a start, with no rebalance. So records of a partition
        assigned and not yet sought are dropped (the seek reads them again), and the seek
        runs in the fetch loop, so no fetch straddles it: a fetch that straddled it
        returned records read from the sought offset, dropped as not yet sought, and
        lost."""
        task = self._drain_task
        if (
            task is None
            or task.done()
            or asyncio.current_task() is task
            or not self.flow_active  # the loop waits for the flow: no fetch runs
        ):
            await self._seek_now()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seeks.append(done)
        # a rebalance may stop the flow meanwhile: the loop then waits for the flow and
        # serves no seek, so the seek is done here (no fetch runs while the flow stops)
        stopped = asyncio.ensure_future(self.suspend_flow.wait())
        try:
            await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if done.done():
            done.result()
            return
        if done in self._seeks:
            self._seeks.remove(done)
        done.cancel()
        await self._seek_now()

    async def _seek_now(self) -> None:  # pragma: no cover - needs Kafka
        before = set(self._unsought)
        await super().perform_seek()
        reader = self._ensure_reader()
        if reader is not None:
            # the reader starts where Faust just sought aiokafka to: the committed offset,
            # else the beginning (what ``_seek_to_committed_or_beginning`` does); only the
            # partitions Faust has not paused: while tables recover, their stream
            # partitions stay paused, and Faust seeks them again when it resumes them
            # (``Recovery._resume_streams``), which assigns them here
            read_offset = self._read_offset
            active = self._get_active_partitions()
            await reader.assign(
                {
                    (tp.topic, tp.partition): read_offset.get(tp) or None
                    for tp in self.assignment()
                    if tp.topic in self.batch_topics and tp in active
                }
            )
        self._unsought.difference_update(before)

    async def _serve_seeks(self) -> None:  # pragma: no cover - needs Kafka
        seeks, self._seeks = self._seeks, []
        try:
            await self._seek_now()
        except BaseException as exc:
            for done in seeks:
                if not done.done():
                    done.set_exception(exc)
            raise
        for done in seeks:
            if not done.done():
                done.set_result(None)

    async def wait_empty(self) -> None:  # pragma: no cover - needs Kafka
        """Before a stop or rebalance, Faust waits here for every message taken to be
        acked (its own wait covers the per-message topics). It also suspends flow
        control, which drops the batches still queued in the agents' channels: those
        would never settle. So: give the batches in flight ``settle_grace`` seconds, then
        forget the unsettled ones — not acked, they are redone from the committed offset
        by whoever owns the partition next."""
        in_flight = self._in_flight
        forgotten = await in_flight.settle(self.settle_grace) if in_flight else 0
        if forgotten:
            log.info(
                "%d messages in flight not settled in %.0fs: they will be redelivered",
                forgotten,
                self.settle_grace,
            )
        await super().wait_empty()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs Kafka
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        in_flight = self._in_flight
        if in_flight is None:  # one for the consumer's life: a restarted fetcher keeps it
            budget = self.max_in_flight * self.app.conf.broker_max_poll_records
            in_flight = self._in_flight = InFlight(
                budget, self.ack_offsets, self._batch_failed, self.delivery_timeout_s
            )
        self._drain_task = asyncio.current_task()
        reading = None
        if self._ensure_reader() is not None:  # librdkafka reads the batched topics meanwhile
            reading = asyncio.ensure_future(self._read_batches(fetcher, in_flight))
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if self._seeks:
                    await self._serve_seeks()
                await self._hand_over(await self._fetch(timeout=1.0), in_flight)
                if reading is not None and reading.done():
                    reading.result()  # the reader's failure stops the worker
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        finally:
            self._drain_task = None
            if reading is not None:
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading
            if self._seeks:  # asked for while the loop stopped: done here
                with contextlib.suppress(Exception):
                    await self._serve_seeks()

    async def _read_batches(self, fetcher: Any, in_flight: InFlight) -> None:
        """The batched topics' fetch loop on librdkafka (``reader_conf``): a read at a
        time, handed over as aiokafka's fetches are.

        What a read returns is handed over only if no assignment came after it began (its
        generation is the reader's): a revocation assigns nothing, and the seek after a
        rebalance assigns Faust's committed offsets, which read it again. Records of the
        current generation are never dropped — librdkafka's position is past them — so
        while the flow is stopped, or one of their partitions is paused in Faust (a
        rebalance pauses everything before it revokes), they wait for both to resume (or
        for an assignment, which drops them). Nor do they need the ``_unsought`` check of
        aiokafka's records: the reader reads only what a seek assigned it, from the
        sought offsets, and only partitions Faust had not paused (the seek may run with
        the flow on, after a recovery of tables)."""
        reader = self._reader
        assert reader is not None
        size = self.app.conf.broker_max_poll_records
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        while not (consumer_should_stop() or fetcher_should_stop()):
            if not self.flow_active:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.can_resume_flow.wait(), 0.5)
                continue
            generation, records = await reader.read(size, 0.1)
            if not records:
                continue
            by_tp: dict[Any, list[Any]] = {}
            for r in records:
                key = (r.topic, r.partition)
                got = by_tp.get(key)
                if got is None:
                    by_tp[key] = [r]
                else:
                    got.append(r)
            tps = {self._new_topicpartition(*key): key for key in by_tp}
            held_since, told = monotonic(), False
            while generation == reader.generation and not self._may_hand_over(tps):
                if consumer_should_stop() or fetcher_should_stop():
                    return  # not acked: redone from the committed offset
                if not told and monotonic() - held_since > HELD_WARNING_S:
                    told = True
                    self._tell_held(tps, len(records), monotonic() - held_since)
                if self.flow_active:  # a partition paused, the flow on: look again soon
                    await asyncio.sleep(0.05)
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.can_resume_flow.wait(), 0.5)
            if generation != reader.generation:
                continue
            await self._hand_over(self._held(tps, by_tp), in_flight)

    def _held(
        self, tps: Mapping[Any, tuple[str, int]], by_tp: Mapping[tuple[str, int], list[Any]]
    ) -> dict[Any, list[Any]]:
        """A read's records of the partitions this worker still holds (a rebalance may be
        under way), with what Faust's monitor tracks of each: its end offset for the lag
        (when librdkafka knows one: not while the broker is away, and Faust's gauge
        refuses None) and when records last came in."""
        reader = self._reader
        assert reader is not None
        assignment = self.assignment()
        fetched = {}
        now = monotonic()
        monitor = self.app.monitor
        for tp, (topic, partition) in tps.items():
            if tp not in assignment:
                continue
            high = reader.high_watermark(topic, partition)
            if high is not None:
                monitor.track_tp_end_offset(tp, high)
            monitor.stream_inbound_time[tp] = now
            fetched[tp] = by_tp[topic, partition]
        return fetched

    def _tell_held(self, tps: Iterable[Any], n: int, waited: float) -> None:
        """A read has waited long for its partitions: say why (it keeps waiting)."""
        active, held = self._get_active_partitions(), self.assignment()
        log.warning(
            "librdkafka: %d records read %.0f s ago wait to be handed over: flow %s; "
            "their partitions %s",
            n,
            waited,
            "running" if self.flow_active else "stopped",
            ", ".join(
                f"{tp.topic}[{tp.partition}] "
                + ("active" if tp in active else "paused" if tp in held else "gone")
                for tp in sorted(tps)
            ),
        )

    def _may_hand_over(self, tps: Iterable[Any]) -> bool:
        """The flow runs and Faust has paused none of these partitions that this worker
        holds (records of those it no longer holds are dropped at the hand-over)."""
        if not self.flow_active:
            return False
        active = self._get_active_partitions()
        assignment = self.assignment()
        return all(tp in active or tp not in assignment for tp in tps)

    async def _hand_over(self, records: Mapping[Any, Sequence[Any]], in_flight: InFlight) -> None:
        """One fetch's records, per partition: the batched topics' go to their sinks as
        one :class:`Batch` per topic, every other topic's take Faust's per-message path.
        Then wait while over the in-flight budget, and commit every ``commit_every``."""
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        callback = self.callback
        fetched: dict[str, tuple[list[Any], dict[Any, list[int]]]] = {}
        for tp, tp_records in records.items():
            r_offset = get_read_offset(tp)
            messages = unread(tp_records, r_offset)
            if not messages:
                continue  # already read: Faust drops these too
            tp_offsets = None
            if acks_enabled_for(tp.topic):
                tp_offsets = [m.offset for m in messages]
                # offsets with no message (e.g. transaction markers) become gaps, as in
                # Faust, or the committer would wait for them forever
                for start, end in gaps(r_offset, tp_offsets):
                    await self._add_gap(tp, start, end)
            if tp.topic in self.batch_topics:
                batched, offsets = fetched.setdefault(tp.topic, ([], {}))
                batched.extend(messages)
                if tp_offsets is not None:
                    offsets[tp] = tp_offsets
            else:
                for message in [self._to_message(tp, m) for m in messages]:
                    await self.wait_first(callback(message), self.suspend_flow.wait())
            set_read_offset(tp, messages[-1].offset)
        for topic, (messages, offsets) in fetched.items():
            n_agents, sink = self.batch_topics[topic]
            batch = Batch(messages, n_agents, offsets)
            # settled by a task of its own, so acks keep coming while the fetcher
            # stops (Faust's shutdown and rebalances wait for them); registered
            # before the hand-off so that wait_empty can always account for it
            in_flight.add(batch)
            await sink(batch)
        await in_flight.throttle()
        if self._commit_every is not None and self._n_acked >= self._commit_every:
            self._n_acked = 0
            await self.commit()

    async def _fetch(self, timeout: float) -> dict[Any, list[Any]]:
        """One fetch, as Faust's ``getmany`` does it, per partition instead of per message:
        the end offset (for lag) is tracked once per partition, and no per-message sensor
        runs (``faust_messages_received*`` do not count batched topics; ``hitl_*`` do).
        Records stay aiokafka's: ``_drain_messages`` makes Faust messages of the records
        of topics it does not batch."""
        records, active_partitions = await self._wait_next_records(timeout)
        if not records or self.should_stop:
            return {}
        if not self.flow_active:
            try:
                await self.perform_seek()
            except Exception as exc:  # noqa: BLE001 - as Faust: log, retry next fetch
                log.warning("exception performing seek when flow not active %r", exc)
            return {}
        monitor = self.app.monitor
        now = monotonic()
        out = {}
        unsought = self._unsought
        read_elsewhere = self.read_elsewhere
        for tp, recs in records.items():
            if tp in unsought or tp.topic in read_elsewhere:
                continue  # fetched before the seek, which reads them again; or librdkafka's
            if (
                active_partitions is None
                or tp in active_partitions
                or tp in self._buffered_partitions
            ):
                monitor.track_tp_end_offset(tp, self.highwater(tp))
                # what the stream sensor would record: Faust's consumer thread checks it
                # to tell a busy partition from a stuck one
                monitor.stream_inbound_time[tp] = now
                out[tp] = recs
        return out

    def verify_event_path(self, now: float, tp: Any) -> None:  # pragma: no cover
        """Faust's check that aiokafka keeps fetching each partition (it logs an error
        every few seconds for one it has not fetched in ``stream_processing_timeout``):
        not for the partitions librdkafka reads."""
        if self._reader is not None and tp.topic in self.batch_topics:
            return
        super().verify_event_path(now, tp)

    def highwater(self, tp: Any) -> int:  # pragma: no cover - needs Kafka
        if self._reader is not None and tp.topic in self.batch_topics:
            return self._reader.high_watermark(tp.topic, tp.partition) or 0
        return super().highwater(tp)  # type: ignore[no-any-return]

    async def on_stop(self) -> None:  # pragma: no cover - needs Kafka
        await super().on_stop()
        if self._reader is not None:
            await self._reader.close()

    async def _batch_failed(self, error: BaseException, batch: Batch) -> None:
        """A batch was not handled or not delivered: nothing of it is acked, and the
        worker stops (a producer that cannot deliver is not a state to route through;
        the worker exits within ``worker.shutdown_timeout_s``, and the batch is redone
        from the committed offset)."""
        await self.crash(error)

    def ack_offsets(self, offsets: Mapping[Any, list[int]]) -> int:
        """Ack these offsets of these partitions: ``Consumer.ack``'s bookkeeping, once per
        partition instead of once per message. Returns how many were newly acked."""
        n = 0
        with ack_lock:
            for tp, tp_offsets in offsets.items():
                committed = self._committed_offset[tp]
                acked_index = self._acked_index[tp]
                new = [
                    o
                    for o in tp_offsets
                    if (committed is None or o >= committed) and o not in acked_index
                ]
                if new:
                    acked_index.update(new)
                    self._acked[tp].extend(new)
                    n += len(new)
            self._n_acked += n
            notify(self._waiting_for_ack)
        return n
