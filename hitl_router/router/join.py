"""The join of a human label with what the router decided for its id.

The router records, for every eval and review item, a *decision record* (keyed by id,
on ``topics.decisions``); the labels agent keeps them in a table and, for each label,
:func:`join_label` checks it against its record and says what follows: a labels
dead letter, or a *joined* event (the label with the prediction's raw probabilities,
for the per-model windows), an agreement *pair* when a second annotator labels the
same id, and whether the item is drawn for QA.

Calibrated probabilities are not stored: they are ``softmax(log p / T)`` of the raw
ones with the recorded ``temperature``, recomputed by the router's own function.

>>> from hitl_router.router.labels import Label
>>> rec = {"id": "a", "model": "m@1", "probs": [0.7, 0.3], "classes": ["x", "y"],
...        "temperature": 1.0, "pred": 0, "fate": "review", "queue": "low",
...        "scores": {}, "ts": 0.0, "recorded_at": 0.0}
>>> first = join_label({"d": rec}, Label("a", "y", "ann", "review"), now=1.0, retention_s=60)
>>> first.joined["y"], first.joined["model_wrong"], first.pair
(1, True, None)
>>> second = join_label(first.entry, Label("a", "x", "qa-1", "review"), now=2.0, retention_s=60)
>>> second.joined, second.pair["first"], second.pair["second"]
(None, 1, 0)
>>> join_label(None, Label("b", "x", "ann", "eval"), now=2.0, retention_s=60).error.code
'unknown_id'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from hitl_router.router.decision import EVAL, BatchDecisions
from hitl_router.router.labels import Label, LabelError, class_index
from hitl_router.router.outputs import Output

#: The key of agreement pairs on the joined topic: every pair goes to one owner, which
#: computes agreement and kappa per queue, per annotator and per source.
AGREEMENT_KEY = "__agreement__"


def decision_record(batch: BatchDecisions, i: int, now: float) -> dict[str, Any]:
    """What the join needs of row ``i`` (an eval or review item)."""
    doc = batch.docs[i]
    assert doc is not None
    probs = doc["probs"]
    return {
        "id": doc["id"],
        "model": doc["model"],
        "probs": probs,
        "classes": doc.get("classes"),
        "temperature": batch.temperature_of(i),
        "pred": max(range(len(probs)), key=probs.__getitem__),
        "fate": "eval" if batch.fate[i] == EVAL else "review",
        "queue": batch.queue_name(i),
        "scores": batch.score_dict(i),
        "ts": doc.get("ts"),
        "recorded_at": now,
    }


def decision_outputs(
    batch: BatchDecisions, fate: int, topic: str, now: float, max_bytes: int
) -> list[Output]:
    """A decision record, keyed by id, for every row with ``fate`` (EVAL or REVIEW). A
    record over ``max_bytes`` (a prediction of many thousand classes) is not sent: its
    labels will be dead-lettered as ``unknown_id``."""
    out = []
    for i in batch.rows(fate):
        value = orjson.dumps(decision_record(batch, i, now))
        if len(value) <= max_bytes:
            out.append(Output(topic, batch.docs[i]["id"].encode(), value))  # type: ignore[index]
    return out


@dataclass(frozen=True)
class JoinOutcome:
    """What one label does. ``entry`` is the table's new value (None: leave it)."""

    entry: dict[str, Any] | None = None
    error: LabelError | None = None
    #: the first annotator's label (or its replacement), for the per-model windows
    joined: dict[str, Any] | None = None
    #: a second annotator's label against the first's, for agreement
    pair: dict[str, Any] | None = None
    #: an expired entry to delete
    expired: bool = False
    #: a label already joined (the same message, read again after a failover): no effect
    redelivered: bool = False


