"""Quiet failure: while the broker is unreachable, aiokafka, Faust and mode log a line per
retry (measured: 115–225 lines a second, 11,297 in a 75 s outage). :class:`RateLimit`
lets the first record of each kind through, then at most one per ``interval`` seconds,
which says how many like it were held back.

A record's kind is its logger, level and message template with every number replaced
(``Unable connect to node with id 1`` and ``… id 2`` are one kind). Records of the
worker's own loggers (``hitl_router.*``) and Faust's table recovery always pass: they are
few and each says
something new.

>>> import logging
>>> now = [0.0]
>>> limit = RateLimit(interval=30.0, clock=lambda: now[0])
>>> def rec(msg, *args):
...     return logging.LogRecord("aiokafka", logging.ERROR, "f", 1, msg, args, None)
>>> [limit.filter(rec("Unable to connect to node %d", i)) for i in range(5)]
[True, False, False, False, False]
>>> now[0] = 31.0
>>> r = rec("Unable to connect to node %d", 9)
>>> limit.filter(r), r.getMessage()
(True, 'Unable to connect to node 9 (4 like it held back in the last 31 s)')

librdkafka's records (logger ``rdkafka``) are one bare template, ``"%s [%s] %s"``; its
first argument, the facility, names their kind:

>>> def rd(facility, text):
...     args = (facility, "rdkafka#producer-1", text)
...     return logging.LogRecord("rdkafka", logging.WARNING, "f", 1, "%s [%s] %s", args, None)
>>> moved = "Partition %s[0]: new leader-1 not found in cache"
>>> [limit.filter(rd("METADATAUPDATE", moved % t)) for t in ("eval", "accepted", "dlq")]
[True, False, False]
>>> limit.filter(rd("FAIL", "127.0.0.1:9092/1: Disconnected"))
True
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

_NUMBER = re.compile(r"\d+")
_SPECIFIER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdifrxXeEgG%]")
_WORD = re.compile(r"[A-Za-z]")


class RateLimit(logging.Filter):
    """A ``logging.Filter`` for handlers: one record per kind per ``interval`` seconds."""

    def __init__(
        self,
        interval: float = 30.0,
        *,
        min_level: int = logging.INFO,
        exempt: tuple[str, ...] = ("hitl_router", "faust.tables.recovery"),
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 10_000,
    ) -> None:
        super().__init__()
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.interval = interval
        self.min_level = min_level
        self.exempt = exempt
        self._clock = clock
        self._max_kinds = max_kinds
        #: kind → (time it last passed, records held back since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level or record.name.startswith(self.exempt):
            return True
        text = str(record.msg)
        if not _WORD.search(_SPECIFIER.sub("", text)) and isinstance(record.args, tuple):
            # a bare template (librdkafka's records are "%s [%s] %s"): its first argument
            # names the kind (librdkafka's facility: FAIL, METADATAUPDATE, …); the rest
            # names a broker, topic or partition (one outage: a line per partition)
            text = str(record.args[0]) if record.args else text
        key = (record.name, record.levelno, _NUMBER.sub("#", text)[:300])
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            if len(self._seen) >= self._max_kinds:  # bounded: forget the oldest kinds
                for old in list(self._seen)[: self._max_kinds // 2]:
                    del self._seen[old]
            self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} ({last[1]} like it held back in the last "
            record.msg += f"{now - last[0]:.0f} s)"
            record.args = ()
        return True


def install(interval: float = 30.0) -> RateLimit:
    """Rate-limit every handler of the root logger (where Faust's worker sends every
    library's records); returns the filter."""
    limit = RateLimit(interval)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    return limit
