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
from hitl_router.router.join import JoinOutcome, join_label, joined_key, qa_item
from hitl_router.router.labels import Label, LabelError, parse_label
from hitl_router.router.outputs import Source, letter_output
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
            extra_topic_configs=join_changelog_configs(config),
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
        #: labels that came before their decision record wait (parked in the table)
        self.wait_s = labels.decision_wait_s
        #: per partition: ids with parked labels, and when the first was parked
        self.parked: dict[int, OrderedDict[bytes, float]] = {}
        self.table.on_recover(self._rebuild_order)
        app.timer(1.0)(self._give_up_waiting)

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
            await self._record(message.partition, event.key, event.value)
        else:
            await self._label(message, event.key, event.value)

    async def _record(self, partition: int, key: bytes | None, value: bytes) -> None:
        if key is None:
            return
        now = time.time()
        old = orjson.loads(self.table.get(key) or b"null")
        if old is not None and "d" in old:  # a redelivered record: keep the labels joined
            old["d"] = orjson.loads(value)
            self.table[key] = orjson.dumps(old)
            return
        self.table[key] = b'{"d":' + value + b"}"
        order = self.order.setdefault(partition, OrderedDict())
        order[key] = now
        self._expire(order, now)
        if old is not None and self.parked.get(partition, {}).pop(key, None) is not None:
            for item in old["pending"]:  # labels that came first: joined now, in order
                raw = item["raw"].encode()
                label = parse_label(raw, self.config.labels.reasons)
                await self._join(label, raw, Source(*item["src"]))

    def _park(self, partition: int, key: bytes, raw: bytes, source: Source, now: float) -> None:
        """Keep a label whose decision record has not arrived (the two topics are read
        side by side, so a fast reviewer's label can overtake it) for ``decision_wait_s``."""
        stored = self.table.get(key)
        entry = orjson.loads(stored) if stored is not None else {"pending": [], "since": now}
        src = [source.topic, source.partition, source.offset]
        entry["pending"].append({"raw": raw.decode(), "src": src})
        self.table[key] = orjson.dumps(entry)
        self.parked.setdefault(partition, OrderedDict()).setdefault(key, entry["since"])

    async def _give_up_waiting(self) -> None:
        """Dead-letter, as ``unknown_id``, the labels parked longer than the wait."""
        horizon = time.time() - self.wait_s
        gave_up = 0
        for partition, parked in self.parked.items():
            while parked and next(iter(parked.values())) < horizon:
                key, _ = parked.popitem(last=False)
                stored = self.table.get(key)
                entry = orjson.loads(stored) if stored is not None else {}
                for item in entry.get("pending", ()):
                    error = LabelError(
                        "unknown_id",
                        f"no decision recorded for {key.decode()!r} "
                        f"(waited {self.wait_s:g} s for it)",
                    )
                    await self._dead_letter(
                        error, item["raw"].encode(), Source(*item["src"]), time.time()
                    )
                # deleted here, outside a stream event: Faust's ``del`` needs one, so the
                # tombstone goes to the id's own partition explicitly
                self.table.data.pop(key, None)
                self.table.send_changelog(partition, key, None)
                gave_up += 1
        if gave_up:
            log.info(
                "labels: %d ids got no decision record in %g s: unknown_id", gave_up, self.wait_s
            )

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
        if stored is None or b'"pending"' in stored[:12]:
            assert raw is not None
            self._park(message.partition, id_key, raw, source, now)
            return
        await self._join(label, raw, source)

    async def _join(self, label: Label | LabelError, raw: bytes | None, source: Source) -> None:
        """Join a parsed label with its id's decision record (which is in the table)."""
        now = time.time()
        if isinstance(label, LabelError):  # parked under another taxonomy (a config change)
            await self._dead_letter(label, raw, source, now)
            return
        id_key = label.id.encode()
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
                router = {"version": __version__, "config_hash": self.config.config_hash}
                item = qa_item(rec, label, now, router)
                await self.qa.send(key=label.id.encode(), value=orjson.dumps(item))
                self.feedback.qa_items.labels(queue).inc()
        event = joined if joined is not None and rec["fate"] == "eval" else outcome.pair
        if event is not None:
            event["labelled_at"] = now
            await self.joined.send(key=joined_key(event).encode(), value=orjson.dumps(event))

    async def _dead_letter(
        self, error: LabelError, raw: bytes | None, source: Source, now: float
    ) -> None:
        info = ErrorInfo(error.code, error.message, error.path)
        out = letter_output(
            self.config.topics.labels_deadletter, info, raw, source, now, self.config.limits
        )
        await self.deadletter.send(key=out.key, value=out.value)
        self.feedback.label_deadletter.labels(error.code).inc()


def active_partitions(app: faust.App, topic: str) -> set[int]:
    """The partitions of ``topic`` this worker is active for."""
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


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