def join_label(
    entry: dict[str, Any] | None,
    label: Label,
    *,
    now: float,
    retention_s: float,
    at: tuple[int, int] | None = None,
) -> JoinOutcome:
    """Join ``label`` with the table entry of its id (None if there is none).

    The entry is ``{"d": decision record, "labels": {annotator: class}, "first":
    annotator, "at": {annotator: [partition, offset]}}``. A second label from the same
    annotator replaces the first; one from another annotator is paired with the first
    annotator's label. Eval metrics and trigger precision count each id once: its first
    annotator's (latest) label.

    ``at`` is where the label was read (partition, offset of the labels topic). Kafka
    delivers at least once: after a failover, a label already joined is read again. An
    id's labels share a partition, so a label read at or before the offset of the
    annotator's label joined last is such a re-read (or older than the label that
    replaced it): it changes nothing (``redelivered``).
    """
    if entry is None:
        return JoinOutcome(error=LabelError("unknown_id", f"no decision recorded for {label.id!r}"))
    rec = entry["d"]
    if now - rec["recorded_at"] > retention_s:
        return JoinOutcome(
            error=LabelError(
                "unknown_id",
                f"the decision for {label.id!r} expired ({retention_s / 3600:g} h retention)",
            ),
            expired=True,
        )
    y = class_index(label.label, rec.get("classes"), len(rec["probs"]))
    if y is None:
        classes = rec.get("classes") or [str(k) for k in range(len(rec["probs"]))]
        shown = classes if len(classes) <= 20 else [*classes[:20], "…"]
        return JoinOutcome(
            error=LabelError(
                "unknown_class", f"{label.label!r} is not among the classes {shown}", "label"
            )
        )
    if label.source != rec["fate"]:
        return JoinOutcome(
            error=LabelError(
                "source_mismatch",
                f"a {label.source} label for an item the router sent to {rec['fate']}",
                "source",
            )
        )
    seen = dict(entry.get("at") or {})
    last = seen.get(label.annotator)
    if at is not None and last is not None and last[0] == at[0] and at[1] <= last[1]:
        return JoinOutcome(redelivered=True)
    labels = dict(entry.get("labels") or {})
    first = entry.get("first") or label.annotator
    labels[label.annotator] = y
    if at is not None:
        seen[label.annotator] = list(at)
    new_entry = {"d": rec, "labels": labels, "first": first, "at": seen}
    if label.annotator == first:
        return JoinOutcome(entry=new_entry, joined=_joined(rec, label, y))
    return JoinOutcome(
        entry=new_entry,
        pair={
            "kind": "pair",
            "id": rec["id"],
            "model": rec["model"],
            "source": rec["fate"],
            "queue": rec["queue"],
            "first_annotator": first,
            "annotator": label.annotator,
            "first": labels[first],
            "second": y,
        },
    )


def _joined(rec: dict[str, Any], label: Label, y: int) -> dict[str, Any]:
    return {
        "kind": "label",
        "id": rec["id"],
        "model": rec["model"],
        "source": rec["fate"],
        "queue": rec["queue"],
        "annotator": label.annotator,
        "y": y,
        "pred": rec["pred"],
        "model_wrong": y != rec["pred"],
        "probs": rec["probs"],
        "classes": rec.get("classes"),
        "temperature": rec["temperature"],
        "reason": label.reason,
    }


def joined_key(event: dict[str, Any]) -> str:
    """Where a joined event goes: its model's bare name (so a model's windows, for the
    name and every ``name@version``, have one owner), or the agreement owner."""
    if event["kind"] == "pair":
        return AGREEMENT_KEY
    return str(event["model"]).split("@", 1)[0]


def qa_item(
    rec: dict[str, Any], label: Label, now: float, router: dict[str, str]
) -> dict[str, Any]:
    """A review item drawn for a second, blind look (``review.qa``): the prediction as the
    router saw it and who labelled it first, not their answer."""
    return {
        "id": rec["id"],
        "model": rec["model"],
        "queue": rec["queue"],
        "first_annotator": label.annotator,
        "probs": rec["probs"],
        "classes": rec.get("classes"),
        "scores": rec.get("scores") or {},
        "temperature": rec["temperature"],
        "drawn_at": now,
        "router": router,
    }
