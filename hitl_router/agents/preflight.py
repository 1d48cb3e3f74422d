"""Checks a worker makes against the cluster before it starts.

- **Sizes agree**: every output topic must take a record of
  ``limits.max_output_bytes`` plus its framing (:data:`OUTPUT_FRAMING_BYTES`), which is
  also the producer's ``max_request_size``; if one cannot, the worker refuses to start
  (a ``ConfigError`` naming the topic and both numbers: exit 2) instead of failing on
  the first large output.
- **Partitions**: a predictions topic whose partition count differs from
  ``kafka.partitions`` is worth a warning (the scale-out plan and the drift windows
  assume it), not a refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hitl_router.errors import ConfigError, KafkaSetupError
from hitl_router.router.config import OUTPUT_FRAMING_BYTES, Config

log = logging.getLogger(__name__)

#: what a topic takes when neither it nor the broker says otherwise (Kafka's default
#: ``message.max.bytes``)
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


@dataclass(frozen=True)
class TopicFacts:
    partitions: int
    max_message_bytes: int


def size_problems(config: Config, facts: Mapping[str, TopicFacts]) -> list[ConfigError]:
    """The output topics that cannot take the largest output the worker may send.

    >>> from hitl_router.router.config import parse_config
    >>> cfg = parse_config({})
    >>> ok, small = TopicFacts(6, 1_048_588), TopicFacts(6, 100_000)
    >>> size_problems(cfg, {t: ok for t in cfg.output_topics()})
    []
    >>> [e.key for e in size_problems(cfg, {**{t: ok for t in cfg.output_topics()},
    ...                                     "eval.samples": small})]
    ['limits.max_output_bytes']
    """
    need = config.limits.max_output_bytes + OUTPUT_FRAMING_BYTES
    problems = []
    for topic in config.output_topics():
        fact = facts.get(topic)
        if fact is not None and fact.max_message_bytes < need:
            problems.append(
                ConfigError(
                    "limits.max_output_bytes",
                    f"output topic '{topic}' takes records of at most {fact.max_message_bytes} "
                    f"bytes (max.message.bytes), less than limits.max_output_bytes "
                    f"({config.limits.max_output_bytes}) + {OUTPUT_FRAMING_BYTES} bytes of "
                    f"framing = {need}: raise the topic's max.message.bytes to at least {need}, "
                    f"or lower limits.max_output_bytes to at most "
                    f"{fact.max_message_bytes - OUTPUT_FRAMING_BYTES}",
                )
            )
    return problems


def partition_warning(config: Config, facts: Mapping[str, TopicFacts]) -> str | None:
    fact = facts.get(config.topics.predictions)
    if fact is None or fact.partitions == config.kafka.partitions:
        return None
    return (
        f"topic '{config.topics.predictions}' has {fact.partitions} partitions but "
        f"kafka.partitions is {config.kafka.partitions}: at most {fact.partitions} workers "
        "of the group get work; set kafka.partitions to match, or add partitions"
    )


def copartition_problem(config: Config, facts: Mapping[str, TopicFacts]) -> ConfigError | None:
    """The label join needs ``labels``, ``decisions`` and ``joined`` to have exactly
    ``kafka.partitions`` partitions: an id's decision and its labels must share a
    partition number (and the tables are made with that many).

    >>> from hitl_router.router.config import parse_config
    >>> cfg = parse_config({"kafka": {"partitions": 6}})
    >>> copartition_problem(cfg, {"review.labels": TopicFacts(3, 2**20)}).key
    'kafka.partitions'
    """
    t = config.topics
    for topic in (t.labels, t.decisions, t.joined):
        fact = facts.get(topic)
        if fact is not None and fact.partitions != config.kafka.partitions:
            return ConfigError(
                "kafka.partitions",
                f"topic '{topic}' has {fact.partitions} partitions, not {config.kafka.partitions}: "
                f"the label join needs '{t.labels}', '{t.decisions}' and '{t.joined}' to have "
                "kafka.partitions each (labels and decisions keyed by id must share a "
                "partition number); set kafka.partitions to match, or recreate the topics",
            )
    fact = facts.get(t.predictions)
    if config.dedup is not None and fact is not None and fact.partitions != config.kafka.partitions:
        return ConfigError(
            "kafka.partitions",
            f"topic '{t.predictions}' has {fact.partitions} partitions, not "
            f"{config.kafka.partitions}: dedup keeps the routed ids in a table with "
            "kafka.partitions partitions, one per partition of the predictions topic; set "
            "kafka.partitions to match",
        )
    return None


def topic_facts(admin: Any, topics: Iterable[str]) -> dict[str, TopicFacts]:
    """Partition count and effective ``max.message.bytes`` of each existing topic, read
    with a kafka-python ``KafkaAdminClient``."""
    from kafka.admin import ConfigResource, ConfigResourceType

    wanted = [t for t in dict.fromkeys(topics) if t in set(admin.list_topics())]
    if not wanted:
        return {}
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t, configs={"max.message.bytes": None})
        for t in wanted
    ]
    configs = admin.describe_configs(resources, config_filter="all").get("topic", {})
    out = {}
    for desc in admin.describe_topics(wanted):
        name = desc["name"]
        value = configs.get(name, {}).get("max.message.bytes", {}).get("value")
        limit = int(value) if value is not None else KAFKA_DEFAULT_MAX_MESSAGE_BYTES
        out[name] = TopicFacts(len(desc["partitions"]), limit)
    return out


def check(config: Config, admin: Any) -> None:
    """Refuse to start on sizes that cannot agree; warn on a partition mismatch."""
    from kafka.errors import KafkaError

    topics = [config.topics.predictions, config.topics.labels, *config.output_topics()]
    try:
        facts = topic_facts(admin, topics)
    except KafkaError as exc:
        raise KafkaSetupError(
            f"cannot describe the topics at {config.kafka.bootstrap_servers}: {exc!r}"
        ) from exc
    problems = size_problems(config, facts)
    if problems:
        raise problems[0]
    problem = copartition_problem(config, facts)
    if problem is not None:
        raise problem
    warning = partition_warning(config, facts)
    if warning:
        log.warning(warning)
