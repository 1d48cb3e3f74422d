"""Diversity: against query concentration, a per-queue cap on the share of items with
the same key among the last items the queue took; and the entropy of the
predicted-class mix in each queue against the stream's (a warning sign of routing that
keeps sending the same cluster of ambiguous items).

A queue's ``diversity: {key: pred_class, max_share: 0.3, window: 500}`` passes an item
whose key already holds ``max_share`` of the queue's last ``window`` items (the item's
reason: ``diversity``). Keys: ``pred_class`` (the predicted class: its name, else its
index), or ``{feature: <name>, bucket: <width>}`` (a feature's value; numbers are cut
into buckets of ``width``, strings taken as they are: an upstream embedding's cluster
id or hash goes here). An item without the feature has the key ``None``, capped alike.

>>> cap = DiversityCap(DiversitySpec(max_share=0.5, window=4))
>>> [cap.admit(k) for k in ["a", "a", "a", "b", "a", "b", "a"]]
[True, True, False, True, False, True, True]
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hitl_router.errors import ConfigError
from hitl_router.router.ring import Ring

#: items per window of the class-mix entropy (queues and the stream)
ENTROPY_WINDOW = 1000


@dataclass(frozen=True)
class DiversitySpec:
    max_share: float
    window: int = 500
    #: None: the predicted class; else (feature name, bucket width or None)
    feature: str | None = None
    bucket: float | None = None

    def describe(self) -> dict[str, Any]:
        key: Any = "pred_class"
        if self.feature is not None:
            key = {"feature": self.feature}
            if self.bucket is not None:
                key["bucket"] = self.bucket
        return {"key": key, "max_share": self.max_share, "window": self.window}

    def keys(self, docs: Sequence[Mapping[str, Any]], pred: Sequence[int]) -> list[Hashable]:
        """Each item's key."""
        if self.feature is None:
            out: list[Hashable] = []
            for doc, k in zip(docs, pred, strict=True):
                classes = doc.get("classes")
                out.append(classes[k] if classes else k)
            return out
        keys: list[Hashable] = []
        for doc in docs:
            v = (doc.get("features") or {}).get(self.feature)
            if self.bucket is not None and isinstance(v, int | float) and not isinstance(v, bool):
                v = math.floor(v / self.bucket)
            keys.append(v)
        return keys


def parse_diversity(value: Any, key: str) -> DiversitySpec:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected {{key: ..., max_share: s, window: n}}, got {value!r}")
    unknown = set(value) - {"key", "max_share", "window"}
    if unknown:
        raise ConfigError(
            f"{key}.{sorted(unknown)[0]}", "unknown key; expected key, max_share, window"
        )
    share = value.get("max_share")
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise ConfigError(f"{key}.max_share", f"must be a number in (0, 1], got {share!r}")
    window = value.get("window", 500)
    if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= 100_000:
        raise ConfigError(f"{key}.window", f"must be an integer from 2 to 100000, got {window!r}")
    raw = value.get("key", "pred_class")
    if raw == "pred_class":
        return DiversitySpec(float(share), window)
    if isinstance(raw, Mapping) and isinstance(raw.get("feature"), str) and raw["feature"]:
        extra = set(raw) - {"feature", "bucket"}
        if extra:
            raise ConfigError(
                f"{key}.key.{sorted(extra)[0]}", "unknown key; expected feature, bucket"
            )
        bucket = raw.get("bucket")
        if bucket is not None and (
            isinstance(bucket, bool) or not isinstance(bucket, int | float) or not bucket > 0
        ):
            raise ConfigError(f"{key}.key.bucket", f"must be a positive number, got {bucket!r}")
        return DiversitySpec(float(share), window, raw["feature"], bucket and float(bucket))
    raise ConfigError(
        f"{key}.key", f"expected pred_class or {{feature: <name>, bucket: <width>}}, got {raw!r}"
    )


class DiversityCap:
    """One queue's window of keys on one worker."""

    def __init__(self, spec: DiversitySpec) -> None:
        self.spec = spec
        self.window: deque[Hashable] = deque()
        self.counts: Counter[Hashable] = Counter()
        self.dropped = 0

    def admit(self, key: Hashable) -> bool:
        """Take an item with ``key`` unless its key would then hold more than
        ``max_share`` of the window (a window not yet full counts as full: the cap holds
        from the first items; a key's first item is always taken)."""
        spec, window = self.spec, self.window
        held = self.counts[key]
        leaving = 1 if len(window) >= spec.window and window[0] == key else 0
        if held and held + 1 - leaving > spec.max_share * spec.window:
            self.dropped += 1
            return False
        self.window.append(key)
        self.counts[key] += 1
        if len(self.window) > spec.window:
            old = self.window.popleft()
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        return True

    def top_share(self) -> float:
        """The largest share of one key in the window."""
        return max(self.counts.values()) / len(self.window) if self.window else 0.0


class ClassMix:
    """The predicted classes (indices) of the last ``size`` items, and their entropy
    (nats), counted with ``numpy.bincount`` when asked."""

    def __init__(self, size: int = ENTROPY_WINDOW) -> None:
        self.ring = Ring(size, np.int64)

    @property
    def count(self) -> int:
        return self.ring.count

    def add(self, classes: np.ndarray) -> None:
        self.ring.extend(np.asarray(classes, dtype=np.int64))

    def entropy(self) -> float:
        if not self.ring.count:
            return float("nan")
        counts = np.bincount(self.ring.held())
        p = counts[counts > 0] / self.ring.count
        return float(-(p * np.log(p)).sum())
