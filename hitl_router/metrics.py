"""Prometheus metrics of the SPEC, built on a registry passed in.

Tests build a fresh ``CollectorRegistry()`` and read real sample values with
``registry.get_sample_value``; the worker serves its registry on ``/metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from hitl_router.router.decision import (
    BUDGET,
    DEADLETTER,
    DIVERSITY,
    DUPLICATE,
    EVAL,
    FATES,
    BatchDecisions,
)
from hitl_router.router.validation import ERROR_CODES

if TYPE_CHECKING:
    from hitl_router.router.config import Config

OTHER_MODEL = "other"
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class BatchHistogram(Collector):
    """A Prometheus histogram observed a batch at a time (numpy), exposed like
    ``prometheus_client.Histogram``: ``_bucket{le}``, ``_sum``, ``_count``.

    >>> reg = CollectorRegistry()
    >>> h = BatchHistogram("x_seconds", "x", buckets=(0.1, 1.0), registry=reg)
    >>> h.observe_many(np.array([0.05, 0.1, 0.5, 7.0]))
    >>> [reg.get_sample_value("x_seconds_bucket", {"le": le}) for le in ("0.1", "1.0", "+Inf")]
    [2.0, 3.0, 4.0]
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or not bounds:
            raise ValueError("buckets must be a non-empty increasing sequence")
        self.name = name
        self.documentation = documentation
        self._bounds = np.array(bounds)
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
        if values.size == 0:
            return
        idx = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts).astype(np.float64).tolist()
            total = self._sum
        labels = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], list(zip(labels, cumulative, strict=True)), total)
        yield family


