"""The Faust app: thin agents over the raw bytes of the predictions topic.

- ``router``: decide → publish review items, accepted items, dead letters.
- ``sampler``: draw the eval sample → publish eval samples.
- ``drift`` (with a profile): windows per model → ``drift.reports`` and gauges.
- ``labels``: joins human labels with the router's decisions, keeps the per-model
  windows, fits and publishes temperatures (:mod:`.label_join`, :mod:`.label_windows`).

The router and the sampler also record each review and eval item's decision for the
join (``topics.decisions``); every worker running the router follows the calibration
topic and applies the newest temperatures (:mod:`.calibration_feed`).

All share one parse of each batch (:mod:`hitl_router.router.decision`); the draw is a
function of ``(salt, id)`` only, so the router excludes exactly what the sampler
takes without talking to it. Messages reach the agents a fetch at a time through
:class:`~hitl_router.agents.batching.BatchingConsumer`; they are acked only after
every agent finished and every output was delivered (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import faust
import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from hitl_router.agents import calibration_feed, health
from hitl_router.agents.batching import Batch, BatchingConsumer, BatchSink
from hitl_router.agents.connection import faust_kwargs
from hitl_router.agents.handling import batch_agent
from hitl_router.agents.json_logs import worker_id
from hitl_router.agents.label_join import LabelJoiner
from hitl_router.agents.label_windows import WindowKeeper
from hitl_router.agents.publishing import BatchPublisher
from hitl_router.agents.rdkafka_publishing import RdkafkaPublisher, producer_config
from hitl_router.agents.rdkafka_reading import consumer_config
from hitl_router.agents.routed_table import RoutedTable
from hitl_router.feedback_metrics import FeedbackMetrics
from hitl_router.metrics import RouterMetrics
from hitl_router.router.config import OUTPUT_FRAMING_BYTES, Config, WorkerConfig
from hitl_router.router.decision import (
    EVAL,
    REVIEW,
    BatchDecisions,
    Policy,
    decide_batch,
    decide_parsed,
    merge_batches,
    poisoned,
)
from hitl_router.router.join import decision_outputs
from hitl_router.router.outputs import (
    Output,
    Source,
    error_letters,
    eval_outputs,
    router_outputs,
)
from hitl_router.router.validation import ErrorInfo, parse_batch

log = logging.getLogger(__name__)

AGENTS = ("router", "sampler", "drift", "labels")
#: the agents fed by the predictions topic, a batch at a time
BATCH_AGENTS = ("router", "sampler", "drift")


def default_agents(config: Config) -> tuple[str, ...]:
    """What ``--agents all`` runs: router and sampler, and drift when a profile is set.

    The label loop (``--agents labels``) runs in workers of its own, in a consumer group
    of its own: its tables' recovery pauses every partition of its group (~20 s per
    100,000 records) and its per-message path is far slower than the batched routing;
    apart, routing never waits for either (README: "The label loop")."""
    return ("router", "sampler", "drift") if config.drift.profile else ("router", "sampler")


def producer_timeout_s(worker: WorkerConfig) -> float:
    """aiokafka's request timeout: twice the delivery timeout, at least a minute more.

    >>> producer_timeout_s(WorkerConfig())
    90.0
    """
    return max(2 * worker.delivery_timeout_s, worker.delivery_timeout_s + 60.0)


def instance_id(worker: WorkerConfig) -> str | None:
    """``worker.group_instance_id`` with ``{hostname}`` replaced (static membership)."""
    if worker.group_instance_id is None:
        return None
    return worker.group_instance_id.replace("{hostname}", socket.gethostname())


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def group_id(config: Config, agents: Sequence[str]) -> str:
    """The consumer group (= Faust app id) of a worker running ``agents``.

    Workers running every agent share ``kafka.group_id``. Agents run apart form a group
    per agent set (``<group_id>-router``, ``<group_id>-sampler``): each set must see
    every partition, so they cannot share one group.
    """
    chosen = sorted(set(agents))
    if chosen == sorted(default_agents(config)):
        return config.kafka.group_id
    return "-".join([config.kafka.group_id, *chosen])


class RouterApp(faust.App):
    """A Faust app whose consumer hands ``batch_topics`` to agents a batch at a time."""

    batch_topics: dict[str, tuple[int, BatchSink]]
    worker_settings: WorkerConfig = WorkerConfig()
    #: librdkafka settings of the batched topics' reader (``worker.consumer``), or None
    reader_conf: dict[str, Any] | None = None

    def _new_consumer(self) -> Any:
        consumer = BatchingConsumer(
            self.transport,
            callback=self.topics.on_message,
            on_partitions_revoked=self._on_partitions_revoked,
            on_partitions_assigned=self._on_partitions_assigned,
            beacon=self.beacon,
            loop=self.transport.loop,
        )
        consumer.batch_topics = self.batch_topics
        consumer.reader_conf = self.reader_conf
        consumer.fetch_max_wait_ms = self.worker_settings.fetch_max_wait_ms
        consumer.fetch_min_bytes = self.worker_settings.fetch_min_bytes
        consumer.max_in_flight = self.worker_settings.max_in_flight
        # a backstop in wall time, for a delivery task that would never end; the
        # publisher's own deadline (in running time) is the one that fails deliveries
        consumer.delivery_timeout_s = 3 * self.worker_settings.delivery_timeout_s + 60.0
        return consumer


def data_dir(app_id: str) -> str:
    """Where Faust keeps an app's files: the temporary directory, not Faust's default
    ``<id>-data`` in whatever directory the command was started from."""
    return str(Path(tempfile.gettempdir()) / f"hitl-router-{app_id}")


def build_app(
    config: Config,
    *,
    agents: Sequence[str] | None = None,
    registry: CollectorRegistry | None = None,
    web_port: int | None = None,
    web_host: str | None = None,
) -> faust.App:
    """A Faust app running ``agents`` (default: :func:`default_agents`) for ``config``,
    serving ``/metrics`` on ``web_host:web_port`` (default: ``metrics.host``, ``.port``)."""
    agents = default_agents(config) if agents is None else agents
    registry = registry if registry is not None else CollectorRegistry()
    app_id = group_id(config, agents)
    port = config.metrics.port if web_port is None else web_port
    static = instance_id(config.worker)
    # Faust's assignor asserts that an assignment names this worker's URL; with static
    # membership a restarted member gets its previous assignment back without a
    # rebalance, so the URL must not change with a --metrics-port override
    url = f"http://{socket.gethostname()}:{config.metrics.port if static else port}"
    app = RouterApp(
        app_id,
        broker=broker_urls(config.kafka.bootstrap_servers),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=data_dir(app_id),
        web_port=port,
        web_bind=config.metrics.host if web_host is None else web_host,
        canonical_url=url,
        consumer_auto_offset_reset="earliest",
        topic_partitions=config.kafka.partitions,
        topic_replication_factor=config.kafka.replication_factor,
        broker_max_poll_records=config.worker.batch_size,
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        # every output fits by construction (limits.max_output_bytes + framing); the
        # preflight checks the output topics take as much
        producer_max_request_size=config.limits.max_output_bytes + OUTPUT_FRAMING_BYTES,
        # the publisher fails a delivery after worker.delivery_timeout_s of running time;
        # aiokafka's own timeouts (batch expiry, room in its buffer) count wall time, so
        # they are longer: a worker frozen for a minute (SIGSTOP, a paused VM) goes on
        producer_request_timeout=producer_timeout_s(config.worker),
        broker_commit_interval=1.0,
        # the label tables live in memory: a standby copy does not shorten a failover (a
        # newly assigned partition is re-read from its start either way), it only doubles
        # the memory and the changelog reads
        table_standby_replicas=0,
        broker_session_timeout=config.worker.session_timeout_ms / 1000,
        broker_heartbeat_interval=config.worker.heartbeat_interval_ms / 1000,
        consumer_group_instance_id=static,
        **faust_kwargs(config.kafka.security),
    )
    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    app.hitl_health = health.install(app)  # type: ignore[attr-defined]
    metrics = RouterMetrics(registry, config.metrics.max_models, config.metrics.models)
    feedback = FeedbackMetrics(registry, metrics.model_label)
    if any(a in BATCH_AGENTS for a in agents):
        metrics.declare(config, [a for a in BATCH_AGENTS if a in agents])
    if "labels" in agents:
        feedback.declare([q.name for q in config.queues])
    policy = Policy(config, partitions=config.kafka.partitions)
    app.hitl_metrics = metrics  # type: ignore[attr-defined]
    app.hitl_feedback = feedback  # type: ignore[attr-defined]
    app.hitl_policy = policy  # type: ignore[attr-defined]
    app.hitl_registry = registry  # type: ignore[attr-defined]
    if any(a in BATCH_AGENTS for a in agents):
        # the predictions topic is registered so Faust subscribes to it and tracks its
        # acks; its messages reach the agents through the batching consumer, not a Stream
        app.topics.add(
            app.topic(config.topics.predictions, value_serializer="raw", key_serializer="raw")
        )
    if "router" in agents or "labels" in agents:
        # routers apply the newest temperatures; the label loop judges fits against them
        calibration_feed.install(app, config, policy.temperatures, feedback)
    publisher: list[BatchPublisher | RdkafkaPublisher] = []

    def publish(outputs: list[Output]) -> list[Awaitable[Any]]:
        """Hand outputs to the producer in the background (the agent goes on with the
        next batch meanwhile); the returned awaitable resolves once all are delivered."""
        if not publisher:
            publisher.append(output_publisher(app, config))
        if not outputs:
            return []
        task = asyncio.ensure_future(publisher[0].deliver(outputs))
        task.add_done_callback(_retrieved)  # its failure is reported by the batch's wait
        return [task]

    deadletter, decisions = config.topics.deadletter, config.topics.decisions
    record_bytes = config.limits.max_output_bytes

    routed = (
        RoutedTable(app, config, policy)
        if policy.routed is not None and "router" in agents
        else None
    )

    def route(batch: Batch) -> list[Awaitable[Any]]:
        decided = _decide(batch, policy, metrics, "router", rules=True)
        now = time.time()
        outputs = router_outputs(decided, batch.raws, _Sources(batch.messages), now)
        outputs += decision_outputs(decided, REVIEW, decisions, now, record_bytes)
        metrics.observe_router(decided, _prediction_times(decided, batch.messages), now)
        letters = sum(1 for o in outputs if o.topic == deadletter)
        metrics.observe_too_large(letters - len(decided.errors))
        if routed is not None:
            outputs += routed.write(decided)
        return publish(outputs)

    def sample(batch: Batch) -> list[Awaitable[Any]]:
        decided = _decide(batch, policy, metrics, "sampler", rules=False)
        now = time.time()
        outputs = eval_outputs(decided, now, _Sources(batch.messages))
        outputs += decision_outputs(decided, EVAL, decisions, now, record_bytes)
        metrics.observe_sampler(decided)
        metrics.observe_too_large(sum(1 for o in outputs if o.topic == deadletter))
        return publish(outputs)

    def internal_error(batch: Batch, exc: BaseException) -> list[Awaitable[Any]]:
        error = ErrorInfo("internal_error", f"router failed on this message: {exc!r}")
        letters = error_letters(error, batch.raws, _Sources(batch.messages), time.time(), config)
        metrics.deadletter.labels("internal_error").inc(len(letters))
        return publish(letters)

    handlers: dict[str, Callable[[Batch], list[Awaitable[Any]]]] = {
        "router": route,
        "sampler": sample,
    }
    if "drift" in agents:
        from hitl_router.profile import drift_monitor

        monitor = drift_monitor(config)  # a missing or bad profile stops the start
        me = worker_id()
        reports_topic = config.topics.drift_reports

        def judge(batch: Batch) -> list[Awaitable[Any]]:
            docs = _decide(batch, policy, metrics, "drift", rules=False).docs
            try:
                reports = monitor.update(docs)
            except Exception:
                log.exception("drift: a batch of %d could not be judged", len(docs))
                metrics.agent_errors.labels("drift").inc()
                return []
            metrics.observe_drift(reports)
            return publish([_report_output(reports_topic, r, me) for r in reports])

        handlers["drift"] = judge
    channels = []
    for name in BATCH_AGENTS:
        if name in agents:
            channel = app.channel()
            channels.append(channel)
            errors = metrics.agent_errors.labels(name)
            body = batch_agent(name, handlers[name], internal_error, errors)
            app.agent(channel, name=name)(body)

    async def fan_out(batch: Batch) -> None:
        for channel in channels:
            await channel.send(value=batch)

    app.batch_topics = {config.topics.predictions: (len(channels), fan_out)} if channels else {}
    if channels and policy.budgets:
        _share_budgets(app, config, policy)
    if "labels" in agents:
        app.batch_topics.update(_install_labels(app, config, policy, feedback, publish))
    app.worker_settings = config.worker
    read_with(app, config, app_id)
    return app


def read_with(app: faust.App, config: Config, group: str) -> None:
    """The client that reads ``app``'s batched topics (a worker's or a bridge's):
    librdkafka's reader, with its settings for ``group``, unless ``worker.consumer``
    says aiokafka (Faust's own consumer then reads them)."""
    if config.worker.consumer == "librdkafka" and app.batch_topics:
        app.reader_conf = consumer_config(config, group, app.conf.consumer_max_fetch_size)


def output_publisher(app: faust.App, config: Config) -> BatchPublisher | RdkafkaPublisher:
    """The outputs' publisher of a worker or a bridge, made at its first publish (the
    app runs by then): librdkafka's (``worker.producer``, the default), closed with the
    app, or one on Faust's own aiokafka producer."""
    timeout = config.worker.delivery_timeout_s
    if config.worker.producer == "aiokafka":
        return BatchPublisher(app.producer._ensure_producer(), timeout)
    conf = producer_config(config, producer_timeout_s(config.worker))
    publisher = RdkafkaPublisher(conf, timeout)

    async def close(sender: Any = None, **kwargs: Any) -> None:
        # what is still queued was not acked: redone from the committed offset
        left = await asyncio.get_running_loop().run_in_executor(None, publisher.close, 1.0)
        if left:
            log.info("%d outputs not delivered at the stop: they will be redone", left)

    app.on_before_shutdown.connect(close)
    return publisher


def _share_budgets(app: faust.App, config: Config, policy: Policy) -> None:
    """After each rebalance, this worker spends its share of every queue's budget: the
    share of the predictions topic's partitions it holds (router/budget.py)."""
    topic = config.topics.predictions

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        held = sum(1 for tp in app.consumer.assignment() if tp.topic == topic)
        total = app.consumer.topic_partitions(topic) or config.kafka.partitions
        policy.set_budget_share(held / total)
        log.info("budgets: this worker holds %d of %d partitions of %s", held, total, topic)

    app.on_partitions_assigned.connect(on_assigned)


def _install_labels(
    app: faust.App,
    config: Config,
    policy: Policy,
    feedback: FeedbackMetrics,
    publish: Callable[[list[Output]], list[Awaitable[Any]]],
) -> dict[str, tuple[int, BatchSink]]:
    """The labels agent (join) and the calibration agent (windows, fits), fed a batch at
    a time by the batching consumer like the router's agents; their tables are Faust
    tables, written with explicit changelog sends. Returns their ``batch_topics``."""
    metrics: RouterMetrics = app.hitl_metrics  # type: ignore[attr-defined]
    joiner = LabelJoiner(app, config, feedback, publish, metrics.agent_errors.labels("labels"))
    keeper = WindowKeeper(
        app,
        config,
        policy.temperatures,
        feedback,
        publish,
        metrics.agent_errors.labels("calibration"),
    )
    raw = {"value_serializer": "raw", "key_serializer": "raw"}
    sinks: dict[str, tuple[int, BatchSink]] = {}
    for name, handler, topics in [
        ("labels", joiner, (config.topics.decisions, config.topics.labels)),
        ("calibration", keeper, (config.topics.joined,)),
    ]:
        for topic in topics:  # subscribed and acked by Faust, read by the batching consumer
            app.topics.add(app.topic(topic, **raw))
        channel = app.channel()
        errors = metrics.agent_errors.labels(name)
        body = batch_agent(name, handler.handle, handler.internal_error, errors)
        app.agent(channel, name=name)(body)
        sink = _sink(channel)
        for topic in topics:
            sinks[topic] = (1, sink)
    return sinks


def _sink(channel: Any) -> BatchSink:
    async def send(batch: Batch) -> None:
        await channel.send(value=batch)

    return send


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A delivery's failure is raised by its batch's wait; a batch forgotten on a stop
    never waits, and asyncio would log each failure as "never retrieved"."""
    if not task.cancelled():
        task.exception()


def _report_output(topic: str, report: Any, worker: str) -> Output:
    """One ``drift.reports`` message, keyed by model/feature/method (the topic is
    compacted: it keeps the latest window of each), with the worker whose windows these
    are (each worker judges the windows of the partitions it holds)."""
    key = f"{report.model}/{report.feature}/{report.method}".encode()
    return Output(topic, key, orjson.dumps({**report.as_dict(), "worker": worker}))


class _Sources(Sequence[Source]):
    """Where each record of a batch came from, made only for the rows that need it
    (dead letters)."""

    def __init__(self, records: Sequence[Any]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        m = self._records[i]
        return Source(m.topic, m.partition, m.offset)


def _decide(
    batch: Batch, policy: Policy, metrics: RouterMetrics, agent: str, rules: bool
) -> BatchDecisions:
    """Decide a batch, sharing the work between agents: the router's full decision also
    serves the sampler (the eval draw does not depend on rules).

    If deciding raises (a bug, not bad input), the batch is retried message by message
    so one poisoned message cannot stop the worker: it is dead-lettered as
    ``internal_error``."""
    cache = batch.cache
    decided = cache.get("decided") or (None if rules else cache.get("decided_norules"))
    if decided is not None:
        return decided
    raws = batch.raws
    try:
        parsed = cache.get("parsed")
        if parsed is None:
            parsed = cache["parsed"] = parse_batch(raws, policy.config.limits)
        times = parts = None
        if rules and (policy.budgets or policy.routed is not None):  # on ts, else Kafka's
            times = np.fromiter((m.timestamp for m in batch.messages), np.float64) / 1000.0
        if rules and policy.routed is not None:
            parts = np.fromiter((m.partition for m in batch.messages), np.int64)
        decided = decide_parsed(parsed, policy, rules=rules, times=times, parts=parts)
    except Exception:
        log.exception("%s: batch of %d failed; deciding one by one", agent, len(raws))
        metrics.agent_errors.labels(agent).inc()
        decided = _decide_one_by_one(policy, raws, rules)
    cache["decided" if rules else "decided_norules"] = decided
    return decided


def _decide_one_by_one(policy: Policy, raws: list[bytes], rules: bool) -> BatchDecisions:
    parts = []
    for raw in raws:
        try:
            parts.append(decide_batch([raw], policy, rules=rules))
        except Exception as exc:
            log.exception("message could not be decided; dead-lettering it")
            parts.append(poisoned(policy, raw, exc))
    return merge_batches(policy, parts)


def _prediction_times(batch: BatchDecisions, records: Sequence[Any]) -> list[float]:
    """Each prediction's ``ts``, else its record's Kafka timestamp (ms → seconds)."""
    out = []
    for doc, record in zip(batch.docs, records, strict=True):
        ts = doc.get("ts") if doc is not None else None
        out.append(float(ts) if ts is not None else record.timestamp / 1000.0)
    return out
