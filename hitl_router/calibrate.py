"""``hitl-router calibrate``: accuracy, ECE, Brier, NLL and a fitted temperature of a
JSONL file of predictions that carry their true ``label``, as JSON.

The predictions are validated exactly as the router validates them; each line that is
not a valid prediction with a usable label is counted under ``skipped`` by reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hitl_router.errors import InputError
from hitl_router.router.config import Config
from hitl_router.router.labelled import LabelledSet
from hitl_router.router.validation import parse_batch

BATCH = 1000


def calibrate(lines: Iterator[bytes], config: Config, name: str = "input") -> dict[str, Any]:
    labelled = LabelledSet(config)
    chunk: list[bytes] = []

    def flush() -> None:
        parsed = parse_batch(chunk, config.limits)
        for i, doc in enumerate(parsed.docs):
            if doc is None:
                labelled.skipped[parsed.errors[i].code] += 1
            elif "label" not in doc:
                labelled.skipped["no_label"] += 1
            else:
                labelled.add(doc, doc["label"])
        chunk.clear()

    for line in lines:
        if line.strip():
            chunk.append(line)
        if len(chunk) >= BATCH:
            flush()
    if chunk:
        flush()
    if not labelled.n:
        raise InputError(
            f"{name}: no labelled prediction (a valid prediction with a 'label' field); "
            f"skipped: {dict(labelled.skipped) or 'nothing read'}"
        )
    return labelled.report()
