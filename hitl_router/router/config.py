"""Configuration: YAML parsed once at the edge into frozen objects.

Every section is optional and has the defaults of the SPEC; unknown keys and
ill-typed values are refused with the dotted key and the problem.

>>> cfg = parse_config({"queues": [{"name": "uncertain", "when": {"max_prob_below": 0.7}}]})
>>> cfg.queues[0].topic, cfg.eval_sample.rate
('review.uncertain', 0.02)
>>> parse_config({"eval_sample": {"rate": 2}})
Traceback (most recent call last):
...
hitl_router.errors.ConfigError: eval_sample.rate: must be between 0 and 1, got 2
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import yaml

from hitl_router.errors import ConfigError
from hitl_router.router.budget import BudgetSpec, parse_budget
from hitl_router.router.dedup import DedupSpec, parse_dedup
from hitl_router.router.diversity import DiversitySpec, parse_diversity
from hitl_router.router.drift_alarm import PersistenceSpec, parse_persistence
from hitl_router.router.kafka_security import SecurityConfig, parse_security
from hitl_router.router.label_studio import LabelStudioConfig, check_queues, parse_label_studio
from hitl_router.router.priority import DEFAULT_PRIORITY, PrioritySpec, parse_priority
from hitl_router.router.rules import Node, leaves, parse_rule
from hitl_router.router.target_rate import TargetRate

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "localhost:9092"
    group_id: str = "hitl-router"
    create_topics: bool = True
    partitions: int = 6
    replication_factor: int = 1
    security: SecurityConfig = SecurityConfig()


@dataclass(frozen=True)
class TopicsConfig:
    predictions: str = "predictions"
    eval: str = "eval.samples"
    deadletter: str = "predictions.deadletter"
    labels: str = "review.labels"
    accepted: str | None = None
    drift_reports: str = "drift.reports"
    #: accepted temperatures, compacted, key = model (every worker reads all of it)
    calibration: str = "calibration"
    #: review labels drawn for a second look
    qa: str = "review.qa"
    #: labels that cannot be joined or are malformed, with a code
    labels_deadletter: str = "review.labels.deadletter"
    #: internal: what the router decided for each eval and review item, keyed by id
    #: (co-partitioned with ``labels``), joined with the labels in a Faust table
    decisions: str = "hitl.decisions"
    #: internal: joined labels re-keyed by model, for the per-model windows
    joined: str = "hitl.labels.joined"


@dataclass(frozen=True)
class EvalSampleConfig:
    rate: float = 0.02
    salt: str = field(default="change-me", repr=False)

    def fingerprint(self) -> str:
        """Tells two salts apart without showing either: the first 8 bytes of a keyed
        BLAKE2b of the salt (a different function from the draw's, which keys by the
        salt).

        >>> a, b = EvalSampleConfig(salt="s3cret"), EvalSampleConfig(salt="s3cret!")
        >>> a.fingerprint() == b.fingerprint(), a.fingerprint().startswith("blake2b:")
        (False, True)
        """
        digest = hashlib.blake2b(
            self.salt.encode(), digest_size=8, key=b"hitl-router salt fingerprint"
        )
        return "blake2b:" + digest.hexdigest()


@dataclass(frozen=True)
class QueueConfig:
    name: str
    topic: str
    when: Node
    #: each review item's priority (router/priority.py); higher = more urgent
    priority: PrioritySpec
    raw_when: Mapping[str, Any]
    #: at most so many items per period, over the group (router/budget.py)
    budget: BudgetSpec | None = None
    #: a cap on the share of one key among the items taken (router/diversity.py)
    diversity: DiversitySpec | None = None


@dataclass(frozen=True)
class CalibrationConfig:
    #: Temperature per model name (bare name or ``name@version``); 1.0 when absent.
    temperatures: Mapping[str, float]

    def temperature(self, model: str) -> float:
        t = self.temperatures.get(model)
        if t is None:
            t = self.temperatures.get(model.split("@", 1)[0], 1.0)
        return t


#: The correction taxonomy's default reasons (SPEC).
DEFAULT_REASONS = (
    "model_correct",
    "ambiguous_input",
    "wrong_class_boundary",
    "out_of_distribution",
    "guideline_gap",
    "bad_input",
)


@dataclass(frozen=True)
class LabelsConfig:
    #: eval labels per model (and per ``name@version``) in the rolling window the
    #: accuracy, ECE, Brier, NLL and the temperature are computed on
    window: int = 2000
    #: fewer eval labels in a window: no temperature is fitted and the ECE warning is off
    #: (ECE is biased upward at small n: ~0.09 for a calibrated model at n = 100)
    min_labels: int = 200
    #: eval labels between two temperature fits of a model
    refit_every: int = 50
    #: share of review labels re-queued to ``topics.qa`` for a second look
    qa_rate: float = 0.05
    #: a decision waits this long for its label; a later label is ``unknown_id``
    retention_hours: float = 72.0
    #: a label read before its decision record (the two topics are read side by side)
    #: waits this long for it; then it is ``unknown_id``
    decision_wait_s: float = 60.0
    #: at most this many decisions wait for labels (the oldest go first). They are held in memory
    #: and re-read from the changelog after a rebalance, at ~4.5k records/s, while the
    #: worker's partitions are paused (README: "The label loop")
    max_decisions: int = 100_000
    #: ECE (after temperature) above this, with ``min_labels``, raises ``hitl_ece_warning``
    ece_warning: float = 0.10
    #: the correction taxonomy: the reasons a label's ``correction.reason`` may take
    reasons: tuple[str, ...] = DEFAULT_REASONS


@dataclass(frozen=True)
class LimitsConfig:
    max_message_bytes: int = 1_048_576
    max_depth: int = 32
    max_classes: int = 10_000
    max_members: int = 256
    #: the largest output value sent; a larger review item, eval sample or accepted item
    #: is dead-lettered as ``output_too_large`` instead (Faust's and Kafka's producers
    #: default to a 1,000,000-byte request, brokers to 1,048,588-byte records)
    max_output_bytes: int = 1_000_000
    #: a dead letter carries at most this prefix of the raw bytes (plus their size and
    #: SHA-256; the whole payload stays readable at its source offset)
    dead_letter_raw_bytes: int = 65_536


#: Bytes a record batch adds around one output value: Kafka's batch header (61), the
#: record's own framing (≤ 21), its key (an id: ≤ 256 characters, ≤ 1,024 bytes) and
#: headers, rounded up. The producer's ``max_request_size`` and every output topic's
#: ``max.message.bytes`` must hold ``limits.max_output_bytes`` plus this.
OUTPUT_FRAMING_BYTES = 4096
#: The most a dead letter's fields other than ``raw`` take: error code, message and
#: path (each cut to 1,024 characters, JSON-escaped: ≤ 6 bytes each), id, source, times.
DEAD_LETTER_FIELDS_BYTES = 16_384
#: JSON escaping writes a control character of a UTF-8 payload as ``\u00XX``.
_WORST_RAW_EXPANSION = 6


@dataclass(frozen=True)
class DriftConfig:
    profile: str | None = None
    window: int = 1000
    #: Window false-alarm rate; None: the profile's (another value is recalibrated).
    alpha: float | None = None
    #: Threshold overrides: ``{"<method>": t}`` or ``{"<feature>.<method>": t}``.
    thresholds: Mapping[str, float] = field(default_factory=dict)
    #: a model's alarm: ``drifted`` of its last ``windows`` windows drifted
    persistence: PersistenceSpec = field(default_factory=PersistenceSpec)


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 9108
    #: the address /metrics, /healthz and /readyz listen on (0.0.0.0: every interface)
    host: str = "0.0.0.0"
    #: at most this many distinct ``model`` label values; later ones count as ``other``
    max_models: int = 100
    #: when not empty, only these models (bare names or ``name@version``) get a label
    #: of their own: every other is ``other``, so a producer cannot fill the cap
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerConfig:
    batch_size: int = 1000
    fetch_max_wait_ms: int = 50
    #: the broker answers a fetch once it has this many bytes (or the wait is up)
    fetch_min_bytes: int = 32768
    #: batches' worth of messages (× batch_size) decided but not yet delivered before
    #: the fetch loop waits for the oldest batch's outputs
    max_in_flight: int = 4
    #: a batch's outputs not acknowledged by the broker within this many seconds of
    #: the worker's running time stop the worker (exit 1, nothing of the batch acked);
    #: time it was frozen (SIGSTOP, a paused VM) does not count
    delivery_timeout_s: float = 30.0
    #: a worker that stops (signal, crash) exits within this many seconds, flushed or
    #: not: unacked work is redone by whoever holds the partitions next
    shutdown_timeout_s: float = 15.0
    #: a member silent this long is dead: its partitions move to the others
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    #: static membership (KIP-345): a restarted worker with the same id takes its
    #: partitions back without a rebalance. ``{hostname}`` is replaced by the host name
    #: (unique per pod in a StatefulSet); null: dynamic membership
    group_instance_id: str | None = None
    #: the Kafka client that writes the outputs: ``librdkafka`` (confluent-kafka: batches
    #: built in C, off the event loop) or ``aiokafka`` (Faust's own producer)
    producer: str = "librdkafka"
    #: the Kafka client that reads the batched topics (predictions, decisions, labels):
    #: ``librdkafka`` (in assign mode, under the group of Faust's aiokafka consumer) or
    #: ``aiokafka`` (Faust's own consumer)
    consumer: str = "librdkafka"


#: the clients ``worker.producer`` and ``worker.consumer`` may name
PRODUCERS = CONSUMERS = ("librdkafka", "aiokafka")


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig
    topics: TopicsConfig
    eval_sample: EvalSampleConfig
    queues: tuple[QueueConfig, ...]
    calibration: CalibrationConfig
    labels: LabelsConfig
    limits: LimitsConfig
    drift: DriftConfig
    metrics: MetricsConfig
    worker: WorkerConfig
    config_hash: str
    #: an id routed to review is not routed again within the retention (router/dedup.py)
    dedup: DedupSpec | None = None
    #: the Label Studio bridge's section (router/label_studio.py); not in the hash
    label_studio: LabelStudioConfig | None = None

    def review_topics(self) -> list[str]:
        return [q.topic for q in self.queues]

    def output_topics(self) -> list[str]:
        t = self.topics
        extra = [t.accepted] if t.accepted else []
        if self.drift.profile:
            extra.append(t.drift_reports)
        loop = [t.decisions, t.joined, t.calibration, t.qa, t.labels_deadletter]
        return [t.eval, t.deadletter, *self.review_topics(), *extra, *loop]

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Configs of the topics the worker creates that need one, compacted: the
        calibration topic (the latest temperature per model is what a worker reads) and
        the drift reports (the latest window of each model, feature and method)."""
        compact = {"cleanup.policy": "compact"}
        out = {self.topics.calibration: compact}
        if self.drift.profile:
            out[self.topics.drift_reports] = compact
        return out

    def describe(self) -> dict[str, Any]:
        """The resolved configuration as plain data (what ``check-config`` prints)."""
        out: dict[str, Any] = {}
        for name in ("kafka", "topics", "labels", "limits", "drift", "metrics", "worker"):
            out[name] = asdict(getattr(self, name))
        out["metrics"]["models"] = list(self.metrics.models)
        out["labels"]["reasons"] = list(self.labels.reasons)
        # never the salt: a producer that knows it can steer ids in or out of the sample
        out["eval_sample"] = {
            "rate": self.eval_sample.rate,
            "salt_fingerprint": self.eval_sample.fingerprint(),
        }
        if self.kafka.security == SecurityConfig():  # no block: hashes of older configs hold
            del out["kafka"]["security"]
        out["calibration"] = {"temperatures": dict(self.calibration.temperatures)}
        out["queues"] = [
            {
                "name": q.name,
                "topic": q.topic,
                "priority": q.priority.describe(),
                "when": q.raw_when,
                **_target_rates(q),
                **({"budget": q.budget.describe()} if q.budget else {}),
                **({"diversity": q.diversity.describe()} if q.diversity else {}),
            }
            for q in self.queues
        ]
        if self.dedup is not None:  # no block: hashes of older configs hold
            out["dedup"] = asdict(self.dedup)
        if self.label_studio is not None:
            out["label_studio"] = self.label_studio.describe()
        out["config_hash"] = self.config_hash
        return out


