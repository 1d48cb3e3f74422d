"""Drift's cost per prediction next to the routing decision's, on the benchmark workload.

No broker: both are pure functions of the worker's batches. CPU time (``process_time``),
best of three passes over the same batches of ``batch`` messages:

- *decide*: ``decide_batch`` — validation, eval draw, calibration, scores, rules;
- *drift*: ``DriftMonitor.update`` on the parsed predictions of each batch, windows of
  ``window`` against a profile built from a separate pool of the same model.

``python -m bench.drift_cost`` prints the figures; ``bench.run`` records them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from hitl_router.router.config import parse_config
from hitl_router.router.decision import Policy, decide_batch
from hitl_router.router.drift import DriftMonitor
from hitl_router.router.drift_pool import build_profile
from hitl_router.simulate import Simulator


def measure(
    messages: Sequence[bytes], window: int = 1000, batch: int = 1000, pool: int = 20_000
) -> dict[str, Any]:
    """µs of CPU per prediction for the decision and for drift, and their ratio."""
    docs = (orjson.loads(m) for m in Simulator(seed=12_345).messages(pool))
    profile = build_profile(docs, window=window, bootstrap=200, seed=0)
    policy = Policy(
        parse_config(
            {
                "queues": [
                    {"name": "flagged", "when": {"flags_any": ["pii", "user_report"]}},
                    {"name": "disagreement", "when": {"ensemble_kl_above": 0.05}},
                    {
                        "name": "uncertain",
                        "when": {"any": [{"max_prob_below": 0.7}, {"margin_below": 0.1}]},
                    },
                ]
            }
        )
    )
    chunks = [list(messages[i : i + batch]) for i in range(0, len(messages), batch)]
    decided = [decide_batch(c, policy) for c in chunks]

    def decide() -> None:
        for c in chunks:
            decide_batch(c, policy)

    reports = 0

    def drift() -> None:
        nonlocal reports
        monitor = DriftMonitor(profile, window=window)
        reports = sum(len(monitor.update(d.docs)) for d in decided)

    n = len(messages)
    decide_us = _best(decide) / n * 1e6
    drift_us = _best(drift) / n * 1e6
    return {
        "ok": True,
        "predictions": n,
        "window": window,
        "batch": batch,
        "reports": reports,
        "decide_us": decide_us,
        "drift_us": drift_us,
        "drift_over_decide": drift_us / decide_us,
    }


def _best(fn: Any, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    messages = list(Simulator(seed=7, flag_rate=0.01, malformed_rate=0.001).messages(100_000))
    res = measure(messages)
    print(
        f"decide {res['decide_us']:.1f} µs/prediction, drift {res['drift_us']:.1f} "
        f"µs/prediction ({res['drift_over_decide']:.0%} of the decision), "
        f"{res['reports']} reports, W={res['window']}"
    )


if __name__ == "__main__":
    main()
