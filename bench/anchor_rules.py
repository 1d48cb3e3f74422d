"""The benchmark's routing rules written by hand, one message at a time: what a team
would write on a plain Kafka client to get the router's outputs for the benchmark's config
(``bench.contenders._router_config``). The confluent-kafka loop (``bench/confluent_loop.py``)
and the Quix Streams app (``bench/quix_app.py``) both run :func:`decide` per message.

``orjson`` to parse, a check of the message contract, a keyed BLAKE2b of the id for the
2% eval draw, the router's scores (its formulas), the three queues (the first that matches
wins), the router's output documents with the prediction embedded as received, a dead
letter for whatever fails, and the router's *decision record* of every eval and review
item (``hitl_router.router.join.decision_record``: what the label loop joins labels
with; the router writes it to ``topics.decisions``). The per-message arithmetic is plain
Python over the parsed lists: on this workload (10 classes, 5 members) numpy per message
took 100–150 µs of CPU for the checks and scores on the benchmark's machine, plain Python
~35 (numpy pays off over a batch: the router's design). No hitl_router import: the Quix
app runs in a venv of its own.

>>> fate, key, doc, record = decide(b'{"id":"a","model":"m","probs":[0.55,0.45]}', "in", 0, 7, 0.0)
>>> fate, key, doc["queue"], doc["priority"], record["fate"], record["pred"]
('review-uncertain', b'a', 'uncertain', 0.44999999999999996, 'review', 0)
>>> decide(b"[1,2]", "in", 0, 8, 0.0)[:2], decide(b"{", "in", 0, 9, 0.0)[2]["error"]["code"]
(('deadletter', None), 'JSONDecodeError')
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

EVAL_RATE, SALT = 0.02, b"bench"  # eval_sample: {rate: 0.02, salt: bench}
REVIEW_FLAGS = ("pii", "user_report")  # flagged: flags_any
KL_ABOVE = 0.05  # disagreement: ensemble_kl_above
MAX_PROB_BELOW, MARGIN_BELOW = 0.7, 0.1  # uncertain: any of max_prob_below, margin_below
QUEUES = ("flagged", "disagreement", "uncertain")
#: every fate an input can get: the name of its output topic's part
FATES = ("eval", "accepted", "deadletter", *(f"review-{q}" for q in QUEUES))
#: the name part of the decision records' topic (the router's ``topics.decisions``)
RECORDS = "decisions"
MAX_DEPTH, MAX_MEMBERS = 32, 256  # the router's default limits
ROUTER = {"version": "hand-written", "config_hash": "bench"}
_DRAW = hashlib.blake2b(digest_size=8, key=SALT)
_FLAT = {"id", "model", "probs", "classes", "ensemble", "flags", "features", "ts", "label"}
log = math.log


class Invalid(ValueError):
    pass


def _distribution(p: Any, what: str, k: int | None = None) -> list[float]:
    """``p`` if it is a probability distribution (of ``k`` classes); a non-number in it
    fails the comparisons (TypeError)."""
    if not isinstance(p, list) or len(p) < 2 or (k is not None and len(p) != k):
        raise Invalid(f"{what}: expected {k or 'at least 2'} probabilities")
    if min(p) < 0.0 or max(p) > 1.0 or abs(sum(p) - 1.0) > 1e-3:
        raise Invalid(f"{what}: not a distribution")
    return p


def _depth(v: Any) -> int:
    children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
    return 0 if children is None else 1 + max(map(_depth, children), default=0)


def check(doc: Any) -> tuple[list[float], list[list[float]] | None]:
    """The prediction's probabilities and ensemble members, or ``Invalid``."""
    if not isinstance(doc, dict):
        raise Invalid("not an object")
    pid, model = doc.get("id"), doc.get("model")
    if not isinstance(pid, str) or not 1 <= len(pid) <= 256:
        raise Invalid("bad id")
    if not isinstance(model, str) or not model:
        raise Invalid("bad model")
    p = _distribution(doc.get("probs"), "probs")
    if "classes" in doc and (not isinstance(doc["classes"], list) or len(doc["classes"]) != len(p)):
        raise Invalid("classes do not match probs")
    members = None
    if "ensemble" in doc:
        members = doc["ensemble"]
        if not isinstance(members, list) or not 2 <= len(members) <= MAX_MEMBERS:
            raise Invalid("bad ensemble")
        for m in members:
            _distribution(m, "ensemble member", len(p))
    flags, features = doc.get("flags", []), doc.get("features", {})
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise Invalid("flags must be strings")
    if not isinstance(features, dict) or not all(
        type(v) in (int, float, str) for v in features.values()
    ):
        raise Invalid("features must be numbers or strings")
    ts = doc.get("ts", 0)
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise Invalid("bad ts")
    if not isinstance(doc.get("meta", {}), dict):
        raise Invalid("bad meta")
    if any(_depth(v) > MAX_DEPTH for k, v in doc.items() if k not in _FLAT):
        raise Invalid("nested too deep")
    return p, members


