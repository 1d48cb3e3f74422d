"""``hitl-router replay``: the live decision path, offline, over a JSONL file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from hitl_router.errors import InputError
from hitl_router.router.config import Config
from hitl_router.router.decision import Policy, decide_batch
from hitl_router.router.drift import DriftMonitor
from hitl_router.router.outputs import id_of, replay_record
from hitl_router.router.summary import Summary

BATCH = 1000


def read_lines(path: str) -> Iterator[bytes]:
    """Raw lines of a JSONL file (``-`` is stdin), without their line ends."""
    stream: IO[bytes]
    if path == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = Path(path).open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    with stream:
        for line in stream:
            yield line.rstrip(b"\r\n")


def replay(
    lines: Iterator[bytes],
    config: Config,
    out: IO[bytes],
    drift: DriftMonitor | None = None,
    drift_out: IO[bytes] | None = None,
) -> dict[str, Any]:
    """Decide every line, write one record per line to ``out``; return the summary.

    With ``drift``, every valid prediction also goes, in input order, to that monitor; each
    report of a completed window is written to ``drift_out`` (one JSON line) and the summary
    gains a ``drift`` section.
    """
    policy = Policy(config)
    summary = Summary(policy)
    chunk: list[bytes] = []
    line_no = 0

    def flush() -> None:
        nonlocal line_no
        batch = decide_batch(chunk, policy)
        summary.add(batch)
        for i in range(batch.n):
            line_no += 1
            rec = replay_record(batch, i)
            if rec["id"] is None:
                rec["id"] = id_of(chunk[i])
            rec["line"] = line_no
            out.write(orjson.dumps(rec))
            out.write(b"\n")
        if drift is not None:
            for report in drift.update(batch.docs):
                if drift_out is not None:
                    drift_out.write(orjson.dumps(report.as_dict()) + b"\n")
        chunk.clear()

    for line in lines:
        chunk.append(line)
        if len(chunk) >= BATCH:
            flush()
    if chunk:
        flush()
    report = summary.report()
    if drift is not None:
        report["drift"] = drift.summary()
    return report
