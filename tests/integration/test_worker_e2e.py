"""The live worker on the real local Kafka: every valid id gets exactly one fate, the
same one ``replay`` gives; every bad message is dead-lettered with its reason."""

from __future__ import annotations

import math
import urllib.request
from collections import Counter, defaultdict

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from hitl_router.simulate import Simulator
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

EXTRA_BAD = [
    b"",
    b"null",
    b'"just a string"',
    b'{"id": 7, "model": "m", "probs": [0.5, 0.5]}',
    b'{"id": "x-long", "model": "m", "probs": [0.5, 0.5], "meta": {"pad": "' + b"a" * 9000 + b'"}}',
    b'{"id": "x-one", "model": "m", "probs": [1.0]}',
    b'{"id": "x-classes", "model": "m", "probs": [0.5, 0.5], "classes": ["a"]}',
    b'{"id": "x-inf", "model": "m", "probs": [1e999, 0]}',
    b'{"id": "' + b"i" * 300 + b'", "model": "m", "probs": [0.5, 0.5]}',
    b'{"id": "x-deep", "model": "m", "probs": [0.5, 0.5], "meta": '
    + b'{"a":' * 50
    + b"1"
    + b"}" * 50
    + b"}",
]


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
def test_live_worker_agrees_with_replay(client, kafka_bootstrap, tmp_path):
    """Every prediction's fate, live, is replay's — with the worker's Kafka clients
    (librdkafka reads and writes, the defaults) and with Faust's own (aiokafka)."""
    cfg_path = tmp_path / "config.yaml"
    cfg = write_config(
        cfg_path,
        kafka_bootstrap,
        limits={"max_message_bytes": 8192},
        worker={"consumer": client, "producer": client},
    )
    topics = cfg["topics"]
    sim = Simulator(seed=7, flag_rate=0.02, malformed_rate=0.01, id_prefix="e2e")
    raws = list(sim.messages(3000))
    raws[1500:1500] = EXTRA_BAD  # in the middle: the worker must keep going after them
    # replay first: the offline verdict for every line
    lines = tmp_path / "in.jsonl"
    lines.write_bytes(b"\n".join(raws) + b"\n")
    out = tmp_path / "decisions.jsonl"
    res = cli("replay", str(lines), "-c", str(cfg_path), "-o", str(out))
    assert res.returncode == 0, res.stderr.decode()
    replayed = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(replayed) == len(raws)
    summary = orjson.loads(res.stdout)
    assert summary["messages"] == len(raws)

    output_topics = [topics["eval"], topics["deadletter"], *[q["topic"] for q in cfg["queues"]]]
    metrics_port = cfg["metrics"]["port"]
    with running_worker(cfg_path, metrics_port) as worker:
        positions = produce(kafka_bootstrap, topics["predictions"], raws)
        expected_outputs = sum(rec["fate"] != "pass" for rec in replayed)
        records = drain(kafka_bootstrap, output_topics, until=expected_outputs)
        samples = scrape(metrics_port)
        assert worker.poll() is None, "the worker died"
        for probe, key in (("healthz", "healthy"), ("readyz", "ready")):
            body = orjson.loads(
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/{probe}", timeout=2).read()
            )
            assert body[key] is True and body["consumer"] == body["producer"] == "running", body

    line_of = {pos: i for i, pos in enumerate(positions)}
    fates: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    dead: dict[int, dict] = {}
    queue_of_topic = {q["topic"]: q["name"] for q in cfg["queues"]}
    n_partitions = cfg["kafka"]["partitions"]
    for r in records:
        msg = orjson.loads(r.value)
        if r.key is not None:  # where any Kafka producer puts that key (murmur2)
            assert r.partition == DefaultPartitioner()(r.key, *[list(range(n_partitions))] * 2)
        if r.topic == topics["deadletter"]:
            src = msg["source"]
            assert src["topic"] == topics["predictions"]
            dead[line_of[(src["partition"], src["offset"])]] = msg
            if "id" in msg:
                assert r.key == msg["id"].encode()
            continue
        assert r.key == msg["id"].encode()  # keyed by prediction id
        if r.topic == topics["eval"]:
            fates[msg["id"]].append(("eval", None))
            assert msg["sample_rate"] == 0.05 and "reasons" not in msg
        else:
            assert msg["queue"] == queue_of_topic[r.topic]
            assert msg["reasons"], "a routed item carries its reasons"
            assert msg["router"]["config_hash"]
            fates[msg["id"]].append(("review", msg["queue"]))

    expected_dead = {i for i, rec in enumerate(replayed) if rec["fate"] == "deadletter"}
    assert len(expected_dead) > len(EXTRA_BAD)
    # every bad message is in the dead-letter topic, with the reason replay gives
    assert set(dead) == expected_dead
    for i in expected_dead:
        assert dead[i]["error"]["code"] == replayed[i]["error"]["code"], i
        assert dead[i]["error"]["message"]
    # every valid id: exactly one fate, the one replay gives (pass = no output)
    for rec in replayed:
        if rec["fate"] == "deadletter":
            continue
        got = fates.get(rec["id"], [])
        if rec["fate"] == "pass":
            assert got == [], rec["id"]
        else:
            assert got == [(rec["fate"], rec.get("queue"))], rec["id"]
    assert set(fates) <= {rec["id"] for rec in replayed}
    # and the mix is real: every queue and the eval sample got items
    kinds = Counter(f for v in fates.values() for f, _ in v)
    assert kinds["eval"] > 0 and kinds["review"] > 0
    assert {q for v in fates.values() for _, q in v if q} == {
        "flagged",
        "disagreement",
        "uncertain",
    }
    # eval rate within sampling error of the configured 5%
    valid = len(raws) - len(expected_dead)
    assert abs(kinds["eval"] - 0.05 * valid) < 4 * math.sqrt(valid * 0.05 * 0.95)
    # the metrics saw the same
    assert total(samples, "hitl_deadletter_total") == len(expected_dead)
    assert total(samples, "hitl_predictions_total") == valid
    assert total(samples, "hitl_decisions_total", fate="eval") == kinds["eval"]
    assert total(samples, "hitl_decisions_total", fate="review") == kinds["review"]
    assert total(samples, "hitl_decision_latency_seconds_count") == len(raws)
    codes = Counter(d["error"]["code"] for d in dead.values())
    for code, n in codes.items():
        assert total(samples, "hitl_deadletter_total", code=code) == n


