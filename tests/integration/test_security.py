"""The worker over SASL_SSL (SCRAM-SHA-512) on a real broker with ACLs: it decides what
replay decides with only the rights it is granted; a wrong password and a topic it may
not write each stop it at once with a clear message (exit 1); the password is never in
its output.

One dedicated broker for the module (its own ports, directory, CA and certificate):
the SASL_SSL listener for the router, PLAINTEXT (a super user) for the test's admin.
Topics are created by the admin (``kafka.create_topics: false``): the router's principal
is not given CREATE on the topics it uses, as in a cluster whose topics are managed.
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from hitl_router.simulate import Simulator
from tests.integration.faults import replay_fates
from tests.integration.helpers import cli, drain, produce, running_worker, write_config
from tests.integration.secure_kafka import SecureBroker, allow, create_topics, start_secure_broker

pytestmark = pytest.mark.kafka

USER = "router"
PASSWORD = "pw-" + secrets.token_hex(12)  # searched for in every output
PASSWORD_ENV = "HITL_TEST_KAFKA_PASSWORD"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = start_secure_broker(tmp_path_factory.mktemp("secure"), [(USER, PASSWORD)])
    try:
        yield broker
    finally:
        broker.kafka.stop()


def secure_config(path: Path, broker: SecureBroker, deny_write: str | None = None) -> dict:
    """A config for the SASL_SSL listener; its topics created, and the router's ACLs
    granted, by the admin (all but WRITE on the queue named ``deny_write``)."""
    security = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": USER,
        "password_env": PASSWORD_ENV,
        "ca_file": str(broker.ca_file),
    }
    cfg = write_config(path, broker.bootstrap, kafka={"create_topics": False, "security": security})
    topics = cfg["topics"]
    group = cfg["kafka"]["group_id"]
    outputs = {topics["eval"], topics["deadletter"], *[q["topic"] for q in cfg["queues"]]}
    loop = {topics[t] for t in ("decisions", "joined", "calibration", "qa", "labels_deadletter")}
    create_topics(broker.admin_bootstrap, [topics["predictions"], *outputs], 3)
    create_topics(broker.admin_bootstrap, [topics["labels"], *loop], 3)
    denied = {q["topic"] for q in cfg["queues"] if q["name"] == deny_write}
    grants = [("TOPIC", topics["predictions"], "LITERAL", "READ")]
    grants += [("TOPIC", t, "LITERAL", "WRITE") for t in sorted(outputs - denied)]
    # the label loop reads and writes its topics (labels: re-keyed labels are re-sent)
    grants += [
        ("TOPIC", t, "LITERAL", op)
        for t in sorted(loop | {topics["labels"]})
        for op in ("READ", "WRITE")
    ]
    grants += [
        ("GROUP", group, "PREFIXED", "READ"),  # its group, and <group>-<agent> run apart
        # Faust's <group>-__assignor-__leader and the tables' <group>-…-changelog
        ("TOPIC", f"{group}-", "PREFIXED", "CREATE"),
        ("TOPIC", f"{group}-", "PREFIXED", "READ"),
        ("TOPIC", f"{group}-", "PREFIXED", "WRITE"),
    ]
    allow(broker.admin_bootstrap, f"User:{USER}", grants)
    return cfg


def test_worker_over_sasl_ssl_decides_what_replay_decides(secure, tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    cfg_path = tmp_path / "config.yaml"
    cfg = secure_config(cfg_path, secure)
    topics = cfg["topics"]
    raws = list(Simulator(seed=5, flag_rate=0.02, id_prefix="sec").messages(400))
    verdicts = replay_fates(tmp_path, cfg_path, raws)
    expected = sum(v["fate"] != "pass" for v in verdicts)
    assert expected > 20
    outputs = [topics["eval"], topics["deadletter"], *[q["topic"] for q in cfg["queues"]]]
    log = tmp_path / "worker.log"
    with running_worker(cfg_path, cfg["metrics"]["port"], log=log) as worker:
        produce(secure.admin_bootstrap, topics["predictions"], raws)
        records = drain(secure.admin_bootstrap, outputs, until=expected, timeout=60, idle=0.5)
        assert worker.poll() is None, "the worker died"
        url = f"http://127.0.0.1:{cfg['metrics']['port']}/metrics"
        metrics = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "hitl_predictions_total" in metrics and PASSWORD not in metrics
    got: dict[str, list[tuple[str, str | None]]] = {}
    queue_of = {q["topic"]: q["name"] for q in cfg["queues"]}
    for r in records:
        msg = orjson.loads(r.value)
        fate = ("eval", None) if r.topic == topics["eval"] else ("review", queue_of.get(r.topic))
        got.setdefault(msg["id"], []).append(fate)
    assert len(records) == expected
    for v in verdicts:
        want = [] if v["fate"] == "pass" else [(v["fate"], v.get("queue"))]
        assert got.get(v["id"], []) == want, v["id"]
    text = log.read_text(errors="replace")
    assert "Authenticated as router via SCRAM-SHA-512" in text  # Faust's clients used SASL
    assert PASSWORD not in text


def test_wrong_password_exits_1_naming_authentication(secure, tmp_path, monkeypatch):
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    cfg_path = tmp_path / "config.yaml"
    secure_config(cfg_path, secure)
    started = time.monotonic()
    res = cli("worker", "-c", str(cfg_path), timeout=60)
    elapsed = time.monotonic() - started
    err = res.stderr.decode()
    assert res.returncode == 1, err[-3000:]
    assert elapsed < 30
    last = err.strip().splitlines()[-1]
    assert last.startswith("hitl-router worker: Kafka authentication failed for user 'router'")
    assert "SCRAM-SHA-512" in last and secure.bootstrap in last and "invalid credentials" in last
    output = res.stdout.decode() + err
    assert wrong not in output and PASSWORD not in output


def test_topic_it_may_not_write_exits_1_naming_topic_and_write(secure, tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    cfg_path = tmp_path / "config.yaml"
    cfg = secure_config(cfg_path, secure, deny_write="disagreement")
    denied = next(q["topic"] for q in cfg["queues"] if q["name"] == "disagreement")
    res = cli("worker", "-c", str(cfg_path), timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hitl-router worker: Kafka at {secure.bootstrap} denies user 'router'")
    assert f"not authorized to WRITE topic '{denied}'" in last
    # only that one: every other topic and the group are granted
    assert last.count("not authorized") == 1
    assert PASSWORD not in res.stdout.decode() + err


def test_write_acl_removed_while_running_stops_the_worker_with_exit_1(
    secure, tmp_path, monkeypatch
):
    """At run time the broker's TOPIC_AUTHORIZATION_FAILED fails the batch: nothing of it
    is acked and the worker stops (exit 1) instead of retrying for ever.

    The worker has written to the topic before the ACL goes (its producer knows the
    topic). A delivery that cannot complete otherwise fails after
    worker.delivery_timeout_s like any other; at start the access check refuses a topic
    the worker may not write."""
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePatternFilter,
        ResourceType,
    )

    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    cfg_path = tmp_path / "config.yaml"
    cfg = secure_config(cfg_path, secure)
    topics = cfg["topics"]
    log = tmp_path / "worker.log"
    with running_worker(cfg_path, cfg["metrics"]["port"], log=log) as worker:
        produce(secure.admin_bootstrap, topics["predictions"], Simulator(seed=8).messages(200))
        assert drain(secure.admin_bootstrap, [topics["eval"]], until=1, timeout=30, idle=0)
        admin = KafkaAdminClient(bootstrap_servers=secure.admin_bootstrap)
        try:
            pattern = ResourcePatternFilter(
                ResourceType.TOPIC, topics["eval"], ACLResourcePatternType.LITERAL
            )
            admin.delete_acls(
                [
                    ACLFilter(
                        f"User:{USER}", "*", ACLOperation.WRITE, ACLPermissionType.ALLOW, pattern
                    )
                ]
            )
        finally:
            admin.close()
        raws = list(Simulator(seed=9, id_prefix="revoked").messages(300))  # ~15 eval items
        produce(secure.admin_bootstrap, topics["predictions"], raws)
        assert worker.wait(timeout=60) == 1
    text = log.read_text(errors="replace")
    assert re.search(
        rf"the broker refused an output to {topics['eval']}\[\d\]: Broker: Topic authorization "
        r"failed \(TOPIC_AUTHORIZATION_FAILED\)",
        text,
    ), text[-3000:]
    assert PASSWORD not in text
