"""Kafka's default partitioner for a whole batch of keys, with numpy.

Outputs are keyed by prediction id and must land where any Kafka producer would put
them: ``murmur2(key) & 0x7fffffff % partitions`` (the Java client's ``Utils.murmur2``,
which aiokafka and kafka-python port to pure Python). Called per output, that port cost
~4% of the worker's time (profile in BENCHMARKS.md); here keys of one length are hashed
together, 4 bytes per numpy step for the whole group.

>>> keys = [b"p-00000001", b"p-00000002", b"abc", b""]
>>> partitions_of(keys, 6).tolist()
[0, 4, 3, 3]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_SEED = np.uint32(0x9747B28C)
_M = np.uint32(0x5BD1E995)


def murmur2_batch(keys: Sequence[bytes]) -> np.ndarray:
    """The 32-bit murmur2 hash of each key (uint32), as Kafka's Java client computes it."""
    out = np.empty(len(keys), dtype=np.uint32)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    with np.errstate(over="ignore"):
        for length, rows in by_length.items():
            out[rows] = _murmur2_same_length([keys[i] for i in rows], length)
    return out


def partitions_of(keys: Sequence[bytes], partitions: int) -> np.ndarray:
    """The partition (0 … partitions-1) Kafka's default partitioner gives each key."""
    return (murmur2_batch(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)


def _murmur2_same_length(keys: list[bytes], length: int) -> np.ndarray:
    g = len(keys)
    data = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(g, length)
    h = np.full(g, _SEED ^ np.uint32(length), dtype=np.uint32)
    whole = length // 4 * 4
    if whole:
        blocks = np.ascontiguousarray(data[:, :whole]).view("<u4")
        for j in range(blocks.shape[1]):
            k = blocks[:, j] * _M
            k ^= k >> np.uint32(24)
            k *= _M
            h *= _M
            h ^= k
    tail = length - whole
    if tail:
        for t in range(tail - 1, -1, -1):  # bytes 3, 2, 1 of the tail, as the Java switch
            h ^= data[:, whole + t].astype(np.uint32) << np.uint32(8 * t)
        h *= _M
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h
