"""A small but real scikit-learn model whose predictions feed the simulator.

``Committee`` is a committee of multinomial logistic regressions, each fitted on a
bootstrap resample of its training set: the averaged probabilities are the prediction and
the members' probabilities are the ``ensemble`` field, so committee disagreement is
genuine, not invented. ``DigitsCommittee`` is the simulator's: one trained on a split of
scikit-learn's bundled ``load_digits()`` data (no download). ``evaluate-loop`` refits
committees on the labels a strategy bought.

Training takes well under a second; ``get_committee(seed)`` caches one digits
committee per seed per process.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

MODEL_NAME = "digits-committee@1"
CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
PIXEL_MAX = 16.0  # load_digits pixels are integers 0..16


class Committee:
    """Fitted members over classes ``0..k-1`` and their vectorised prediction.

    A member fitted on a sample missing some classes gives those classes probability 0.
    """

    def __init__(self, members: Sequence[Any], k: int, scale: float = 1.0) -> None:
        if len(members) < 2:
            raise ValueError("a committee needs at least 2 members")
        self.members = list(members)
        self.k = k
        self.scale = scale
        # All members are multinomial linear models, so the whole committee is one
        # (n, d) @ (d, members*k) product plus a softmax: identical to each member's
        # predict_proba (checked in the tests) and ~10x cheaper per batch. A member that
        # saw fewer classes gets -inf logits (probability 0) for the others.
        d = self.members[0].coef_.shape[1]
        self._W = np.zeros((d, len(self.members) * k))
        self._b = np.full(len(self.members) * k, -np.inf)
        for j, m in enumerate(self.members):
            cols = j * k + np.asarray(m.classes_, dtype=np.int64)
            coef, intercept = m.coef_, m.intercept_
            if len(m.classes_) == 2:  # a binary logistic regression: one row for class 1
                coef = np.vstack([-coef / 2, coef / 2])
                intercept = np.concatenate([-intercept / 2, intercept / 2])
            self._W[:, cols] = coef.T
            self._b[cols] = intercept

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        k: int,
        rng: np.random.Generator,
        members: int = 5,
        *,
        stratified: bool = True,
        scale: float = 1.0,
        C: float = 1.0,
        max_iter: int = 1000,
    ) -> Committee:
        """Fit ``members`` logistic regressions on bootstrap resamples of ``(X / scale, y)``.

        ``stratified``: each resample draws within each class as many items as it has,
        so every member sees every class the labels hold (a small seed set would
        otherwise leave members blind to a class at random). A single-class sample
        cannot be fitted: it raises ``ValueError``.
        """
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        y = np.asarray(y, dtype=np.int64)
        Xs = np.asarray(X, dtype=np.float64) / scale
        if len(np.unique(y)) < 2:
            raise ValueError("a committee needs labels of at least 2 classes")
        by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
        fitted = []
        # one BLAS thread: these problems are tiny, and threaded BLAS on a busy machine
        # makes the fit 10-100x slower through oversubscription
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # convergence chatter; accuracy is checked
            for _ in range(members):
                if stratified:
                    idx = np.concatenate([rng.choice(rows, size=len(rows)) for rows in by_class])
                else:
                    idx = rng.integers(0, len(y), size=len(y))
                clf = LogisticRegression(C=C, max_iter=max_iter)
                clf.fit(Xs[idx], y[idx])
                fitted.append(clf)
        return cls(fitted, k, scale)

    @property
    def n_members(self) -> int:
        return len(self.members)

    def predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(probs, members)`` for inputs ``X`` of shape (n, d).

        ``members`` has shape (n_members, n, k), each row a distribution;
        ``probs`` (n, k) is their mean, rows renormalised to guard float error.
        """
        Xs = np.asarray(X, dtype=np.float64).reshape(-1, self._W.shape[0]) / self.scale
        k, m = self.k, len(self.members)
        z = (Xs @ self._W + self._b).reshape(len(Xs), m, k)
        z -= z.max(axis=2, keepdims=True)
        np.exp(z, out=z)
        out = z.transpose(1, 0, 2)
        out /= out.sum(axis=2, keepdims=True)
        probs = out.mean(axis=0)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, out


class DigitsCommittee(Committee):
    """The simulator's committee of ``members`` classifiers for 8x8 digit images.

    Attributes after construction:
      ``name``, ``classes``: the model name and class names for messages;
      ``holdout``: ``(X, y)`` held-out images (float64, shape (n, 64), values
      0..16) and integer labels, never seen by any member;
      ``accuracy``: the committee's accuracy on ``holdout``.
    """

    name = MODEL_NAME
    classes = CLASSES

    def __init__(
        self,
        members: int = 5,
        seed: int = 0,
        test_size: float = 0.3,
        C: float = 1.0,
        max_iter: int = 1000,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if members < 2:
            raise ValueError("a committee needs at least 2 members")
        digits = load_digits()
        X = np.asarray(digits.data, dtype=np.float64)
        y = np.asarray(digits.target, dtype=np.int64)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seed, stratify=y
        )
        fitted = Committee.fit(
            X_train,
            y_train,
            len(self.classes),
            np.random.default_rng(seed),
            members,
            stratified=False,
            scale=PIXEL_MAX,
            C=C,
            max_iter=max_iter,
        )
        super().__init__(fitted.members, len(self.classes), PIXEL_MAX)
        self.holdout: tuple[np.ndarray, np.ndarray] = (X_test, y_test)
        probs, _ = self.predict_batch(X_test)
        self.accuracy = float(np.mean(probs.argmax(axis=1) == y_test))


@functools.lru_cache(maxsize=4)
def get_committee(seed: int = 0) -> DigitsCommittee:
    """The process-wide committee for ``seed`` (trained once, then cached)."""
    return DigitsCommittee(seed=seed)
