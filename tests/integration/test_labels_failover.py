"""Label workers killed -9 on the real local Kafka: the join holds.

Two label workers and a routing worker. First a label worker is killed before the labels
come: the survivor takes its partitions over (after the session timeout), recovers their
decision records from the table's changelog and joins every label exactly once; the
worker restarted joins its share of the next labels. Then the other worker is killed
while labels stream in: what it had joined and not committed is read again by the one
left, recognised by its offset (``hitl_labels_redelivered_total``) and not counted
twice; the eval window's n stays exact and every label is in the join table.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import orjson
import pytest
import yaml

from hitl_router.agents.label_join import JOIN_TABLE
from hitl_router.review_team import ReviewTeam
from hitl_router.simulate import Simulator
from tests.conftest import free_port
from tests.integration.faults import replay_fates, wait_members
from tests.integration.helpers import (
    drain,
    produce,
    read_to_end,
    scrape,
    start_worker,
    stop,
    total,
    until,
    wait_metrics,
)
from tests.integration.test_labels_loop import MODEL, _config, _explain, _send_labels, _sum

pytestmark = pytest.mark.kafka


def _unjoined(bootstrap: str, topics: dict[str, str], group: str) -> list[str]:
    """Labels on the labels topic that the join table (its changelog, as a new owner
    recovers it) does not hold, each with where it and its decision record are and the
    group's committed offsets there: empty when every label is joined."""
    from kafka import KafkaAdminClient

    labels = read_to_end(bootstrap, [topics["labels"]])
    logged = read_to_end(bootstrap, [f"{group}-{JOIN_TABLE}-changelog"])
    newest = {r.key: r.value for r in logged}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        committed = {
            (tp.topic, tp.partition): om.offset
            for tp, om in admin.list_group_offsets(group)[group].items()
        }
    finally:
        admin.close()
    out = []
    decisions = topics["decisions"]
    for r in labels:
        doc = orjson.loads(r.value)
        entry = orjson.loads(newest[r.key]) if newest.get(r.key) else {}
        if doc["annotator"] in (entry.get("labels") or {}):
            continue
        out.append(
            f"{doc['id']}: label at {(r.partition, r.offset)} (committed "
            f"{committed.get((topics['labels'], r.partition))}), table entry "
            f"{sorted(entry)} (decisions committed {committed.get((decisions, r.partition))})"
        )
    return out


def _trickle(bootstrap: str, topic: str, docs: list[dict[str, Any]], chunks: int) -> None:
    """Send ``docs`` in ``chunks`` about 0.3 s apart: labels in flight for a while."""
    size = -(-len(docs) // chunks)
    for i in range(0, len(docs), size):
        _send_labels(bootstrap, topic, docs[i : i + size])
        time.sleep(0.3)


def test_label_workers_killed_before_and_during_labels_lose_none(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "kill.yaml"
    cfg = _config(cfg_path, kafka_bootstrap)
    # the shortest session Kafka allows: a dead worker's partitions move sooner
    cfg["worker"] = {**cfg["worker"], "session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t, group = cfg["topics"], cfg["kafka"]["group_id"] + "-labels"
    review_topic = cfg["queues"][0]["topic"]
    raws = list(Simulator(seed=13, flag_rate=0.0, sharpen=0.2, id_prefix="k").messages(1000))
    # each eval sample and review item has its decision record, which the labels join
    fates = [v["fate"] for v in replay_fates(tmp_path, cfg_path, raws)]
    n_items = fates.count("eval") + fates.count("review")
    ports = [free_port(), free_port()]
    logs = [tmp_path / "k1.log", tmp_path / "k2.log"]
    procs = [start_worker(cfg_path, ports[i], logs[i], "--agents", "labels") for i in range(2)]
    router_port, router_log = free_port(), tmp_path / "router.log"
    router = start_worker(cfg_path, router_port, router_log, "--agents", "router,sampler")
    try:
        for proc, port, log in [
            *zip(procs, ports, logs, strict=True),
            (router, router_port, router_log),
        ]:
            wait_metrics(proc, port, log=log)
        wait_members(kafka_bootstrap, group, 2)
        produce(kafka_bootstrap, t["predictions"], raws)
        items = drain(
            kafka_bootstrap, [t["eval"], review_topic], until=n_items, timeout=60, idle=0.5
        )
        decided = drain(kafka_bootstrap, [t["decisions"]], until=n_items, timeout=60, idle=0)
        assert len(decided) >= n_items
        team = ReviewTeam(error_rate=0.0, double_rate=0.0, seed=4)
        labels = [
            d
            for r in items
            for d in team.answer(
                orjson.loads(r.value), "eval" if r.topic == t["eval"] else "review"
            )
        ]
        assert len(labels) == n_items > 300
        third = len(labels) // 3

        # 1. a worker killed before the labels come: the survivor joins each exactly once
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=10)
        _send_labels(kafka_bootstrap, t["labels"], labels[:third])
        try:
            until(lambda: _sum(ports[:1], "hitl_labels_total"), third, 120, f"{third} joined")
        except AssertionError as exc:
            unjoined = _unjoined(kafka_bootstrap, t, group)
            raise AssertionError(
                f"{exc}; {_explain(kafka_bootstrap, t, ports[:1])}; {unjoined}"
            ) from None

        # 2. restarted, it takes its partitions back and joins its share of the next ones
        procs[1] = start_worker(cfg_path, ports[1], logs[1], "--agents", "labels")
        wait_metrics(procs[1], ports[1], log=logs[1])
        wait_members(kafka_bootstrap, group, 2)
        _send_labels(kafka_bootstrap, t["labels"], labels[third : 2 * third])
        until(lambda: _sum(ports, "hitl_labels_total"), 2 * third, 120, "the second third")
        assert total(scrape(ports[1]), "hitl_labels_total") > 0, "the restarted worker joined none"

        # 3. the first worker killed while labels stream in: the other one joins the rest
        sender = threading.Thread(
            target=_trickle, args=(kafka_bootstrap, t["labels"], labels[2 * third :], 12)
        )
        sender.start()
        time.sleep(1.2)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        sender.join(timeout=60)
        firsts = {d["id"]: d for d in labels}
        n_eval = sum(1 for d in firsts.values() if d["source"] == "eval")
        try:
            until(
                lambda: total(scrape(ports[1]), "hitl_eval_labels", model=MODEL),
                n_eval,
                120,
                "the eval window's n",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {_unjoined(kafka_bootstrap, t, group)}") from None
        # the table's changelog may trail the eval window's metric by a delivery
        until(lambda: _unjoined(kafka_bootstrap, t, group), [], 30, "labels not in the table")
        dead = read_to_end(kafka_bootstrap, [t["labels_deadletter"]])
        assert [orjson.loads(r.value)["error"] for r in dead] == []
        # every eval label reached the windows (a label joined again after the kill may
        # be there twice: at-least-once; the windows keep one per id)
        eval_ids = {i for i, d in firsts.items() if d["source"] == "eval"}
        until(
            lambda: {
                orjson.loads(r.value)["id"] for r in read_to_end(kafka_bootstrap, [t["joined"]])
            },
            eval_ids,
            30,
            "every eval label on the joined topic",
        )
        for proc in (procs[1], router):
            assert proc.poll() is None, "a worker died"
    finally:
        stop([*procs, router])
