"""An agent's body: each batch is handled, then marked finished with the deliveries of
its outputs — or failed, never acked without them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from prometheus_client import Counter

from hitl_router.agents.settling import Batch

log = logging.getLogger(__name__)

Handler = Callable[[Batch], list[Awaitable[Any]]]


def batch_agent(
    name: str,
    handle: Handler,
    internal_error: Callable[[Batch, BaseException], list[Awaitable[Any]]],
    errors: Counter,
) -> Callable[[faust.StreamT], Awaitable[None]]:
    """An agent body: each batch is handled, then marked finished with the deliveries of
    its outputs. Never silently: see :func:`handle_batch`; ``errors`` counts the batches
    whose handler raised (e.g. ``hitl_agent_errors_total{agent=name}``)."""

    async def agent(stream: faust.StreamT) -> None:
        async for batch in stream:
            handle_batch(batch, name, handle, internal_error, errors)

    return agent


def handle_batch(
    batch: Batch,
    name: str,
    handle: Handler,
    internal_error: Callable[[Batch, BaseException], list[Awaitable[Any]]],
    errors: Counter,
) -> None:
    """Handle ``batch``; if that raises (a bug: bad input has its dead letters), handle
    its messages one by one, and dead-letter each one that still fails alone as
    ``internal_error``. If even that raises, the batch fails: it is not acked, the
    worker stops, and the batch is redone on restart — never acked without outputs."""
    try:
        deliveries = handle(batch)
    except Exception:
        log.exception(
            "%s: a batch of %d failed; handling it message by message", name, len(batch.messages)
        )
        errors.inc()
        try:
            deliveries = _one_by_one(batch, name, handle, internal_error)
        except Exception as exc:
            log.exception("%s: a batch of %d could not be handled", name, len(batch.messages))
            batch.fail(exc)
            return
    batch.finish(deliveries)


def _one_by_one(
    batch: Batch,
    name: str,
    handle: Handler,
    internal_error: Callable[[Batch, BaseException], list[Awaitable[Any]]],
) -> list[Awaitable[Any]]:
    deliveries: list[Awaitable[Any]] = []
    for i in range(len(batch.messages)):
        single = Batch(batch.messages[i : i + 1], 1)
        try:
            deliveries += handle(single)
        except Exception as exc:
            log.exception("%s: message %d of the batch failed alone; dead-lettering it", name, i)
            deliveries += internal_error(single, exc)
    return deliveries