def test_router_and_sampler_agents_can_run_apart(kafka_bootstrap, tmp_path):
    from tests.conftest import free_port

    cfg_path = tmp_path / "config.yaml"
    cfg = write_config(cfg_path, kafka_bootstrap, eval_sample={"rate": 0.2})
    topics = cfg["topics"]
    raws = list(Simulator(seed=11, id_prefix="apart").messages(600))
    lines = tmp_path / "in.jsonl"
    lines.write_bytes(b"\n".join(raws) + b"\n")
    out = tmp_path / "decisions.jsonl"
    assert cli("replay", str(lines), "-c", str(cfg_path), "-o", str(out)).returncode == 0
    replayed = {r["id"]: r for r in map(orjson.loads, out.read_bytes().splitlines())}
    expected = sum(r["fate"] != "pass" for r in replayed.values())
    with (
        running_worker(cfg_path, free_port(), "--agents", "router"),
        running_worker(cfg_path, free_port(), "--agents", "sampler", log=tmp_path / "sampler.log"),
    ):
        produce(kafka_bootstrap, topics["predictions"], raws)
        records = drain(
            kafka_bootstrap, [topics["eval"], *[q["topic"] for q in cfg["queues"]]], until=expected
        )
    got = Counter(orjson.loads(r.value)["id"] for r in records)
    assert all(c == 1 for c in got.values())
    assert set(got) == {i for i, r in replayed.items() if r["fate"] != "pass"}
    evals = {orjson.loads(r.value)["id"] for r in records if r.topic == topics["eval"]}
    assert evals == {i for i, r in replayed.items() if r["fate"] == "eval"}
