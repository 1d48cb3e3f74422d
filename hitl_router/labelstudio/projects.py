"""Which Label Studio project each task goes to, and creating tasks exactly once.

A queue's items go to the project titled as configured (``label_studio.projects``, else
``<title_prefix><queue>``); eval samples to ``label_studio.eval_project``. A missing
project is created with a labelling config made from the item's classes
(:mod:`.interface`); an item whose classes differ from its project's goes to a sibling
project ``<title> [<fingerprint>]``. A project a team made itself (a labelling config
without the bridge's aliases) is used as it is.

Label Studio does not de-duplicate imports, so the book does: it keeps each project's
tasks by prediction id (read once from the server, then kept up to date) and imports
only ids it does not hold. After a failed import (a timeout may have created the tasks
anyway) and after a rebalance (another bridge may have created some) the index is read
again before the next import. Synchronous: the bridge calls it in a thread, one call at
a time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from hitl_router.labelstudio.client import Client
from hitl_router.labelstudio.interface import classes_of, fingerprint, label_config
from hitl_router.labelstudio.tasks import ProjectKey, TaskSpec
from hitl_router.router.label_studio import LabelStudioConfig

log = logging.getLogger(__name__)


@dataclass
class Project:
    id: int
    title: str
    #: prediction id → task id; None: to read again from the server before an import
    tasks: dict[str, int] | None = None


@dataclass
class Written:
    """What one :meth:`ProjectBook.write` did, per project title."""

    created: dict[str, int] = field(default_factory=dict)
    #: items that already had their task (redeliveries, or twice in one batch)
    skipped: dict[str, int] = field(default_factory=dict)


class ProjectBook:
    def __init__(self, client: Client, ls: LabelStudioConfig, reasons: Sequence[str]) -> None:
        self.client = client
        self.ls = ls
        self.reasons = tuple(reasons)
        self._projects: dict[ProjectKey, Project] = {}

    def base_title(self, key: ProjectKey) -> str:
        if key.source == "eval":
            return self.ls.eval_project
        return self.ls.title_of(str(key.queue))

    def titles(self, queues: Sequence[str]) -> list[str]:
        """The base titles of the projects the bridge writes (siblings start with them)."""
        out = [self.ls.title_of(q) for q in queues]
        return out + ([self.ls.eval_project] if self.ls.eval else [])

    def invalidate(self) -> None:
        """Read every project's tasks again before its next import."""
        for project in self._projects.values():
            project.tasks = None

    def project(self, key: ProjectKey) -> Project:
        known = self._projects.get(key)
        if known is not None:
            return known
        existing = self.client.projects()
        base = self.base_title(key)
        title = base
        if base in existing:
            theirs = classes_of(existing[base][1])
            if theirs is not None and theirs != key.classes:
                title = f"{base} [{fingerprint(key.classes)}]"
        if title in existing:
            project = Project(existing[title][0], title)
        else:
            blind = key.source == "eval" and self.ls.blind_eval
            config = label_config(key.classes, None if key.source == "eval" else self.reasons)
            what = "eval sample (labelled blind)" if blind else f"review queue {key.queue}"
            description = f"hitl-router: {what}; classes {', '.join(key.classes)}"
            project = Project(self.client.create_project(title, config, description), title)
            log.info("created Label Studio project %r (id %d)", title, project.id)
        self._projects[key] = project
        return project

    def write(self, specs: Sequence[TaskSpec]) -> Written:
        """Create the tasks of ``specs`` that do not exist yet. Raises
        :class:`~hitl_router.errors.LabelStudioError` with nothing known created."""
        done = Written()
        groups: dict[ProjectKey, dict[str, TaskSpec]] = {}
        for spec in specs:
            group = groups.setdefault(spec.key, {})
            if spec.id in group:
                title = self.base_title(spec.key)
                done.skipped[title] = done.skipped.get(title, 0) + 1
            group[spec.id] = spec  # the last copy of an id wins
        for key, group in groups.items():
            project = self.project(key)
            if project.tasks is None:
                project.tasks = self.client.task_ids(project.id)
            new = [s for pid, s in group.items() if pid not in project.tasks]
            skipped = len(group) - len(new)
            if skipped:
                done.skipped[project.title] = done.skipped.get(project.title, 0) + skipped
            index = project.tasks
            for start in range(0, len(new), self.ls.import_batch):
                chunk = new[start : start + self.ls.import_batch]
                try:
                    ids = self.client.import_tasks(project.id, [s.task for s in chunk])
                except Exception:
                    project.tasks = None  # the import may have happened: look again
                    raise
                if ids is None:  # created, ids unknown: read them before the next import
                    project.tasks = None
                    ids = [-1] * len(chunk)
                index.update((s.id, i) for s, i in zip(chunk, ids, strict=True))
                done.created[project.title] = done.created.get(project.title, 0) + len(chunk)
        return done
