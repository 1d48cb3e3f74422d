"""A fixed-size ring buffer of numbers (numpy), the last ``size`` values kept: the
windows of target rates (quantiles) and of class mixes (entropies).

>>> r = Ring(3)
>>> r.extend(np.array([1.0, 2.0])); r.extend(np.array([3.0, 4.0])); r.ordered().tolist()
[2.0, 3.0, 4.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Ring:
    __slots__ = ("buf", "size", "count", "head")

    def __init__(self, size: int, dtype: Any = np.float64) -> None:
        self.buf = np.zeros(size, dtype=dtype)
        self.size = size
        self.count = 0  # values held (≤ size)
        self.head = 0  # where the next value goes

    def extend(self, values: np.ndarray) -> None:
        values = values[-self.size :]
        end = self.head + len(values)
        if end <= self.size:
            self.buf[self.head : end] = values
        else:
            cut = self.size - self.head
            self.buf[self.head :] = values[:cut]
            self.buf[: end - self.size] = values[cut:]
        self.head = end % self.size
        self.count = min(self.size, self.count + len(values))

    def held(self) -> np.ndarray:
        """The values held, in no particular order (a view)."""
        return self.buf[: self.count]

    def ordered(self) -> np.ndarray:
        """The values held, oldest first (a copy)."""
        if self.count < self.size:
            return self.buf[: self.count].copy()
        return np.concatenate([self.buf[self.head :], self.buf[: self.head]])
