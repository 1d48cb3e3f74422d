"""``BatchingConsumer.ack_offsets``: Faust's per-message ack bookkeeping, per partition."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from hitl_router.agents.batching import BatchingConsumer


def consumer_state(committed: dict[TP, int | None]) -> SimpleNamespace:
    """The attributes of Faust's ``Consumer`` that ``ack`` touches."""
    return SimpleNamespace(
        _committed_offset=defaultdict(lambda: None, committed),
        _acked_index=defaultdict(set),
        _acked=defaultdict(list),
        _n_acked=0,
        _waiting_for_ack=None,
    )


def test_acks_new_offsets_once_per_partition() -> None:
    a, b = TP("predictions", 0), TP("predictions", 1)
    state = consumer_state({a: 10, b: None})
    n = BatchingConsumer.ack_offsets(state, {a: [8, 9, 10, 11, 12], b: [0, 1]})  # type: ignore[arg-type]
    assert n == 5  # 8 and 9 are below the committed offset: already done
    assert state._acked[a] == [10, 11, 12] and state._acked_index[a] == {10, 11, 12}
    assert state._acked[b] == [0, 1]
    assert state._n_acked == 5
    # a redelivered batch acks nothing twice
    assert BatchingConsumer.ack_offsets(state, {a: [11, 12, 13]}) == 1  # type: ignore[arg-type]
    assert state._acked[a] == [10, 11, 12, 13] and state._n_acked == 6


class _Message:
    """What ``Consumer.ack`` reads of a message (hashable, as Faust's are)."""

    def __init__(self, tp: TP, offset: int) -> None:
        self.acked, self.tp, self.offset, self.topic = False, tp, offset, tp.topic


def test_same_bookkeeping_as_faust_ack() -> None:
    """Acking a batch in bulk leaves Faust's state as acking its messages one by one."""
    from faust.transport.consumer import Consumer

    tp = TP("predictions", 2)
    offsets = [5, 6, 7, 9, 12]
    bulk = consumer_state({tp: 6})
    BatchingConsumer.ack_offsets(bulk, {tp: offsets})  # type: ignore[arg-type]
    one_by_one = consumer_state({tp: 6})
    one_by_one._unacked_messages = set()
    one_by_one.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda t: True))
    for o in offsets:
        Consumer.ack(one_by_one, _Message(tp, o))  # type: ignore[arg-type]
    assert bulk._acked[tp] == one_by_one._acked[tp] == [6, 7, 9, 12]
    assert bulk._acked_index[tp] == one_by_one._acked_index[tp]
    assert bulk._n_acked == one_by_one._n_acked == 4


def test_worker_settings_reach_the_consumer() -> None:
    """``worker.max_in_flight`` and the fetch settings from the config are what the app's
    batching consumer and its aiokafka consumer use (no broker: they are only built)."""
    from hitl_router.agents.app import build_app
    from hitl_router.router.config import parse_config

    config = parse_config(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "worker": {
                "batch_size": 300,
                "max_in_flight": 7,
                "fetch_max_wait_ms": 20,
                "fetch_min_bytes": 999,
            },
        }
    )
    app = build_app(config)
    consumer = app._new_consumer()
    assert isinstance(consumer, BatchingConsumer)
    assert consumer.max_in_flight == 7 and consumer.fetch_max_wait_ms == 20
    assert app.conf.broker_max_poll_records == 300
    # ... and the aiokafka consumer Faust's consumer thread creates
    thread = consumer._new_consumer_thread()

    async def create() -> Any:  # aiokafka wants a running loop
        return thread._create_worker_consumer(app.transport)

    aiokafka_consumer = asyncio.run(create())
    assert aiokafka_consumer._fetch_max_wait_ms == 20
    assert aiokafka_consumer._fetch_min_bytes == 999


def reader_state(assigned: set[TP], flow_active: bool = True) -> SimpleNamespace:
    """What ``_may_hand_over`` reads of Faust's ``Consumer``; paused and resumed below by
    Faust's own ``pause_partitions`` / ``resume_partitions``."""
    state = SimpleNamespace(
        flow_active=flow_active,
        _active_partitions=set(assigned),
        _paused_partitions=set(),
        assignment=lambda: assigned,
    )
    state._get_active_partitions = lambda: state._active_partitions
    return state


def test_librdkafka_reads_wait_while_faust_pauses_a_partition_they_hold() -> None:
    """A table's recovery and a rebalance pause stream partitions in Faust: records the
    reader read of such a partition are not handed over until Faust resumes it (or a
    new assignment drops them); those of a partition no longer held are dropped at the
    hand-over, so they do not hold the others back."""
    from faust.transport.consumer import Consumer

    a, b, gone = TP("predictions", 0), TP("predictions", 1), TP("predictions", 2)
    state = reader_state({a, b})
    may = BatchingConsumer._may_hand_over
    assert may(state, [a, b])  # type: ignore[arg-type]
    Consumer.pause_partitions(state, [b])  # type: ignore[arg-type]
    assert not may(state, [a, b]) and may(state, [a])  # type: ignore[arg-type]
    assert may(state, [a, gone])  # type: ignore[arg-type]  # not held: dropped later
    Consumer.resume_partitions(state, [b])  # type: ignore[arg-type]
    assert may(state, [a, b])  # type: ignore[arg-type]
    state.flow_active = False  # a rebalance stops the flow first
    assert not may(state, [a])  # type: ignore[arg-type]


def test_a_read_held_by_a_paused_partition_says_which_one(caplog) -> None:
    """The wait is logged (once per read) with the flow's state and each partition's:
    a worker that decides nothing for a while tells why."""
    from faust.transport.consumer import Consumer

    a, b = TP("predictions", 0), TP("predictions", 1)
    state = reader_state({a, b})
    Consumer.pause_partitions(state, [b])  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="hitl_router.agents.batching"):
        BatchingConsumer._tell_held(state, [b, a], 500, 12.3)  # type: ignore[arg-type]
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == (
        "librdkafka: 500 records read 12 s ago wait to be handed over: flow running; "
        "their partitions predictions[0] active, predictions[1] paused"
    )


def test_a_read_while_the_broker_is_away_is_handed_over_without_an_end_offset() -> None:
    """librdkafka knows no end offset of a partition while the broker is away (its cached
    watermark is -1): the lag gauge keeps its last value instead of crashing the fetch
    loop (Faust's Prometheus gauge refuses None; a fault test saw the worker exit 1)."""
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
    from prometheus_client import CollectorRegistry

    a, b, gone = TP("predictions", 0), TP("predictions", 1), TP("predictions", 2)
    registry = CollectorRegistry()
    monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "t"))
    highs = {0: 120, 1: None, 2: 7}
    state = reader_state({a, b})
    state._reader = SimpleNamespace(high_watermark=lambda topic, p: highs[p])
    state.app = SimpleNamespace(monitor=monitor)
    by_tp = {("predictions", 0): ["r0"], ("predictions", 1): ["r1"], ("predictions", 2): ["r2"]}
    tps = {tp: (tp.topic, tp.partition) for tp in (a, b, gone)}
    held = BatchingConsumer._held(state, tps, by_tp)  # type: ignore[arg-type]
    assert held == {a: ["r0"], b: ["r1"]}  # the partition no longer held is dropped
    assert set(monitor.stream_inbound_time) == {a, b}
    end = "t_topic_partition_end_offset"
    assert registry.get_sample_value(end, {"topic": "predictions", "partition": "0"}) == 120
    assert registry.get_sample_value(end, {"topic": "predictions", "partition": "1"}) is None
