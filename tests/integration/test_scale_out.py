"""Scale-out and faults on the real local Kafka: several workers in one group share the
partitions; a worker killed with SIGKILL loses nothing (at-least-once, keyed by id); a
worker restarted after a clean stop resumes from its committed offsets."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from hitl_router.simulate import Simulator
from tests.conftest import free_port
from tests.integration.helpers import (
    cli,
    drain,
    produce,
    scrape,
    start_worker,
    total,
    wait_metrics,
    write_config,
)

pytestmark = pytest.mark.kafka


def wait_members(bootstrap: str, group: str, n: int, timeout: float = 90) -> None:
    """Until the consumer group is stable with ``n`` members."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    desc: Any = None
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                desc = admin.describe_groups([group])[group]
            except KafkaError as exc:  # e.g. the coordinator is still loading
                desc = exc
            else:
                if desc["group_state"] == "Stable" and len(desc["members"]) == n:
                    return
            time.sleep(0.5)
        raise AssertionError(f"group {group} not stable with {n} members: {desc}")
    finally:
        admin.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)


def replay_fates(tmp_path: Path, cfg_path: Path, raws: list[bytes]) -> list[dict[str, Any]]:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(raws) + b"\n")
    out = tmp_path / "decisions.jsonl"
    res = cli("replay", str(src), "-c", str(cfg_path), "-o", str(out))
    assert res.returncode == 0, res.stderr.decode()
    return [orjson.loads(x) for x in out.read_bytes().splitlines()]


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


def all_topics(cfg: dict[str, Any]) -> list[str]:
    t = cfg["topics"]
    return [t["eval"], t["deadletter"], t["accepted"], *[q["topic"] for q in cfg["queues"]]]


def with_accepted(path: Path, bootstrap: str, **extra: Any) -> dict[str, Any]:
    cfg = write_config(path, bootstrap, kafka={"partitions": 6}, **extra)
    tag = cfg["topics"]["eval"].split("-", 1)[1]
    cfg["topics"]["accepted"] = f"accepted-{tag}"
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def test_two_and_three_workers_share_the_load(kafka_bootstrap, tmp_path):
    for n_workers in (2, 3):
        cfg_path = tmp_path / f"config-{n_workers}.yaml"
        cfg = with_accepted(cfg_path, kafka_bootstrap)
        ports = [free_port() for _ in range(n_workers)]
        procs = [
            start_worker(cfg_path, p, tmp_path / f"w{n_workers}-{i}.log")
            for i, p in enumerate(ports)
        ]
        try:
            for proc, port in zip(procs, ports, strict=True):
                wait_metrics(proc, port)
            wait_members(kafka_bootstrap, cfg["kafka"]["group_id"], n_workers)
            raws = list(Simulator(seed=n_workers, id_prefix=f"share{n_workers}").messages(6000))
            produce(kafka_bootstrap, cfg["topics"]["predictions"], raws)
            records = drain(kafka_bootstrap, all_topics(cfg), until=len(raws), idle=2)
            per_worker = [total(scrape(p), "hitl_predictions_total") for p in ports]
        finally:
            for proc in procs:
                stop(proc)
        fates, dead = outputs_by_fate(records, cfg)
        assert not dead
        assert set(fates) == {orjson.loads(r)["id"] for r in raws}
        assert sum(per_worker) >= len(raws)
        assert all(n > 0 for n in per_worker), f"a worker got no partition: {per_worker}"


def test_kill_9_mid_stream_loses_nothing(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "config.yaml"
    cfg = with_accepted(cfg_path, kafka_bootstrap)
    raws = list(Simulator(seed=9, malformed_rate=0.002, id_prefix="k9").messages(50_000))
    expected = replay_fates(tmp_path, cfg_path, raws)
    ports = [free_port(), free_port()]
    procs = [start_worker(cfg_path, p, tmp_path / f"w{i}.log") for i, p in enumerate(ports)]
    positions: list[tuple[int, int]] = []
    try:
        for proc, port in zip(procs, ports, strict=True):
            wait_metrics(proc, port)
        wait_members(kafka_bootstrap, cfg["kafka"]["group_id"], 2)
        producer = threading.Thread(
            target=lambda: positions.extend(
                produce(kafka_bootstrap, cfg["topics"]["predictions"], raws)
            )
        )
        producer.start()
        # kill -9 the first worker once it has decided a good part of its share
        deadline = time.time() + 180
        while total(scrape(ports[0]), "hitl_predictions_total") < 5000:
            assert time.time() < deadline, "the worker made no progress"
            time.sleep(0.2)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=30)
        ports[0] = free_port()
        procs[0] = start_worker(cfg_path, ports[0], tmp_path / "w0-restarted.log")
        wait_metrics(procs[0], ports[0])
        producer.join(timeout=300)
        records = drain(kafka_bootstrap, all_topics(cfg), until=len(raws), timeout=300, idle=5)
    finally:
        for proc in procs:
            stop(proc)
    fates, dead = outputs_by_fate(records, cfg)
    line_of = {pos: i for i, pos in enumerate(positions)}
    duplicates = 0
    for rec in expected:
        if rec["fate"] == "deadletter":
            continue
        got = fates.get(rec["id"], [])
        assert got, f"{rec['id']} got no fate"
        assert set(got) == {(rec["fate"], rec.get("queue"))}, rec["id"]  # duplicates agree
        duplicates += len(got) - 1
    expected_dead = {i for i, rec in enumerate(expected) if rec["fate"] == "deadletter"}
    got_dead = {line_of[pos] for pos in dead}
    assert got_dead == expected_dead  # no dead letter lost
    for pos, codes in dead.items():
        assert set(codes) == {expected[line_of[pos]]["error"]["code"]}
        duplicates += len(codes) - 1
    print(
        f"kill -9: {len(raws)} predictions, {duplicates} duplicate outputs "
        f"({duplicates / len(raws):.2%}), {len(expected_dead)} dead letters"
    )
    assert duplicates < len(raws) // 2


def test_restart_after_clean_stop_resumes_from_committed_offsets(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "config.yaml"
    cfg = with_accepted(cfg_path, kafka_bootstrap)
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
