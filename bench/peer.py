"""The hand-written peer: what a team would write without hitl-router.

kafka-python consumer and producer with their defaults, ``json.loads`` per message,
per-message pure-Python scores (max_prob, margin, entropy, mean KL of the ensemble
members from their mean), a 2% eval draw by hashing the id, the same three queues, a
try/except per message with a dead-letter topic, and one ``json.dumps`` output per input.
Deliberately plain: no hitl-router imports, no numpy, no orjson.

    python -m bench.peer --bootstrap HOST:PORT --input TOPIC --group G --tag T
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import time

REVIEW_FLAGS = {"pii", "user_report"}
KL_ABOVE = 0.05
MAX_PROB_BELOW = 0.7
MARGIN_BELOW = 0.1
EVAL_RATE = 0.02


def topics(tag: str) -> dict[str, str]:
    """The peer's output topic per fate (``review-<queue>`` per queue)."""
    names = ("eval", "accepted", "dlq", "review-flagged", "review-disagreement", "review-uncertain")
    return {name: f"bench-peer-{name}-{tag}" for name in names}


def check(doc: object) -> dict:
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    if not isinstance(doc.get("id"), str) or not doc["id"]:
        raise ValueError("bad id")
    if not isinstance(doc.get("model"), str):
        raise ValueError("bad model")
    probs = doc["probs"]
    if len(probs) < 2 or not all(0.0 <= p <= 1.0 for p in probs):
        raise ValueError("probs out of range")
    if abs(sum(probs) - 1.0) > 1e-3:
        raise ValueError("probs do not sum to 1")
    for member in doc.get("ensemble") or []:
        if len(member) != len(probs) or not all(0.0 <= p <= 1.0 for p in member):
            raise ValueError("bad ensemble member")
    return doc


def scores(doc: dict) -> dict:
    probs = doc["probs"]
    ranked = sorted(probs, reverse=True)
    out = {
        "max_prob": ranked[0],
        "margin": ranked[0] - ranked[1],
        "entropy": -sum(p * math.log(p) for p in probs if p > 0),
    }
    ensemble = doc.get("ensemble")
    if ensemble:
        k, m = len(probs), len(ensemble)
        mean = [sum(member[i] for member in ensemble) / m for i in range(k)]
        kl = 0.0
        for member in ensemble:
            for i in range(k):
                p = member[i]
                if p > 0:
                    kl += p * math.log(p / mean[i])
        out["ensemble_kl"] = kl / m
    return out


def in_eval_sample(pid: str, salt: bytes) -> bool:
    digest = hashlib.blake2b(pid.encode(), key=salt, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < EVAL_RATE


def route(doc: dict, salt: bytes) -> tuple[str, dict]:
    """(topic name, output) for a valid prediction."""
    now = time.time()
    if in_eval_sample(doc["id"], salt):
        return "eval", {"id": doc["id"], "prediction": doc, "sampled_at": now}
    s = scores(doc)
    reasons = []
    queue = None
    if REVIEW_FLAGS.intersection(doc.get("flags") or []):
        queue = "flagged"
        reasons.append("flags")
    if s.get("ensemble_kl", 0.0) > KL_ABOVE:
        queue = queue or "disagreement"
        reasons.append("ensemble_kl")
    if s["max_prob"] < MAX_PROB_BELOW or s["margin"] < MARGIN_BELOW:
        queue = queue or "uncertain"
        reasons.append("max_prob" if s["max_prob"] < MAX_PROB_BELOW else "margin")
    out = {"id": doc["id"], "model": doc["model"], "scores": s, "prediction": doc}
    out["routed_at"] = now
    if queue is None:
        return "accepted", out
    out["queue"] = queue
    out["reasons"] = reasons
    return f"review-{queue}", out


def run(bootstrap: str, input_topic: str, group: str, tag: str, salt: bytes) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    names = topics(tag)
    consumer = KafkaConsumer(
        input_topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for msg in consumer:
            key = None
            try:
                doc = check(json.loads(msg.value))
                key = doc["id"].encode()
                name, out = route(doc, salt)
            except Exception as exc:
                name = "dlq"
                out = {
                    "error": repr(exc),
                    "raw": msg.value.decode("utf-8", errors="replace"),
                    "source": {
                        "topic": msg.topic,
                        "partition": msg.partition,
                        "offset": msg.offset,
                    },
                    "received_at": time.time(),
                }
            producer.send(names[name], key=key, value=json.dumps(out).encode())
    finally:
        producer.close(timeout=10)
        consumer.close()


def _exit(signum: int, frame: object) -> None:
    sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--tag", required=True, help="suffix of the output topics")
    parser.add_argument("--salt", default="bench")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit)
    run(args.bootstrap, args.input, args.group, args.tag, args.salt.encode())


if __name__ == "__main__":
    main()
