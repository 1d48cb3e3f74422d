"""Prometheus metrics of the label loop: what the labels say about the model, the
triggers and the reviewers.

Counters (``*_total``) are counted by whichever worker joins a label, so they sum over
workers. Gauges of a window are set by the window's owner (the worker holding its
model's partition of the joined topic) and removed from a worker that loses it, so a
model's gauges come from one worker at a time.

>>> from prometheus_client import CollectorRegistry
>>> reg = CollectorRegistry()
>>> m = FeedbackMetrics(reg, model_label=str)
>>> m.observe_window("m", {"n": 4, "accuracy": 0.75, "accuracy_lower": 0.3,
...     "accuracy_upper": 0.95, "recall": {"a": 1.0, "b": None}, "ece": 0.2,
...     "ece_equal_mass": 0.2, "brier": 0.3, "nll_before": 0.5, "ece_warning": False,
...     "current": {"temperature": 1.5, "ece": 0.1, "ece_equal_mass": 0.1, "brier": 0.2,
...     "nll": 0.4}})
>>> reg.get_sample_value("hitl_ece", {"model": "m"}), reg.get_sample_value(
...     "hitl_nll", {"model": "m", "stage": "calibrated"})
(0.2, 0.4)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from hitl_router.router.labels import LABEL_ERROR_CODES


class FeedbackMetrics:
    def __init__(self, registry: CollectorRegistry, model_label: Callable[[str], str]) -> None:
        self.model_label = model_label
        self._lock = threading.Lock()
        self._window_series: dict[str, list[tuple[Gauge, tuple[str, ...]]]] = {}
        c, g = _counter(registry), _gauge(registry)
        self.labels = c("hitl_labels", "Labels joined to their prediction.", "model", "source")
        self.label_deadletter = c(
            "hitl_label_deadletter", "Labels sent to the labels dead-letter topic.", "code"
        )
        self.trigger_labels = c(
            "hitl_trigger_labels",
            "Review labels per queue, and whether the model was wrong (a trigger's "
            'precision is the share with model_wrong="true").',
            "queue",
            "model_wrong",
        )
        self.corrections = c(
            "hitl_corrections", "Review labels per queue and correction reason.", "queue", "reason"
        )
        self.rekeyed = c(
            "hitl_labels_rekeyed",
            "Labels read on another partition than their id's (not keyed by id), re-sent "
            "keyed by id.",
        )
        self.redelivered = c(
            "hitl_labels_redelivered",
            "Labels read again after a failover (Kafka delivers at least once), recognised "
            "by their offset and ignored.",
        )
        self.qa_items = c("hitl_qa_items", "Review items re-queued for QA.", "queue")
        self.fits = c(
            "hitl_calibration_fits",
            "Temperature fits per model: accepted, rejected (held-out NLL not lower) or "
            "too_few labels.",
            "model",
            "outcome",
        )
        self.eval_labels = g("hitl_eval_labels", "Eval labels in the model's window (n).", "model")
        self.accuracy = g("hitl_eval_accuracy", "Accuracy on the eval window.", "model")
        self.accuracy_lower = g(
            "hitl_eval_accuracy_lower", "Wilson 95% lower bound of eval accuracy.", "model"
        )
        self.accuracy_upper = g(
            "hitl_eval_accuracy_upper", "Wilson 95% upper bound of eval accuracy.", "model"
        )
        self.recall = g("hitl_eval_recall", "Per-class recall on the eval window.", "model", "cls")
        self.ece = g(
            "hitl_ece",
            "Top-label ECE (15 equal-width bins) of the raw model on the eval window.",
            "model",
        )
        self.ece_calibrated = g(
            "hitl_ece_calibrated", "ECE at the temperature in use, on the eval window.", "model"
        )
        self.ece_calibrated_lower = g(
            "hitl_ece_calibrated_lower",
            "Lower end of the 95% bootstrap interval of hitl_ece_calibrated.",
            "model",
        )
        self.ece_calibrated_upper = g(
            "hitl_ece_calibrated_upper",
            "Upper end of the 95% bootstrap interval of hitl_ece_calibrated.",
            "model",
        )
        self.ece_equal_mass = g(
            "hitl_ece_equal_mass", "Top-label ECE over 15 equal-mass bins.", "model", "stage"
        )
        self.brier = g("hitl_brier", "Multiclass Brier score on the eval window.", "model", "stage")
        self.nll = g("hitl_nll", "Negative log-likelihood on the eval window.", "model", "stage")
        self.ece_warning = g(
            "hitl_ece_warning",
            "1 when ECE at the temperature in use is above labels.ece_warning with at least "
            "labels.min_labels eval labels.",
            "model",
        )
        self.temperature = g(
            "hitl_calibration_temperature",
            "Temperature the router applies (accepted fit, else the config's).",
            "model",
        )
        self.agreement = g(
            "hitl_label_agreement",
            "Share of double-labelled items whose two labels agree.",
            "scope",
            "name",
        )
        self.agreement_lower = g(
            "hitl_label_agreement_lower", "Wilson 95% lower bound of agreement.", "scope", "name"
        )
        self.agreement_upper = g(
            "hitl_label_agreement_upper", "Wilson 95% upper bound of agreement.", "scope", "name"
        )
        self.kappa = g("hitl_label_kappa", "Cohen's kappa of double labels.", "scope", "name")
        self.pairs = g("hitl_label_pairs", "Double-labelled items in the window.", "scope", "name")

    def declare(self, queues: Sequence[str]) -> None:
        """Create at zero the series known in advance (a rate over them is then 0, not
        no data): every label dead-letter code, and per queue its QA items and its
        review labels with the model right and wrong."""
        for code in LABEL_ERROR_CODES:
            self.label_deadletter.labels(code)
        for q in queues:
            self.qa_items.labels(q)
            for wrong in ("true", "false"):
                self.trigger_labels.labels(q, wrong)

    def observe_window(self, key: str, r: dict[str, Any]) -> None:
        """Set a window's gauges from its :func:`~hitl_router.router.label_metrics.assess`
        report (a gauge whose value is undefined is left out)."""
        m = self.model_label(key)
        now = r["current"]
        values: list[tuple[Gauge, tuple[str, ...], Any]] = [
            (self.eval_labels, (m,), r["n"]),
            (self.accuracy, (m,), r["accuracy"]),
            (self.accuracy_lower, (m,), r["accuracy_lower"]),
            (self.accuracy_upper, (m,), r["accuracy_upper"]),
            (self.ece, (m,), r["ece"]),
            (self.ece_calibrated, (m,), now["ece"]),
            (self.ece_calibrated_lower, (m,), now.get("ece_lower")),
            (self.ece_calibrated_upper, (m,), now.get("ece_upper")),
            (self.ece_equal_mass, (m, "raw"), r["ece_equal_mass"]),
            (self.ece_equal_mass, (m, "calibrated"), now["ece_equal_mass"]),
            (self.brier, (m, "raw"), r["brier"]),
            (self.brier, (m, "calibrated"), now["brier"]),
            (self.nll, (m, "raw"), r["nll_before"]),
            (self.nll, (m, "calibrated"), now["nll"]),
            (self.ece_warning, (m,), 1.0 if r["ece_warning"] else 0.0),
            *[(self.recall, (m, cls), v) for cls, v in r["recall"].items()],
        ]
        with self._lock:
            series = []
            for gauge, labels, value in values:
                if value is None:
                    continue
                gauge.labels(*labels).set(value)
                series.append((gauge, labels))
            self._window_series[key] = series

    def forget_window(self, key: str) -> None:
        """Remove a window's gauges (its owner is now another worker)."""
        with self._lock:
            for gauge, labels in self._window_series.pop(key, []):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass

    def observe_agreement(self, report: dict[str, dict[str, dict[str, Any]]]) -> None:
        for scope, by_name in report.items():
            for name, a in by_name.items():
                labels = (scope, name)
                self.pairs.labels(*labels).set(a["n"])
                self.agreement.labels(*labels).set(a["agreement"])
                self.agreement_lower.labels(*labels).set(a["lower"])
                self.agreement_upper.labels(*labels).set(a["upper"])
                if a["kappa"] is not None:
                    self.kappa.labels(*labels).set(a["kappa"])

    def forget_agreement(self) -> None:
        for gauge in (
            self.pairs,
            self.agreement,
            self.agreement_lower,
            self.agreement_upper,
            self.kappa,
        ):
            gauge.clear()


def _counter(registry: CollectorRegistry) -> Callable[..., Counter]:
    def make(name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, list(labels), registry=registry)

    return make


def _gauge(registry: CollectorRegistry) -> Callable[..., Gauge]:
    def make(name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(name, doc, list(labels), registry=registry)

    return make
