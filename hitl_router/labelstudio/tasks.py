"""Review items and eval samples → Label Studio tasks (pure).

A task's ``data`` holds what a reviewer sees: ``header`` (queue, model, priority, id),
``text`` (the prediction's features, flags and meta, rendered), and for review items
``why`` (the model's answer, its calibrated scores and the reasons that fired), plus the
fields the bridge needs to turn an annotation back into a label (``id``, ``source``,
``queue``, ``classes``, ``named``, ``decided_at`` and, for review, ``predicted``). The
Data Manager shows every data field: a blind eval task holds nothing of the model's
answer (no ``predicted``, no probabilities, no scores).

A review item's pre-annotation is the model's top class (as its alias) with the
calibrated top probability as its score; ``priority`` is a data field the Data Manager
sorts by.

>>> item = {"id": "p1", "model": "m", "queue": "uncertain", "priority": 0.4,
...         "reasons": [{"queue": "uncertain", "rule": "max_prob_below", "metric": "max_prob",
...                      "value": 0.6, "op": "<", "threshold": 0.7}],
...         "scores": {"max_prob": 0.6, "margin": 0.2, "entropy": 0.9, "entropy_norm": 0.8},
...         "temperature": 1.0, "routed_at": 1.5,
...         "prediction": {"id": "p1", "model": "m", "probs": [0.6, 0.4], "classes": ["a", "b"]}}
>>> spec = review_task(orjson.dumps(item))
>>> spec.key, spec.task["predictions"][0]["result"][0]["value"]
(ProjectKey(source='review', queue='uncertain', classes=('a', 'b')), {'choices': ['c0']})
>>> blind = eval_task(orjson.dumps({"id": "p2", "model": "m", "sampled_at": 2.0,
...                                 "prediction": {"id": "p2", "model": "m", "probs": [0.3, 0.7]}}))
>>> blind.key.classes, "predictions" in blind.task, "predicted" in blind.task["data"]
(('0', '1'), False, False)
>>> review_task(b'{"id": "x"}').code
'missing_field'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hitl_router.labelstudio.interface import ITEM, LABEL, alias
from hitl_router.router.validation import ErrorInfo

#: rendered features, flags and meta: at most this many characters
MAX_TEXT = 20_000


@dataclass(frozen=True)
class ProjectKey:
    """Which project a task goes to: the queue's (or eval's) for this class list."""

    source: str  # "review" or "eval"
    queue: str | None
    classes: tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    id: str
    key: ProjectKey
    #: the import payload: ``{"data": ..., "predictions"?: [...]}``
    task: dict[str, Any]


def review_task(raw: bytes | None) -> TaskSpec | ErrorInfo:
    """The task of one review item (``review.<queue>``), or why it cannot be one."""
    parsed = _parse(raw, {"id": str, "model": str, "queue": str, "prediction": dict})
    if isinstance(parsed, ErrorInfo):
        return parsed
    doc, prediction, classes, probs = parsed
    top = max(range(len(probs)), key=probs.__getitem__)
    scores = doc.get("scores") if isinstance(doc.get("scores"), dict) else {}
    p_top = _number(scores.get("max_prob"), probs[top])
    priority = _number(doc.get("priority"), 1.0 - p_top)
    queue = doc["queue"]
    data = {
        "id": doc["id"],
        "model": doc["model"],
        "source": "review",
        "queue": queue,
        "classes": list(classes),
        "named": "classes" in prediction,
        "predicted": top,
        "priority": priority,
        "decided_at": _number(doc.get("routed_at"), None),
        "header": f"{queue} · {doc['model']} · priority {priority:.3g} · {doc['id']}",
        "text": render(prediction),
        "why": _why(classes[top], p_top, scores, doc.get("reasons")),
        "scores": scores,
        "reasons": doc.get("reasons") if isinstance(doc.get("reasons"), list) else [],
    }
    key = ProjectKey("review", queue, classes)
    return TaskSpec(doc["id"], key, {"data": data, "predictions": [_pre(doc, top, p_top)]})


def eval_task(raw: bytes | None, blind: bool = True) -> TaskSpec | ErrorInfo:
    """The task of one eval sample (``eval.samples``): blind by default."""
    parsed = _parse(raw, {"id": str, "model": str, "prediction": dict})
    if isinstance(parsed, ErrorInfo):
        return parsed
    doc, prediction, classes, probs = parsed
    data: dict[str, Any] = {
        "id": doc["id"],
        "model": doc["model"],
        "source": "eval",
        "classes": list(classes),
        "named": "classes" in prediction,
        "decided_at": _number(doc.get("sampled_at"), None),
        "header": f"eval sample · {doc['model']} · {doc['id']}",
        "text": render(prediction),
    }
    task: dict[str, Any] = {"data": data}
    if not blind:
        top = max(range(len(probs)), key=probs.__getitem__)
        data["predicted"] = top
        task["predictions"] = [_pre(doc, top, probs[top])]
    return TaskSpec(doc["id"], ProjectKey("eval", None, classes), task)


def render(prediction: Mapping[str, Any]) -> str:
    """What a reviewer reads: the features, flags and meta of a prediction (never its
    probabilities: eval tasks are blind)."""
    lines = []
    features = prediction.get("features")
    if isinstance(features, dict) and features:
        lines.append("features:")
        lines += [f"  {k} = {_short(v)}" for k, v in features.items()]
    flags = prediction.get("flags")
    if isinstance(flags, list) and flags:
        lines.append("flags: " + ", ".join(str(f) for f in flags))
    meta = prediction.get("meta")
    if isinstance(meta, dict) and meta:
        lines.append("meta: " + orjson.dumps(meta, option=orjson.OPT_SORT_KEYS).decode())
    text = "\n".join(lines) or "(no features)"
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _why(top: str, p_top: float, scores: Mapping[str, Any], reasons: Any) -> str:
    lines = [f"model says {top} (calibrated p = {p_top:.3f})"]
    if scores:
        lines.append(
            "scores: "
            + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, int | float))
        )
    for r in reasons if isinstance(reasons, list) else []:
        if isinstance(r, dict):
            value = r.get("value")
            shown = f"{value:.3f}" if isinstance(value, float) else value
            lines.append(
                f"fired: {r.get('rule')} ({r.get('metric')} {shown} {r.get('op')} "
                f"{r.get('threshold')})"
            )
    return "\n".join(lines)


def _pre(doc: Mapping[str, Any], top: int, score: float) -> dict[str, Any]:
    result = {
        "from_name": LABEL,
        "to_name": ITEM,
        "type": "choices",
        "value": {"choices": [alias(top)]},
        "score": score,
    }
    return {"model_version": str(doc["model"]), "score": score, "result": [result]}


_Parsed = tuple[dict[str, Any], dict[str, Any], tuple[str, ...], list[float]]


def _parse(raw: bytes | None, kinds: Mapping[str, type]) -> _Parsed | ErrorInfo:
    """The item, its prediction, the prediction's classes and probabilities."""
    doc = _object(raw)
    if isinstance(doc, ErrorInfo):
        return doc
    problem = _require(doc, kinds)
    if problem:
        return problem
    classes = _classes(doc["prediction"])
    if isinstance(classes, ErrorInfo):
        return classes
    return doc, doc["prediction"], *classes


