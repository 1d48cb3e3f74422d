"""Output messages built from a batch's decisions (the SPEC's message shapes).

Every message is keyed by the prediction id (dead letters: the id when the
payload had one, else no key) so consumers can de-duplicate redeliveries.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from hitl_router import __version__
from hitl_router.router.config import Config, LimitsConfig
from hitl_router.router.decision import DROP_REASONS, EVAL, PASS, REVIEW, BatchDecisions
from hitl_router.router.validation import ErrorInfo


@dataclass(frozen=True)
class Source:
    """Where a message was read: the dead letter's ``source``."""

    topic: str
    partition: int
    offset: int


class Output(NamedTuple):
    """One message to publish (a named tuple: made for every output, it must be cheap)."""

    topic: str
    key: bytes | None
    #: ``None``: a tombstone (a table's changelog deleting a key)
    value: bytes | None
    #: Kafka headers (a review item's ``priority``)
    headers: tuple[tuple[str, bytes], ...] | None = None
    #: the partition to write to; ``None``: Kafka's default partition of the key
    partition: int | None = None


def router_info(batch: BatchDecisions) -> dict[str, str]:
    """Which router decided: one dict per config, shared by every output (not mutated)."""
    return _router_info(batch.policy.config.config_hash)


@functools.lru_cache(maxsize=16)
def _router_info(config_hash: str) -> dict[str, str]:
    return {"version": __version__, "config_hash": config_hash}


def prediction(batch: BatchDecisions, i: int) -> orjson.Fragment:
    """The original prediction, embedded as received: never re-serialised, so unknown
    fields and number formatting pass through untouched (and it costs nothing)."""
    raw = batch.raws[i]
    assert raw is not None
    return orjson.Fragment(raw)


def review_item(batch: BatchDecisions, i: int, now: float) -> dict[str, Any]:
    queue = batch.policy.queues[int(batch.queue[i])]
    item = accepted_item(batch, i, now)
    return {
        "id": item.pop("id"),
        "model": item.pop("model"),
        "queue": queue.name,
        "priority": float(batch.priority[i]),
        "reasons": batch.reasons(i),
        **item,
    }


def dropped_info(batch: BatchDecisions, i: int, rules: bool = True) -> dict[str, Any]:
    """Why a row that matched a queue passed (the queue was over its ``budget``, or its
    key over the queue's ``diversity`` cap); with ``rules``, the rules that fired for it
    (replay's lines have them; the accepted item does not: tracing them for every item
    over a budget cost the router a tenth of its speed in the benchmark)."""
    q = int(batch.dropped[i])
    name = batch.policy.queues[q].name
    out: dict[str, Any] = {"queue": name, "reason": DROP_REASONS[int(batch.drop_reason[i])]}
    if rules:
        out["reasons"] = [r for r in batch.reasons(i) if r["queue"] == name]
    return out


def accepted_item(batch: BatchDecisions, i: int, now: float) -> dict[str, Any]:
    doc = batch.docs[i]
    assert doc is not None
    return {
        "id": doc["id"],
        "model": doc["model"],
        "scores": batch.score_dict(i),
        "temperature": batch.temperature_of(i),
        "prediction": prediction(batch, i),
        "routed_at": now,
        "router": router_info(batch),
    }


def eval_sample(batch: BatchDecisions, i: int, now: float) -> dict[str, Any]:
    doc = batch.docs[i]
    assert doc is not None
    return {
        "id": doc["id"],
        "model": doc["model"],
        "prediction": prediction(batch, i),
        "sample_rate": batch.policy.config.eval_sample.rate,
        "sampled_at": now,
        "router": router_info(batch),
    }


def dead_letter(
    batch: BatchDecisions, i: int, raw: bytes | None, source: Source | None, now: float
) -> dict[str, Any]:
    """Row ``i``'s dead letter (its error is ``batch.errors[i]``)."""
    return letter_doc(batch.errors[i], raw, source, now, batch.policy.config.limits)


