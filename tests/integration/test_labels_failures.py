"""The label loop's failure paths on the real local Kafka: labels too large at the real
limit, labels for expired or evicted decisions, a label from the wrong source, and topics
whose partition counts would break the join."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hitl_router.agents.topics import ensure_topics
from hitl_router.router.labels import MAX_LABEL_BYTES
from tests.conftest import free_port
from tests.integration.helpers import (
    cli,
    drain,
    produce,
    running_worker,
    scrape,
    total,
    write_config,
)

pytestmark = pytest.mark.kafka


def _prediction(pid: str, top: float) -> bytes:
    return orjson.dumps({"id": pid, "model": "m", "probs": [top, 1 - top], "classes": ["a", "b"]})


def _label(pid: str, source: str, note: str = "", label: str = "a") -> bytes:
    doc: dict[str, Any] = {"id": pid, "label": label, "annotator": "ann", "source": source}
    if note:
        doc["queue"] = "low"
        doc["correction"] = {"reason": "model_correct", "note": note}
    return orjson.dumps(doc)


def _config(path: Path, bootstrap: str, **labels: Any) -> dict[str, Any]:
    return write_config(
        path,
        bootstrap,
        eval_sample={"rate": 0.0, "salt": "failures"},
        queues=[{"name": "low", "topic": f"low-{time.time_ns()}", "when": {"max_prob_below": 0.9}}],
        labels={"decision_wait_s": 2, **labels},
    )


def _joined(port: int) -> float:
    return total(scrape(port), "hitl_labels_total")


@contextlib.contextmanager
def _workers(cfg_path: Path) -> Iterator[tuple[int, Any]]:
    """A routing worker and a label-loop worker; yields the latter's port and process."""
    port = free_port()
    with running_worker(cfg_path, free_port(), "--agents", "router,sampler"):
        with running_worker(
            cfg_path, port, "--agents", "labels", log=cfg_path.with_suffix(".labels.log")
        ) as labeller:
            yield port, labeller


def test_bad_labels_are_dead_lettered_at_the_real_limits(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg = _config(cfg_path, kafka_bootstrap)
    t = cfg["topics"]
    with _workers(cfg_path) as (port, worker):
        ids = [f"r{i}" for i in range(4)]
        produce(kafka_bootstrap, t["predictions"], [_prediction(i, 0.6) for i in ids])
        drain(kafka_bootstrap, [t["decisions"]], until=4, timeout=60, idle=0)
        # a label of exactly MAX_LABEL_BYTES joins; one byte more is too_large
        base = len(_label("r0", "review", note="x"))
        fits = _label("r0", "review", note="x" * (MAX_LABEL_BYTES - base + 1))
        over = _label("r1", "review", note="x" * (MAX_LABEL_BYTES - base + 2))
        assert len(fits) == MAX_LABEL_BYTES and len(over) == MAX_LABEL_BYTES + 1
        labels = [fits, over, _label("r2", "eval"), _label("r3", "review", label="zebra")]
        produce(kafka_bootstrap, t["labels"], labels, [b"r0", b"r1", b"r2", b"r3"])
        dead = drain(kafka_bootstrap, [t["labels_deadletter"]], until=3, timeout=60, idle=1)
        letters = {orjson.loads(r.value)["error"]["code"]: orjson.loads(r.value) for r in dead}
        assert sorted(letters) == ["source_mismatch", "too_large", "unknown_class"]
        assert len(dead) == 3
        big = letters["too_large"]
        assert big["raw_size"] == MAX_LABEL_BYTES + 1 and big["source"]["topic"] == t["labels"]
        assert letters["source_mismatch"]["error"]["path"] == "source"
        deadline = time.time() + 30
        while _joined(port) < 1 and time.time() < deadline:
            time.sleep(0.3)
        samples = scrape(port)
        assert total(samples, "hitl_labels_total") == 1
        assert total(samples, "hitl_label_deadletter_total") == 3
        assert worker.poll() is None


def test_labels_for_expired_or_evicted_decisions_are_unknown_ids(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "c.yaml"
    # 3 partitions, 30 decisions at most: 10 per partition; a decision lives 10.8 s
    cfg = _config(cfg_path, kafka_bootstrap, retention_hours=0.003, max_decisions=30)
    t, group = cfg["topics"], cfg["kafka"]["group_id"] + "-labels"
    with _workers(cfg_path) as (port, worker):
        old = [f"old{i}" for i in range(12)]
        produce(kafka_bootstrap, t["predictions"], [_prediction(i, 0.6) for i in old])
        drain(kafka_bootstrap, [t["decisions"]], until=12, timeout=60, idle=0)
        time.sleep(11.5)  # past the retention
        new = [f"new{i}" for i in range(60)]  # 20 per partition on average: evicts by count
        produce(kafka_bootstrap, t["predictions"], [_prediction(i, 0.6) for i in new])
        records = drain(kafka_bootstrap, [t["decisions"]], until=72, timeout=60, idle=0)
        labels = [_label(i, "review") for i in [*old, *new]]
        produce(kafka_bootstrap, t["labels"], labels, [d.split(b'"')[3] for d in labels])
        joined_deadline = time.time() + 60
        dead: list[Any] = []
        while time.time() < joined_deadline:
            dead = drain(kafka_bootstrap, [t["labels_deadletter"]], until=0, timeout=1, idle=0)
            if len(dead) + _joined(port) >= 72:
                break
        ids = {orjson.loads(r.value)["id"] for r in dead}
        codes = {orjson.loads(r.value)["error"]["code"] for r in dead}
        assert codes == {"unknown_id"}
        assert set(old) <= ids  # expired, however few decisions came after them
        # each partition keeps its last 10 records: the earlier new ones were evicted
        by_partition: dict[int, list[tuple[int, str]]] = {}
        for r in records:
            by_partition.setdefault(r.partition, []).append((r.offset, r.key.decode()))
        kept = {k for recs in by_partition.values() for _, k in sorted(recs)[-10:]}
        assert ids - set(old) == set(new) - kept
        assert _joined(port) == 72 - len(ids)
        changelog = drain(
            kafka_bootstrap, [f"{group}-hitl-label-joins-changelog"], until=72, timeout=30, idle=2
        )
        tombstones = {r.key.decode() for r in changelog if r.value is None}
        assert set(old) <= tombstones  # expired records deleted, not only ignored
        assert worker.poll() is None


def test_a_labels_topic_not_co_partitioned_stops_the_start(kafka_bootstrap, tmp_path):
    cfg_path = tmp_path / "c.yaml"
    cfg = _config(cfg_path, kafka_bootstrap)
    ensure_topics(kafka_bootstrap, [cfg["topics"]["labels"]], partitions=2)
    res = cli("worker", "-c", str(cfg_path), "--metrics-port", str(free_port()), timeout=90)
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "kafka.partitions" in err and cfg["topics"]["labels"] in err and "2 partitions" in err
