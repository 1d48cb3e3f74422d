"""``hitl-router bridge label-studio``: review items and eval samples become Label Studio
tasks; annotations come back as labels.

A Faust app of its own (consumer group ``label_studio.group_id``), fed a fetch at a time
by the batching consumer like the router (:mod:`.batching`), and like the router it reads
and writes with librdkafka unless ``worker.consumer``/``worker.producer`` say aiokafka:

- **Tasks.** Each batch of the bridged review topics and ``eval.samples`` becomes tasks
  through :class:`~hitl_router.labelstudio.projects.ProjectBook`, which never makes a
  second task for a prediction id. A batch is acked once its tasks exist (and its dead
  letters are delivered): while Label Studio is unreachable or refuses the token, the
  batch is retried with a doubling backoff (``retry_initial_s`` to ``retry_max_s``),
  each failure logged and counted, and nothing is acked. A restart resumes from the
  committed offsets.
- **Labels.** The group's leader polls the bridged projects every ``poll_interval_s``
  (:mod:`~hitl_router.labelstudio.polling`), sends each new annotation revision to the
  labels topic keyed by prediction id, and once they are delivered records where it got
  to in the compacted ``label_studio.state_topic`` (key: project), which a new leader
  reads first. Labels are sent at least once: a crash between delivering labels and
  recording the position sends them again (the labels agent keeps an annotator's
  latest label, so the measures do not change).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from prometheus_client import CollectorRegistry

from hitl_router.agents import health
from hitl_router.agents.app import (
    RouterApp,
    broker_urls,
    data_dir,
    output_publisher,
    read_with,
)
from hitl_router.agents.batching import Batch
from hitl_router.agents.connection import faust_kwargs
from hitl_router.agents.handling import batch_agent
from hitl_router.agents.publishing import BatchPublisher
from hitl_router.agents.rdkafka_publishing import RdkafkaPublisher
from hitl_router.bridge_metrics import BridgeMetrics
from hitl_router.errors import ConfigError, LabelStudioError, RouterError
from hitl_router.labelstudio.client import Client
from hitl_router.labelstudio.cursor import PollCursor
from hitl_router.labelstudio.polling import Polled, poll_project
from hitl_router.labelstudio.projects import ProjectBook
from hitl_router.labelstudio.tasks import TaskSpec, eval_task, review_task
from hitl_router.router.config import Config
from hitl_router.router.label_studio import LabelStudioConfig
from hitl_router.router.outputs import Output, Source, letter_output
from hitl_router.router.validation import ErrorInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
#: how long a new leader may take to read the poll positions
STATE_READ_TIMEOUT_S = 60.0


def section(config: Config) -> LabelStudioConfig:
    if config.label_studio is None:
        raise ConfigError("label_studio", "the bridge needs this section (url, token_env, ...)")
    return config.label_studio


def bridged_queues(config: Config) -> list[str]:
    ls = section(config)
    return list(ls.queues) if ls.queues is not None else [q.name for q in config.queues]


def bridged_topics(config: Config) -> dict[str, str]:
    """Topic → ``review`` or ``eval``: what the bridge consumes."""
    chosen = bridged_queues(config)
    out = {q.topic: "review" for q in config.queues if q.name in chosen}
    if section(config).eval:
        out[config.topics.eval] = "eval"
    return out


class BridgeApp(RouterApp):
    """The router's app with no backstop on a batch's work: a batch waits for Label
    Studio as long as it takes (its retries log every failure)."""

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        consumer.delivery_timeout_s = None
        return consumer


def build_bridge(
    config: Config,
    *,
    client: Client | None = None,
    registry: CollectorRegistry | None = None,
    web_port: int | None = None,
) -> faust.App:
    """The bridge's Faust app for ``config`` (its ``label_studio`` section)."""
    ls = section(config)
    if client is None:
        client = Client(
            ls.url, ls.token(), timeout_s=ls.request_timeout_s, token_source=ls.token_source()
        )
    registry = registry if registry is not None else CollectorRegistry()
    app = BridgeApp(
        ls.group_id,
        broker=broker_urls(config.kafka.bootstrap_servers),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=data_dir(ls.group_id),
        web_port=ls.metrics_port if web_port is None else web_port,
        web_bind=config.metrics.host,
        consumer_auto_offset_reset="earliest",
        topic_partitions=config.kafka.partitions,
        topic_replication_factor=config.kafka.replication_factor,
        broker_max_poll_records=ls.import_batch,
        producer_linger=0.005,
        broker_commit_interval=1.0,
        broker_session_timeout=config.worker.session_timeout_ms / 1000,
        broker_heartbeat_interval=config.worker.heartbeat_interval_ms / 1000,
        **faust_kwargs(config.kafka.security),
    )
    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    app.hitl_health = health.install(app)  # type: ignore[attr-defined]
    metrics = BridgeMetrics(registry)
    app.hitl_bridge_metrics = metrics  # type: ignore[attr-defined]
    app.hitl_registry = registry  # type: ignore[attr-defined]
    book = ProjectBook(client, ls, config.labels.reasons)
    bridge = _Bridge(app, config, client, book, metrics)
    kinds = bridged_topics(config)
    for topic in kinds:
        app.topics.add(app.topic(topic, value_serializer="raw", key_serializer="raw"))
    channel = app.channel()
    errors = metrics.errors.labels("internal")
    app.agent(channel, name="label-studio")(
        batch_agent("label-studio", bridge.handle, bridge.internal_error, errors)
    )

    async def send(batch: Batch) -> None:
        await channel.send(value=batch)

    app.batch_topics = {topic: (1, send) for topic in kinds}
    app.worker_settings = config.worker
    read_with(app, config, ls.group_id)

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        book.invalidate()  # another bridge may have made tasks of these partitions

    app.on_partitions_assigned.connect(on_assigned)
    app.timer(ls.poll_interval_s, name="label-studio-poll")(bridge.poll)
    return app


