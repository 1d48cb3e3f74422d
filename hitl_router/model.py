"""A small but real scikit-learn model whose predictions feed the simulator.

``DigitsCommittee`` trains a committee of logistic regressions, each on a
bootstrap resample of a training split of scikit-learn's bundled
``load_digits()`` data (no download). Its averaged probabilities are the
prediction and the members' probabilities are the ``ensemble`` field, so
committee disagreement is genuine, not invented.

Training takes well under a second; ``get_committee(seed)`` caches one
committee per seed per process.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

MODEL_NAME = "digits-committee@1"
CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
PIXEL_MAX = 16.0  # load_digits pixels are integers 0..16


class DigitsCommittee:
    """A committee of ``members`` classifiers for 8x8 digit images.

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
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from threadpoolctl import threadpool_limits

        if members < 2:
            raise ValueError("a committee needs at least 2 members")
        digits = load_digits()
        X = np.asarray(digits.data, dtype=np.float64)
        y = np.asarray(digits.target, dtype=np.int64)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seed, stratify=y
        )
        rng = np.random.default_rng(seed)
        self.members: list = []
        n = len(X_train)
        # one BLAS thread: these problems are tiny, and threaded BLAS on a busy machine
        # makes the fit 10-100x slower through oversubscription
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # convergence chatter; accuracy is checked
            for _ in range(members):
                idx = rng.integers(0, n, size=n)
                clf = LogisticRegression(C=C, max_iter=max_iter)
                clf.fit(X_train[idx] / PIXEL_MAX, y_train[idx])
                self.members.append(clf)
        # All members are multinomial linear models over the same 10 classes, so the whole
        # committee is one (n, 64) @ (64, members*10) product plus a softmax: identical to
        # each member's predict_proba (checked in the tests) and ~10x cheaper per batch.
        k = len(self.classes)
        self._W: np.ndarray | None
        self._b: np.ndarray | None
        if all(np.array_equal(m.classes_, np.arange(k)) for m in self.members):
            self._W = np.concatenate([m.coef_ for m in self.members]).T.copy()  # (64, m*k)
            self._b = np.concatenate([m.intercept_ for m in self.members])
        else:  # pragma: no cover - a bootstrap sample missing a whole class
            self._W = self._b = None
        self.holdout: tuple[np.ndarray, np.ndarray] = (X_test, y_test)
        probs, _ = self.predict_batch(X_test)
        self.accuracy = float(np.mean(probs.argmax(axis=1) == y_test))

    @property
    def n_members(self) -> int:
        return len(self.members)

    def predict_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(probs, members)`` for images ``X`` of shape (n, 64), pixels 0..16.

        ``members`` has shape (n_members, n, 10), each row a distribution;
        ``probs`` (n, 10) is their mean, rows renormalised to guard float error.
        """
        Xs = np.asarray(X, dtype=np.float64).reshape(-1, 64) / PIXEL_MAX
        k = len(self.classes)
        if self._W is not None:
            z = (Xs @ self._W + self._b).reshape(len(Xs), len(self.members), k)
            z -= z.max(axis=2, keepdims=True)
            np.exp(z, out=z)
            out = z.transpose(1, 0, 2)
        else:  # pragma: no cover
            out = np.zeros((len(self.members), len(Xs), k), dtype=np.float64)
            for j, clf in enumerate(self.members):
                out[j][:, clf.classes_] = clf.predict_proba(Xs)  # map columns by label
        out /= out.sum(axis=2, keepdims=True)
        probs = out.mean(axis=0)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs, out


@functools.lru_cache(maxsize=4)
def get_committee(seed: int = 0) -> DigitsCommittee:
    """The process-wide committee for ``seed`` (trained once, then cached)."""
    return DigitsCommittee(seed=seed)
