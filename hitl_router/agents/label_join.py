"""The labels agent: joins each human label with what the router decided for its id.

Design (why a Faust table, and why it holds across workers):

- The router and the sampler publish a *decision record* for every review and eval item
  to ``topics.decisions``, keyed by id. Review tools key labels by id too, so with the
  same partition count (the preflight insists) and Kafka's default partitioner, an id's
  decision and its labels share a partition number.
- One agent consumes both topics, a fetch at a time (the batching consumer, as the
  router's agents). Faust assigns partition *p* of both (and of the table's changelog)
  to the same worker, so the join is local. The table ``hitl-label-joins`` (id → record
  and labels) is a Faust table with a changelog topic: a restarted or rebalanced worker
  recovers it before the agent resumes. A fetch is acked only once its outputs and its
  changelog writes are delivered; a label read again after a crash is recognised by
  its offset (:func:`~hitl_router.router.join.join_label`) and changes nothing.
- A label written with another key (or none) lands on the wrong partition: the agent
  re-publishes it keyed by id (``hitl_labels_rekeyed_total``) and the copy joins.
- Retention is bounded twice: in memory, each partition keeps at most
  ``labels.max_decisions / partitions`` records and none older than
  ``labels.retention_hours`` (the oldest are deleted, a tombstone each); on the broker,
  the changelog is ``compact,delete`` with that retention, so recovery reads no more.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

import faust
import orjson
from prometheus_client import Counter

from hitl_router import __version__
from hitl_router.agents.settling import Batch
from hitl_router.agents.tables import Publish, Writes, active_partitions, put
from hitl_router.feedback_metrics import FeedbackMetrics
from hitl_router.router.config import Config
from hitl_router.router.eval_sampler import EvalSampler
from hitl_router.router.join import JoinOutcome, join_label, joined_key, qa_item
from hitl_router.router.labels import Label, LabelError, parse_label
from hitl_router.router.outputs import Output, Source, letter_output
from hitl_router.router.partitioning import partitions_of
from hitl_router.router.validation import ErrorInfo

log = logging.getLogger(__name__)

JOIN_TABLE = "hitl-label-joins"


class LabelJoiner:
    """The labels agent's state and its work per batch of decision records and labels.

    The batching consumer (:mod:`hitl_router.agents.batching`) hands it the records of
    both topics a fetch at a time and acks them once their outputs and changelog writes
    are delivered: Faust's table, its changelog and its recovery, without Faust's
    per-message stream (README, "The label loop": what that path lost on a failover)."""

    def __init__(
        self,
        app: faust.App,
        config: Config,
        feedback: FeedbackMetrics,
        publish: Publish,
        errors: Counter,
    ) -> None:
        self.app = app
        self.config = config
        self.feedback = feedback
        self.publish = publish
        #: messages the join raised on (``hitl_agent_errors_total{agent="labels"}``)
        self.errors = errors
        topics, labels = config.topics, config.labels
        self.partitions = config.kafka.partitions
        self.retention_s = labels.retention_hours * 3600.0
        self.per_partition = math.ceil(labels.max_decisions / self.partitions)
        self.table = app.Table(
            JOIN_TABLE,
            default=None,
            partitions=self.partitions,
            key_type=bytes,
            value_type=bytes,
            extra_topic_configs=join_changelog_configs(config),
        )
        self.topics = topics
        self.qa_sampler = EvalSampler(labels.qa_rate, config.eval_sample.salt + "\x00qa")
        #: per partition: ids in the order recorded, with their record time
        self.order: dict[int, OrderedDict[bytes, float]] = {}
        #: labels that came before their decision record wait (parked in the table)
        self.wait_s = labels.decision_wait_s
        #: per partition: ids with parked labels, and when the first was parked
        self.parked: dict[int, OrderedDict[bytes, float]] = {}
        self.table.on_recover(self._rebuild_order)
        app.timer(1.0)(self._give_up_waiting)

    @property
    def data(self) -> Any:
        """The table's store (a dict in memory), read and written without a stream event:
        every write goes to the changelog by :meth:`_put`."""
        return self.table.data

    async def _rebuild_order(self) -> None:
        """After recovery: the expiry order of every record held, oldest first. Records of
        partitions this worker no longer holds are dropped from memory (their tombstones
        go to whoever holds them now; kept here, a stale copy would come back)."""
        active = active_partitions(self.app, self.topics.labels)
        data = self.data
        keys = list(data.keys())
        if keys:
            homes = partitions_of(keys, self.partitions).tolist()
            for key, home in zip(keys, homes, strict=True):
                if home not in active:
                    data.pop(key, None)
        items, parked = [], []
        for key, value in data.items():
            entry = orjson.loads(value)
            if "d" in entry:
                items.append((key, float(entry["d"]["recorded_at"])))
            elif "pending" in entry:
                parked.append((key, float(entry["since"])))
        self.order, self.parked = {}, {}
        for target, found in ((self.order, items), (self.parked, parked)):
            found.sort(key=lambda kv: kv[1])
            homes = partitions_of([k for k, _ in found], self.partitions).tolist() if found else []
            for (key, at), p in zip(found, homes, strict=True):
                target.setdefault(p, OrderedDict())[key] = at
        log.info("labels: %d decision records, %d parked ids recovered", len(items), len(parked))

    def handle(self, batch: Batch) -> list[Awaitable[Any]]:
        """Record the decision records and join the labels of one fetch, in order. A
        message the join raises on is logged and counted; a label is dead-lettered as
        ``internal_error``. Never raises for one message."""
        writes = Writes()
        decisions, labels = self.topics.decisions, self.topics.labels
        for m in batch.messages:
            try:
                if m.topic == decisions:
                    self._record(writes, m.partition, m.key, m.value)
                elif m.topic == labels:
                    self._label(writes, m)
            except Exception as exc:
                log.exception("labels: a message could not be joined")
                self.errors.inc()
                if m.topic == labels:
                    error = LabelError("internal_error", f"the join failed on this label: {exc!r}")
                    source = Source(m.topic, m.partition, m.offset)
                    self._dead_letter(writes, error, m.value, source, time.time())
        return writes.deliveries(self.publish)

    def internal_error(self, batch: Batch, exc: BaseException) -> list[Awaitable[Any]]:
        """:func:`~hitl_router.agents.handling.handle_batch`'s last resort (``handle``
        does not raise for one message): every label of the batch dead-lettered."""
        writes = Writes()
        error = LabelError("internal_error", f"the join failed on this label: {exc!r}")
        for m in batch.messages:
            if m.topic == self.topics.labels:
                source = Source(m.topic, m.partition, m.offset)
                self._dead_letter(writes, error, m.value, source, time.time())
        return writes.deliveries(self.publish)

    def _put(self, writes: Writes, partition: int, key: bytes, value: bytes | None) -> None:
        put(self.table, writes.outputs, partition, key, value)

    def _record(self, writes: Writes, partition: int, key: bytes | None, value: bytes) -> None:
        if key is None:
            return
        now = time.time()
        stored = self.data.get(key)
        old = orjson.loads(stored) if stored is not None else None
        if old is not None and "d" in old:  # a redelivered record: keep the labels joined
            old["d"] = orjson.loads(value)
            self._put(writes, partition, key, orjson.dumps(old))
            return
        self._put(writes, partition, key, b'{"d":' + value + b"}")
        order = self.order.setdefault(partition, OrderedDict())
        order[key] = now
        self._expire(writes, partition, order, now)
        if old is not None:  # labels that came first: joined now, in order
            self.parked.get(partition, OrderedDict()).pop(key, None)
            for item in old["pending"]:
                raw = item["raw"].encode()
                label = parse_label(raw, self.config.labels.reasons)
                self._join(writes, label, raw, Source(*item["src"]))

    def _park(
        self, writes: Writes, partition: int, key: bytes, raw: bytes, source: Source, now: float
    ) -> None:
        """Keep a label whose decision record has not arrived (the two topics are read
        side by side, so a fast reviewer's label can overtake it) for ``decision_wait_s``."""
        stored = self.data.get(key)
        entry = orjson.loads(stored) if stored is not None else {"pending": [], "since": now}
        src = [source.topic, source.partition, source.offset]
        if src not in [item["src"] for item in entry["pending"]]:  # not a re-read
            entry["pending"].append({"raw": raw.decode(), "src": src})
        self._put(writes, partition, key, orjson.dumps(entry))
        self.parked.setdefault(partition, OrderedDict()).setdefault(key, entry["since"])

    async def _give_up_waiting(self) -> None:
        """Dead-letter, as ``unknown_id``, the labels parked longer than the wait."""
        horizon = time.time() - self.wait_s
        writes = Writes()
        gave_up = 0
        for partition, parked in self.parked.items():
            while parked and next(iter(parked.values())) < horizon:
                key, _ = parked.popitem(last=False)
                stored = self.data.get(key)
                entry = orjson.loads(stored) if stored is not None else {}
                for item in entry.get("pending", ()):
                    error = LabelError(
                        "unknown_id",
                        f"no decision recorded for {key.decode()!r} "
                        f"(waited {self.wait_s:g} s for it)",
                    )
                    raw = item["raw"].encode()
                    self._dead_letter(writes, error, raw, Source(*item["src"]), time.time())
                self._put(writes, partition, key, None)
                gave_up += 1
        if gave_up:
            writes.deliveries(self.publish)  # not tied to an offset: sent, not awaited
            log.info(
                "labels: %d ids got no decision record in %g s: unknown_id", gave_up, self.wait_s
            )

    def _expire(
        self, writes: Writes, partition: int, order: OrderedDict[bytes, float], now: float
    ) -> None:
        """Delete the oldest records of a partition over the count bound or past the
        retention."""
        horizon = now - self.retention_s
        while order and (len(order) > self.per_partition or next(iter(order.values())) < horizon):
            key, _ = order.popitem(last=False)
            self._put(writes, partition, key, None)

    def _label(self, writes: Writes, message: Any) -> None:
        now = time.time()
        raw = message.value
        source = Source(message.topic, message.partition, message.offset)
        label = parse_label(raw, self.config.labels.reasons)
        if isinstance(label, LabelError):
            self._dead_letter(writes, label, raw, source, now)
            return
        id_key = label.id.encode()
        home = int(partitions_of([id_key], self.partitions)[0])
        if home != message.partition:  # not keyed by id: send it where its decision is
            writes.outputs.append(Output(self.topics.labels, id_key, raw))
            self.feedback.rekeyed.inc()
            return
        stored = self.data.get(id_key)
        if stored is None or b'"pending"' in stored[:12]:
            assert raw is not None
            self._park(writes, message.partition, id_key, raw, source, now)
            return
        self._join(writes, label, raw, source)

    def _join(
        self, writes: Writes, label: Label | LabelError, raw: bytes | None, source: Source
    ) -> None:
        """Join a parsed label with its id's decision record (which is in the table)."""
        now = time.time()
        if isinstance(label, LabelError):  # parked under another taxonomy (a config change)
            self._dead_letter(writes, label, raw, source, now)
            return
        id_key = label.id.encode()
        stored = self.data.get(id_key)
        entry = orjson.loads(stored) if stored is not None else None
        at = (source.partition, source.offset)
        outcome = join_label(entry, label, now=now, retention_s=self.retention_s, at=at)
        if outcome.redelivered:
            self.feedback.redelivered.inc()
            return
        if outcome.expired:
            self._put(writes, source.partition, id_key, None)
        if outcome.error is not None:
            self._dead_letter(writes, outcome.error, raw, source, now)
            return
        assert outcome.entry is not None and entry is not None
        self._put(writes, source.partition, id_key, orjson.dumps(outcome.entry))
        self._emit(writes, entry, label, outcome, now)

    def _emit(
        self, writes: Writes, entry: dict[str, Any], label: Label, outcome: JoinOutcome, now: float
    ) -> None:
        rec = entry["d"]
        model = self.feedback.model_label(rec["model"])
        self.feedback.labels.labels(model, rec["fate"]).inc()
        joined = outcome.joined
        # counters count an id's first label once (a relabel replaces it in the windows,
        # but a counter cannot take back what it counted)
        first_time = not (entry.get("labels") or {})
        if joined is not None and rec["fate"] == "review" and first_time:
            queue = rec["queue"] or ""
            self.feedback.trigger_labels.labels(queue, str(joined["model_wrong"]).lower()).inc()
            if label.reason is not None:
                self.feedback.corrections.labels(queue, label.reason).inc()
            if self.qa_sampler.draw([label.id])[0]:
                router = {"version": __version__, "config_hash": self.config.config_hash}
                item = qa_item(rec, label, now, router)
                writes.outputs.append(Output(self.topics.qa, label.id.encode(), orjson.dumps(item)))
                self.feedback.qa_items.labels(queue).inc()
        event = joined if joined is not None and rec["fate"] == "eval" else outcome.pair
        if event is not None:
            event["labelled_at"] = now
            key = joined_key(event).encode()
            writes.outputs.append(Output(self.topics.joined, key, orjson.dumps(event)))

    def _dead_letter(
        self, writes: Writes, error: LabelError, raw: bytes | None, source: Source, now: float
    ) -> None:
        info = ErrorInfo(error.code, error.message, error.path)
        writes.outputs.append(
            letter_output(self.topics.labels_deadletter, info, raw, source, now, self.config.limits)
        )
        self.feedback.label_deadletter.labels(error.code).inc()


def join_changelog_configs(config: Config) -> dict[str, str]:
    """Topic configs of the join table's changelog: records expire with the retention."""
    return {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(int(config.labels.retention_hours * 3_600_000)),
        # Kafka compacts and expires closed segments only: close one an hour
        "segment.ms": "3600000",
    }


def changelog_topics(config: Config, group: str) -> dict[str, dict[str, str]]:
    """The label tables' changelog topics (Faust names them ``<group>-<table>-changelog``)
    and their configs. The worker creates them before Faust starts: a topic Faust
    declares while its consumer subscribes can be missing from the consumer's metadata,
    and every write to its table then fails (``PartitionsMismatch``: 0 partitions)."""
    from hitl_router.agents.label_windows import WINDOW_TABLE

    return {
        f"{group}-{JOIN_TABLE}-changelog": join_changelog_configs(config),
        f"{group}-{WINDOW_TABLE}-changelog": {"cleanup.policy": "compact"},
    }
