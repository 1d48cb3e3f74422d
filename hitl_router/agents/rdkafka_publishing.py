"""Publish a batch's outputs with librdkafka (``confluent-kafka``): one ``produce`` call
per output, batched, partitioned and sent by librdkafka's own threads.

aiokafka builds every record batch and every produce request in Python on the event
loop (measured: 12–20% of the worker's samples, BENCHMARKS.md); librdkafka does it in C
off the GIL, and its cost in the worker is the ``produce`` call. Delivery reports come
back through ``poll()``, served by a thread of this module (:class:`RdkafkaPublisher`):
each ``deliver`` counts its outputs' reports and is resolved on the event loop once all
are in — at-least-once, as with :class:`~hitl_router.agents.publishing.BatchPublisher`.

Partitions: an output without its own ``partition`` is placed by librdkafka's
``murmur2_random`` partitioner, the Java client's default (the same partition as
``send()`` and :func:`~hitl_router.router.partitioning.partitions_of`). When an output
topic is deleted and re-created with fewer partitions, librdkafka fails the outputs
queued for partitions that no longer exist; those are produced again, to the topic's
partitions as they are now (consumers de-duplicate by key).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from hitl_router.agents.clock import RunningClock
from hitl_router.errors import DeliveryError
from hitl_router.router.config import OUTPUT_FRAMING_BYTES, Config
from hitl_router.router.kafka_security import SecurityConfig
from hitl_router.router.outputs import Output

log = logging.getLogger(__name__)

#: how long the poll thread waits for delivery reports per call (GIL released meanwhile)
_POLL_S = 0.05
#: errors of an output whose partition vanished (topic deleted, re-created smaller); when
#: the smaller topic's metadata comes while outputs wait in a broker's queue for a removed
#: partition, librdkafka fails them with _DESTROY ("Broker handle destroyed"), not
#: _UNKNOWN_PARTITION (seen once in the suite; the producer itself is not closing then:
#: its reports stop before it is)
_GONE = frozenset(
    {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._DESTROY,
    }
)
#: a full local queue: wait this long for room before trying again
_ROOM_WAIT_S = 0.005


def producer_config(config: Config, timeout_s: float) -> dict[str, Any]:
    """librdkafka settings of the worker's output producer for ``config``: the worker's
    linger (5 ms), acks from every in-sync replica, batches no larger than one output
    may be (the preflight checks every output topic takes that much), and a message
    timeout of ``timeout_s`` (wall time, so longer than the delivery timeout, which
    counts running time only). ``kafka.security`` is applied as the other clients'."""
    record = config.limits.max_output_bytes + OUTPUT_FRAMING_BYTES
    out: dict[str, Any] = {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "client.id": f"{config.kafka.group_id}-outputs",
        "linger.ms": 5,
        "acks": "all",
        "partitioner": "murmur2_random",  # the Java client's: keyed outputs as send() puts them
        "batch.size": min(256 * 1024, record),
        "message.max.bytes": max(record, 1_000_000),
        "message.timeout.ms": int(timeout_s * 1000),
        "enable.idempotence": False,
    }
    out.update(security_config(config.kafka.security))
    return out


def security_config(security: SecurityConfig) -> dict[str, Any]:
    """librdkafka's names for ``kafka.security`` (the password read now, never logged).

    >>> security_config(SecurityConfig())
    {'security.protocol': 'PLAINTEXT'}
    >>> sorted(security_config(SecurityConfig("SSL", ca_file="ca.pem", check_hostname=False)))
    ['security.protocol', 'ssl.ca.location', 'ssl.endpoint.identification.algorithm']
    """
    out: dict[str, Any] = {"security.protocol": security.protocol}
    if security.tls:
        # no CA file: the system's trust store, as the other clients (librdkafka looks
        # for it where the common distributions keep it)
        out["ssl.ca.location"] = security.ca_file or "probe"
        if security.cert_file:
            out["ssl.certificate.location"] = security.cert_file
            out["ssl.key.location"] = security.key_file
        out["ssl.endpoint.identification.algorithm"] = (
            "https" if security.check_hostname else "none"
        )
    if security.sasl:
        out["sasl.mechanism"] = security.sasl_mechanism
        out["sasl.username"] = security.username
        out["sasl.password"] = security.password()
    return out


class _Delivery:
    """The delivery reports of one ``deliver`` call.

    Reports are counted in the poll thread (``done``, written only there); an output
    lost in the event loop (produced again after its partition vanished, and refused)
    is counted there (``lost``). ``n`` is set once the last output is produced, so no
    early report can resolve it. Each side writes its counter, then checks the sum, so
    one of them sees it reach ``n``; the future is resolved on the event loop, once."""

    __slots__ = ("n", "done", "lost", "error", "future", "loop", "resend", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, resend: Any) -> None:
        self.n: int | None = None
        self.done = 0
        self.lost = 0
        self.error: tuple[KafkaError, str, int] | None = None
        self.future: asyncio.Future[None] = loop.create_future()
        self.loop = loop
        self.resend = resend
        #: topics with outputs produced again after their partition vanished
        self.waiting: set[str] = set()

    def __call__(self, err: KafkaError | None, msg: Any) -> None:  # the poll thread
        """The report of an output placed by librdkafka's partitioner."""
        if err is not None and err.code() in _GONE:
            self.loop.call_soon_threadsafe(self.resend, self, msg)
            return
        self.placed(err, msg)

    def placed(self, err: KafkaError | None, msg: Any) -> None:  # the poll thread
        """The report of an output with its own partition (a table's changelog): a
        partition that vanished is an error, as every other."""
        if err is not None and self.error is None:
            self.error = (err, msg.topic(), msg.partition())
        self.done += 1
        if self.done + self.lost == self.n:
            self.loop.call_soon_threadsafe(self.resolve)

    def fail(self, error: KafkaError, topic: str) -> None:  # the event loop
        if self.error is None:
            self.error = (error, topic, -1)
        self.lost += 1
        if self.done + self.lost == self.n:
            self.resolve()

    def resolve(self) -> None:  # the event loop
        if not self.future.done():
            self.future.set_result(None)


