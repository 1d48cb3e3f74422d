"""The batch partitioner puts every key where Kafka's producers put it."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner, murmur2
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner import murmur2 as kafka_python_murmur2

from hitl_router.router.partitioning import murmur2_batch, partitions_of


@given(st.lists(st.binary(max_size=64), max_size=50))
def test_hashes_equal_the_clients_murmur2(keys: list[bytes]) -> None:
    got = [int(h) for h in murmur2_batch(keys)]
    assert got == [murmur2(k) for k in keys]
    assert got == [kafka_python_murmur2(k) for k in keys]


def test_partitions_equal_aiokafkas_default_partitioner() -> None:
    rng = random.Random(3)
    keys = [f"p-{i:08d}".encode() for i in range(2000)]
    keys += [rng.randbytes(rng.randint(0, 40)) for _ in range(2000)]
    rng.shuffle(keys)
    for n in (1, 3, 6, 7, 64):
        every = list(range(n))
        assert partitions_of(keys, n).tolist() == [
            DefaultPartitioner()(k, every, every) for k in keys
        ]


def test_empty_batch() -> None:
    assert partitions_of([], 6).tolist() == []
