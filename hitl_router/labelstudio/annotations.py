"""Label Studio annotations → label messages for ``review.labels`` (pure).

One message per annotation *revision*: an annotation edited later sends a new label
(the labels agent keeps an annotator's latest). A skipped task (``was_cancelled``) or an
annotation without a class sends nothing. The class comes back as its alias (``c<i>``,
:mod:`.interface`) or, in a config a team edited, as the class name; the label is the
class name when the prediction named its classes, else the index.

Besides ``label.v1.json``'s fields, a message carries where it came from:
``annotation_id``, ``task_id``, ``revision`` (the annotation's ``updated_at``) and
``tool``; consumers that need exactly-once de-duplicate on ``(id, annotation_id,
revision)``.

>>> data = {"id": "p1", "source": "review", "queue": "q", "classes": ["a", "b"],
...         "named": True, "predicted": 0}
>>> ann = {"id": 7, "task": 3, "updated_at": "2026-12-01T10:00:00.5Z", "result": [
...     {"from_name": "label", "type": "choices", "value": {"choices": ["c1"]}},
...     {"from_name": "correction_reason", "type": "choices",
...      "value": {"choices": ["ambiguous_input"]}}]}
>>> doc = annotation_label(data, ann, "ann@x")
>>> doc["label"], doc["correction"], doc["source"], doc["ts"]
('b', {'reason': 'ambiguous_input'}, 'review', 1796119200.5)
>>> annotation_label(data, {**ann, "was_cancelled": True}, "ann@x") is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from hitl_router.labelstudio.interface import LABEL, NOTE, REASON, alias_index

TOOL = "label-studio"


def timestamp(value: Any) -> float | None:
    """Unix seconds of a Label Studio time (an ISO string, ``Z`` or an offset, or a
    ``datetime``); None when it is neither.

    >>> timestamp("2026-12-01T10:00:00Z") == timestamp("2026-12-01T10:00:00+00:00")
    True
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def annotation_label(
    data: Mapping[str, Any], annotation: Mapping[str, Any], annotator: str
) -> dict[str, Any] | None:
    """The label message of one annotation of a bridged task (None: nothing to send)."""
    if annotation.get("was_cancelled"):
        return None
    results = annotation.get("result") or []
    classes = list(data.get("classes") or [])
    index = None
    for result in results:
        if isinstance(result, Mapping) and result.get("from_name") == LABEL:
            index = _class_index(_choice(result), classes)
            break
    if index is None:
        return None
    doc: dict[str, Any] = {
        "id": data["id"],
        "label": classes[index] if data.get("named") else index,
        "annotator": annotator,
        "source": data.get("source", "review"),
    }
    if data.get("queue"):
        doc["queue"] = data["queue"]
    correction = _correction(results)
    if correction is None and doc["source"] == "review" and index == data.get("predicted"):
        correction = {"reason": "model_correct"}  # the reviewer agreed and gave no reason
    if correction is not None:
        doc["correction"] = correction
    revision = annotation.get("updated_at") or annotation.get("created_at")
    ts = timestamp(revision)
    if ts is not None:
        doc["ts"] = ts
    doc.update(
        annotation_id=annotation.get("id"),
        task_id=annotation.get("task"),
        revision=str(revision),
        tool=TOOL,
    )
    return doc


def _choice(result: Mapping[str, Any]) -> str | None:
    value = result.get("value")
    choices = value.get("choices") if isinstance(value, Mapping) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], str):
        return choices[0]
    return None


def _class_index(choice: str | None, classes: list[str]) -> int | None:
    if choice is None:
        return None
    index = alias_index(choice)
    if index is not None and index < len(classes):
        return index
    return classes.index(choice) if choice in classes else None


def _correction(results: list[Any]) -> dict[str, Any] | None:
    reason = note = None
    for result in results:
        if not isinstance(result, Mapping):
            continue
        if result.get("from_name") == REASON:
            reason = _choice(result)
        elif result.get("from_name") == NOTE:
            value = result.get("value")
            text = value.get("text") if isinstance(value, Mapping) else None
            if isinstance(text, list) and text and isinstance(text[0], str) and text[0].strip():
                note = text[0].strip()
    if reason is None:
        return None
    return {"reason": reason, **({"note": note} if note else {})}
