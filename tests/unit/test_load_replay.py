"""Load control in ``replay``: the summary shows the load a config would give — review
items and items dropped per queue and minute, the target-rate threshold over time — and
two replays of the same input agree line for line."""

from __future__ import annotations

import numpy as np
import orjson
import yaml

from hitl_router.cli import main
from hitl_router.simulate import Simulator

PER_MINUTE = [200, 200, 200, 2000, 2000, 200]  # predictions per minute: a 10× burst
BUDGET = 50
START = 1_800_000_000 // 60 * 60  # a minute boundary


def _stream(path):
    rng = np.random.default_rng(5)
    sim = Simulator(seed=21, flag_rate=0.0)
    raws = list(sim.messages(sum(PER_MINUTE)))
    times = np.concatenate(
        [np.sort(rng.uniform(m * 60, (m + 1) * 60, n)) for m, n in enumerate(PER_MINUTE)]
    )
    with path.open("wb") as f:
        for raw, t in zip(raws, times.tolist(), strict=True):
            doc = orjson.loads(raw)
            doc["ts"] = START + t
            f.write(orjson.dumps(doc) + b"\n")


def test_replay_reports_the_load_a_budgeted_target_rate_queue_would_give(tmp_path, capsys):
    src, cfg = tmp_path / "in.jsonl", tmp_path / "load.yaml"
    _stream(src)
    cfg.write_text(
        yaml.safe_dump(
            {
                "eval_sample": {"rate": 0.02, "salt": "load"},
                "queues": [
                    {
                        "name": "uncertain",
                        "when": {"max_prob_below": {"target_rate": 0.1, "window": 2000}},
                        "budget": {"items": BUDGET, "per": "minute"},
                    }
                ],
            }
        )
    )
    runs = []
    for k in range(2):
        out = tmp_path / f"out{k}.jsonl"
        assert main(["replay", str(src), "-c", str(cfg), "-o", str(out)]) == 0
        runs.append((out.read_bytes(), orjson.loads(capsys.readouterr().out)))
    assert runs[0] == runs[1]  # deterministic
    lines = [orjson.loads(x) for x in runs[0][0].splitlines()]
    summary = runs[0][1]
    load = summary["load"]["queues"]["uncertain"]
    minutes = [str(START // 60 + m) for m in range(len(PER_MINUTE))]
    routed = [load["per_minute"].get(m, 0) for m in minutes]
    dropped = [load["dropped_per_minute"].get(m, 0) for m in minutes]
    # calm minutes: ~10% of 200 routed, none dropped; the burst: the budget, within 10%
    for m, n in enumerate(PER_MINUTE):
        assert routed[m] <= BUDGET, routed
        if n == 2000:
            assert routed[m] >= 0.9 * BUDGET and dropped[m] > 100, (routed, dropped)
        else:
            assert dropped[m] <= 0.1 * routed[m] and 10 <= routed[m] <= 30, (routed, dropped)
    assert load["dropped"] == sum(dropped) == sum(r.get("dropped") is not None for r in lines)
    assert load["budget"] == {"items": BUDGET, "per": "minute", "window": 2000}
    thresholds = summary["load"]["thresholds"]["uncertain/max_prob_below"]
    # the threshold at the end of each minute a batch of replay ended in
    assert set(thresholds) <= set(minutes) and len(thresholds) >= 3, thresholds
    assert all(0.3 < v < 1.0 for v in thresholds.values())
    # the replay lines say why an item that matched passed
    why = next(r["dropped"] for r in lines if r.get("dropped"))
    assert why["queue"] == "uncertain" and why["reason"] == "budget"