def _target_rates(q: QueueConfig) -> dict[str, Any]:
    """The queue's target-rate rules resolved (``when`` shows them as written)."""
    rates = {
        leaf.rule: leaf.threshold.describe()
        for leaf in leaves(q.when)
        if isinstance(leaf.threshold, TargetRate)
    }
    return {"target_rates": rates} if rates else {}


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from exc
    return parse_config({} if data is None else data)


def parse_config(data: Any) -> Config:
    """Validate a config mapping (as loaded from YAML) into a frozen ``Config``."""
    root = _mapping(data, "")
    _known(
        root,
        "",
        {
            "kafka",
            "topics",
            "eval_sample",
            "queues",
            "calibration",
            "labels",
            "limits",
            "drift",
            "metrics",
            "worker",
            "dedup",
            "label_studio",
        },
    )
    kafka = _section(root, "kafka", KafkaConfig, nested={"security": parse_security})
    if kafka.partitions < 1 or kafka.replication_factor < 1:
        raise ConfigError("kafka.partitions", "partitions and replication_factor must be ≥ 1")
    topics = _section(root, "topics", TopicsConfig)
    for name, topic in asdict(topics).items():
        if topic is not None:
            _check_topic(topic, f"topics.{name}")
    sample = _section(root, "eval_sample", EvalSampleConfig)
    if not 0.0 <= sample.rate <= 1.0:
        raise ConfigError("eval_sample.rate", f"must be between 0 and 1, got {sample.rate:g}")
    if not sample.salt:
        raise ConfigError("eval_sample.salt", "must be a non-empty string")
    limits = _limits(root)
    drift = _drift(root.get("drift", {}))
    metrics = _metrics(root)
    worker = _section(root, "worker", WorkerConfig)
    if worker.batch_size < 1:
        raise ConfigError("worker.batch_size", f"must be ≥ 1, got {worker.batch_size}")
    if not 0 <= worker.fetch_max_wait_ms <= 60_000:
        raise ConfigError("worker.fetch_max_wait_ms", "must be between 0 and 60000")
    if not 1 <= worker.fetch_min_bytes <= 52_428_800:
        raise ConfigError("worker.fetch_min_bytes", "must be between 1 and 52428800 (50 MiB)")
    if not 1 <= worker.max_in_flight <= 100:
        raise ConfigError("worker.max_in_flight", f"must be 1 to 100, got {worker.max_in_flight}")
    _check_worker_timeouts(worker)
    cfg = Config(
        kafka=kafka,
        topics=topics,
        eval_sample=sample,
        queues=_queues(root.get("queues", []), topics),
        calibration=_calibration(root.get("calibration", {})),
        labels=_labels(root),
        limits=limits,
        drift=drift,
        metrics=metrics,
        worker=worker,
        config_hash="",
        dedup=parse_dedup(root["dedup"]) if root.get("dedup") is not None else None,
        label_studio=_label_studio(root),
    )
    if cfg.label_studio is not None:
        check_queues(cfg.label_studio, [q.name for q in cfg.queues])
    described = cfg.describe()
    # the bridge's settings do not change a decision: the routing hash ignores them
    described.pop("label_studio", None)
    # keys added later, at their defaults, stay out of the hash: older configs' hold
    if metrics.host == MetricsConfig.host:
        del described["metrics"]["host"]
    if drift.persistence == PersistenceSpec():
        del described["drift"]["persistence"]
    # nor do the clients that read the inputs and write the outputs
    del described["worker"]["producer"], described["worker"]["consumer"]
    digest = hashlib.sha256(orjson.dumps(described, option=orjson.OPT_SORT_KEYS))
    return replace(cfg, config_hash=digest.hexdigest()[:12])


