"""Uncertainty scores, vectorised over a batch of predictions.

All functions take arrays of probabilities whose last axis is the class axis
and return one float per prediction. Natural logarithms throughout.

>>> import numpy as np
>>> s = scores(np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]]))
>>> [round(float(v), 4) for v in s["max_prob"]], [round(float(v), 4) for v in s["margin"]]
([0.7, 0.5], [0.5, 0.0])
>>> round(float(s["entropy"][1]), 4)  # log 2
0.6931
"""

from __future__ import annotations

import numpy as np

#: Scores every prediction has.
BASE_SCORES = ("max_prob", "margin", "entropy", "entropy_norm")
#: Scores only a prediction with an ``ensemble`` has (NaN otherwise).
ENSEMBLE_SCORES = ("ensemble_kl", "vote_entropy", "bald")
SCORE_NAMES = BASE_SCORES + ENSEMBLE_SCORES

_TINY = np.finfo(np.float64).tiny


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) along the last axis, with 0·log 0 = 0."""
    return 0.0 - np.sum(p * np.log(np.maximum(p, _TINY)), axis=-1)  # 0.0 - x: never -0.0


def scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Least-confidence, margin and entropy scores of ``probs`` (n, K), K ≥ 2.

    ``entropy_norm`` is the entropy divided by log K, so it lies in [0, 1]
    whatever the number of classes.
    """
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[-1]
    top2 = np.partition(p, k - 2, axis=-1)[..., k - 2 :]
    h = entropy(p)
    return {
        "max_prob": top2[..., 1],
        "margin": top2[..., 1] - top2[..., 0],
        "entropy": h,
        "entropy_norm": h / np.log(k),
    }


def ensemble_scores(members: np.ndarray) -> dict[str, np.ndarray]:
    """Committee disagreement of ``members`` (n, M, K): M members' probabilities.

    - ``ensemble_kl``: mean over members of KL(member ‖ committee mean).
    - ``vote_entropy``: entropy of the members' hard votes (argmax), in nats.
    - ``bald``: mutual information, H(committee mean) − mean member entropy.

    With the committee mean as reference the two are equal by identity
    (the generalised Jensen–Shannon divergence); both are exported because
    users configure either name.

    >>> import numpy as np
    >>> agree = np.array([[[0.9, 0.1], [0.9, 0.1]]])
    >>> [float(v[0]) for v in ensemble_scores(agree).values()]
    [0.0, 0.0, 0.0]
    >>> split = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    >>> [round(float(v[0]), 4) for v in ensemble_scores(split).values()]
    [0.6931, 0.6931, 0.6931]
    """
    m = np.asarray(members, dtype=np.float64)
    n, n_members, k = m.shape
    mean = m.mean(axis=1)
    log_m = np.log(np.maximum(m, _TINY))
    log_mean = np.log(np.maximum(mean, _TINY))[:, None, :]
    kl = np.sum(m * (log_m - log_mean), axis=-1).mean(axis=1)
    votes = m.argmax(axis=-1)
    cells = (np.arange(n)[:, None] * k + votes).ravel()  # (row, voted class) as one index
    counts = np.bincount(cells, minlength=n * k).reshape(n, k).astype(np.float64)
    member_entropy = -np.sum(m * log_m, axis=-1).mean(axis=1)
    return {
        "ensemble_kl": np.maximum(kl, 0.0),
        "vote_entropy": entropy(counts / n_members),
        "bald": np.maximum(entropy(mean) - member_entropy, 0.0),
    }


def apply_temperature(probs: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Temperature-scale probabilities: softmax(log p / T) along the last axis.

    ``temperature`` is a scalar or broadcastable against ``probs[..., :1]``.
    T = 1 returns the input; T > 1 softens, T < 1 sharpens.

    >>> import numpy as np
    >>> apply_temperature(np.array([[0.8, 0.2]]), 1e9).round(3).tolist()
    [[0.5, 0.5]]
    """
    p = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.maximum(p, _TINY)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    e[p <= 0.0] = 0.0
    return e / e.sum(axis=-1, keepdims=True)
