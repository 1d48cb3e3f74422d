"""Every worker follows the compacted ``calibration`` topic and applies the newest
temperature per model before scores and rules, without a restart.

Not a Faust agent: every worker needs *every* partition of the topic (a consumer group
would split them), so this is a plain aiokafka consumer with no group, assigned all
partitions and reading from the beginning (compaction keeps the latest per model). Until
a model's first message arrives the config's temperatures apply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from hitl_router.feedback_metrics import FeedbackMetrics
from hitl_router.router.config import Config
from hitl_router.router.temperatures import TemperatureBook

log = logging.getLogger(__name__)


def install(
    app: faust.App, config: Config, book: TemperatureBook, feedback: FeedbackMetrics
) -> None:
    """Start following ``topics.calibration`` when the app starts."""
    for model, t in book.configured.items():
        feedback.temperature.labels(feedback.model_label(model)).set(t)

    @app.task
    async def follow_calibration() -> None:
        await follow(app, config, book, feedback)


async def follow(
    app: faust.App, config: Config, book: TemperatureBook, feedback: FeedbackMetrics
) -> None:
    topic = config.topics.calibration
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{config.kafka.group_id}-calibration",
        **credentials_to_aiokafka_auth(app.conf.broker_credentials),
    )
    await consumer.start()
    try:
        parts: set[int] | None = None
        while parts is None:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await asyncio.sleep(1.0)
                await consumer._client.force_metadata_update()
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        await consumer.seek_to_beginning()
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    apply(record.key, record.value, book, feedback)
    finally:
        await consumer.stop()


def apply(
    key: bytes | None, value: bytes | None, book: TemperatureBook, feedback: FeedbackMetrics
) -> None:
    """Apply one message of the calibration topic (a tombstone forgets the fit)."""
    if key is None:
        return
    model = key.decode("utf-8", "replace")
    t: Any = None
    if value is not None:
        try:
            t = orjson.loads(value).get("temperature")
        except (orjson.JSONDecodeError, AttributeError):
            t = "malformed"
        if (
            isinstance(t, bool)
            or not isinstance(t, int | float)
            or not book.update(model, float(t))
        ):
            log.warning(
                "calibration: ignoring a message for %s without a usable temperature", model
            )
            return
    else:
        book.update(model, None)
    applied = book.temperature(model)
    feedback.temperature.labels(feedback.model_label(model)).set(applied)
    log.info("calibration: %s now at T = %.4g", model, applied)