def _label_studio(root: Mapping[str, Any]) -> LabelStudioConfig | None:
    value = root.get("label_studio")
    return None if value is None else parse_label_studio(value)


def _limits(root: Mapping[str, Any]) -> LimitsConfig:
    limits: LimitsConfig = _section(root, "limits", LimitsConfig)
    for name, value in asdict(limits).items():
        if value < 1:
            raise ConfigError(f"limits.{name}", f"must be ≥ 1, got {value}")
    worst = _WORST_RAW_EXPANSION * limits.dead_letter_raw_bytes + DEAD_LETTER_FIELDS_BYTES
    if worst > limits.max_output_bytes:
        raise ConfigError(
            "limits.dead_letter_raw_bytes",
            f"a dead letter with {limits.dead_letter_raw_bytes} raw bytes may take {worst} "
            f"bytes (control characters are JSON-escaped 6-fold), more than "
            f"limits.max_output_bytes ({limits.max_output_bytes}); lower it to at most "
            f"{(limits.max_output_bytes - DEAD_LETTER_FIELDS_BYTES) // _WORST_RAW_EXPANSION}",
        )
    return limits


def _labels(root: Mapping[str, Any]) -> LabelsConfig:
    data = dict(_mapping(root.get("labels", {}) or {}, "labels"))
    reasons = data.pop("reasons", list(DEFAULT_REASONS))
    if (
        not isinstance(reasons, list)
        or not reasons
        or not all(isinstance(r, str) and _NAME.match(r) for r in reasons)
    ):
        raise ConfigError(
            "labels.reasons",
            f"expected a non-empty list of names (letters, digits, _ . -), got {reasons!r}",
        )
    labels: LabelsConfig = _section({"labels": data}, "labels", LabelsConfig)
    for name in ("window", "min_labels", "refit_every", "max_decisions"):
        if getattr(labels, name) < 1:
            raise ConfigError(f"labels.{name}", f"must be ≥ 1, got {getattr(labels, name)}")
    if labels.min_labels > labels.window:
        raise ConfigError(
            "labels.min_labels",
            f"{labels.min_labels} is more than labels.window ({labels.window}) holds",
        )
    if not 0.0 <= labels.qa_rate <= 1.0:
        raise ConfigError("labels.qa_rate", f"must be between 0 and 1, got {labels.qa_rate:g}")
    if not labels.retention_hours > 0:
        raise ConfigError("labels.retention_hours", "must be > 0")
    if not 0 < labels.decision_wait_s <= 86_400:
        raise ConfigError("labels.decision_wait_s", "must be between 0 and 86400 seconds")
    if not 0.0 < labels.ece_warning < 1.0:
        raise ConfigError("labels.ece_warning", "must be between 0 and 1 (exclusive)")
    return replace(labels, reasons=tuple(dict.fromkeys(reasons)))