def letter_doc(
    error: ErrorInfo,
    raw: bytes | None,
    source: Source | None,
    now: float,
    limits: LimitsConfig,
    raw_bytes: int | None = None,
) -> dict[str, Any]:
    """A dead letter: the error, at most ``raw_bytes`` (default
    ``limits.dead_letter_raw_bytes``) of the payload — as text when that prefix is
    UTF-8, else base64 — with the payload's size and SHA-256, and where it was read.

    >>> from hitl_router.router.config import LimitsConfig
    >>> d = letter_doc(ErrorInfo("not_json", "no"), b"x" * 10, None, 0.0, LimitsConfig(), 4)
    >>> d["raw"], d["raw_size"], d["raw_truncated"]
    ('xxxx', 10, True)
    >>> d["raw_sha256"] == hashlib.sha256(b"x" * 10).hexdigest()
    True
    """
    payload = raw or b""
    out: dict[str, Any] = {"error": _bounded(error)}
    pid = id_of(raw, limits.max_message_bytes)
    if pid is not None:
        out["id"] = pid
    _set_raw(out, payload, limits.dead_letter_raw_bytes if raw_bytes is None else raw_bytes)
    out["raw_size"] = len(payload)
    out["raw_sha256"] = hashlib.sha256(payload).hexdigest()
    out["source"] = (
        {"topic": source.topic, "partition": source.partition, "offset": source.offset}
        if source is not None
        else None
    )
    out["received_at"] = now
    return out


def letter(
    error: ErrorInfo, raw: bytes | None, source: Source | None, now: float, limits: LimitsConfig
) -> bytes:
    """A dead letter, serialised, that fits ``limits.max_output_bytes`` by construction
    (the config refuses a raw prefix whose worst escaping would not fit); should it
    not, the raw prefix is halved until it does."""
    return _fit(letter_doc(error, raw, source, now, limits), raw or b"", limits)


def _set_raw(doc: dict[str, Any], payload: bytes, keep: int) -> None:
    """The letter's ``raw``: at most ``keep`` bytes of ``payload``, as text when that
    prefix is UTF-8 (a character cut at its end dropped), else base64."""
    prefix = payload[:keep]
    text = _utf8_prefix(prefix, truncated=len(payload) > keep)
    if text is not None:
        doc["raw"], doc["raw_encoding"] = text, "utf-8"
    else:
        doc["raw"], doc["raw_encoding"] = base64.b64encode(prefix).decode("ascii"), "base64"
    doc["raw_truncated"] = len(payload) > keep


def _fit(doc: dict[str, Any], payload: bytes, limits: LimitsConfig) -> bytes:
    """``doc`` serialised, its raw prefix halved until it fits (only ``raw`` is
    rebuilt: the id, size and SHA-256 of the payload are computed once)."""
    value = orjson.dumps(doc)
    keep = limits.dead_letter_raw_bytes
    while len(value) > limits.max_output_bytes and keep:
        keep //= 2
        _set_raw(doc, payload, keep)
        value = orjson.dumps(doc)
    return value


def too_large(kind: str, size: int, limits: LimitsConfig) -> ErrorInfo:
    """Why an output was dead-lettered instead of sent."""
    return ErrorInfo(
        "output_too_large",
        f"its {kind} would be {size} bytes, above limits.max_output_bytes "
        f"({limits.max_output_bytes}); the prediction is at the source offset",
    )


_MAX_ERROR_CHARS = 1024


def _bounded(error: ErrorInfo) -> dict[str, str]:
    """The error as a dict, its message and path cut to 1,024 characters (a path can
    name a key of the payload, which may be as long as the payload)."""
    out = error.as_dict()
    for field in ("message", "path"):
        value = out.get(field)
        if value is not None and len(value) > _MAX_ERROR_CHARS:
            out[field] = value[: _MAX_ERROR_CHARS - 1] + "…"
    return out


def _utf8_prefix(prefix: bytes, truncated: bool) -> str | None:
    """``prefix`` as text if it is UTF-8 — when cut from a longer payload, up to a
    character split at its end — else None."""
    try:
        return prefix.decode("utf-8")
    except UnicodeDecodeError as exc:
        if truncated and exc.reason == "unexpected end of data" and exc.start >= len(prefix) - 3:
            try:
                return prefix[: exc.start].decode("utf-8")
            except UnicodeDecodeError:
                return None
        return None


def id_of(raw: bytes | None, max_bytes: int = 1_048_576) -> str | None:
    """The id of an invalid payload when it has a usable one, for keying its dead letter."""
    if not raw or len(raw) > max_bytes:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict):
        pid = doc.get("id")
        if isinstance(pid, str) and 0 < len(pid) <= 256:
            return pid
    return None


