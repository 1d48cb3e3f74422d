"""The Faust app: two thin agents over the raw bytes of the predictions topic.

- ``router``: decide → publish review items, accepted items, dead letters.
- ``sampler``: draw the eval sample → publish eval samples.

Both call :func:`hitl_router.router.decision.decide_batch`; the draw is a
function of ``(salt, id)`` only, so the router excludes exactly what the
sampler takes without talking to it. Work is batched with ``take_events``;
events are acked only after their outputs are delivered (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from hitl_router.metrics import RouterMetrics
from hitl_router.router.config import Config
from hitl_router.router.decision import (
    BatchDecisions,
    Policy,
    decide_batch,
    merge_batches,
    poisoned,
)
from hitl_router.router.outputs import Output, Source, eval_outputs, router_outputs

log = logging.getLogger(__name__)

AGENTS = ("router", "sampler")


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def group_id(config: Config, agents: Sequence[str]) -> str:
    """The consumer group (= Faust app id) of a worker running ``agents``.

    Workers running every agent share ``kafka.group_id``. Agents run apart form a group
    per agent set (``<group_id>-router``, ``<group_id>-sampler``): each set must see
    every partition, so they cannot share one group.
    """
    chosen = sorted(set(agents))
    if chosen == sorted(AGENTS):
        return config.kafka.group_id
    return "-".join([config.kafka.group_id, *chosen])


def build_app(
    config: Config,
    *,
    agents: Sequence[str] = AGENTS,
    registry: CollectorRegistry | None = None,
    web_port: int | None = None,
) -> faust.App:
    """A Faust app running ``agents`` for ``config``, serving ``/metrics``."""
    registry = registry if registry is not None else CollectorRegistry()
    app_id = group_id(config, agents)
    app = faust.App(
        app_id,
        broker=broker_urls(config.kafka.bootstrap_servers),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(Path(tempfile.gettempdir()) / f"hitl-router-{app_id}"),
        web_port=config.metrics.port if web_port is None else web_port,
        web_bind="0.0.0.0",
        consumer_auto_offset_reset="earliest",
        topic_partitions=config.kafka.partitions,
        topic_replication_factor=config.kafka.replication_factor,
        stream_buffer_maxsize=max(4096, 2 * config.worker.batch_size),
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        broker_commit_interval=1.0,
    )
    from faust.sensors.prometheus import setup_prometheus_sensors

    setup_prometheus_sensors(app, registry=registry, name_prefix="faust")
    metrics = RouterMetrics(registry, config.metrics.max_models)
    policy = Policy(config)
    topic = app.topic(config.topics.predictions, value_serializer="raw", key_serializer="raw")
    app.hitl_metrics = metrics  # type: ignore[attr-defined]
    app.hitl_registry = registry  # type: ignore[attr-defined]
    batch_size, within = config.worker.batch_size, config.worker.batch_timeout

    async def publish(outputs: list[Output]) -> None:
        producer = app.producer
        futures = [await producer.send(o.topic, o.key, o.value, None, None, None) for o in outputs]
        if futures:
            await asyncio.gather(*futures)

    if "router" in agents:

        async def route(events: Sequence[Any]) -> None:
            raws, sources, times = _unpack(events)
            now = time.time()
            batch = _decide(policy, raws, metrics, "router", rules=True)
            await publish(router_outputs(batch, raws, sources, now))
            metrics.observe_router(batch, _prediction_times(batch, times), now)

        @app.agent(topic, name="router")
        async def router_agent(stream: faust.StreamT) -> None:
            await _consume(stream, batch_size, within, route)

    if "sampler" in agents:

        async def sample(events: Sequence[Any]) -> None:
            raws, _, _ = _unpack(events)
            batch = _decide(policy, raws, metrics, "sampler", rules=False)
            await publish(eval_outputs(batch, time.time()))
            metrics.observe_sampler(batch)

        @app.agent(topic, name="sampler")
        async def sampler_agent(stream: faust.StreamT) -> None:
            await _consume(stream, batch_size, within, sample)

    return app


async def _consume(
    stream: faust.StreamT,
    batch_size: int,
    within: float,
    handle: Callable[[Sequence[Any]], Awaitable[None]],
) -> None:
    async for events in stream.take_events(batch_size, within=within):
        await handle(events)


def _unpack(events: Sequence[Any]) -> tuple[list[bytes], list[Source], list[float]]:
    raws, sources, times = [], [], []
    for e in events:
        m = e.message
        raws.append(m.value)
        sources.append(Source(m.topic, m.partition, m.offset))
        times.append(m.timestamp)
    return raws, sources, times


def _decide(
    policy: Policy, raws: list[bytes], metrics: RouterMetrics, agent: str, rules: bool
) -> BatchDecisions:
    """Decide a batch; if that raises (a bug, not bad input), retry message by message so
    one poisoned message cannot stop the worker: it is dead-lettered as ``internal_error``."""
    try:
        return decide_batch(raws, policy, rules=rules)
    except Exception:
        log.exception("%s: batch of %d failed; deciding one by one", agent, len(raws))
        metrics.agent_errors.labels(agent).inc()
        return _decide_one_by_one(policy, raws, rules)


def _decide_one_by_one(policy: Policy, raws: list[bytes], rules: bool) -> BatchDecisions:
    parts = []
    for raw in raws:
        try:
            parts.append(decide_batch([raw], policy, rules=rules))
        except Exception as exc:
            log.exception("message could not be decided; dead-lettering it")
            parts.append(poisoned(policy, raw, exc))
    return merge_batches(policy, parts)


def _prediction_times(batch: BatchDecisions, kafka_times: list[float]) -> list[float]:
    """Each prediction's ``ts``, else its Kafka timestamp (faust gives seconds)."""
    out = []
    for doc, kafka_ts in zip(batch.docs, kafka_times, strict=True):
        ts = doc.get("ts") if doc is not None else None
        out.append(float(ts) if ts is not None else kafka_ts)
    return out
