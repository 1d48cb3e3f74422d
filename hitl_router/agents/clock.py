"""The clock delivery deadlines are measured with: time the worker actually ran."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RunningClock:
    """Monotonic seconds the process actually ran: a gap between two ticks of its task
    longer than ``tick + slack`` (the process was stopped — SIGSTOP, a paused VM, a
    suspended laptop) is not counted. Delivery deadlines are measured with it, so a
    worker frozen for a minute does not, once it runs again, fail deliveries the broker
    answered meanwhile: the delivery timeout is about a broker that does not answer.

    >>> now = [100.0]
    >>> clock = RunningClock(clock=lambda: now[0])
    >>> now[0] += 0.5; clock.tick()
    >>> now[0] += 60.0  # frozen: no tick for a minute
    >>> round(clock.now() - 100.0, 3)  # the overdue part of the gap is not counted
    1.0
    >>> clock.tick(); round(clock.now() - 100.0, 3)
    1.0
    """

    def __init__(
        self, tick: float = 0.5, slack: float = 1.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval, self.slack = tick, slack
        self._clock = clock
        self._last = clock()
        self._frozen = 0.0
        self._task: asyncio.Future[None] | None = None

    def tick(self) -> None:
        now = self._clock()
        self._frozen += self._overdue(now)
        self._last = now

    def now(self) -> float:
        t = self._clock()
        return t - self._frozen - self._overdue(t)

    def _overdue(self, t: float) -> float:
        gap = t - self._last - self.interval
        return gap if gap > self.slack else 0.0

    def start(self) -> None:
        """Tick in a task of the running loop (once)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.interval)