def router_outputs(
    batch: BatchDecisions,
    raws: Sequence[bytes | None],
    sources: Sequence[Source | None] | None,
    now: float,
) -> list[Output]:
    """What the router agent publishes for a batch: review items, accepted items (when
    ``topics.accepted`` is set) and dead letters. Eval items are the sampler's."""
    config = batch.policy.config
    limits = config.limits
    max_bytes = limits.max_output_bytes
    deadletter = config.topics.deadletter
    out: list[Output] = []
    dumps = orjson.dumps
    for i in batch.errors:
        out.append(_letter(deadletter, batch.errors[i], raws[i], sources, i, now, limits))
    for i in batch.rows(REVIEW):
        item = review_item(batch, i, now)
        value = dumps(item)
        if len(value) > max_bytes:
            error = too_large("review item", len(value), limits)
            out.append(_letter(deadletter, error, raws[i], sources, i, now, limits))
            continue
        topic = batch.policy.queues[int(batch.queue[i])].topic
        headers = (("priority", repr(item["priority"]).encode()),)
        out.append(Output(topic, item["id"].encode(), value, headers))
    if config.topics.accepted:
        # accepted_item, inlined: the one output most predictions get
        topic, docs, raws_of = config.topics.accepted, batch.docs, batch.raws
        info, fragment = router_info(batch), orjson.Fragment
        names, score_rows, complete = batch.score_rows
        temperatures = batch.temperatures
        for i in batch.rows(PASS):
            pid = docs[i]["id"]  # type: ignore[index]
            item = {
                "id": pid,
                "model": docs[i]["model"],  # type: ignore[index]
                "scores": (
                    dict(zip(names, score_rows[i], strict=True))
                    if complete[i]
                    else batch.score_dict(i)
                ),
                "temperature": temperatures[i],
                "prediction": fragment(raws_of[i]),  # type: ignore[arg-type]
                "routed_at": now,
                "router": info,
            }
            if batch.dropped[i] >= 0:  # matched a queue over its budget
                item["dropped"] = dropped_info(batch, i, rules=False)
            value = dumps(item)
            if len(value) > max_bytes:
                error = too_large("accepted item", len(value), limits)
                out.append(_letter(deadletter, error, raws[i], sources, i, now, limits))
                continue
            out.append(Output(topic, pid.encode(), value))
    return out


def _letter(
    topic: str,
    error: ErrorInfo,
    raw: bytes | None,
    sources: Sequence[Source | None] | None,
    i: int,
    now: float,
    limits: LimitsConfig,
) -> Output:
    return letter_output(topic, error, raw, sources[i] if sources else None, now, limits)


def letter_output(
    topic: str,
    error: ErrorInfo,
    raw: bytes | None,
    source: Source | None,
    now: float,
    limits: LimitsConfig,
) -> Output:
    """A dead letter for ``topic``, keyed by the payload's id when it has a usable one."""
    doc = letter_doc(error, raw, source, now, limits)
    pid = doc.get("id")  # parsed once, with the letter
    return Output(topic, pid.encode() if pid else None, _fit(doc, raw or b"", limits))


def error_letters(
    error: ErrorInfo,
    raws: Sequence[bytes | None],
    sources: Sequence[Source | None] | None,
    now: float,
    config: Config,
) -> list[Output]:
    """Dead letters for messages the router failed on outside the decision (e.g.
    ``internal_error`` when building or publishing a message's outputs raised)."""
    topic, limits = config.topics.deadletter, config.limits
    return [_letter(topic, error, raw, sources, i, now, limits) for i, raw in enumerate(raws)]


def eval_outputs(
    batch: BatchDecisions, now: float, sources: Sequence[Source | None] | None = None
) -> list[Output]:
    """What the eval sampler agent publishes for a batch (a sample too large to send is
    dead-lettered as ``output_too_large``)."""
    config = batch.policy.config
    topic, limits = config.topics.eval, config.limits
    out = []
    for i in batch.rows(EVAL):
        item = eval_sample(batch, i, now)
        value = orjson.dumps(item)
        if len(value) > limits.max_output_bytes:
            error = too_large("eval sample", len(value), limits)
            raw = batch.raws[i]
            out.append(_letter(config.topics.deadletter, error, raw, sources, i, now, limits))
            continue
        out.append(Output(topic, item["id"].encode(), value))
    return out


def replay_record(batch: BatchDecisions, i: int) -> dict[str, Any]:
    """One line of ``replay`` output: the same fate the live worker gives."""
    doc = batch.docs[i]
    if doc is None:
        return {
            "id": None,
            "fate": "deadletter",
            "reasons": [],
            "scores": {},
            "error": batch.errors[i].as_dict(),
        }
    rec: dict[str, Any] = {"id": doc["id"], "fate": batch.fate_name(i)}
    if batch.queue[i] >= 0:
        rec["queue"] = batch.queue_name(i)
    rec["reasons"] = batch.reasons(i) if batch.queue[i] >= 0 else []
    rec["scores"] = batch.score_dict(i)
    if batch.queue[i] >= 0:
        rec["priority"] = float(batch.priority[i])
    elif batch.dropped[i] >= 0:
        rec["dropped"] = dropped_info(batch, i)
    return rec
