"""What the loop's checkpoints say: learning curves over seeds, labels saved, the paired
comparison with random, cost per accuracy point and the warning signs. Pure numpy.

Conventions, stated once:
- a curve is accuracy on the held-out set at each point of the grid of labels bought
  (0, R, 2R, ..., budget); a strategy that ran out of stream first has NaN after;
- *labels to reach* an accuracy count the seed set too (every strategy pays it: the cold
  start), read off the mean curve with linear interpolation between checkpoints;
- the *paired difference* of a strategy is, per seed, its mean accuracy minus random's
  over the grid points after the seed model, in points; its 95% interval is Student's t
  over seeds;
- *cost per accuracy point* is the cost of the labels bought (per queue) and of the
  refits, over the accuracy gained from the seed model, both averaged over seeds.

>>> import numpy as np
>>> labels_to_reach([0, 10, 20], np.array([0.5, 0.7, 0.9]), 0.8)
15.0
>>> labels_to_reach([0, 10, 20], np.array([0.5, 0.7, np.nan]), 0.8) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hitl_router.router.calibration import wilson

#: the warning signs' thresholds, as the alert rules have them
RECALL_SPREAD, RECALL_WIDENING = 0.3, 0.1
ECE_WARNING = 0.10
CONCENTRATION = 0.5  # selected items' class entropy under half the stream's
RANDOM_AHEAD_POINTS = 3  # consecutive checkpoints with random ahead
MIN_CONCENTRATION_LABELS = 50
SIGNS = ("recall_diverging", "ece_high", "concentrated", "random_ahead", "labels_noisier")


def labels_to_reach(grid: Sequence[int], curve: np.ndarray, target: float) -> float | None:
    """The first number of labels at which ``curve`` reaches ``target`` (interpolated),
    or None if it never does before its first NaN."""
    for k, value in enumerate(curve):
        if math.isnan(value):
            return None
        if value >= target:
            if k == 0:
                return float(grid[0])
            lo, hi = curve[k - 1], value
            x = grid[k - 1] + (target - lo) / (hi - lo) * (grid[k] - grid[k - 1])
            return round(float(x), 1)
    return None


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% Student's t interval of ``values`` (NaN bounds for one value)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def accuracy_matrix(seeds: Sequence[Mapping[str, Any]], name: str, grid: Sequence[int]) -> Any:
    """(seeds, grid) accuracies of strategy ``name``; NaN where it has no checkpoint."""
    out = np.full((len(seeds), len(grid)), np.nan)
    where = {g: k for k, g in enumerate(grid)}
    for s, result in enumerate(seeds):
        for cp in result["strategies"][name]["checkpoints"]:
            if cp["labels"] in where:
                out[s, where[cp["labels"]]] = cp["accuracy"]
    return out


def labels_help(seeds: Sequence[Mapping[str, Any]]) -> tuple[bool, float]:
    """Do the labels random bought improve the model at all? McNemar's exact test, pooled
    over seeds: of the held-out items on which random's final model and the seed model
    disagree in being right, are more gained than lost (one-sided, 5%)?"""
    from scipy.stats import binomtest

    gained = lost = 0
    for result in seeds:
        last = result["strategies"]["random"]["checkpoints"][-1]
        gained, lost = gained + last["gained"], lost + last["lost"]
    if gained + lost == 0:
        return False, 1.0
    p = float(binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue)
    return p < 0.05, p


def paired_difference(acc: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per seed: mean over the grid after the seed model of ``acc − base``, in points,
    over the points both have."""
    d = (acc[:, 1:] - base[:, 1:]) * 100.0
    return np.array([float(np.nanmean(row)) if np.isfinite(row).any() else np.nan for row in d])


def summarize(
    seeds: Sequence[Mapping[str, Any]],
    grid: Sequence[int],
    seed_size: int,
    costs: Mapping[str, float],
    label_cost: float,
    retrain_cost: float,
) -> dict[str, Any]:
    """Per strategy: mean curve and band, labels to reach random's final accuracy and the
    saving, the paired difference from random, cost per point and a verdict; plus the
    headline verdict for the config's routing."""
    names = list(seeds[0]["strategies"])
    total = [seed_size + g for g in grid]
    acc = {n: accuracy_matrix(seeds, n, grid) for n in names}
    random_final = float(np.nanmean(acc["random"][:, -1]))
    learns, p_learns = labels_help(seeds)
    out: dict[str, Any] = {}
    for n in names:
        a = acc[n]
        mean = _nanmean(a)
        # when labels do not help, random's final accuracy is noise around the seed
        # model's, and "reaching" it says nothing
        reach = labels_to_reach(total, mean, random_final) if learns else None
        if n == "random" and learns:  # the baseline: its budget, by definition
            reach = float(total[-1])
        budget_total = seed_size + grid[-1]
        entry: dict[str, Any] = {
            "mean": _list(mean),
            "sd": _list(_nansd(a)),
            "final": _num(mean[-1]),
            "labels_to_reach_random_final": _num(reach),
            "saving": None if reach is None else round(1.0 - reach / budget_total, 4),
            "cost": _cost(seeds, n, costs, label_cost, retrain_cost),
        }
        if n != "random":
            diff = paired_difference(a, acc["random"])
            diff = diff[np.isfinite(diff)]
            m, lo, hi = t_interval(diff) if len(diff) else (math.nan, math.nan, math.nan)
            entry["vs_random_points"] = {"mean": _num(m), "low": _num(lo), "high": _num(hi)}
            if not len(diff):
                entry["verdict"], entry["why"] = (
                    "does not pay",
                    (
                        f"it buys fewer than {grid[1]} labels from this stream: its rules "
                        "hardly ever fire"
                    ),
                )
            else:
                entry["verdict"], entry["why"] = _verdict(learns, entry["saving"], lo, hi)
            if math.isnan(mean[-1]) and len(diff):
                entry["why"] += "; it ran out of stream before spending the budget"
        out[n] = entry
    return {
        "grid": list(grid),
        "total_labels": total,
        "random_final": round(random_final, 4),
        "labels_help": {"verdict": learns, "p_value": _num(p_learns)},
        "strategies": out,
        "warnings": warning_counts(seeds, grid),
    }


