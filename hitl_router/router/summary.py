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

from hitl_router.router.decision import FATES, REVIEW, BatchDecisions, Policy


class Summary:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.fates: Counter[str] = Counter({f: 0 for f in FATES})
        self.queues: Counter[str] = Counter({q.name: 0 for q in policy.queues})
        self.error_codes: Counter[str] = Counter()
        self.labelled: Counter[str] = Counter()
        self.label_errors: Counter[str] = Counter()

    def add(self, batch: BatchDecisions) -> None:
        counts = np.bincount(batch.fate, minlength=len(FATES))
        for code, c in enumerate(counts):
            self.fates[FATES[code]] += int(c)
        for q in batch.queue[batch.fate == REVIEW]:
            self.queues[self.policy.queues[int(q)].name] += 1
        for err in batch.errors.values():
            self.error_codes[err.code] += 1
        for i, doc in enumerate(batch.docs):
            if doc is None or "label" not in doc:
                continue
            fate = batch.fate_name(i)
            self.labelled[fate] += 1
            if str(doc["label"]) != predicted_class(doc):
                self.label_errors[fate] += 1

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
            }
        return out


def predicted_class(doc: dict[str, Any]) -> str:
    """The predicted class of a valid prediction: its name, or its index as a string."""
    probs = doc["probs"]
    top = max(range(len(probs)), key=probs.__getitem__)
    classes = doc.get("classes")
    return classes[top] if classes else str(top)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
