"""The learning curves as a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hitl_router.errors import InputError

COLORS = {
    "config": "#d62728",
    "random": "#000000",
    "max_prob": "#1f77b4",
    "margin": "#2ca02c",
    "entropy": "#9467bd",
    "ensemble_kl": "#ff7f0e",
}


def plot(summary: dict[str, Any], title: str, path: Path) -> None:
    """Left: accuracy on the held-out set against labels (seed set included), mean over
    seeds with a ±1 sd band, random's final accuracy dashed. Right: each strategy's mean
    paired difference from random at each checkpoint."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise InputError("the learning-curve PNG needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(summary["total_labels"], dtype=np.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100)
    random_mean = _arr(summary["strategies"]["random"]["mean"])
    for name, s in summary["strategies"].items():
        mean, sd = _arr(s["mean"]), _arr(s["sd"])
        color = COLORS.get(name)
        width = 2.4 if name in ("config", "random") else 1.2
        left.plot(x, mean, label=_label(name, s), color=color, linewidth=width)
        left.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.12, linewidth=0)
        if name != "random":
            right.plot(x, (mean - random_mean) * 100.0, color=color, linewidth=width, label=name)
    left.axhline(summary["random_final"], color="#000000", linestyle="--", linewidth=0.8)
    left.set_xlabel("labels (seed set included)")
    left.set_ylabel("accuracy on the held-out set")
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)
    right.axhline(0.0, color="#000000", linewidth=0.8)
    right.set_xlabel("labels (seed set included)")
    right.set_ylabel("accuracy minus random's (points)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version stamp: reproducible bytes
    plt.close(fig)


def _arr(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _label(name: str, s: dict[str, Any]) -> str:
    if name == "random":
        return "random (eval-sample draw)"
    saving = s.get("saving")
    if s.get("verdict") == "pays" and saving:
        return f"{name} (pays: {saving:.0%} fewer labels)"
    return f"{name} ({s.get('verdict')})"
