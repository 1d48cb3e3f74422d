"""The label loop on the real local Kafka, with two label workers and a routing worker:
predictions in, a simulated review team's labels back, honest metrics on /metrics, a
temperature published and applied to new predictions."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from hitl_router.review_team import ReviewTeam
from hitl_router.router.eval_sampler import EvalSampler
from hitl_router.router.partitioning import partitions_of
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

pytestmark = pytest.mark.kafka
MODEL = "digits-committee"
PARTITIONS = 4


def _config(path: Path, bootstrap: str) -> dict[str, Any]:
    from tests.integration.helpers import write_config

    return write_config(
        path,
        bootstrap,
        kafka={"partitions": PARTITIONS},
        eval_sample={"rate": 0.3, "salt": "labels-loop"},
        queues=[
            {
                "name": "uncertain",
                "topic": f"review-u-{path.stem}-{time.time_ns()}",
                "when": {"max_prob_below": 0.999},
            }
        ],
        labels={
            "window": 1000,
            "min_labels": 100,
            "refit_every": 50,
            "qa_rate": 0.2,
            "decision_wait_s": 2,
        },
    )


def _by_id(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in records}


def _send_labels(bootstrap: str, topic: str, docs: list[dict[str, Any]]) -> None:
    produce(bootstrap, topic, [orjson.dumps(d) for d in docs], [d["id"].encode() for d in docs])


def _explain(bootstrap: str, topics: dict[str, str], ports: list[int]) -> str:
    """What the workers and the labels dead-letter topic say, for a failure message."""
    dead = read_to_end(bootstrap, [topics["labels_deadletter"]])
    codes = Counter(orjson.loads(r.value)["error"]["code"] for r in dead)
    counts = {}
    for p in ports:
        try:
            counts[p] = total(scrape(p), "hitl_labels_total")
        except OSError:
            counts[p] = None
    return f"dead letters {dict(codes)}, labels joined per worker {counts}"


def _sum(ports: list[int], name: str, **labels: str) -> float:
    return sum(total(scrape(p), name, **labels) for p in ports)


def test_labels_join_measure_and_calibrate_with_two_label_workers(kafka_bootstrap, tmp_path):
    """Two label workers share the partitions; every label joins once. (Label workers
    killed -9: test_labels_failover.py.)"""
    cfg_path = tmp_path / "loop.yaml"
    cfg = _config(cfg_path, kafka_bootstrap)
    t, group = cfg["topics"], cfg["kafka"]["group_id"]
    review_topic = cfg["queues"][0]["topic"]
    raws = list(Simulator(seed=11, flag_rate=0.0, sharpen=0.2, id_prefix="a").messages(1500))
    verdicts = replay_fates(tmp_path, cfg_path, raws)
    eval_ids = {v["id"] for v in verdicts if v["fate"] == "eval"}
    review_ids = {v["id"] for v in verdicts if v["fate"] == "review"}
    assert len(eval_ids) > 300 and len(review_ids) > 30

    # the label loop's two workers (their own consumer group), and a routing worker
    ports = [free_port(), free_port()]
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    labels_group = f"{group}-labels"
    procs = [start_worker(cfg_path, ports[i], logs[i], "--agents", "labels") for i in range(2)]
    router_port, router_log = free_port(), tmp_path / "router.log"
    router = start_worker(cfg_path, router_port, router_log, "--agents", "router,sampler")
    try:
        for proc, port, log in zip(procs, ports, logs, strict=True):
            wait_metrics(proc, port, log=log)
        wait_metrics(router, router_port, log=router_log)
        wait_members(kafka_bootstrap, labels_group, 2)
        produce(kafka_bootstrap, t["predictions"], raws)
        items = drain(
            kafka_bootstrap,
            [t["eval"], review_topic],
            until=len(eval_ids) + len(review_ids),
            timeout=90,
            idle=0.5,
        )
        records = drain(kafka_bootstrap, [t["decisions"]], until=len(items), timeout=60, idle=0.5)
        assert {orjson.loads(r.value)["id"] for r in records} == eval_ids | review_ids
        team = ReviewTeam(error_rate=0.05, double_rate=0.15, seed=3)
        by_id = _by_id(items)
        labels = []
        for pid in sorted(by_id):
            labels += team.answer(by_id[pid], "eval" if pid in eval_ids else "review")
        # one eval label written without its id as key: re-sent keyed by id, then joined
        stray = next(d for d in labels if d["source"] == "eval")
        labels.remove(stray)
        stray_key = next(
            k
            for k in (b"k%d" % i for i in range(100))
            if partitions_of([k], PARTITIONS)[0]
            != partitions_of([stray["id"].encode()], PARTITIONS)[0]
        )
        _send_labels(kafka_bootstrap, t["labels"], labels)
        produce(kafka_bootstrap, t["labels"], [orjson.dumps(stray)], [stray_key])
        # keyed by id as a review tool keys them: dead-lettered, not re-sent
        bad = {
            b"{not json": None,
            orjson.dumps(
                {"id": "never-predicted", "label": "1", "annotator": "x", "source": "eval"}
            ): b"never-predicted",
            orjson.dumps({**labels[0], "label": "cat", "annotator": "x"}): labels[0]["id"].encode(),
        }
        produce(kafka_bootstrap, t["labels"], list(bad), list(bad.values()))
        n_labels = len(labels) + 1
        try:
            until(lambda: _sum(ports, "hitl_labels_total"), n_labels, 120, "every label joined")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {_explain(kafka_bootstrap, t, ports)}") from None

        assert _sum(ports, "hitl_labels_rekeyed_total") == 1

        sources = Counter(d["source"] for d in [*labels, stray])
        assert _sum(ports, "hitl_labels_total", source="eval") == sources["eval"]
        assert _sum(ports, "hitl_labels_total", source="review") == sources["review"]
        dead = drain(kafka_bootstrap, [t["labels_deadletter"]], until=3, timeout=30, idle=1)
        letters = [orjson.loads(r.value) for r in dead]
        codes = sorted(d["error"]["code"] for d in letters)
        assert codes == ["invalid_json", "unknown_class", "unknown_id"], [
            (d.get("id"), d["error"], d["source"]) for d in letters
        ]
        assert _sum(ports, "hitl_label_deadletter_total") == 3

        # honest metrics, from the model's one owner: n = the eval items labelled
        firsts = {}
        for d in [*labels, stray]:
            firsts.setdefault(d["id"], d)
        n_eval = sum(1 for d in firsts.values() if d["source"] == "eval")
        owners = until(
            lambda: [
                p for p in ports if total(scrape(p), "hitl_eval_labels", model=MODEL) == n_eval
            ],
            bool,
            60,
            "the eval window's n",
        )
        assert len(owners) == 1
        owner = scrape(owners[0])
        assert 0.85 < total(owner, "hitl_eval_accuracy", model=MODEL) < 1.0
        assert (
            total(owner, "hitl_eval_accuracy_lower", model=MODEL)
            < total(owner, "hitl_eval_accuracy", model=MODEL)
            < total(owner, "hitl_eval_accuracy_upper", model=MODEL)
        )
        assert total(owner, "hitl_ece", model=MODEL) > 0
        wrong = sum(
            1
            for d in firsts.values()
            if d["source"] == "review" and d["correction"]["reason"] != "model_correct"
        )
        assert _sum(ports, "hitl_trigger_labels_total", model_wrong="true") == wrong

        # QA: the review items the QA draw takes, exactly
        qa_draw = EvalSampler(0.2, "labels-loop\x00qa")
        reviewed = sorted(i for i, d in firsts.items() if d["source"] == "review")
        want_qa = {i for i, drawn in zip(reviewed, qa_draw.draw(reviewed), strict=True) if drawn}
        qa = drain(kafka_bootstrap, [t["qa"]], until=len(want_qa), timeout=30, idle=1)
        assert {orjson.loads(r.value)["id"] for r in qa} == want_qa

        # a temperature > 1 was published for the over-confident model, and every worker
        # applies the newest one
        cal = drain(kafka_bootstrap, [t["calibration"]], until=1, timeout=30, idle=1)
        latest = {r.key.decode(): orjson.loads(r.value) for r in cal}
        key = f"{MODEL}@1" if f"{MODEL}@1" in latest else MODEL
        temperature = latest[key]["temperature"]
        assert temperature > 1.5 and latest[key]["nll_after"] < latest[key]["nll_before"]
        for p in [router_port]:
            until(
                lambda p=p: total(scrape(p), "hitl_calibration_temperature", model=key),
                temperature,
                30,
                f"worker :{p} applying T",
            )

        # new predictions are routed at that temperature: what replay decides with it
        new = list(Simulator(seed=12, flag_rate=0.0, sharpen=0.2, id_prefix="c").messages(600))
        with_t = yaml.safe_load(cfg_path.read_text())
        with_t["calibration"] = {"temperatures": {f"{MODEL}@1": temperature}}
        t_path = tmp_path / "with_t.yaml"
        t_path.write_text(yaml.safe_dump(with_t))
        expect = {v["id"] for v in replay_fates(tmp_path, t_path, new) if v["fate"] == "review"}
        before = {v["id"] for v in replay_fates(tmp_path, cfg_path, new) if v["fate"] == "review"}
        assert len(expect) > len(before)  # softer probabilities: more below 0.999
        produce(kafka_bootstrap, t["predictions"], new)
        got = drain(
            kafka_bootstrap, [review_topic], until=len(review_ids) + len(expect), timeout=60, idle=1
        )
        fresh = [orjson.loads(r.value) for r in got if r.key.startswith(b"c-")]
        assert {d["id"] for d in fresh} == expect
        assert {d["temperature"] for d in fresh} == {temperature}
        for proc in [*procs, router]:
            assert proc.poll() is None, "a worker died"
    finally:
        stop([*procs, router])
