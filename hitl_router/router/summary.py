"""Running summary of decisions: counts per fate and queue, and — when inputs
carry a true ``label`` — how many model errors each fate captured.

>>> from hitl_router.router.config import parse_config
>>> from hitl_router.router.decision import Policy, decide_batch
>>> policy = Policy(parse_config({"eval_sample": {"rate": 0.0},
...     "queues": [{"name": "low", "when": {"max_prob_below": 0.7}}]}))
>>> s = Summary(policy)
>>> s.add(decide_batch([b'{"id":"a","model":"m","probs":[0.6,0.4],"label":"1"}',
...                     b'{"id":"b","model":"m","probs":[0.9,0.1],"label":"0"}'], policy))
>>> r = s.report()
>>> r["fates"], r["labels"]["error_capture"]
({'deadletter': 0, 'eval': 0, 'review': 1, 'pass': 1}, 1.0)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from hitl_router.router.decision import EVAL, FATES, REVIEW, BatchDecisions, Policy
from hitl_router.router.labelled import LabelledSet
from hitl_router.router.labels import class_index


class Summary:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.fates: Counter[str] = Counter({f: 0 for f in FATES})
        self.queues: Counter[str] = Counter({q.name: 0 for q in policy.queues})
        self.error_codes: Counter[str] = Counter()
        self.labelled: Counter[str] = Counter()
        self.label_errors: Counter[str] = Counter()
        #: labelled eval-sample rows (the honest measure) and every labelled row
        self.eval_set = LabelledSet(policy.config)
        self.all_set = LabelledSet(policy.config)
        #: with load control (budgets, target rates): per queue, review items and items
        #: dropped over budget per minute of ``ts``, and each target-rate threshold at
        #: the end of each minute
        self.load = bool(policy.budgets or policy.targets)
        self.per_minute: dict[str, Counter[int]] = {q.name: Counter() for q in policy.queues}
        self.dropped_per_minute: dict[str, Counter[int]] = {
            q.name: Counter() for q in policy.queues
        }
        self.thresholds: dict[str, dict[int, float]] = {}

    def add(self, batch: BatchDecisions) -> None:
        counts = np.bincount(batch.fate, minlength=len(FATES))
        for code, c in enumerate(counts):
            self.fates[FATES[code]] += int(c)
        for q in batch.queue[batch.fate == REVIEW]:
            self.queues[self.policy.queues[int(q)].name] += 1
        for err in batch.errors.values():
            self.error_codes[err.code] += 1
        if self.load:
            self._add_load(batch)
        for i, doc in enumerate(batch.docs):
            if doc is None or "label" not in doc:
                continue
            fate = batch.fate_name(i)
            self.labelled[fate] += 1
            if _true_class(doc) != _top(doc["probs"]):
                self.label_errors[fate] += 1
            self.all_set.add(doc, doc["label"])
            if batch.fate[i] == EVAL:
                self.eval_set.add(doc, doc["label"])

    def _add_load(self, batch: BatchDecisions) -> None:
        queues = self.policy.queues
        minute = None
        for i, doc in enumerate(batch.docs):
            ts = doc.get("ts") if doc is not None else None
            if ts is None:
                continue
            minute = int(ts // 60)
            if batch.fate[i] == REVIEW:
                self.per_minute[queues[int(batch.queue[i])].name][minute] += 1
            elif batch.dropped[i] >= 0:
                self.dropped_per_minute[queues[int(batch.dropped[i])].name][minute] += 1
        if minute is not None:
            for queue, leaf, target, _ in self.policy.targets:
                if target in batch.live:
                    key = f"{queue}/{leaf.rule}"
                    self.thresholds.setdefault(key, {})[minute] = batch.live[target]

    def _load_report(self) -> dict[str, Any]:
        """Per queue: review items and items dropped per minute (unix minute of ``ts`` →
        count), and each target-rate threshold at the end of each minute."""
        out: dict[str, Any] = {}
        for q in self.policy.queues:
            out[q.name] = {
                "per_minute": {str(m): c for m, c in sorted(self.per_minute[q.name].items())},
                "dropped": sum(self.dropped_per_minute[q.name].values()),
                "dropped_per_minute": {
                    str(m): c for m, c in sorted(self.dropped_per_minute[q.name].items())
                },
                "budget": q.budget.describe() if q.budget else None,
            }
        return {
            "queues": out,
            "thresholds": {
                k: {str(m): v for m, v in sorted(per.items())} for k, per in self.thresholds.items()
            },
        }

    def report(self) -> dict[str, Any]:
        total = sum(self.fates.values())
        valid = total - self.fates["deadletter"]
        out: dict[str, Any] = {
            "messages": total,
            "fates": dict(self.fates),
            "queues": {
                name: {"count": c, "rate": _ratio(c, valid)} for name, c in self.queues.items()
            },
            "eval_rate": _ratio(self.fates["eval"], valid),
            "deadletter_codes": dict(self.error_codes),
        }
        if self.load:
            out["load"] = self._load_report()
        n_labelled = sum(self.labelled.values())
        if n_labelled:
            errors = sum(self.label_errors.values())
            routable = errors - self.label_errors["eval"]
            out["labels"] = {
                "labelled": n_labelled,
                "errors": errors,
                "accuracy": _ratio(n_labelled - errors, n_labelled),
                "by_fate": {
                    f: {
                        "labelled": self.labelled[f],
                        "errors": self.label_errors[f],
                        "error_rate": _ratio(self.label_errors[f], self.labelled[f]),
                    }
                    for f in FATES
                    if self.labelled[f]
                },
                # share of the model's errors (outside the eval sample) sent to review
                "error_capture": _ratio(self.label_errors["review"], routable),
                # share of reviewed items that were model errors
                "review_precision": _ratio(self.label_errors["review"], self.labelled["review"]),
                "eval_accuracy": _ratio(
                    self.labelled["eval"] - self.label_errors["eval"], self.labelled["eval"]
                ),
                # accuracy, ECE, Brier, NLL and a temperature: on the eval sample (honest:
                # a uniform draw), and on every labelled line (honest only when the
                # labelled lines are themselves a random draw)
                "calibration": {
                    "eval": self.eval_set.report() if self.eval_set.n else None,
                    "all": self.all_set.report() if self.all_set.n else None,
                },
            }
        return out


def _top(probs: list[float]) -> int:
    return max(range(len(probs)), key=probs.__getitem__)


def _true_class(doc: dict[str, Any]) -> int | None:
    label = doc["label"]
    if isinstance(label, bool) or not isinstance(label, str | int):
        return None
    return class_index(label, doc.get("classes"), len(doc["probs"]))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
