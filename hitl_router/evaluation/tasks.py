"""The tasks ``evaluate-loop`` runs on: data scikit-learn ships, split for a closed loop.

- ``digits``: the simulator's task (8x8 digit images, 10 classes), drift as the simulator
  makes it (washed-out, noisy images).
- ``separable``: well-separated Gaussian classes (``make_classification``, 3 classes,
  ``class_sep=2``), where uncertainty sampling is known to help a linear model.
- ``noise``: the same inputs with labels drawn uniformly at random: nothing to learn, so
  no strategy can beat another.

Each seed draws its own held-out split, seed set and stream order. The held-out set is
split off first and never enters the stream, so no strategy can select from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hitl_router.errors import InputError

TASKS = ("digits", "separable", "noise")
SYNTHETIC_ITEMS = 6000
HOLDOUT_SHARE = 0.3

Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Task:
    """One seed's data: a pool (seed set + stream) and a held-out set, disjoint by row.

    ``pool_rows``/``holdout_rows`` index the task's full dataset, so disjointness is
    checkable; ``degrade`` turns inputs into their drifted version.
    """

    name: str
    classes: tuple[str, ...]
    X: np.ndarray
    y: np.ndarray
    pool_rows: np.ndarray
    holdout_rows: np.ndarray
    scale: float
    degrade: Degrade
    #: per-item difficulty in [0, 1] for annotators: 1 − a reference model's probability
    #: of the true class, cross-fitted over the pool
    difficulty: np.ndarray

    @property
    def k(self) -> int:
        return len(self.classes)


def _digits() -> tuple[np.ndarray, np.ndarray, float, Degrade]:
    from sklearn.datasets import load_digits

    from hitl_router.model import PIXEL_MAX
    from hitl_router.simulate import degrade

    d = load_digits()
    return np.asarray(d.data, np.float64), np.asarray(d.target, np.int64), PIXEL_MAX, degrade


def _synthetic(noise: bool) -> tuple[np.ndarray, np.ndarray, float, Degrade]:
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=SYNTHETIC_ITEMS,
        n_features=20,
        n_informative=5,
        n_redundant=0,
        n_classes=3,
        n_clusters_per_class=1,
        class_sep=2.0,
        flip_y=0.0,
        random_state=0,
    )
    if noise:
        y = np.random.default_rng(0).integers(0, 3, size=len(y))

    def shift(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return X * 0.6 + rng.normal(0.0, 1.0, size=X.shape)  # type: ignore[no-any-return]

    return np.asarray(X, np.float64), np.asarray(y, np.int64), 1.0, shift


def stream_size(name: str, seed_size: int) -> int:
    """How many predictions a seed's stream holds: the pool less the seed set."""
    n = len(_digits()[1]) if name == "digits" else SYNTHETIC_ITEMS
    return n - int(round(HOLDOUT_SHARE * n)) - seed_size


def load_task(name: str, seed: int) -> Task:
    """Task ``name`` split for ``seed`` (deterministic)."""
    if name not in TASKS:
        raise InputError(f"--task: unknown task {name!r} (known: {', '.join(TASKS)})")
    X, y, scale, degrade = _digits() if name == "digits" else _synthetic(name == "noise")
    k = int(y.max()) + 1
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(y))
    n_hold = int(round(HOLDOUT_SHARE * len(y)))
    holdout, pool = np.sort(order[:n_hold]), order[n_hold:]
    return Task(
        name=name,
        classes=tuple(str(c) for c in range(k)),
        X=X,
        y=y,
        pool_rows=pool,
        holdout_rows=holdout,
        scale=scale,
        degrade=degrade,
        difficulty=_difficulty(X, y, pool, k, scale),
    )


def _difficulty(X: np.ndarray, y: np.ndarray, pool: np.ndarray, k: int, scale: float) -> np.ndarray:
    """1 − p(true class) under a reference model that did not see the item: two folds of
    the pool, each judged by a committee fitted on the other. How hard an item is for
    anybody; annotators' errors follow it, no strategy sees it."""
    from hitl_router.model import Committee

    halves = (pool[::2], pool[1::2])
    p_true = np.full(len(y), np.nan)  # held-out items: never labelled, never judged
    for fit, judge in ((halves[0], halves[1]), (halves[1], halves[0])):
        ref = Committee.fit(X[fit], y[fit], k, np.random.default_rng(0), members=2, scale=scale)
        probs, _ = ref.predict_batch(X[judge])
        p_true[judge] = probs[np.arange(len(judge)), y[judge]]
    return 1.0 - p_true  # type: ignore[no-any-return]
