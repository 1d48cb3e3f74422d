"""Stress: failures that are known not to hold every time, run on demand (`make stress`,
i.e. ``pytest --stress tests/stress``), never in ``make test``.

A label worker killed -9 while labels are in flight: README "Known problem"; issue #10
stays open until this passes every time.
"""

from __future__ import annotations

import signal

import orjson
import pytest

from hitl_router.review_team import ReviewTeam
from hitl_router.simulate import Simulator
from tests.conftest import free_port
from tests.integration.faults import wait_members
from tests.integration.helpers import drain, produce, start_worker, wait_metrics
from tests.integration.test_labels_loop import _config, _explain, _send_labels, _sum, _until

pytestmark = [pytest.mark.kafka, pytest.mark.stress]


def test_a_label_worker_killed_mid_labels_loses_none(kafka_bootstrap, tmp_path):
    """Labels in flight while a label worker is killed -9: the survivor takes its
    partitions over, recovers their decision records and joins every label once; the
    worker restarted joins the rest."""
    cfg_path = tmp_path / "kill.yaml"
    cfg = _config(cfg_path, kafka_bootstrap)
    t, group = cfg["topics"], cfg["kafka"]["group_id"] + "-labels"
    review_topic = cfg["queues"][0]["topic"]
    raws = list(Simulator(seed=13, flag_rate=0.0, sharpen=0.2, id_prefix="k").messages(1000))
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
        n_items = len(drain(kafka_bootstrap, [t["decisions"]], until=10**6, timeout=15, idle=3))
        items = drain(
            kafka_bootstrap, [t["eval"], review_topic], until=n_items, timeout=60, idle=0.5
        )
        team = ReviewTeam(error_rate=0.0, double_rate=0.0, seed=4)
        labels = [
            d
            for r in items
            for d in team.answer(
                orjson.loads(r.value), "eval" if r.topic == t["eval"] else "review"
            )
        ]
        assert len(labels) == n_items > 100
        half = len(labels) // 2
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=10)
        _send_labels(kafka_bootstrap, t["labels"], labels[:half])  # in flight: w2 is dead
        try:
            _until(lambda: _sum(ports[:1], "hitl_labels_total"), half, 120, "survivor joins")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {_explain(kafka_bootstrap, t, ports[:1])}") from None
        procs[1] = start_worker(cfg_path, ports[1], logs[1], "--agents", "labels")
        wait_metrics(procs[1], ports[1], log=logs[1])
        _send_labels(kafka_bootstrap, t["labels"], labels[half:])  # in flight: it rejoins
        _until(lambda: _sum(ports, "hitl_labels_total"), len(labels), 120, "every label joined")
        assert drain(kafka_bootstrap, [t["labels_deadletter"]], until=1, timeout=3, idle=0) == []
        for proc in [*procs, router]:
            assert proc.poll() is None, "a worker died"
    finally:
        for proc in [*procs, router]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
