"""The Quix Streams anchor: the router's decisions and outputs as a Quix Streams app.

``Application`` with its defaults (at-least-once, a checkpoint — producer flushed, then
offsets committed — every 5 s) reading the prefilled topic as bytes; ``.apply(route)``
decides each message with ``bench.anchor_rules.decide`` (the rules the confluent-kafka
loop runs), then one branch per fate: ``.filter`` on the fate, ``.apply`` to the output
document, ``.set_headers`` (review items: ``priority``), ``.to_topic`` with the id as key,
serialised by Quix's JSON serializer (``orjson``); and a branch that writes the decision
record of every eval and review item to the records' topic, as the router. Quix copies
the value at a branching point for every branch but the first (pickle): an
``orjson.Fragment`` does not pickle, so the prediction crosses it as bytes and is embedded
as a Fragment in its branch.

Quix gives an output the input's timestamp: the bench creates this app's output topics
with ``message.timestamp.type=LogAppendTime``, so that their stamps time the app.

Runs in a venv of its own (``bench/quix_venv.py``: quixstreams pins confluent-kafka and
pydantic below the project's), with ``PYTHONPATH`` at the repository:

    python -m bench.quix_app --bootstrap HOST:PORT --input TOPIC --group G --tag T \\
        --state-dir DIR [--name quix]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from bench.anchor_rules import FATES, RECORDS, decide

Row = tuple[str, bytes | None, dict[str, Any], dict[str, Any] | None]


def topics(name: str, tag: str) -> dict[str, str]:
    """The output topic of each fate (``review-<queue>`` per queue), and of the decision
    records (``RECORDS``)."""
    return {part: f"bench-{name}-{part}-{tag}" for part in (*FATES, RECORDS)}


def routed(raw: bytes | None, topic: str, partition: int, offset: int, now: float) -> Row:
    """The app's per-message decision: ``decide``, the prediction as bytes (the value
    crosses the branching point, where Quix pickles it)."""
    fate, key, out, record = decide(raw, topic, partition, offset, now)
    if "prediction" in out:
        out["prediction"] = raw
    return fate, key, out, record


def recorded(row: Row) -> bool:
    return row[3] is not None


def record_of(row: Row) -> dict[str, Any] | None:
    return row[3]


def embedded(row: Row) -> dict[str, Any]:
    """A branch's output document: the prediction embedded as received."""
    out = row[2]
    if "prediction" in out:
        out["prediction"] = orjson.Fragment(out["prediction"])
    return out


def key_of(out: dict[str, Any]) -> bytes | None:
    """The output's key: the prediction id (a dead letter's when it had a usable one)."""
    pid = out.get("id")
    return pid.encode() if pid is not None else None


def priority_header(value: Any, key: Any, timestamp: int, headers: Any) -> list[Any]:
    return [("priority", repr(value["priority"]).encode())]


def build(app: Any, input_topic: str, names: dict[str, str]) -> None:
    from quixstreams import message_context

    def route(raw: bytes) -> Row:
        ctx = message_context()
        return routed(raw, ctx.topic, ctx.partition, ctx.offset, time.time())

    source = app.topic(input_topic, key_deserializer="bytes", value_deserializer="bytes")
    sdf = app.dataframe(source).apply(route)
    for fate in FATES:
        output = app.topic(names[fate], key_serializer="bytes", value_serializer="json")
        branch = sdf.filter(lambda row, fate=fate: row[0] == fate).apply(embedded)
        if fate.startswith("review-"):
            branch = branch.set_headers(priority_header)
        branch.to_topic(output, key=key_of)
    records = app.topic(names[RECORDS], key_serializer="bytes", value_serializer="json")
    sdf.filter(recorded).apply(record_of).to_topic(records, key=key_of)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quix_app", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--tag", required=True, help="suffix of the output topics")
    parser.add_argument("--name", default="quix", help="infix of the output topics")
    parser.add_argument("--state-dir", required=True, help="Quix's state directory")
    args = parser.parse_args()
    from quixstreams import Application

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    build(app, args.input, topics(args.name, args.tag))
    app.run()  # until SIGTERM: Quix stops after the message at hand, then commits


if __name__ == "__main__":
    main()
