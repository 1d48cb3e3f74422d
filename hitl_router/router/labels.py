"""Human labels (``review.labels``): parsed and checked one message at a time.

A label that cannot be used becomes a :class:`LabelError` with a code (the labels
dead-letter topic carries it); nothing raises. Codes:

- ``invalid_json``, ``not_an_object``, ``too_large``: the message itself;
- ``missing_field``, ``invalid_field``: ``id``, ``label``, ``annotator``, ``source``,
  ``queue``, ``correction`` or ``ts`` absent or ill-typed (``path`` names it);
- ``unknown_reason``: ``correction.reason`` is not in the configured taxonomy;
- at the join: ``unknown_id`` (no decision recorded for the id, or it expired),
  ``unknown_class`` (not among the prediction's classes), ``source_mismatch`` (an
  ``eval`` label for an item the router sent to review, or the reverse);
- ``internal_error``: the join raised on it (a bug; the worker goes on).

>>> parse_label(b'{"id":"a","label":"cat","annotator":"ann","source":"eval"}', ("x",)).label
'cat'
>>> parse_label(b'{"id":"a","label":"cat","annotator":"ann","source":"qa"}', ("x",)).code
'invalid_field'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

SOURCES = ("eval", "review")
LABEL_ERROR_CODES = (
    "invalid_json",
    "not_an_object",
    "too_large",
    "missing_field",
    "invalid_field",
    "unknown_reason",
    "unknown_id",
    "unknown_class",
    "source_mismatch",
    "internal_error",
)
#: A label is small; a larger message is refused before it is parsed.
MAX_LABEL_BYTES = 65_536


@dataclass(frozen=True)
class Label:
    id: str
    label: str | int
    annotator: str
    source: str
    queue: str | None = None
    reason: str | None = None
    note: str | None = None
    ts: float | None = None


@dataclass(frozen=True)
class LabelError:
    code: str
    message: str
    path: str | None = None


def parse_label(raw: bytes | None, reasons: tuple[str, ...]) -> Label | LabelError:
    """A :class:`Label`, or why ``raw`` is not one."""
    if raw is None:
        return LabelError("not_an_object", "the message has no value")
    if len(raw) > MAX_LABEL_BYTES:
        return LabelError("too_large", f"{len(raw)} bytes; a label takes at most {MAX_LABEL_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return LabelError("invalid_json", f"not JSON: {exc}")
    if not isinstance(doc, dict):
        return LabelError("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
    return label_from(doc, reasons)


def label_from(doc: dict[str, Any], reasons: tuple[str, ...]) -> Label | LabelError:
    """Check a decoded label against the schema and the taxonomy ``reasons``."""
    for name in ("id", "label", "annotator", "source"):
        if name not in doc:
            return LabelError("missing_field", f"'{name}' is required", name)
    lid, annotator = doc["id"], doc["annotator"]
    if not isinstance(lid, str) or not 1 <= len(lid) <= 256:
        return LabelError("invalid_field", "expected a string of 1 to 256 characters", "id")
    if not isinstance(annotator, str) or not annotator:
        return LabelError("invalid_field", "expected a non-empty string", "annotator")
    value = doc["label"]
    if isinstance(value, bool) or not (
        (isinstance(value, str) and value) or (isinstance(value, int) and value >= 0)
    ):
        return LabelError("invalid_field", "expected a class name or a class index ≥ 0", "label")
    if doc["source"] not in SOURCES:
        return LabelError("invalid_field", f"expected one of {list(SOURCES)}", "source")
    queue = doc.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue):
        return LabelError("invalid_field", "expected a non-empty string", "queue")
    ts = doc.get("ts")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
    ):
        return LabelError("invalid_field", "expected unix seconds", "ts")
    reason = note = None
    correction = doc.get("correction")
    if correction is not None:
        if not isinstance(correction, dict) or "reason" not in correction:
            return LabelError("invalid_field", "expected {reason, note?}", "correction")
        reason, note = correction["reason"], correction.get("note")
        if not isinstance(reason, str) or reason not in reasons:
            return LabelError(
                "unknown_reason", f"{reason!r} is not one of {list(reasons)}", "correction.reason"
            )
        if note is not None and not isinstance(note, str):
            return LabelError("invalid_field", "expected a string", "correction.note")
    return Label(lid, value, annotator, doc["source"], queue, reason, note, ts)


def class_index(label: str | int, classes: list[str] | None, k: int) -> int | None:
    """The class a label names among a prediction's ``k`` classes, or None.

    A name is looked up in ``classes``; without class names, classes are their indices
    and a decimal string is read as one. An integer is an index.

    >>> class_index("dog", ["cat", "dog"], 2), class_index(1, ["cat", "dog"], 2)
    (1, 1)
    >>> class_index("1", None, 2), class_index("2", None, 2), class_index("cow", ["cat"], 1)
    (1, None, None)
    """
    if isinstance(label, int):
        return label if label < k else None
    if classes:
        try:
            return classes.index(label)
        except ValueError:
            return None
    if label.isascii() and label.isdigit() and int(label) < k:
        return int(label)
    return None