def _metrics(root: Mapping[str, Any]) -> MetricsConfig:
    data = dict(_mapping(root.get("metrics", {}) or {}, "metrics"))
    models = data.pop("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise ConfigError("metrics.models", f"expected a list of model names, got {models!r}")
    metrics: MetricsConfig = _section({"metrics": data}, "metrics", MetricsConfig)
    if not 0 <= metrics.port <= 65535:
        raise ConfigError("metrics.port", f"must be a TCP port, got {metrics.port}")
    check_bind_host(metrics.host, "metrics.host")
    if metrics.max_models < 1:
        raise ConfigError("metrics.max_models", f"must be ≥ 1, got {metrics.max_models}")
    if len(models) > metrics.max_models:
        raise ConfigError("metrics.models", f"{len(models)} models listed, more than max_models")
    return replace(metrics, models=tuple(dict.fromkeys(models)))


def check_bind_host(host: str, key: str) -> str:
    """``host`` if a server can be told to bind to it: an IP address (``0.0.0.0``, ``::``,
    ``127.0.0.1``) or a host name; not resolved here (that is the worker's start).

    >>> check_bind_host("::1", "metrics.host")
    '::1'
    >>> check_bind_host("0.0.0.0:9108", "metrics.host")
    Traceback (most recent call last):
    ...
    hitl_router.errors.ConfigError: metrics.host: expected an IP address or a host name ...
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    # a name whose last label is all digits would be read as a (bad) IPv4 address
    if not _HOST_NAME.match(host) or host.rsplit(".", 1)[-1].isdigit():
        raise ConfigError(
            key,
            "expected an IP address or a host name to listen on (e.g. 0.0.0.0, 127.0.0.1, "
            f"::), without a port or scheme, got {host!r}",
        )
    return host


def _check_worker_timeouts(worker: WorkerConfig) -> None:
    if not 1.0 <= worker.delivery_timeout_s <= 3600:
        raise ConfigError("worker.delivery_timeout_s", "must be between 1 and 3600 seconds")
    if not 1.0 <= worker.shutdown_timeout_s <= 600:
        raise ConfigError("worker.shutdown_timeout_s", "must be between 1 and 600 seconds")
    # the broker's group.min/max.session.timeout.ms defaults bound what it accepts
    if not 6_000 <= worker.session_timeout_ms <= 300_000:
        raise ConfigError(
            "worker.session_timeout_ms",
            "must be between 6000 and 300000 (the broker's default group.min/max."
            f"session.timeout.ms), got {worker.session_timeout_ms}",
        )
    if not 100 <= worker.heartbeat_interval_ms <= worker.session_timeout_ms // 3:
        raise ConfigError(
            "worker.heartbeat_interval_ms",
            "must be at least 100 and at most a third of worker.session_timeout_ms, got "
            f"{worker.heartbeat_interval_ms}",
        )
    for key, value, allowed in (
        ("producer", worker.producer, PRODUCERS),
        ("consumer", worker.consumer, CONSUMERS),
    ):
        if value not in allowed:
            raise ConfigError(
                f"worker.{key}", f"expected one of {', '.join(allowed)}, got {value!r}"
            )
    gid = worker.group_instance_id
    if gid is not None and not _INSTANCE_ID.match(gid.replace("{hostname}", "h")):
        raise ConfigError(
            "worker.group_instance_id",
            f"expected letters, digits, . _ - and {{hostname}} (≤ 249), got {gid!r}",
        )


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key or "<root>", f"expected a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(key or "<root>", f"keys must be strings, got {k!r}")
    return value


def _known(mapping: Mapping[str, Any], key: str, allowed: set[str]) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(where, f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _section(
    root: Mapping[str, Any], name: str, cls: type, nested: Mapping[str, Any] | None = None
) -> Any:
    """A flat section; ``nested`` parses the fields that are sections of their own."""
    data = _mapping(root.get(name, {}) or {}, name)
    defaults = cls()
    fields = asdict(defaults)
    _known(data, name, set(fields))
    values = {}
    for field_name, default in fields.items():
        key = f"{name}.{field_name}"
        if nested and field_name in nested:
            values[field_name] = nested[field_name](data.get(field_name), key)
            continue
        value = data.get(field_name, default)
        values[field_name] = _coerce(value, default, key, cls.__annotations__[field_name])
    return cls(**values)


def _coerce(value: Any, default: Any, key: str, annotation: str) -> Any:
    optional = "None" in annotation
    if annotation.startswith("tuple"):
        return value  # validated by the section's own parser
    if value is None:
        if optional:
            return None
        raise ConfigError(key, "must not be null")
    if "bool" in annotation:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if "int" in annotation:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if "float" in annotation:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _check_topic(topic: str, key: str) -> None:
    if not _TOPIC.match(topic) or topic in (".", ".."):
        raise ConfigError(key, f"'{topic}' is not a legal Kafka topic name")


def _queues(value: Any, topics: TopicsConfig) -> tuple[QueueConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError("queues", "expected a list of queues")
    out: list[QueueConfig] = []
    seen_names: set[str] = set()
    seen_topics = {t for t in asdict(topics).values() if t}
    for i, item in enumerate(value):
        key = f"queues[{i}]"
        q = _mapping(item, key)
        _known(q, key, {"name", "topic", "when", "priority", "budget", "diversity"})
        name = q.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{key}.name", f"expected a name of letters, digits, _ . -, got {name!r}"
            )
        if name in seen_names:
            raise ConfigError(f"{key}.name", f"duplicate queue name '{name}'")
        seen_names.add(name)
        topic = q.get("topic", f"review.{name}")
        if not isinstance(topic, str):
            raise ConfigError(f"{key}.topic", f"expected a string, got {topic!r}")
        _check_topic(topic, f"{key}.topic")
        if topic in seen_topics:
            raise ConfigError(f"{key}.topic", f"topic '{topic}' is already used")
        seen_topics.add(topic)
        if "when" not in q:
            raise ConfigError(f"{key}.when", "missing: every queue needs a rule")
        priority = (
            parse_priority(q["priority"], f"{key}.priority")
            if "priority" in q
            else DEFAULT_PRIORITY
        )
        when = parse_rule(q["when"], f"{key}.when")
        budget = parse_budget(q["budget"], f"{key}.budget") if "budget" in q else None
        diversity = (
            parse_diversity(q["diversity"], f"{key}.diversity") if "diversity" in q else None
        )
        out.append(QueueConfig(name, topic, when, priority, q["when"], budget, diversity))
    return tuple(out)


def _drift(value: Any) -> DriftConfig:
    from hitl_router.router.drift import threshold_overrides

    data = _mapping(value or {}, "drift")
    _known(data, "drift", {"profile", "window", "alpha", "thresholds", "persistence"})
    profile = _coerce(data.get("profile"), None, "drift.profile", "str | None")
    window = _coerce(data.get("window", 1000), 1000, "drift.window", "int")
    if window < 10:
        raise ConfigError("drift.window", f"must be ≥ 10, got {window}")
    alpha = _coerce(data.get("alpha"), None, "drift.alpha", "float | None")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ConfigError("drift.alpha", f"must be between 0 and 1 (exclusive), got {alpha:g}")
    thresholds = _mapping(data.get("thresholds", {}) or {}, "drift.thresholds")
    persistence = parse_persistence(data.get("persistence", {}) or {})
    return DriftConfig(profile, window, alpha, threshold_overrides(thresholds), persistence)


def _calibration(value: Any) -> CalibrationConfig:
    data = _mapping(value or {}, "calibration")
    _known(data, "calibration", {"temperatures"})
    temps = _mapping(data.get("temperatures", {}) or {}, "calibration.temperatures")
    out: dict[str, float] = {}
    for model, t in temps.items():
        key = f"calibration.temperatures.{model}"
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 < t < 1e6:
            raise ConfigError(key, f"temperature must be a number > 0, got {t!r}")
        out[model] = float(t)
    return CalibrationConfig(out)
