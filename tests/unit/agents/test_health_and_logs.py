"""Health probes read the real state of the app's services; library logs are
rate-limited per kind; the model label is bounded by an allow-list and a cap."""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

import orjson
from prometheus_client import CollectorRegistry

from hitl_router.agents.app import instance_id
from hitl_router.agents.health import Health
from hitl_router.agents.quiet_logs import RateLimit
from hitl_router.metrics import RouterMetrics
from hitl_router.router.config import parse_config
from hitl_router.router.decision import Policy, decide_batch


def service(started=True, crashed=False, stopping=False):
    return SimpleNamespace(started=started, crashed=crashed, should_stop=crashed or stopping)


def app(consumer=None, producer=None, crashed=False, stopping=False, assignment=3):
    return SimpleNamespace(
        started=True,
        should_stop=crashed or stopping,
        _consumer=consumer,
        _producer=producer,
        consumer=SimpleNamespace(assignment=lambda: set(range(assignment))),
    )


def verdicts(health: Health) -> tuple[bool, bool]:
    checks = health.checks()
    return health.healthy(checks), health.ready(checks)


def test_ready_only_when_assigned_and_both_clients_run():
    h = Health(app(service(), service()))  # type: ignore[arg-type]
    assert verdicts(h) == (True, False)  # never assigned: alive, not ready
    h.on_assigned(set())
    assert verdicts(h) == (True, True) and h.checks()["partitions"] == 3
    h.on_revoked()  # a rebalance in progress
    assert verdicts(h) == (True, False)


def test_a_crashed_or_stopping_worker_is_neither_healthy_nor_ready():
    for a in (
        app(service(crashed=True), service()),
        app(service(), service(crashed=True)),
        app(service(), service(), crashed=True),
        app(service(), service(), stopping=True),
    ):
        h = Health(a)  # type: ignore[arg-type]
        h.on_assigned(set())
        assert verdicts(h) == (False, False), h.checks()
    h = Health(app(None, None))  # type: ignore[arg-type]
    h.on_assigned(set())
    assert h.checks()["consumer"] == "not started" and verdicts(h) == (True, False)


def test_a_flood_of_library_errors_becomes_a_few_lines():
    """An outage of 75 s at ~150 lines/s (what was measured) of 5 kinds of message."""
    now = [0.0]
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    handler.addFilter(RateLimit(30.0, clock=lambda: now[0]))
    logger = logging.getLogger("aiokafka.test-flood")
    logger.propagate = False
    logger.addHandler(handler)
    own = logging.getLogger("hitl_router.test-flood")
    own.propagate = False
    own.addHandler(handler)
    kinds = [
        "Unable connect to node with id %d: [Errno 111]",
        "Unable to update metadata from [%d]",
        "Failed fetch messages from %d: KafkaConnectionError",
        "Heartbeat send request failed: node %d",
        "Group Coordinator Request failed: node %d",
    ]
    for step in range(75 * 150):
        now[0] = step / 150
        logger.error(kinds[step % 5], step)
    own.error("outputs not delivered")  # the worker's own lines always pass
    own.error("outputs not delivered")
    assert len(lines) <= 5 * 3 + 2, len(lines)
    assert lines[-2:] == ["outputs not delivered"] * 2
    assert any("like it held back in the last 30 s" in line for line in lines)


def test_rate_limit_forgets_kinds_beyond_its_bound():
    limit = RateLimit(30.0, clock=lambda: 0.0, max_kinds=10)
    for i in range(100):
        record = logging.LogRecord(
            "x", logging.ERROR, "f", 1, f"kind {chr(65 + i % 26)}{i}", (), None
        )
        limit.filter(record)
    assert len(limit._seen) <= 10


def test_static_membership_id_from_config_or_host_name():
    assert instance_id(parse_config({}).worker) is None
    worker = parse_config({"worker": {"group_instance_id": "{hostname}-router"}}).worker
    assert instance_id(worker) == f"{socket.gethostname()}-router"


def test_model_label_allow_list_and_overflow_count():
    reg = CollectorRegistry()
    metrics = RouterMetrics(reg, max_models=10, models=("fraud",))
    policy = Policy(parse_config({"eval_sample": {"rate": 0.0}}))
    raws = [
        orjson.dumps({"id": f"p{i}", "model": m, "probs": [0.9, 0.1]})
        for i, m in enumerate(["fraud@2", "fraud", "made-up-1", "made-up-2", "made-up-2"])
    ]
    metrics.observe_router(decide_batch(raws, policy), [0.0] * len(raws), now=0.0)
    get = reg.get_sample_value
    assert get("hitl_predictions_total", {"model": "fraud@2"}) == 1
    assert get("hitl_predictions_total", {"model": "fraud"}) == 1
    assert get("hitl_predictions_total", {"model": "other"}) == 3
    assert get("hitl_model_label_overflow_total") == 3
    assert get("hitl_predictions_total", {"model": "made-up-1"}) is None


def test_partition_mismatch_is_a_warning_naming_both_counts():
    from hitl_router.agents.preflight import TopicFacts, partition_warning

    cfg = parse_config({"kafka": {"partitions": 6}})
    assert partition_warning(cfg, {"predictions": TopicFacts(6, 1_048_588)}) is None
    assert partition_warning(cfg, {}) is None  # not created yet: nothing to say
    warning = partition_warning(cfg, {"predictions": TopicFacts(2, 1_048_588)})
    assert warning is not None and "has 2 partitions but kafka.partitions is 6" in warning


def test_web_server_binds_to_metrics_host_unless_overridden():
    from hitl_router.agents.app import build_app

    config = parse_config(
        {"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "metrics": {"host": "127.0.0.1"}}
    )
    assert build_app(config).conf.web_bind == "127.0.0.1"
    assert build_app(config, web_host="::1", web_port=9300).conf.web_bind == "::1"
    default = build_app(parse_config({"kafka": {"bootstrap_servers": "127.0.0.1:1"}}))
    assert default.conf.web_bind == "0.0.0.0"
    # the canonical URL (Faust's id of this worker in assignments) keeps the host name
    assert build_app(config).conf.canonical_url.host == socket.gethostname()