class _Bridge:
    def __init__(
        self,
        app: faust.App,
        config: Config,
        client: Client,
        book: ProjectBook,
        metrics: BridgeMetrics,
    ) -> None:
        self.app = app
        self.config = config
        self.ls = section(config)
        self.client = client
        self.book = book
        self.metrics = metrics
        self.kinds = bridged_topics(config)
        self.queues = bridged_queues(config)
        self._lock: asyncio.Lock | None = None
        self._publisher: BatchPublisher | RdkafkaPublisher | None = None
        #: the poll positions, per project; None until this worker leads and read them
        self.cursors: dict[str, PollCursor] | None = None

    # -- tasks ---------------------------------------------------------------------

    def handle(self, batch: Batch) -> list[Awaitable[Any]]:
        return [asyncio.ensure_future(self.create(batch))]

    def internal_error(self, batch: Batch, exc: BaseException) -> list[Awaitable[Any]]:
        raise exc  # handle() only schedules: never reached with a bad message

    async def create(self, batch: Batch) -> None:
        specs: list[TaskSpec] = []
        letters: list[Output] = []
        now = time.time()
        for m in batch.messages:
            if self.kinds.get(m.topic) == "eval":
                spec = eval_task(m.value, self.ls.blind_eval)
            else:
                spec = review_task(m.value)
            if isinstance(spec, ErrorInfo):
                self.metrics.errors.labels("invalid_item").inc()
                log.warning(
                    "not a task: %s at %s[%d]@%d", spec.message, m.topic, m.partition, m.offset
                )
                source = Source(m.topic, m.partition, m.offset)
                letters.append(
                    letter_output(
                        self.config.topics.deadletter,
                        spec,
                        m.value,
                        source,
                        now,
                        self.config.limits,
                    )
                )
            else:
                specs.append(spec)
        if specs:
            written = await self._retrying(lambda: self.book.write(specs))
            for title, n in written.created.items():
                self.metrics.tasks_created.labels(title).inc(n)
            for title, n in written.skipped.items():
                self.metrics.tasks_skipped.labels(title).inc(n)
        if letters:
            await self.publisher().deliver(letters)

    async def _retrying(self, work: Callable[[], T]) -> T:
        """``work`` in a thread, one at a time, until it succeeds: each failure is
        logged and counted, then waited out with a doubling backoff."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        delay = self.ls.retry_initial_s
        while True:
            try:
                async with self._lock:
                    return await asyncio.to_thread(work)
            except LabelStudioError as exc:
                kind, shown = exc.kind, str(exc)
            except Exception as exc:  # a bug: never ack without the tasks
                log.exception("bridge: creating tasks raised")
                kind, shown = "internal", repr(exc)
            self.metrics.errors.labels(kind).inc()
            log.error("%s; nothing acked, retrying in %.3g s", shown, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.ls.retry_max_s)

    def publisher(self) -> BatchPublisher | RdkafkaPublisher:
        if self._publisher is None:  # the producer exists once the app has started
            self._publisher = output_publisher(self.app, self.config)
        return self._publisher

    # -- labels --------------------------------------------------------------------

    async def poll(self) -> None:
        """One poll of every bridged project, on the group's leader only."""
        if not self.app.is_leader():
            self.cursors = None  # a later leadership reads the positions again
            return
        try:
            if self.cursors is None:
                self.cursors = await read_cursors(
                    self.app, self.config.kafka.bootstrap_servers, self.ls
                )
                log.info("label studio: %d poll positions read", len(self.cursors))
            cursors = self.cursors
            polled = await asyncio.to_thread(self._poll_all, cursors)
        except LabelStudioError as exc:
            self.metrics.errors.labels(exc.kind).inc()
            log.error("%s; polling again in %g s", exc, self.ls.poll_interval_s)
            return
        except RouterError as exc:
            log.error("label studio poll: %s", exc)
            return
        except Exception:  # a bug: the poll is retried, the bridge goes on
            self.metrics.errors.labels("internal").inc()
            log.exception("label studio poll failed")
            return
        labels_topic = self.config.topics.labels
        try:
            for key, (title, result, backlog) in polled.items():
                outputs = [
                    Output(labels_topic, doc["id"].encode(), orjson.dumps(doc))
                    for doc in result.labels
                ]
                if outputs:
                    await self.publisher().deliver(outputs)
                cursor = cursors.setdefault(key, PollCursor())
                cursor.advance(result.task_times, result.sent, self.ls.poll_overlap_s)
                if result.task_times or result.sent:
                    state = Output(self.ls.state_topic, key.encode(), cursor.to_json())
                    await self.publisher().deliver([state])
                self._observe(title, result, backlog)
        except RouterError as exc:  # not delivered: the next poll sends them again
            log.error("label studio poll: labels not delivered: %s", exc)
            return
        self.metrics.last_poll.set(time.time())

    def _poll_all(self, cursors: dict[str, PollCursor]) -> dict[str, tuple[str, Polled, int]]:
        out = {}
        bases = self.book.titles(self.queues)
        for title, (pid, _) in sorted(self.client.projects().items()):
            if not any(
                title == b or (title.startswith(b + " [") and title.endswith("]")) for b in bases
            ):
                continue
            key = f"{self.ls.url}#{pid}"
            result = poll_project(
                self.client, pid, cursors.get(key) or PollCursor(), self.ls.poll_overlap_s
            )
            out[key] = (title, result, self.client.backlog(pid))
        return out

    def _observe(self, title: str, result: Polled, backlog: int) -> None:
        for doc in result.labels:
            self.metrics.labels_sent.labels(title, doc["source"]).inc()
        for source, seconds in result.latencies:
            self.metrics.label_latency.labels(source).observe(seconds)
        self.metrics.backlog.labels(title).set(backlog)


async def read_cursors(
    app: faust.App, bootstrap: str, ls: LabelStudioConfig
) -> dict[str, PollCursor]:
    """Every project's poll position: the state topic read from its beginning to its end
    (compaction keeps each project's latest)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{ls.group_id}-state",
        **credentials_to_aiokafka_auth(app.conf.broker_credentials),
    )
    await consumer.start()
    cursors: dict[str, PollCursor] = {}
    try:
        parts = consumer.partitions_for_topic(ls.state_topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(ls.state_topic) or set()
        tps = [TopicPartition(ls.state_topic, p) for p in sorted(parts)]
        if not tps:
            return cursors
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + STATE_READ_TIMEOUT_S
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise RouterError(
                    f"could not read {ls.state_topic} within {STATE_READ_TIMEOUT_S:g} s"
                )
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    if record.key is None:
                        continue
                    key = record.key.decode("utf-8", "replace")
                    if record.value is None:
                        cursors.pop(key, None)
                        continue
                    try:
                        cursors[key] = PollCursor.from_json(record.value)
                    except (ValueError, TypeError, AttributeError):
                        log.warning("label studio: an unreadable poll position for %s", key)
    finally:
        await consumer.stop()
    return cursors
