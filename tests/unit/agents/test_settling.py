"""The at-least-once core without a broker: a batch is acked only once every agent
finished it and every output was delivered; any failure — an agent that could not
handle it, a delivery refused or not acknowledged in time — acks nothing and reports
the failure; the budget bounds the messages in flight; a stop forgets what is not
settled. And ``handle_batch``: a failing batch is redone message by message, a message
that fails alone is dead-lettered, and a batch that cannot be handled is never acked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from hitl_router.agents.handling import handle_batch
from hitl_router.agents.settling import Batch, InFlight
from hitl_router.errors import DeliveryError
from hitl_router.metrics import RouterMetrics


def records(n: int, start: int = 0) -> list[Any]:
    return [SimpleNamespace(value=b"m%d" % i, offset=i) for i in range(start, start + n)]


def batch_of(n: int, agents: int = 2, start: int = 0) -> Batch:
    return Batch(records(n, start), agents, {"tp": list(range(start, start + n))})


class Recorder:
    def __init__(self) -> None:
        self.acked: list[list[int]] = []
        self.failures: list[BaseException] = []

    def ack(self, offsets: Any) -> None:
        self.acked.append(offsets["tp"])

    async def failed(self, error: BaseException, batch: Batch) -> None:
        self.failures.append(error)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_acked_only_after_every_agent_and_every_delivery() -> None:
    async def scenario() -> Recorder:
        rec = Recorder()
        flight = InFlight(100, rec.ack, rec.failed, delivery_timeout_s=5)
        batch = batch_of(3)
        task = flight.add(batch)
        delivered = asyncio.get_running_loop().create_future()
        batch.finish([delivered])  # the router: its outputs are on their way
        await asyncio.sleep(0.01)
        assert rec.acked == []  # the sampler has not finished
        batch.finish([])
        await asyncio.sleep(0.01)
        assert rec.acked == []  # the router's outputs are not acknowledged yet
        delivered.set_result(None)
        await task
        return rec

    rec = run(scenario())
    assert rec.acked == [[0, 1, 2]] and rec.failures == []


@pytest.mark.parametrize("how", ["delivery refused", "agent failed", "not acknowledged in time"])
def test_a_failure_acks_nothing_and_is_reported(how: str) -> None:
    async def scenario() -> Recorder:
        rec = Recorder()
        flight = InFlight(100, rec.ack, rec.failed, delivery_timeout_s=0.2)
        batch = batch_of(3)
        task = flight.add(batch)
        delivery = asyncio.get_running_loop().create_future()
        batch.finish([delivery])
        if how == "delivery refused":
            delivery.set_exception(DeliveryError("the broker refused an output"))
            batch.finish()
        elif how == "agent failed":
            delivery.set_result(None)
            batch.fail(RuntimeError("bug while building outputs"))
        else:
            batch.finish()  # the delivery never completes
        await asyncio.wait_for(task, 2)
        return rec

    rec = run(scenario())
    assert rec.acked == []
    (error,) = rec.failures
    if how == "not acknowledged in time":
        assert isinstance(error, DeliveryError) and "within 0.2 s" in str(error)
    elif how == "agent failed":
        assert "bug while building outputs" in str(error)
    else:
        assert "refused" in str(error)


def test_budget_bounds_messages_in_flight_and_settled_heads_are_forgotten() -> None:
    async def scenario() -> None:
        rec = Recorder()
        flight = InFlight(5, rec.ack, rec.failed)
        first, second = batch_of(3, agents=1), batch_of(3, agents=1, start=3)
        flight.add(first)
        flight.add(second)
        assert flight.messages == 6  # over budget: throttle waits for the oldest
        waiter = asyncio.ensure_future(flight.throttle())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        first.finish()
        await asyncio.wait_for(waiter, 1)
        assert flight.messages == 3 and rec.acked == [[0, 1, 2]]
        second.finish()
        await asyncio.sleep(0.01)
        await flight.throttle()  # settled head: forgotten without waiting
        assert flight.messages == 0 and rec.acked == [[0, 1, 2], [3, 4, 5]]

    run(scenario())


def test_settle_gives_grace_then_forgets_the_unsettled() -> None:
    async def scenario() -> tuple[int, Recorder, InFlight]:
        rec = Recorder()
        flight = InFlight(100, rec.ack, rec.failed)
        done, stuck = batch_of(2, agents=1), batch_of(4, agents=1, start=2)
        flight.add(done)
        flight.add(stuck)
        done.finish()
        forgotten = await flight.settle(0.1)
        await asyncio.sleep(0)
        return forgotten, rec, flight

    forgotten, rec, flight = run(scenario())
    assert forgotten == 4 and rec.acked == [[0, 1]] and rec.failures == []
    assert flight.batches == {}


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget"):
        InFlight(0, lambda o: None, Recorder().failed)


# --- handle_batch: the agent body's failure paths --------------------------------------


def handled(
    raws: list[bytes], handle: Any, internal_error: Any
) -> tuple[Batch, list[Any], CollectorRegistry]:
    reg = CollectorRegistry()
    batch = Batch([SimpleNamespace(value=r) for r in raws], 1)
    handle_batch(
        batch, "router", handle, internal_error, RouterMetrics(reg).agent_errors.labels("router")
    )
    return batch, batch._deliveries, reg


def test_a_failing_batch_is_redone_one_by_one_and_the_culprit_dead_lettered() -> None:
    sent: list[tuple[str, bytes]] = []

    def handle(b: Batch) -> list[Any]:
        if any(b"boom" in r for r in b.raws):
            raise RuntimeError("output building bug")
        sent.extend(("ok", r) for r in b.raws)
        return []

    def internal_error(b: Batch, exc: BaseException) -> list[Any]:
        sent.extend(("dead", r) for r in b.raws)
        assert "output building bug" in repr(exc)
        return []

    batch, _, reg = handled([b"a", b"boom", b"c"], handle, internal_error)
    assert sent == [("ok", b"a"), ("dead", b"boom"), ("ok", b"c")]
    assert reg.get_sample_value("hitl_agent_errors_total", {"agent": "router"}) == 1
    run(asyncio.wait_for(batch.wait(), 1))  # finished: it may be acked


def test_a_batch_that_cannot_be_handled_at_all_is_never_acked() -> None:
    def handle(b: Batch) -> list[Any]:
        raise RuntimeError("bug")

    def internal_error(b: Batch, exc: BaseException) -> list[Any]:
        raise OSError("cannot even dead-letter")

    batch, _, _ = handled([b"a", b"b"], handle, internal_error)
    with pytest.raises(OSError, match="cannot even dead-letter"):
        run(asyncio.wait_for(batch.wait(), 1))


def test_internal_error_letters_of_the_live_agent_fit_and_name_the_source() -> None:
    """The live app's internal_error path builds real dead letters."""
    from hitl_router.router.config import parse_config
    from hitl_router.router.outputs import Source, error_letters
    from hitl_router.router.validation import ErrorInfo

    config = parse_config({})
    raw = b'{"id": "p-9", "model": "m", "probs": [0.5, 0.5]}'
    (out,) = error_letters(
        ErrorInfo("internal_error", "router failed on this message: RuntimeError()"),
        [raw],
        [Source("predictions", 2, 41)],
        1.0,
        config,
    )
    doc = orjson.loads(out.value)
    assert out.topic == "predictions.deadletter" and out.key == b"p-9"
    assert doc["error"]["code"] == "internal_error"
    assert doc["source"] == {"topic": "predictions", "partition": 2, "offset": 41}


def test_after_the_first_failure_others_are_not_acked_and_not_reported_again() -> None:
    async def scenario() -> Recorder:
        rec = Recorder()
        flight = InFlight(100, rec.ack, rec.failed)
        batches = [batch_of(2, agents=1, start=2 * i) for i in range(3)]
        tasks = [flight.add(b) for b in batches]
        batches[0].fail(RuntimeError("first"))
        batches[1].fail(RuntimeError("second"))
        batches[2].finish()
        await asyncio.gather(*tasks)
        return rec

    rec = run(scenario())
    assert [str(e) for e in rec.failures] == ["first"]  # the worker stops once
    assert rec.acked == [[4, 5]]  # a batch that did settle is still acked
