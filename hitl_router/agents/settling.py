"""The at-least-once core: a batch's offsets are acked only once every agent finished it
and every output it produced was acknowledged by the broker.

- :class:`Batch` — the messages of one fetch, shared by the agents that read it. Each
  agent calls :meth:`Batch.finish` with the deliveries of its outputs, or
  :meth:`Batch.fail` when it could not handle the batch at all.
- :class:`InFlight` — the batches handed to the agents and not yet settled. It settles
  each one in a task of its own (ack on success; on any failure, ack nothing and call
  ``on_failure``: a worker that cannot deliver stops, and the batch is redone from the
  committed offset by whoever holds the partition next) and bounds the messages in
  flight, so the fetch loop waits for the oldest batch when over budget.

No Kafka here: the consumer (:mod:`hitl_router.agents.batching`) passes its ack and
crash functions in, and the unit tests pass their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from hitl_router.errors import DeliveryError

log = logging.getLogger(__name__)


class Batch:
    """The messages of one fetch from one topic, shared by the agents that read it.

    ``messages`` are aiokafka ``ConsumerRecord``s (``timestamp`` in milliseconds);
    ``offsets`` lists their offsets per partition, for the ack."""

    __slots__ = ("messages", "offsets", "_pending", "_done", "_deliveries", "_error", "cache")

    def __init__(
        self, messages: Sequence[Any], n_agents: int, offsets: Mapping[Any, list[int]] | None = None
    ) -> None:
        self.messages = messages
        self.offsets = offsets or {}
        self._pending = n_agents
        self._done = asyncio.Event()
        self._deliveries: list[Awaitable[Any]] = []
        self._error: BaseException | None = None
        #: Work shared between agents (e.g. the parsed batch), computed by whichever
        #: agent needs it first; agents run on one event loop, so no lock is needed.
        self.cache: dict[str, Any] = {}
        if n_agents == 0:
            self._done.set()

    @property
    def raws(self) -> list[bytes]:
        raws = self.cache.get("raws")
        if raws is None:
            raws = self.cache["raws"] = [m.value for m in self.messages]
        return raws

    def finish(self, deliveries: Sequence[Awaitable[Any]] = ()) -> None:
        """An agent is done with this batch; ``deliveries`` resolve when its outputs are
        acknowledged by the broker."""
        self._deliveries.extend(deliveries)
        self._pending -= 1
        if self._pending <= 0:
            self._done.set()

    def fail(self, error: BaseException) -> None:
        """An agent could not handle this batch: it must not be acked."""
        if self._error is None:
            self._error = error
        self.finish()

    async def wait(self, timeout: float | None = None) -> None:
        """Until every agent finished and every output was delivered. Raises if an agent
        failed, a delivery failed, or the deliveries took over ``timeout`` seconds from
        the moment the agents finished (:class:`~hitl_router.errors.DeliveryError`)."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        if not self._deliveries:
            return
        done, pending = await asyncio.wait(self._deliveries, timeout=timeout)
        for future in pending:
            future.cancel()  # type: ignore[attr-defined]
        errors = [e for e in (f.exception() for f in done) if e is not None]  # type: ignore[attr-defined]
        if errors:
            raise errors[0]
        if pending:
            raise DeliveryError(
                f"outputs of {len(self.messages)} messages not delivered: not acknowledged by "
                f"the broker within {timeout:g} s (worker.delivery_timeout_s)"
            )


BatchSink = Callable[[Batch], Awaitable[None]]


def unread(messages: Sequence[Any], read_offset: int | None) -> Sequence[Any]:
    """The fetched ``messages`` of a partition not read yet (a fetch after a seek or a
    rebalance can return records at or below the last one read).

    >>> from types import SimpleNamespace as M
    >>> [m.offset for m in unread([M(offset=o) for o in (4, 5, 6)], 5)]
    [5, 6]
    """
    if read_offset is None:
        return messages
    return [m for m in messages if m.offset >= read_offset]


def gaps(read_offset: int | None, offsets: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of offsets with no record (transaction markers,
    compacted records) between the last offset read and these, for Faust's gap
    bookkeeping: its committer would otherwise wait for them forever.

    >>> gaps(4, [5, 6, 9, 10, 14])
    [(7, 9), (11, 14)]
    >>> gaps(None, [3, 4]), gaps(0, [2])
    ([], [(1, 2)])
    """
    out = []
    prev = read_offset
    for offset in offsets:
        if prev is not None and offset - prev > 1:
            out.append((prev + 1, offset))
        prev = offset
    return out


class InFlight:
    """Batches handed to the agents, each settled by a task of its own.

    ``ack(offsets)`` is called with a batch's offsets once it is decided and delivered;
    ``on_failure(error, batch)`` once instead when it was not (nothing of it is acked).
    ``budget`` is in messages: :meth:`throttle` returns once the messages in flight are
    within it (and forgets the settled batches at the head)."""

    def __init__(
        self,
        budget: int,
        ack: Callable[[Mapping[Any, list[int]]], Any],
        on_failure: Callable[[BaseException, Batch], Awaitable[None]],
        delivery_timeout_s: float | None = None,
    ) -> None:
        if budget < 1:
            raise ValueError(f"budget must be ≥ 1, got {budget}")
        self.budget = budget
        self.delivery_timeout_s = delivery_timeout_s
        self._ack = ack
        self._on_failure = on_failure
        self._queue: deque[tuple[asyncio.Future[None], int]] = deque()
        self._messages = 0
        #: unsettled batches by their settling task (a stop or rebalance waits on them)
        self.batches: dict[asyncio.Future[None], Batch] = {}
        #: batches that failed (the first one stops the worker; the others are told)
        self.failures = 0

    @property
    def messages(self) -> int:
        """Messages handed over whose batch is not yet forgotten by :meth:`throttle`."""
        return self._messages

    def add(self, batch: Batch) -> asyncio.Future[None]:
        """Track ``batch`` before it is handed to the agents; returns its settling task."""
        task = asyncio.ensure_future(self._settle(batch))
        self.batches[task] = batch
        task.add_done_callback(self.batches.pop)
        self._queue.append((task, len(batch.messages)))
        self._messages += len(batch.messages)
        return task

    async def throttle(self) -> None:
        """Forget the settled batches at the head; wait for the oldest ones while the
        messages in flight are over budget."""
        queue = self._queue
        while queue and (self._messages > self.budget or queue[0][0].done()):
            task, n = queue.popleft()
            self._messages -= n
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def settle(self, grace: float) -> int:
        """Give the batches in flight ``grace`` seconds to settle, then cancel the others
        (not acked: redone from the committed offset). Returns how many messages were
        left unsettled."""
        pending = set(self.batches)
        if pending:
            await asyncio.wait(pending, timeout=grace)
        forgotten = 0
        for task, batch in list(self.batches.items()):
            task.cancel()
            forgotten += len(batch.messages)
        return forgotten

    async def _settle(self, batch: Batch) -> None:
        try:
            await batch.wait(self.delivery_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            if self.failures > 1:  # the first one stopped the worker already
                log.info("another batch of %d messages failed too (%r)", len(batch.messages), exc)
                return
            log.error(
                "a batch of %d messages failed (%s); nothing of it is acked: it is redone "
                "from the committed offset",
                len(batch.messages),
                exc,
            )
            await self._on_failure(exc, batch)
            return
        self._ack(batch.offsets)