class RouterMetrics:
    """Counters and histograms of the routing path.

    ``max_models`` bounds the ``model`` label: models beyond it are counted as
    ``other`` so a producer cannot blow up the series count; a model once labelled keeps
    its label (nothing is evicted). With an allow-list (``models``: bare names or
    ``name@version``), only those models get a label of their own, so a producer
    sending made-up names cannot even fill the cap. Predictions counted as ``other``
    are counted in ``hitl_model_label_overflow_total`` too.

    >>> reg = CollectorRegistry()
    >>> m = RouterMetrics(reg, max_models=2, models=("fraud",))
    >>> [m.model_label(x) for x in ("fraud@3", "fraud", "spam", "x")]
    ['fraud@3', 'fraud', 'other', 'other']
    >>> m = RouterMetrics(CollectorRegistry(), max_models=2)
    >>> [m.model_label(x) for x in ("a", "b", "c", "a")]
    ['a', 'b', 'other', 'a']
    """

    def __init__(
        self, registry: CollectorRegistry, max_models: int = 100, models: Sequence[str] = ()
    ) -> None:
        self.max_models = max_models
        self.allowed = frozenset(models)
        self._models: set[str] = set()
        self.predictions = Counter(
            "hitl_predictions",
            "Valid predictions received, per model.",
            ["model"],
            registry=registry,
        )
        self.decisions = Counter(
            "hitl_decisions",
            "Decisions made, per model, fate and review queue.",
            ["model", "fate", "queue"],
            registry=registry,
        )
        self.rule_fired = Counter(
            "hitl_rule_fired",
            "Rule results that fired, per queue and rule.",
            ["queue", "rule"],
            registry=registry,
        )
        self.budget_dropped = Counter(
            "hitl_budget_dropped",
            "Items that matched a queue over its budget and passed, per queue.",
            ["queue"],
            registry=registry,
        )
        self.diversity_dropped = Counter(
            "hitl_diversity_dropped",
            "Items that matched a queue whose diversity cap their key was at, and passed.",
            ["queue"],
            registry=registry,
        )
        self.duplicates = Counter(
            "hitl_duplicates",
            "Items that matched a queue but whose id was routed within dedup.retention_s "
            "(a redelivery, a producer's retry, a copy): passed, per queue.",
            ["queue"],
            registry=registry,
        )
        self.class_entropy = Gauge(
            "hitl_class_entropy",
            "Entropy (nats) of the predicted-class mix over the last 1,000 items: of each "
            'queue, and of the stream the rules looked at (queue=""). A queue far below '
            "the stream is concentrating on a few classes.",
            ["queue"],
            registry=registry,
        )
        self.budget_used = Gauge(
            "hitl_budget_used",
            "Items this worker admitted to a budgeted queue in the current period (sum "
            "over workers: the group's).",
            ["queue"],
            registry=registry,
        )
        self.budget_quota = Gauge(
            "hitl_budget_quota",
            "This worker's share of a queue's budget per period (sum over workers: the budget).",
            ["queue"],
            registry=registry,
        )
        self.rule_threshold = Gauge(
            "hitl_rule_threshold",
            "The threshold in force of a target-rate rule (its window's quantile), per "
            "queue and rule.",
            ["queue", "rule"],
            registry=registry,
        )
        self.deadletter = Counter(
            "hitl_deadletter",
            "Messages sent to the dead-letter topic, per error code.",
            ["code"],
            registry=registry,
        )
        self.latency = BatchHistogram(
            "hitl_decision_latency_seconds",
            "Prediction time (its ts, else the Kafka timestamp) to decision.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "hitl_batch_size",
            "Messages per decided batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )
        self.drift_score = Gauge(
            "hitl_drift_score",
            "Drift score of the last complete window, per model, feature and method.",
            ["model", "feature", "method"],
            registry=registry,
        )
        self.drift_threshold = Gauge(
            "hitl_drift_threshold",
            "Threshold the drift score is compared with (calibrated on the pool).",
            ["model", "feature", "method"],
            registry=registry,
        )
        self.drift_detected = Gauge(
            "hitl_drift_detected",
            "1 when the last complete window's score is above its threshold.",
            ["model", "feature", "method"],
            registry=registry,
        )
        self.drift_window_drifted = Gauge(
            "hitl_drift_window_drifted",
            "1 when the last complete window of the model is drifted (the window verdict).",
            ["model"],
            registry=registry,
        )
        self.drift_windows = Counter(
            "hitl_drift_windows",
            "Windows judged, per model and verdict (drifted: true|false).",
            ["model", "drifted"],
            registry=registry,
        )
        self._alarm_on: dict[str, bool] = {}
        self.drift_alarm = Gauge(
            "hitl_drift_alarm",
            "1 while the model's drift alarm is on: drift.persistence.drifted of its last "
            "drift.persistence.windows windows drifted (this worker's windows).",
            ["model"],
            registry=registry,
        )
        self.drift_alarms = Counter(
            "hitl_drift_alarms",
            "Drift alarms started, per model (this worker's windows).",
            ["model"],
            registry=registry,
        )
        self.agent_errors = Counter(
            "hitl_agent_errors",
            "Batches whose processing raised and was retried per message.",
            ["agent"],
            registry=registry,
        )
        self.model_overflow = Counter(
            "hitl_model_label_overflow",
            "Predictions whose model got the label 'other' (not allowed, or over the cap).",
            registry=registry,
        )

    def declare(self, config: Config, agents: Sequence[str] = ()) -> None:
        """Create at zero the series the config implies, so that a rate over them is 0
        rather than no data until the first event: every dead-letter code, each agent's
        errors, and the drops of the queues with a budget, a diversity cap, or dedup."""
        for code in ERROR_CODES:
            self.deadletter.labels(code)
        for agent in agents:
            self.agent_errors.labels(agent)
        for q in config.queues:
            if q.budget is not None:
                self.budget_dropped.labels(q.name)
            if q.diversity is not None:
                self.diversity_dropped.labels(q.name)
            if config.dedup is not None:
                self.duplicates.labels(q.name)

    def observe_drift(self, reports: Sequence[Any]) -> None:
        """Export each drift report: score, threshold and whether that test fired; per
        window, its verdict and the model's alarm."""
        windows: dict[tuple[str, int], Any] = {}
        for r in reports:
            labels = (self.model_label(r.model), r.feature, r.method)
            self.drift_score.labels(*labels).set(r.score)
            self.drift_threshold.labels(*labels).set(r.threshold)
            self.drift_detected.labels(*labels).set(1.0 if r.drifted else 0.0)
            windows[(r.model, r.window)] = r
        for r in windows.values():  # in window order, per model
            model = self.model_label(r.model)
            self.drift_alarms.labels(model)  # at 0 from the model's first window
            self.drift_window_drifted.labels(model).set(1.0 if r.window_drifted else 0.0)
            self.drift_windows.labels(model, "true" if r.window_drifted else "false").inc()
            if r.alarm and not self._alarm_on.get(model, False):
                self.drift_alarms.labels(model).inc()
            self._alarm_on[model] = r.alarm
            self.drift_alarm.labels(model).set(1.0 if r.alarm else 0.0)

    def model_label(self, model: str) -> str:
        """The ``model`` label of a model's series: its name, or ``other``."""
        if model in self._models:
            return model
        allowed = not self.allowed or model in self.allowed or _bare(model) in self.allowed
        if allowed and len(self._models) < self.max_models:
            self._models.add(model)
            return model
        return OTHER_MODEL

    def observe_too_large(self, n: int) -> None:
        """Count outputs dead-lettered as ``output_too_large`` instead of sent."""
        if n:
            self.deadletter.labels("output_too_large").inc(n)

    def observe_router(self, batch: BatchDecisions, times: Sequence[float], now: float) -> None:
        """Count a batch as the router agent sees it: every fate but ``eval``.

        ``times`` holds each message's prediction time (unix seconds).
        """
        self.batch_size.observe(batch.n)
        queues = batch.policy.queues
        valid = batch.fate != DEADLETTER
        models = [doc["model"] for doc in batch.docs if doc is not None]
        names = list(dict.fromkeys(models))  # each model once, in order of appearance
        if len(names) == 1:
            model_of = np.zeros(len(models), dtype=np.int64)
        else:
            index = {m: j for j, m in enumerate(names)}
            model_of = np.fromiter((index[m] for m in models), np.int64, count=len(models))
        for j, c in enumerate(np.bincount(model_of, minlength=len(names)).tolist()):
            label = self.model_label(names[j])
            self.predictions.labels(label).inc(c)
            if label == OTHER_MODEL and names[j] != OTHER_MODEL:
                self.model_overflow.inc(c)
        # one cell per (model, fate, queue + 1): every decision counted in one bincount
        n_fates, n_cells = len(FATES), len(queues) + 1
        cell = (model_of * n_fates + batch.fate[valid]) * n_cells + batch.queue[valid] + 1
        counts = np.bincount(cell, minlength=len(names) * n_fates * n_cells)
        for c in np.flatnonzero(counts).tolist():
            m, rest = divmod(c, n_fates * n_cells)
            fate, q = divmod(rest, n_cells)
            if fate == EVAL:
                continue  # the sampler's to count
            queue = queues[q - 1].name if q else ""
            self.decisions.labels(self.model_label(names[m]), FATES[fate], queue).inc(
                int(counts[c])
            )
        codes: dict[str, int] = {}
        for err in batch.errors.values():
            codes[err.code] = codes.get(err.code, 0) + 1
        for code, c in codes.items():
            self.deadletter.labels(code).inc(c)
        if batch.errors:
            self.decisions.labels("", FATES[DEADLETTER], "").inc(len(batch.errors))
        for q, queue in enumerate(queues):
            rows = np.flatnonzero(batch.matched[q])
            if rows.size == 0:
                continue
            fired: dict[str, int] = {}
            for i in rows:
                for leaf in batch.fired(q, int(i)):
                    fired[leaf.rule] = fired.get(leaf.rule, 0) + 1
            for rule, c in fired.items():
                self.rule_fired.labels(queue.name, rule).inc(c)
        if batch.policy.budgets or batch.policy.diversity or batch.policy.routed is not None:
            at = batch.dropped >= 0
            for reason, counter in (
                (BUDGET, self.budget_dropped),
                (DIVERSITY, self.diversity_dropped),
                (DUPLICATE, self.duplicates),
            ):
                rows = batch.dropped[at & (batch.drop_reason == reason)]
                for q, c in enumerate(np.bincount(rows, minlength=len(queues)).tolist()):
                    if c:
                        counter.labels(queues[q].name).inc(c)
            for q, state in batch.policy.budgets.items():
                self.budget_used.labels(queues[q].name).set(state.used)
                self.budget_quota.labels(queues[q].name).set(state.quota)
        policy = batch.policy
        if q_count := len(queues):
            self.class_entropy.labels("").set(policy.stream_mix.entropy())
            for q in range(q_count):
                mix = policy.queue_mix[q]
                if mix.count:
                    self.class_entropy.labels(queues[q].name).set(mix.entropy())
        for queue_name, leaf, target, _ in batch.policy.targets:
            if target in batch.live:
                self.rule_threshold.labels(queue_name, leaf.rule).set(batch.live[target])
        self.latency.observe_many(now - np.asarray(times, dtype=np.float64))

    def observe_sampler(self, batch: BatchDecisions) -> None:
        """Count the eval draws, as the sampler agent sees them."""
        counts: dict[str, int] = {}
        for i in batch.rows(EVAL):
            doc = batch.docs[i]
            assert doc is not None
            model = self.model_label(doc["model"])
            counts[model] = counts.get(model, 0) + 1
        for model, c in counts.items():
            self.decisions.labels(model, "eval", "").inc(c)


def _bare(model: str) -> str:
    return model.split("@", 1)[0]
