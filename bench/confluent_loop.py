"""The hand-written anchor on librdkafka: the router's decisions and outputs in a plain
confluent-kafka loop, what a team would write instead of hitl-router.

Per message: ``bench.anchor_rules.decide`` (``orjson`` parse, the checks, the eval draw,
the scores, the three queues, a dead letter for whatever fails), then ``orjson.dumps``
of the output (the prediction embedded as received) and ``Producer.produce`` to the
fate's topic, keyed by the id (review items with their ``priority`` header), and for an
eval or review item its decision record to the records' topic, as the router; batches of
``consume(num_messages=batch)``, and every commit interval a ``flush()`` then a commit —
at-least-once, with the same clients, settings and committer as
``bench/confluent_pass.py``.

    python -m bench.confluent_loop --bootstrap HOST:PORT --input TOPIC --group G --tag T \\
        [--name confluent-loop] [--batch 1000] [--settings JSON]
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

import orjson

from bench import confluent_pass
from bench.anchor_rules import FATES, RECORDS, decide


def topics(name: str, tag: str) -> dict[str, str]:
    """The output topic of each fate (``review-<queue>`` per queue), and of the decision
    records (``RECORDS``)."""
    return {part: f"bench-{name}-{part}-{tag}" for part in (*FATES, RECORDS)}


def run(
    bootstrap: str,
    input_topic: str,
    group: str,
    names: dict[str, str],
    batch: int,
    settings: dict[str, dict[str, Any]],
) -> None:
    from confluent_kafka import KafkaException

    consumer, producer = confluent_pass.clients(bootstrap, group, settings)
    consumer.subscribe([input_topic])
    produce, poll, dumps = producer.produce, producer.poll, orjson.dumps
    interval = settings.get("commit_interval_s", 1.0)
    committer = confluent_pass.Committer(consumer, producer, interval)
    records = names[RECORDS]
    try:
        while not confluent_pass.STOP:
            msgs = confluent_pass.read(consumer, batch)
            now = time.time()
            for m in msgs:
                if m.error():
                    raise KafkaException(m.error())
                fate, key, out, record = decide(
                    m.value(), m.topic(), m.partition(), m.offset(), now
                )
                value = dumps(out)
                headers = [("priority", repr(out["priority"]).encode())] if "queue" in out else None
                while True:
                    try:
                        produce(names[fate], value, key, headers=headers)
                        break
                    except BufferError:  # librdkafka's queue is full: let it send
                        poll(0.1)
                if record is not None:
                    value = dumps(record)
                    while True:
                        try:
                            produce(records, value, key)
                            break
                        except BufferError:
                            poll(0.1)
            committer.consumed(len(msgs))
        committer.commit()
    finally:
        producer.flush(10.0)
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.confluent_loop", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--tag", required=True, help="suffix of the output topics")
    parser.add_argument("--name", default="confluent-loop", help="infix of the output topics")
    parser.add_argument("--batch", type=int, default=1000, help="messages per consume()")
    parser.add_argument("--settings", default="{}", help="JSON: librdkafka_settings(...)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, confluent_pass._stop)
    signal.signal(signal.SIGINT, confluent_pass._stop)
    names = topics(args.name, args.tag)
    run(args.bootstrap, args.input, args.group, names, args.batch, json.loads(args.settings))


if __name__ == "__main__":
    main()
