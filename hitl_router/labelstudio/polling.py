"""One poll of one project: its annotations not sent yet, as label messages.

Polling, not webhooks, is how labels come back (README, "Label Studio"): Label Studio
sends a webhook once, never again — not when the bridge is down, restarting or slow —
and the annotator's save waits for it. A poll asks the project for the tasks updated
since the last one (:mod:`.cursor`), so labels made while the bridge was away arrive
when it is back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hitl_router.labelstudio.annotations import annotation_label, timestamp
from hitl_router.labelstudio.client import Client
from hitl_router.labelstudio.cursor import PollCursor


@dataclass
class Polled:
    #: label messages, oldest task first
    labels: list[dict[str, Any]] = field(default_factory=list)
    #: (source, seconds from routing or sampling to the annotation) of new annotations
    latencies: list[tuple[str, float]] = field(default_factory=list)
    #: ``updated_at`` of every task the poll returned
    task_times: list[float] = field(default_factory=list)
    #: annotation id → revision, of every revision this poll handled
    sent: dict[int, float] = field(default_factory=dict)
    #: revisions with nothing to send: skipped tasks, no class chosen
    empty: int = 0


def poll_project(client: Client, project: int, cursor: PollCursor, overlap: float) -> Polled:
    """What ``project`` holds that ``cursor`` has not sent (the cursor is not moved:
    :meth:`PollCursor.advance` once the labels are delivered)."""
    since = cursor.since(overlap)
    out = Polled()
    for task in client.changed_tasks(project, since):
        updated = timestamp(task.get("updated_at"))
        if updated is not None:
            out.task_times.append(updated)
        data = task.get("data") or {}
        if not isinstance(data.get("id"), str) or data.get("source") not in ("review", "eval"):
            continue  # not a task the bridge made
        for annotation in task.get("annotations") or []:
            aid, revision = annotation.get("id"), timestamp(annotation.get("updated_at"))
            if not isinstance(aid, int) or revision is None:
                continue
            if not cursor.fresh(aid, revision, since):
                continue
            first = aid not in cursor.sent
            out.sent[aid] = revision
            doc = annotation_label(data, annotation, _annotator(client, annotation))
            if doc is None:
                out.empty += 1
                continue
            out.labels.append(doc)
            created = timestamp(annotation.get("created_at"))
            decided = data.get("decided_at")
            if (
                first
                and created is not None
                and isinstance(decided, int | float)
                and (since is None or created > since)
            ):
                out.latencies.append((str(data["source"]), max(0.0, created - decided)))
    return out


def _annotator(client: Client, annotation: dict[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        name = who.get("email") or who.get("username")
        if name:
            return str(name)
        who = who.get("id")
    if isinstance(who, int):
        return client.user_name(who)
    return str(annotation.get("created_username") or "unknown").strip() or "unknown"
