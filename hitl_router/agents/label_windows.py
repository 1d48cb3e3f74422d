"""The calibration agent: owns each model's window of eval labels, exports what they
say, fits the temperature and publishes accepted ones.

Joined eval labels arrive on ``topics.joined`` keyed by the model's bare name, and
agreement pairs under one key, so each window has one owner (one partition, one
worker). The windows are kept in the Faust table ``hitl-label-windows`` (one entry per
labelled id, deleted when it leaves the window), so a new owner rebuilds them after a
rebalance or restart. Every ``labels.refit_every`` new labels of a model, the owner
assesses each window of it (the bare name and each ``name@version``) and, when the
temperature is accepted (enough labels, lower held-out NLL), publishes it to the
compacted ``topics.calibration`` keyed by the window's name.
"""

from __future__ import annotations

import logging
import time
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
from hitl_router.router.join import AGREEMENT_KEY
from hitl_router.router.label_metrics import assess, temperature_message
from hitl_router.router.label_window import AgreementWindow, EvalWindows, bare
from hitl_router.router.outputs import Output
from hitl_router.router.partitioning import partitions_of
from hitl_router.router.temperatures import TemperatureBook

log = logging.getLogger(__name__)

WINDOW_TABLE = "hitl-label-windows"
_SEP = "\x1f"
#: seconds between refreshes of gauges whose window changed (fits have their own pace)
REFRESH_S = 2.0


class WindowKeeper:
    """The calibration agent's state and its work per batch of joined labels (handed
    over and acked by the batching consumer, as the join's)."""

    def __init__(
        self,
        app: faust.App,
        config: Config,
        book: TemperatureBook,
        feedback: FeedbackMetrics,
        publish: Publish,
        errors: Counter,
    ) -> None:
        self.app = app
        self.config = config
        self.book = book
        self.feedback = feedback
        self.publish = publish
        #: joined labels that raised (``hitl_agent_errors_total{agent="calibration"}``)
        self.errors = errors
        self.partitions = config.kafka.partitions
        labels = config.labels
        self.table = app.Table(
            WINDOW_TABLE,
            default=None,
            partitions=self.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        self.evals = EvalWindows(labels.window)
        self.pairs = AgreementWindow(labels.window)
        self.since_fit: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.shown: set[str] = set()
        self.table.on_recover(self._rebuild)
        app.timer(REFRESH_S)(self._refresh_dirty)

    def handle(self, batch: Batch) -> list[Awaitable[Any]]:
        """Add a fetch of joined labels (and agreement pairs) to the windows; publish the
        temperatures their fits accept. A joined label that raises is logged and counted,
        never fatal."""
        writes = Writes()
        for m in batch.messages:
            try:
                self._add(writes, m.partition, m.value)
            except Exception:
                log.exception("calibration: a joined label could not be counted")
                self.errors.inc()
        return writes.deliveries(self.publish)

    def internal_error(self, batch: Batch, exc: BaseException) -> list[Awaitable[Any]]:
        return []  # handle does not raise for one message; nothing to dead-letter

    def _put(self, writes: Writes, partition: int, key: bytes, value: bytes | None) -> None:
        put(self.table, writes.outputs, partition, key, value)

    def _add(self, writes: Writes, partition: int, value: bytes) -> None:
        ev = orjson.loads(value)
        if ev.get("kind") == "pair":
            key = _SEP.join((AGREEMENT_KEY, ev["id"], ev["annotator"]))
            self._put(writes, partition, key.encode(), value)
            for gone in self.pairs.add(ev):
                self._put(writes, partition, _SEP.join((AGREEMENT_KEY, *gone)).encode(), None)
            self.dirty.add(AGREEMENT_KEY)
            return
        name = bare(ev["model"])
        row = {
            "m": ev["model"],
            "id": ev["id"],
            "p": ev["probs"],
            "y": ev["y"],
            "at": ev["labelled_at"],
        }
        self._put(writes, partition, _SEP.join((name, ev["id"])).encode(), orjson.dumps(row))
        for gone in self.evals.add(ev["model"], ev["id"], ev["probs"], ev["y"]):
            self._put(writes, partition, _SEP.join((name, gone)).encode(), None)
        self.since_fit[name] = self.since_fit.get(name, 0) + 1
        self.dirty.add(name)
        if self.since_fit[name] >= self.config.labels.refit_every:
            self.since_fit[name] = 0
            writes.outputs.extend(self.refresh(name, fit=True))

    async def _refresh_dirty(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for name in dirty:
            self.refresh(name, fit=False)

    def refresh(self, name: str, fit: bool) -> list[Output]:
        """Export the windows of a model (or the agreement window); with ``fit``, the
        calibration messages of each window's temperature that is accepted."""
        if name == AGREEMENT_KEY:
            self.feedback.observe_agreement(self.pairs.report())
            return []
        labels = self.config.labels
        out = []
        for key in self.evals.keys(name):
            probs, y, ids = self.evals.arrays(key)
            current = self.book.temperature(key)
            report = assess(
                probs,
                y,
                ids,
                current_temperature=current,
                min_labels=labels.min_labels,
                ece_warning=labels.ece_warning,
            )
            self.feedback.observe_window(key, report)
            self.shown.add(key)
            if not fit:
                continue
            model = self.feedback.model_label(key)
            if report["n"] < labels.min_labels:
                self.feedback.fits.labels(model, "too_few").inc()
            elif not report["accepted"]:
                self.feedback.fits.labels(model, "rejected").inc()
            else:
                self.feedback.fits.labels(model, "accepted").inc()
                out.append(self._accepted(key, current, report))
        return out

    def _accepted(self, key: str, previous: float, r: dict[str, Any]) -> Output:
        t = float(r["temperature"])
        router = {"version": __version__, "config_hash": self.config.config_hash}
        doc = temperature_message(key, previous, r, time.time(), router)
        self.book.update(key, t)  # here at once; every worker applies it from the topic
        log.info("calibration: %s T %.4g → %.4g on %d eval labels", key, previous, t, r["n"])
        return Output(self.config.topics.calibration, key.encode(), orjson.dumps(doc))

    async def _rebuild(self) -> None:
        """After a recovery: the windows of the partitions this worker now owns."""
        active = active_partitions(self.app, self.config.topics.joined)
        evals, pairs = [], []
        data = self.table.data
        for k in list(data.keys()):
            name, _, _ = k.decode().partition(_SEP)
            if int(partitions_of([name.encode()], self.partitions)[0]) not in active:
                data.pop(k, None)  # another worker's now: no stale copy kept here
                continue
            (pairs if name == AGREEMENT_KEY else evals).append(orjson.loads(data[k]))
        self.evals = EvalWindows(self.config.labels.window)
        self.pairs = AgreementWindow(self.config.labels.window)
        for row in sorted(evals, key=lambda r: r.get("at", 0.0)):
            self.evals.add(row["m"], row["id"], row["p"], row["y"])
        for pair in sorted(pairs, key=lambda r: r.get("labelled_at", 0.0)):
            self.pairs.add(pair)
        owned = {key for name in self.evals.models() for key in self.evals.keys(name)}
        for key in self.shown - owned:
            self.feedback.forget_window(key)
        self.shown &= owned
        if not pairs:
            self.feedback.forget_agreement()
        self.dirty = set(self.evals.models()) | ({AGREEMENT_KEY} if pairs else set())
        log.info("labels: windows of %s recovered", sorted(self.dirty))
