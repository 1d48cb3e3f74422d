"""The limit of a Python process: a confluent-kafka (librdkafka) consume → produce
pass-through of the same bytes to one topic.

Up to ``batch`` messages a read (:func:`read`: what is fetched, without waiting to fill a
batch), ``Producer.produce`` per message with its key
(librdkafka reports only failed deliveries: ``delivery.report.only.error``; a failure
stops the process before anything after it is committed), and every commit interval (the
worker's ``broker_commit_interval``, 1 s) a ``flush()`` then a commit of the consumer's
position: at-least-once, with consuming and producing pipelined in between, as the
worker commits. (A ``flush()`` per batch of 1,000 instead waits out a linger and a round
trip per batch: measured 69,000–92,000 msgs/s with 0.4 of a core busy.) The clients take
the worker's Kafka settings where librdkafka has them (:func:`librdkafka_settings`,
passed as ``--settings``).

    python -m bench.confluent_pass --bootstrap HOST:PORT --input TOPIC --group G \\
        --output TOPIC [--batch 1000] [--settings JSON]
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

STOP: list[int] = []  # a signal arrived: finish the batch, then stop


def librdkafka_settings(worker: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """librdkafka's names for the worker's client settings
    (``bench.ceiling.worker_client_settings``); librdkafka's defaults for the rest."""
    return {
        "commit_interval_s": worker["broker_commit_interval_s"],
        "consumer": {
            "auto.offset.reset": worker["consumer_auto_offset_reset"],
            "fetch.wait.max.ms": worker["consumer_fetch_max_wait_ms"],
            "fetch.min.bytes": worker["consumer_fetch_min_bytes"],
            "max.partition.fetch.bytes": worker["consumer_max_fetch_size"],
            "check.crcs": bool(worker["consumer_check_crcs"]),
        },
        "producer": {
            "acks": str(worker["producer_acks"]),
            "linger.ms": worker["producer_linger_ms"],
            "batch.size": worker["producer_max_batch_size"],
            "message.max.bytes": worker["producer_max_request_size"],
            "compression.type": worker["producer_compression_type"] or "none",
            "request.timeout.ms": worker["producer_request_timeout_ms"],
        },
    }


def clients(bootstrap: str, group: str, settings: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    """A consumer (no auto-commit) and a producer reporting only failed deliveries (they
    stop the process: raised by the next ``flush``/``poll``)."""
    from confluent_kafka import Consumer, KafkaException, Producer

    def failed(err: Any, msg: Any) -> None:
        raise KafkaException(err)

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **settings.get("consumer", {}),
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "delivery.report.only.error": True,
            "on_delivery": failed,
            **settings.get("producer", {}),
        }
    )
    return consumer, producer


def delivered(producer: Any) -> bool:
    """Flush until every message sent is acknowledged; False if a signal came first."""
    while producer.flush(1.0):
        if STOP:
            return False
    return True


class Committer:
    """Commits the consumer's position every ``interval_s``, once every message produced
    so far is delivered: what was consumed before the flush has its outputs."""

    def __init__(self, consumer: Any, producer: Any, interval_s: float) -> None:
        self.consumer, self.producer, self.interval_s = consumer, producer, interval_s
        self.last = time.monotonic()
        self.pending = False

    def consumed(self, n: int) -> None:
        self.pending = self.pending or n > 0
        self.producer.poll(0)  # serve delivery reports: a failed one raises here
        if self.pending and time.monotonic() - self.last >= self.interval_s:
            self.commit()

    def commit(self) -> None:
        if self.pending and delivered(self.producer):
            self.consumer.commit(asynchronous=True)
            self.pending = False
        self.last = time.monotonic()


def read(consumer: Any, batch: int, timeout_s: float = 1.0) -> list[Any]:
    """Up to ``batch`` messages: those already fetched at once, else the first to come
    (within ``timeout_s``) and what is queued behind it. ``consume(batch, t)`` alone
    waits until it has ``batch`` messages or ``t`` is up: at 1,000 msgs/s that was a
    p50 of 500 ms. (The router's reader does the same: hitl_router/agents/rdkafka_reading.py.)"""
    msgs = consumer.consume(batch, 0)
    if not msgs:
        msgs = consumer.consume(1, timeout_s)
        if msgs:
            msgs += consumer.consume(batch - 1, 0)
    return msgs  # type: ignore[no-any-return]


def run(
    bootstrap: str,
    input_topic: str,
    group: str,
    output: str,
    batch: int,
    settings: dict[str, dict[str, Any]],
) -> None:
    from confluent_kafka import KafkaException

    consumer, producer = clients(bootstrap, group, settings)
    consumer.subscribe([input_topic])
    produce, poll = producer.produce, producer.poll
    committer = Committer(consumer, producer, settings.get("commit_interval_s", 1.0))
    try:
        while not STOP:
            msgs = read(consumer, batch)
            for m in msgs:
                if m.error():
                    raise KafkaException(m.error())
                while True:
                    try:
                        produce(output, m.value(), m.key())
                        break
                    except BufferError:  # librdkafka's queue is full: let it send
                        poll(0.1)
            committer.consumed(len(msgs))
        committer.commit()
    finally:
        producer.flush(10.0)
        consumer.close()


def _stop(signum: int, frame: object) -> None:
    STOP.append(signum)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.confluent_pass", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--output", required=True, help="the one output topic")
    parser.add_argument("--batch", type=int, default=1000, help="messages per consume()")
    parser.add_argument("--settings", default="{}", help="JSON: librdkafka_settings(...)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    settings = json.loads(args.settings)
    run(args.bootstrap, args.input, args.group, args.output, args.batch, settings)


if __name__ == "__main__":
    main()
