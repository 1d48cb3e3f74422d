"""Prometheus metrics of the Label Studio bridge (``hitl_bridge_*``).

``project`` is the Label Studio project's title; ``source`` is ``review`` or ``eval``;
``kind`` is what failed: ``unreachable``, ``unauthorized`` and ``refused`` (Label
Studio), ``invalid_item`` (a review item or eval sample that cannot be a task: it is
dead-lettered) and ``internal`` (a bug; retried like the others).

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = BridgeMetrics(reg)
>>> m.errors.labels("unreachable").inc()
>>> reg.get_sample_value("hitl_bridge_errors_total", {"kind": "unreachable"})
1.0
>>> reg.get_sample_value("hitl_bridge_errors_total", {"kind": "unauthorized"})
0.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ERROR_KINDS = ("unreachable", "unauthorized", "refused", "invalid_item", "internal")
#: seconds from routing (or sampling) to the first annotation: minutes to a week
LATENCY_BUCKETS = (
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0,
    12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0,
)  # fmt: skip


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.tasks_created = Counter(
            "hitl_bridge_tasks_created",
            "Label Studio tasks created from review items and eval samples.",
            ["project"],
            registry=registry,
        )
        self.tasks_skipped = Counter(
            "hitl_bridge_tasks_skipped",
            "Items whose task already existed (a redelivery): no second task.",
            ["project"],
            registry=registry,
        )
        self.labels_sent = Counter(
            "hitl_bridge_labels_sent",
            "Label messages sent to the labels topic (one per annotation revision).",
            ["project", "source"],
            registry=registry,
        )
        self.backlog = Gauge(
            "hitl_bridge_backlog",
            "Tasks of the project that nobody has annotated yet (at the last poll).",
            ["project"],
            registry=registry,
        )
        self.label_latency = Histogram(
            "hitl_bridge_label_latency_seconds",
            "Seconds from routing (review) or sampling (eval) to the item's annotation.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "hitl_bridge_errors",
            "Failures by kind (Label Studio's answers, invalid items, bugs).",
            ["kind"],
            registry=registry,
        )
        self.last_poll = Gauge(
            "hitl_bridge_last_poll_timestamp_seconds",
            "When the bridge last polled Label Studio successfully (unix seconds).",
            registry=registry,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for source in ("review", "eval"):
            self.label_latency.labels(source)