def _verdict(learns: bool, saving: float | None, lo: float, hi: float) -> tuple[str, str]:
    if math.isnan(lo):
        return "unknown", "one seed gives no interval: run --seeds 2 or more"
    if not learns:
        return "does not pay", (
            "labels do not improve this model (random's final model is no better than the "
            "seed model on the held-out set), so no choice of items can pay"
        )
    if hi < 0:
        return "does not pay", "random sampling is ahead at equal labels"
    if lo > 0 and saving is not None and saving > 0:
        return "pays", f"reaches random's final accuracy with {saving:.0%} fewer labels"
    if lo > 0:
        return "does not pay", "ahead of random on average, but never reaches its final accuracy"
    return "does not pay", "no better than random within the seeds' noise"


def _cost(
    seeds: Sequence[Mapping[str, Any]],
    name: str,
    costs: Mapping[str, float],
    label_cost: float,
    retrain_cost: float,
) -> dict[str, Any]:
    spent, gains, refits, labels = [], [], [], []
    for result in seeds:
        run = result["strategies"][name]
        cps = run["checkpoints"]
        spent.append(sum(c * costs.get(q, label_cost) for q, c in run["spent"].items()))
        refits.append(run["refits"] * retrain_cost)
        labels.append(sum(run["spent"].values()))
        gains.append((cps[-1]["accuracy"] - cps[0]["accuracy"]) * 100.0)
    total = float(np.mean(spent) + np.mean(refits))
    gain = float(np.mean(gains))
    return {
        "labels": float(np.mean(labels)),
        "label_cost": round(float(np.mean(spent)), 4),
        "retrain_cost": round(float(np.mean(refits)), 4),
        "gain_points": round(gain, 4),
        "per_point": round(total / gain, 4) if gain > 0 else None,
    }


def recall_spread(recall: Sequence[float | None]) -> float:
    values = [r for r in recall if r is not None]
    return max(values) - min(values) if values else math.nan


def seed_warnings(result: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each strategy's warning signs on one seed: the first checkpoint (labels bought)
    where each fired, and the value that fired it."""
    runs = result["strategies"]
    base = {c["labels"]: c for c in runs["random"]["checkpoints"]}
    out: dict[str, list[dict[str, Any]]] = {}
    for name, run in runs.items():
        fired: dict[str, dict[str, Any]] = {}

        def fire(sign: str, labels: int, value: float, fired: dict[str, Any] = fired) -> None:
            fired.setdefault(sign, {"sign": sign, "labels": labels, "value": round(value, 4)})

        narrowest = math.inf
        ahead = 0
        for k, cp in enumerate(run["checkpoints"]):
            spread = recall_spread(cp["recall"])
            narrowest = min(narrowest, spread)
            if k == 0:
                continue
            if spread > RECALL_SPREAD and spread - narrowest > RECALL_WIDENING:
                fire("recall_diverging", cp["labels"], spread)
            if cp["ece"] is not None and cp["ece"] > ECE_WARNING:
                fire("ece_high", cp["labels"], cp["ece"])
            sel, strm = cp["selected_entropy"], cp["stream_entropy"]
            if (
                name != "random"
                and cp["labels"] >= MIN_CONCENTRATION_LABELS
                and sel is not None
                and strm is not None
                and sel < CONCENTRATION * strm
            ):
                fire("concentrated", cp["labels"], sel / strm)
            other = base.get(cp["labels"])
            if name == "random" or other is None:
                continue
            ahead = ahead + 1 if other["accuracy"] > cp["accuracy"] else 0
            if ahead >= RANDOM_AHEAD_POINTS:
                fire("random_ahead", cp["labels"], other["accuracy"] - cp["accuracy"])
            if cp["labels"] and other["labels"]:
                low = wilson(cp["wrong_labels"], cp["labels"])[0]
                high = wilson(other["wrong_labels"], other["labels"])[1]
                if low > high:
                    fire("labels_noisier", cp["labels"], cp["wrong_labels"] / cp["labels"])
        out[name] = list(fired.values())
    return out


def warning_counts(seeds: Sequence[Mapping[str, Any]], grid: Sequence[int]) -> dict[str, Any]:
    """Per strategy and sign: on how many seeds it fired."""
    counts: dict[str, dict[str, int]] = {}
    for result in seeds:
        for name, signs in seed_warnings(result).items():
            mine = counts.setdefault(name, {})
            for s in signs:
                mine[s["sign"]] = mine.get(s["sign"], 0) + 1
    ordered = {n: {s: c[s] for s in SIGNS if s in c} for n, c in counts.items()}
    return {"seeds": len(seeds), "fired": ordered}


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Mean over seeds per column; NaN where any seed is missing (a curve ends where
    its shortest seed does, so the mean is never of a subset)."""
    return a.mean(axis=0)  # type: ignore[no-any-return]


def _nansd(a: np.ndarray) -> np.ndarray:
    return a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])  # type: ignore[no-any-return]


def _num(v: Any) -> Any:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else round(v, 4)


def _list(a: np.ndarray) -> list[float | None]:
    return [_num(v) for v in a]
