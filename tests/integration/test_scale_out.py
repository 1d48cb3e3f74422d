"""Scale-out on the real local Kafka: several workers in one group share the partitions;
a worker restarted after a clean stop resumes from its committed offsets. (Workers killed
mid-stream, and other faults: test_faults.py.)"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from hitl_router.simulate import Simulator
from tests.conftest import free_port
from tests.integration.faults import all_topics, fault_config, wait_members
from tests.integration.helpers import (
    drain,
    produce,
    scrape,
    start_worker,
    total,
    wait_metrics,
)

pytestmark = pytest.mark.kafka


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)


def outputs_by_fate(records: list[Any], cfg: dict[str, Any]) -> tuple[dict, dict]:
    """{id: [(fate, queue)]} for valid ids and {input offset: [code]} for dead letters."""
    topics = cfg["topics"]
    queue_of = {q["topic"]: q["name"] for q in cfg["queues"]}
    fates: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    dead: dict[tuple[int, int], list[str]] = defaultdict(list)
    for r in records:
        msg = orjson.loads(r.value)
        if r.topic == topics["deadletter"]:
            dead[(msg["source"]["partition"], msg["source"]["offset"])].append(msg["error"]["code"])
        elif r.topic == topics["eval"]:
            fates[msg["id"]].append(("eval", None))
        elif r.topic == topics["accepted"]:
            fates[msg["id"]].append(("pass", None))
        else:
            fates[msg["id"]].append(("review", queue_of[r.topic]))
    return fates, dead


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
def test_two_and_three_workers_share_the_load(client, kafka_bootstrap, tmp_path):
    """Rebalances as workers join: two workers share the partitions, then a third joins
    them while they run. Each worker's reader (librdkafka by default, else Faust's
    aiokafka consumer) reads only what the group gave it: every id is decided, and after
    the third joined, each of the three decides some of the next predictions."""
    cfg_path = tmp_path / "config.yaml"
    clients = {"consumer": client, "producer": client}
    cfg = fault_config(cfg_path, kafka_bootstrap, worker={"batch_size": 500, **clients})
    group, topic = cfg["kafka"]["group_id"], cfg["topics"]["predictions"]
    ports = [free_port() for _ in range(3)]
    procs = [start_worker(cfg_path, p, tmp_path / f"w{i}.log") for i, p in enumerate(ports[:2])]
    try:
        sent: list[bytes] = []
        decided_before = [0.0, 0.0, 0.0]
        for n_workers in (2, 3):
            if n_workers == 3:
                procs.append(start_worker(cfg_path, ports[2], tmp_path / "w2.log"))
            for proc, port in zip(procs, ports, strict=False):
                wait_metrics(proc, port)
            wait_members(kafka_bootstrap, group, n_workers)
            raws = list(Simulator(seed=n_workers, id_prefix=f"share{n_workers}").messages(6000))
            produce(kafka_bootstrap, topic, raws)
            sent += raws
            records = drain(kafka_bootstrap, all_topics(cfg), until=len(sent), idle=2)
            decided = [total(scrape(p), "hitl_predictions_total") for p in ports[:n_workers]]
            fates, dead = outputs_by_fate(records, cfg)
            assert not dead
            assert set(fates) == {orjson.loads(r)["id"] for r in sent}
            assert sum(decided) >= len(sent)
            shares = [now - before for now, before in zip(decided, decided_before, strict=False)]
            assert all(n > 0 for n in shares), f"a worker got no partition: {shares}"
            decided_before = decided
    finally:
        for proc in procs:
            stop(proc)


def test_restart_after_clean_stop_resumes_from_committed_offsets(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "config.yaml"
    cfg = fault_config(cfg_path, kafka_bootstrap)
    first = list(Simulator(seed=21, id_prefix="before").messages(5000))
    port = free_port()
    proc = start_worker(cfg_path, port, tmp_path / "w.log")
    try:
        wait_metrics(proc, port)
        produce(kafka_bootstrap, cfg["topics"]["predictions"], first)
        drain(kafka_bootstrap, all_topics(cfg), until=len(first), idle=1)
        stop(proc)  # clean: SIGTERM
        assert proc.returncode == 0
        second = list(Simulator(seed=22, id_prefix="after").messages(2000))
        produce(kafka_bootstrap, cfg["topics"]["predictions"], second)
        port = free_port()
        proc = start_worker(cfg_path, port, tmp_path / "w-restarted.log")
        wait_metrics(proc, port)
        records = drain(kafka_bootstrap, all_topics(cfg), until=len(first) + len(second), idle=3)
        decided_after_restart = total(scrape(port), "hitl_predictions_total")
    finally:
        stop(proc)
    ids = Counter(orjson.loads(r.value)["id"] for r in records)
    assert all(ids[orjson.loads(r)["id"]] >= 1 for r in first + second)
    # a clean stop commits what was decided: the restarted worker decides only the new ones
    assert decided_after_restart == len(second)
    assert sum(ids.values()) == len(first) + len(second)