def _object(raw: bytes | None) -> dict[str, Any] | ErrorInfo:
    if raw is None:
        return ErrorInfo("not_json", "an empty message (a tombstone), not an item")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return ErrorInfo("not_json", f"not a JSON document: {exc}")
    if not isinstance(doc, dict):
        return ErrorInfo("not_object", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _require(doc: Mapping[str, Any], kinds: Mapping[str, type]) -> ErrorInfo | None:
    for name, kind in kinds.items():
        if name not in doc:
            return ErrorInfo("missing_field", f"{name} is required", name)
        if not isinstance(doc[name], kind) or (kind is str and not doc[name]):
            return ErrorInfo("bad_type", f"{name} must be a {kind.__name__}", name)
    return None


def _classes(prediction: Mapping[str, Any]) -> tuple[tuple[str, ...], list[float]] | ErrorInfo:
    probs = prediction.get("probs")
    if (
        not isinstance(probs, list)
        or len(probs) < 2
        or not all(isinstance(p, int | float) and not isinstance(p, bool) for p in probs)
    ):
        return ErrorInfo(
            "bad_type", "prediction.probs must be a list of numbers", "prediction.probs"
        )
    names = prediction.get("classes")
    if names is None:
        return tuple(str(i) for i in range(len(probs))), [float(p) for p in probs]
    if not isinstance(names, list) or len(names) != len(probs):
        return ErrorInfo(
            "length_mismatch", "prediction.classes must match probs", "prediction.classes"
        )
    return tuple(str(c) for c in names), [float(p) for p in probs]


def _number(value: Any, default: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def _short(value: Any, limit: int = 500) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"
