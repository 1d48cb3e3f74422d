"""The uncontaminated evaluation sample: a uniform draw made before any rule.

An item is drawn when ``u(salt, id) < rate``, where ``u`` is a keyed BLAKE2b
hash of the id mapped to [0, 1). The draw depends on nothing but the salt and
the id — not on scores, flags, order, batch or partition — so a redelivered
or replayed prediction gets the same fate, and the router agent can exclude
exactly the items the sampler agent takes without talking to it.

>>> sampler = EvalSampler(rate=0.5, salt="s")
>>> sampler.draw(["a", "b", "c", "d"]).tolist() == sampler.draw(["a", "b", "c", "d"]).tolist()
True
>>> EvalSampler(rate=0.0, salt="s").draw(["a"]).tolist(), EvalSampler(1.0, "s").draw(["a"]).tolist()
([False], [True])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_SCALE = float(2**64)


class EvalSampler:
    """Deterministic uniform sampler of prediction ids at ``rate``."""

    def __init__(self, rate: float, salt: str) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        if not salt:
            raise ValueError("salt must be a non-empty string")
        self.rate = rate
        self.salt = salt
        key = salt.encode("utf-8")
        self._key = key if len(key) <= 64 else hashlib.blake2b(key).digest()
        # a keyed BLAKE2b hashes the key as a first block: hash it once, copy per id
        self._keyed = hashlib.blake2b(digest_size=8, key=self._key)

    def uniform(self, ids: Sequence[str]) -> np.ndarray:
        """The draw's uniform variate in [0, 1) for each id: its 8-byte digest read as a
        big-endian integer, over 2**64."""
        keyed = self._keyed
        digests: list[bytes] = []
        append = digests.append
        for i in ids:
            h = keyed.copy()
            h.update(i.encode("utf-8"))
            append(h.digest())
        out = np.frombuffer(b"".join(digests), dtype=">u8")
        return out.astype(np.float64) / _SCALE

    def draw(self, ids: Sequence[str]) -> np.ndarray:
        """Boolean array: which ids belong to the evaluation sample."""
        if self.rate <= 0.0:
            return np.zeros(len(ids), dtype=bool)
        if self.rate >= 1.0:
            return np.ones(len(ids), dtype=bool)
        return self.uniform(ids) < self.rate
