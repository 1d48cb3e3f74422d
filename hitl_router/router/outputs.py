"""Output messages built from a batch's decisions (the SPEC's message shapes).

Every message is keyed by the prediction id (dead letters: the id when the
payload had one, else no key) so consumers can de-duplicate redeliveries.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from hitl_router import __version__
from hitl_router.router.decision import EVAL, PASS, REVIEW, BatchDecisions


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
    value: bytes


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
        "priority": queue.priority,
        "reasons": batch.reasons(i),
        **item,
    }


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
    error = batch.errors[i]
    out: dict[str, Any] = {"error": error.as_dict()}
    pid = id_of(raw)
    if pid is not None:
        out["id"] = pid
    payload = raw or b""
    try:
        out["raw"] = payload.decode("utf-8")
        out["raw_encoding"] = "utf-8"
    except UnicodeDecodeError:
        out["raw"] = base64.b64encode(payload).decode("ascii")
        out["raw_encoding"] = "base64"
    out["source"] = (
        {"topic": source.topic, "partition": source.partition, "offset": source.offset}
        if source is not None
        else None
    )
    out["received_at"] = now
    return out


def id_of(raw: bytes | None) -> str | None:
    """The id of an invalid payload when it has a usable one, for keying its dead letter."""
    if not raw or len(raw) > 1_048_576:
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
    out: list[Output] = []
    dumps = orjson.dumps
    for i in batch.errors:
        letter = dead_letter(batch, i, raws[i], sources[i] if sources else None, now)
        key = letter.get("id")
        out.append(Output(config.topics.deadletter, key.encode() if key else None, dumps(letter)))
    for i in batch.rows(REVIEW):
        item = review_item(batch, i, now)
        out.append(
            Output(batch.policy.queues[int(batch.queue[i])].topic, item["id"].encode(), dumps(item))
        )
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
            out.append(Output(topic, pid.encode(), dumps(item)))
    return out


def eval_outputs(batch: BatchDecisions, now: float) -> list[Output]:
    """What the eval sampler agent publishes for a batch."""
    topic = batch.policy.config.topics.eval
    out = []
    for i in batch.rows(EVAL):
        item = eval_sample(batch, i, now)
        out.append(Output(topic, item["id"].encode(), orjson.dumps(item)))
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
    return rec