class RdkafkaPublisher:
    """Sends :class:`Output` lists through a ``confluent_kafka.Producer`` (made from
    ``conf``); :meth:`deliver` returns once the broker acknowledged every output."""

    def __init__(
        self,
        conf: dict[str, Any],
        delivery_timeout_s: float = 30.0,
        clock: RunningClock | None = None,
    ) -> None:
        self.delivery_timeout_s = delivery_timeout_s
        self.clock = clock or RunningClock()
        self.producer = Producer({**conf, "logger": logging.getLogger("rdkafka")})
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="rdkafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        poll, stopped = self.producer.poll, self._stop.is_set
        while not stopped():
            poll(_POLL_S)

    def close(self, timeout_s: float = 5.0) -> int:
        """Stop serving delivery reports; wait up to ``timeout_s`` for outputs still
        queued. Returns how many were left undelivered (not acked: redone)."""
        self._stop.set()
        self._poller.join()
        return self.producer.flush(timeout_s)

    async def deliver(self, outputs: Sequence[Output]) -> None:
        """Publish and wait until the broker acknowledged every output; raise
        :class:`~hitl_router.errors.DeliveryError` if one failed or was not acknowledged
        within ``delivery_timeout_s`` of running time."""
        if not outputs:
            return
        clock = self.clock
        clock.start()
        deadline = clock.now() + self.delivery_timeout_s
        delivery = _Delivery(asyncio.get_running_loop(), self._resend)
        produce, placed = self.producer.produce, delivery.placed
        n = 0
        for topic, key, value, headers, partition in outputs:
            if headers is not None:
                headers = list(headers)  # confluent-kafka: a list or a dict
            while True:
                try:
                    if partition is None:
                        produce(topic, value, key, headers=headers, on_delivery=delivery)
                    else:
                        produce(topic, value, key, partition, headers=headers, on_delivery=placed)
                    break
                except BufferError:  # librdkafka's queue is full: its threads drain it
                    if clock.now() >= deadline:
                        raise DeliveryError(
                            f"{len(outputs)} outputs not delivered: the producer had no room "
                            f"for them within {self.delivery_timeout_s:g} s "
                            "(worker.delivery_timeout_s)"
                        ) from None
                    await asyncio.sleep(_ROOM_WAIT_S)
                except KafkaException as exc:
                    raise DeliveryError(
                        f"{len(outputs)} outputs not delivered: the producer refused an "
                        f"output to {topic}: {exc.args[0]}"
                    ) from exc
            n += 1
        delivery.n = n
        if delivery.done + delivery.lost == n:
            delivery.resolve()
        await self._wait(delivery, deadline, len(outputs))

    async def _wait(self, delivery: _Delivery, deadline: float, n: int) -> None:
        clock, late = self.clock, False
        while not delivery.future.done():
            remaining = deadline - clock.now()
            if remaining <= 0 and not late:
                # one last look: a process frozen past its deadline (SIGSTOP, a paused VM)
                # finds, once it runs again, the reports the broker sent meanwhile
                late, remaining = True, 1.0
            elif remaining <= 0:
                left = n - delivery.done - delivery.lost
                raise DeliveryError(
                    f"{n} outputs not delivered: {left} not acknowledged by the broker "
                    f"within {self.delivery_timeout_s:g} s (worker.delivery_timeout_s)"
                )
            await asyncio.wait([delivery.future], timeout=min(remaining, 1.0))
        if delivery.error is not None:
            err, topic, partition = delivery.error
            who = "the producer" if err.code() < 0 else "the broker"  # librdkafka's or Kafka's
            raise DeliveryError(
                f"outputs not delivered: {who} refused an output to "
                f"{topic}[{partition}]: {err.str()} ({err.name()})"
            )

    def _resend(self, delivery: _Delivery, msg: Any) -> None:
        """An output whose partition no longer exists: produced again with librdkafka's
        partitioner, which places it among the topic's partitions as they are now."""
        topic = msg.topic()
        if topic not in delivery.waiting:
            delivery.waiting.add(topic)
            log.warning(
                "outputs were queued for %s[%d], which no longer exists; sending them to the "
                "topic's partitions as they are now",
                topic,
                msg.partition(),
            )
        try:
            self.producer.produce(
                topic, msg.value(), msg.key(), headers=msg.headers(), on_delivery=delivery
            )
        except (BufferError, KafkaException) as exc:
            delivery.fail(KafkaError(KafkaError._FAIL, repr(exc)), topic)
