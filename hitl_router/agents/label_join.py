"""The labels agent: joins each human label with what the router decided for its id.

Design (why a Faust table, and why it holds across workers):

- The router and the sampler publish a *decision record* for every review and eval item
  to ``topics.decisions``, keyed by id. Review tools key labels by id too, so with the
  same partition count (the preflight insists) and Kafka's default partitioner, an id's
  decision and its labels share a partition number.
- One Faust agent consumes both topics. Faust assigns partition *p* of both (and of the
  table's changelog) to the same worker, so the join is local. The table
  ``hitl-label-joins`` (id → record and labels) is a Faust table with a changelog topic:
  a restarted or rebalanced worker recovers it before the agent resumes.
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
from typing import Any

import faust
import orjson

from hitl_router import __version__
from hitl_router.feedback_metrics import FeedbackMetrics
from hitl_router.router.config import Config
from hitl_router.router.eval_sampler import EvalSampler
from hitl_router.router.join import JoinOutcome, join_label, joined_key
from hitl_router.router.labels import Label, LabelError, parse_label
from hitl_router.router.outputs import Source, letter
from hitl_router.router.partitioning import partitions_of
from hitl_router.router.validation import ErrorInfo

log = logging.getLogger(__name__)

JOIN_TABLE = "hitl-label-joins"


class LabelJoiner:
    """The labels agent's state and its work per event (Faust's table and topics)."""

    def __init__(self, app: faust.App, config: Config, feedback: FeedbackMetrics) -> None:
        self.app = app
        self.config = config
        self.feedback = feedback
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
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(self.retention_s * 1000)),
                # Kafka compacts and expires closed segments only: close one an hour
                "segment.ms": "3600000",
            },
        )
        raw = {"value_serializer": "raw", "key_serializer": "raw"}
        self.inputs = app.topic(topics.decisions, topics.labels, **raw)
        self.labels_topic = app.topic(topics.labels, **raw)
        self.joined = app.topic(topics.joined, **raw)
        self.qa = app.topic(topics.qa, **raw)
        self.deadletter = app.topic(topics.labels_deadletter, **raw)
        self.qa_sampler = EvalSampler(labels.qa_rate, config.eval_sample.salt + "\x00qa")
        #: per partition: ids in the order recorded, with their record time
        self.order: dict[int, OrderedDict[bytes, float]] = {}
        self.table.on_recover(self._rebuild_order)

    async def _rebuild_order(self) -> None:
        """After recovery: the expiry order of every record held, oldest first. Records of
        partitions this worker no longer holds are dropped from memory (their tombstones
        go to whoever holds them now; kept here, a stale copy would come back)."""
        active = active_partitions(self.app, self.config.topics.labels)
        data = self.table.data
        keys = list(data.keys())
        if keys:
            homes = partitions_of(keys, self.partitions).tolist()
            for key, home in zip(keys, homes, strict=True):
                if home not in active:
                    data.pop(key, None)
        items = []
        for key, value in data.items():
            try:
                items.append((key, float(orjson.loads(value)["d"]["recorded_at"])))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        items.sort(key=lambda kv: kv[1])
        parts = partitions_of([k for k, _ in items], self.partitions).tolist() if items else []
        self.order = {}
        for (key, at), p in zip(items, parts, strict=True):
            self.order.setdefault(p, OrderedDict())[key] = at
        log.info("labels: %d decision records recovered", len(items))

    async def internal_error(self, event: Any, exc: BaseException) -> None:
        """A label the join raised on goes to the labels dead-letter topic."""
        if event.message.topic == self.config.topics.labels:
            m = event.message
            error = LabelError("internal_error", f"the join failed on this label: {exc!r}")
            await self._dead_letter(
                error, event.value, Source(m.topic, m.partition, m.offset), time.time()
            )

    async def on_event(self, event: Any) -> None:
        message = event.message
        if message.topic == self.config.topics.decisions:
            self._record(message.partition, event.key, event.value)
        else:
            await self._label(message, event.key, event.value)

    def _record(self, partition: int, key: bytes | None, value: bytes) -> None:
        if key is None:
            return
        now = time.time()
        old = self.table.get(key)
        if old is not None:  # a redelivered record: keep the labels already joined
            entry = orjson.loads(old)
            entry["d"] = orjson.loads(value)
            self.table[key] = orjson.dumps(entry)
            return
        self.table[key] = b'{"d":' + value + b"}"
        order = self.order.setdefault(partition, OrderedDict())
        order[key] = now
        self._expire(order, now)

    def _expire(self, order: OrderedDict[bytes, float], now: float) -> None:
        """Delete the oldest records over the count bound or past the retention (in the
        event's context: they were written from this partition)."""
        horizon = now - self.retention_s
        while order and (len(order) > self.per_partition or next(iter(order.values())) < horizon):
            key, _ = order.popitem(last=False)
            if key in self.table:
                del self.table[key]

    async def _label(self, message: Any, key: bytes | None, raw: bytes | None) -> None:
        now = time.time()
        source = Source(message.topic, message.partition, message.offset)
        label = parse_label(raw, self.config.labels.reasons)
        if isinstance(label, LabelError):
            await self._dead_letter(label, raw, source, now)
            return
        id_key = label.id.encode()
        home = int(partitions_of([id_key], self.partitions)[0])
        if home != message.partition:  # not keyed by id: send it where its decision is
            await self.labels_topic.send(key=id_key, value=raw)
            self.feedback.rekeyed.inc()
            return
        stored = self.table.get(id_key)
        entry = orjson.loads(stored) if stored is not None else None
        outcome = join_label(entry, label, now=now, retention_s=self.retention_s)
        if outcome.expired and id_key in self.table:
            del self.table[id_key]
        if outcome.error is not None:
            await self._dead_letter(outcome.error, raw, source, now)
            return
        assert outcome.entry is not None and entry is not None
        self.table[id_key] = orjson.dumps(outcome.entry)
        await self._emit(entry, label, outcome, now)

    async def _emit(
        self, entry: dict[str, Any], label: Label, outcome: JoinOutcome, now: float
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
                item = self._qa_item(rec, label, now)
                await self.qa.send(key=label.id.encode(), value=orjson.dumps(item))
                self.feedback.qa_items.labels(queue).inc()
        event = joined if joined is not None and rec["fate"] == "eval" else outcome.pair
        if event is not None:
            event["labelled_at"] = now
            await self.joined.send(key=joined_key(event).encode(), value=orjson.dumps(event))

    def _qa_item(self, rec: dict[str, Any], label: Label, now: float) -> dict[str, Any]:
        """A review item drawn for a second, blind look: the prediction as the router saw
        it and who labelled it first, not their answer."""
        return {
            "id": rec["id"],
            "model": rec["model"],
            "queue": rec["queue"],
            "first_annotator": label.annotator,
            "probs": rec["probs"],
            "classes": rec.get("classes"),
            "scores": rec.get("scores"),
            "temperature": rec["temperature"],
            "drawn_at": now,
            "router": {"version": __version__, "config_hash": self.config.config_hash},
        }

    async def _dead_letter(
        self, error: LabelError, raw: bytes | None, source: Source, now: float
    ) -> None:
        info = ErrorInfo(error.code, error.message, error.path)
        value = letter(info, raw, source, now, self.config.limits)
        key = None
        if raw is not None:
            try:
                doc = orjson.loads(raw)
                if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                    key = doc["id"].encode()[:1024]
            except orjson.JSONDecodeError:
                pass
        await self.deadletter.send(key=key, value=value)
        self.feedback.label_deadletter.labels(error.code).inc()


def active_partitions(app: faust.App, topic: str) -> set[int]:
    """The partitions of ``topic`` this worker is active for."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}