def _entropy(p: list[float]) -> float:
    return -sum([x * log(x) for x in p if x > 0.0])


def scores(p: list[float], members: list[list[float]] | None) -> dict[str, float]:
    """The router's scores of one prediction (ensemble scores when it has an ensemble).
    The mean KL divergence of the members from their mean equals the entropy of the mean
    minus the members' mean entropy (BALD): computed once for both."""
    k = len(p)
    second, first = sorted(p)[-2:]
    h = _entropy(p)
    out = {"max_prob": first, "margin": first - second, "entropy": h, "entropy_norm": h / log(k)}
    if members is not None:
        n = len(members)
        mean = [s / n for s in map(sum, zip(*members, strict=True))]
        votes = [0] * k
        member_entropy = 0.0
        for m in members:
            member_entropy += _entropy(m)
            votes[m.index(max(m))] += 1
        divergence = max(_entropy(mean) - member_entropy / n, 0.0)
        out["ensemble_kl"] = divergence
        out["vote_entropy"] = _entropy([v / n for v in votes])
        out["bald"] = divergence
    return out


def _reasons(doc: dict[str, Any], s: dict[str, float]) -> list[dict[str, Any]]:
    """Every rule that fired, with its queue (in the router's order)."""
    out: list[tuple[Any, ...]] = []
    hit = [f for f in doc.get("flags") or () if f in REVIEW_FLAGS]
    if hit:
        out.append(("flagged", "flags_any", "flags", hit, "any_of", list(REVIEW_FLAGS)))
    kl = s.get("ensemble_kl", 0.0)
    if kl > KL_ABOVE:
        out.append(("disagreement", "ensemble_kl_above", "ensemble_kl", kl, ">", KL_ABOVE))
    max_prob, margin = s["max_prob"], s["margin"]
    if max_prob < MAX_PROB_BELOW:
        out.append(("uncertain", "max_prob_below", "max_prob", max_prob, "<", MAX_PROB_BELOW))
    if margin < MARGIN_BELOW:
        out.append(("uncertain", "margin_below", "margin", margin, "<", MARGIN_BELOW))
    names = ("queue", "rule", "metric", "value", "op", "threshold")
    return [dict(zip(names, r, strict=True)) for r in out]


def record(
    doc: dict[str, Any],
    p: list[float],
    s: dict[str, float],
    fate: str,
    queue: str | None,
    now: float,
) -> dict[str, Any]:
    """The router's decision record of an eval or review item (no temperatures here)."""
    return {
        "id": doc["id"],
        "model": doc["model"],
        "probs": p,
        "classes": doc.get("classes"),
        "temperature": 1.0,
        "pred": p.index(max(p)),
        "fate": fate,
        "queue": queue,
        "scores": s,
        "ts": doc.get("ts"),
        "recorded_at": now,
    }


def decide(
    raw: bytes | None, topic: str, partition: int, offset: int, now: float
) -> tuple[str, bytes | None, dict[str, Any], dict[str, Any] | None]:
    """(fate, key, output document, decision record) of one message; the output embeds
    the prediction; eval and review items have a decision record, the others None."""
    doc: Any = None
    try:
        doc = orjson.loads(raw)  # type: ignore[arg-type]
        p, members = check(doc)
        pid = doc["id"]
        key = pid.encode()
        s = scores(p, members)  # the router scores every valid prediction
        draw = _DRAW.copy()
        draw.update(key)
        if int.from_bytes(draw.digest(), "big") / 2**64 < EVAL_RATE:
            return "eval", key, {
                "id": pid,
                "model": doc["model"],
                "prediction": orjson.Fragment(raw),
                "sample_rate": EVAL_RATE,
                "sampled_at": now,
                "router": ROUTER,
            }, record(doc, p, s, "eval", None, now)  # fmt: skip
        out = {"id": pid, "model": doc["model"], "scores": s, "temperature": 1.0}
        out.update(prediction=orjson.Fragment(raw), routed_at=now, router=ROUTER)
        reasons = _reasons(doc, s)
        if not reasons:
            return "accepted", key, out, None
        queue = reasons[0]["queue"]
        head = {"id": pid, "model": doc["model"], "queue": queue}
        head.update(priority=1.0 - s["max_prob"], reasons=reasons)
        return f"review-{queue}", key, {**head, **out}, record(doc, p, s, "review", queue, now)
    except Exception as exc:  # a dead letter, keyed by the id when it has a usable one
        pid = doc.get("id") if isinstance(doc, dict) else None
        ok = isinstance(pid, str) and 0 < len(pid) <= 256
        return "deadletter", pid.encode() if ok else None, {
            "error": {"code": type(exc).__name__, "message": str(exc)},
            **({"id": pid} if ok else {}),
            "raw": (raw or b"").decode("utf-8", errors="replace"),
            "raw_size": len(raw or b""),
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "received_at": now,
        }, None  # fmt: skip
