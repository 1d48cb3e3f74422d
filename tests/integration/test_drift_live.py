"""The live drift agent on the real local Kafka reports what ``replay --drift-out`` does,
from the same code, and exports the drift gauges."""

from __future__ import annotations

import uuid

import orjson
import pytest

from hitl_router.simulate import Simulator, write_jsonl
from tests.integration.helpers import cli, drain, produce, running_worker, scrape, write_config

pytestmark = pytest.mark.kafka

WINDOW = 200


def test_live_drift_reports_match_replay(kafka_bootstrap, tmp_path):
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, 4000, seed=31)
    profile = tmp_path / "profile.json"
    res = cli(
        "profile", str(pool), "-o", str(profile), "--window", str(WINDOW), "--bootstrap", "300"
    )
    assert res.returncode == 0, res.stderr.decode()
    cfg_path = tmp_path / "config.yaml"
    # one partition: windows are "in arrival order", the same order replay reads
    reports_topic = f"drift-reports-{uuid.uuid4().hex[:8]}"
    cfg = write_config(
        cfg_path,
        kafka_bootstrap,
        kafka={"partitions": 1},
        topics={"drift_reports": reports_topic},
        drift={"profile": str(profile), "window": WINDOW},
    )
    raws = list(Simulator(seed=32, drift_at=6 * WINDOW, id_prefix="drift").messages(12 * WINDOW))
    src = tmp_path / "stream.jsonl"
    src.write_bytes(b"\n".join(raws) + b"\n")
    offline = tmp_path / "reports.jsonl"
    res = cli(
        "replay",
        str(src),
        "-c",
        str(cfg_path),
        "-o",
        str(tmp_path / "d.jsonl"),
        "--drift-out",
        str(offline),
    )
    assert res.returncode == 0, res.stderr.decode()
    expected = [orjson.loads(x) for x in offline.read_bytes().splitlines()]
    assert expected, "replay wrote no drift report"
    drifted = sorted({r["window"] for r in expected if r["window_drifted"]})
    assert drifted and drifted[0] <= 7  # drift starts in window 6: reported within 2 windows
    port = cfg["metrics"]["port"]
    with running_worker(cfg_path, port):
        produce(kafka_bootstrap, cfg["topics"]["predictions"], raws)
        records = drain(kafka_bootstrap, [reports_topic], until=len(expected), idle=2)
        samples = scrape(port)
    live = [orjson.loads(r.value) for r in records]
    assert all(
        r.key == f"{m['model']}/{m['feature']}/{m['method']}".encode()
        for r, m in zip(records, live, strict=True)
    )

    def key(r):
        return (r["model"], r["window"], r["feature"], r["method"])

    assert sorted(map(key, live)) == sorted(map(key, expected))
    by_key = {key(r): r for r in live}
    for want in expected:
        got = by_key[key(want)]
        assert got["score"] == pytest.approx(want["score"], rel=1e-9, abs=1e-12)
        for field in (
            "threshold",
            "drifted",
            "window_drifted",
            "n",
            "first_id",
            "last_id",
            "alarm",
        ):
            assert got[field] == want[field], (field, want)
    # the worker whose windows these are, in every report
    assert len({r["worker"] for r in live}) == 1 and ":" in live[0]["worker"]
    # the alarm: 4 of the last 6 windows drifted; it came on once, and is on at the end
    verdicts = {r["window"]: (r["window_drifted"], r["alarm"]) for r in expected}
    alarms = [verdicts[w][1] for w in sorted(verdicts)]
    onsets = sum(1 for i, a in enumerate(alarms) if a and (i == 0 or not alarms[i - 1]))
    assert onsets == 1 and alarms[-1]
    model = (("model", expected[0]["model"]),)
    assert samples[("hitl_drift_alarms_total", model)] == onsets
    assert samples[("hitl_drift_alarm", model)] == 1.0
    n_drifted = sum(d for d, _ in verdicts.values())
    drifted_true = (("drifted", "true"), ("model", expected[0]["model"]))
    assert samples[("hitl_drift_windows_total", drifted_true)] == n_drifted
    # drift.reports is compacted: it keeps the latest window of each test
    from tests.integration.helpers import topic_config

    assert topic_config(kafka_bootstrap, reports_topic, "cleanup.policy") == "compact"
    last = max(r["window"] for r in expected)
    final = [r for r in expected if r["window"] == last]
    for r in final:
        labels = (("feature", r["feature"]), ("method", r["method"]), ("model", r["model"]))
        assert samples[("hitl_drift_score", labels)] == pytest.approx(r["score"])
        assert samples[("hitl_drift_threshold", labels)] == pytest.approx(r["threshold"])
        assert samples[("hitl_drift_detected", labels)] == float(r["drifted"])
