"""Label Studio's API through ``label-studio-sdk`` (its ``LabelStudio`` client), with
every failure turned into a :class:`~hitl_router.errors.LabelStudioError` of a kind the
bridge counts and retries: ``unreachable``, ``unauthorized`` or ``refused``.

The SDK's own retries are off (``max_retries: 0``): a retried import that had reached
the server would make a second task; the bridge retries itself, after checking what
the server already holds. Synchronous: the bridge runs it in a thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from hitl_router.errors import LabelStudioError

log = logging.getLogger(__name__)

T = TypeVar("T")
_NO_RETRY: Any = {"max_retries": 0}
#: tasks per page when listing
PAGE = 1000


class Client:
    """One Label Studio, one token. ``token_source`` names where the token came from,
    for messages: the token itself is never shown."""

    def __init__(self, url: str, token: str, *, timeout_s: float, token_source: str) -> None:
        try:
            from label_studio_sdk.client import LabelStudio
        except ImportError as exc:  # pragma: no cover - the extra is in the dev install
            raise LabelStudioError(
                "the bridge needs label-studio-sdk: pip install 'hitl-router[labelstudio]'"
            ) from exc
        self.url = url.rstrip("/")
        self.token_source = token_source
        self._ls = LabelStudio(base_url=self.url, api_key=token, timeout=timeout_s)
        self._users: dict[int, str] = {}

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, request_options=_NO_RETRY, **kwargs)
        except ApiError as exc:
            status = exc.status_code
            body = str(exc.body)[:300]
            if status in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the token from {self.token_source} "
                    f"({status}) when it was asked to {what}: {body}",
                    "unauthorized",
                ) from None
            if status is None:  # the SDK's own errors (e.g. an unusable token)
                raise LabelStudioError(
                    f"Label Studio client could not {what}: {body}", "unauthorized"
                ) from None
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {status} when asked to {what}: {body}",
                "refused",
            ) from None
        except httpx.TransportError as exc:
            raise LabelStudioError(
                f"Label Studio at {self.url} is unreachable ({what}): {exc!r}", "unreachable"
            ) from None

    def whoami(self) -> int:
        """The token's user id (a cheap check that Label Studio answers and takes it)."""
        user = self._call("tell who the token is", self._ls.users.whoami)
        return int(user.id)

    def projects(self) -> dict[str, tuple[int, str]]:
        """Every project this token sees: title → (id, labelling config)."""
        out: dict[str, tuple[int, str]] = {}
        pager = self._call("list projects", self._ls.projects.list, page_size=100)
        for p in pager:
            if p.title is not None and p.id is not None and p.title not in out:
                out[p.title] = (int(p.id), p.label_config or "")
        return out

    def create_project(self, title: str, label_config: str, description: str) -> int:
        project = self._call(
            f"create the project {title!r}",
            self._ls.projects.create,
            title=title,
            label_config=label_config,
            description=description,
        )
        return int(project.id)

    def task_ids(self, project: int) -> dict[str, int]:
        """The project's tasks by their prediction id (``data.id``) → task id."""
        out: dict[str, int] = {}
        pager = self._call(
            f"list the tasks of project {project}",
            self._ls.tasks.list,
            project=project,
            include="id,data",
            page_size=PAGE,
        )
        for task in pager:
            pid = (task.data or {}).get("id")
            if isinstance(pid, str):
                out.setdefault(pid, int(task.id))
        return out

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int] | None:
        """Create ``tasks`` (with their pre-annotations); returns the new tasks' ids in
        order (None when the server did not say)."""
        response = self._call(
            f"import {len(tasks)} tasks into project {project}",
            self._ls.projects.import_tasks,
            project,
            request=tasks,
            return_task_ids=True,
        )
        ids = getattr(response, "task_ids", None)
        if ids is None and response.model_extra:
            ids = response.model_extra.get("task_ids")
        if isinstance(ids, list) and len(ids) == len(tasks):
            return [int(i) for i in ids]
        return None

    def changed_tasks(self, project: int, since: float | None) -> list[dict[str, Any]]:
        """The project's tasks updated after ``since`` (unix seconds, Label Studio's
        clock; None: all), oldest first, with their data and annotations."""
        items: list[dict[str, Any]] = []
        if since is not None:
            moment = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": moment,
                }
            )
        query = {
            "filters": {"conjunction": "and", "items": items},
            "ordering": ["tasks:updated_at"],
        }
        pager = self._call(
            f"poll project {project}",
            self._ls.tasks.list,
            project=project,
            query=json.dumps(query),
            fields="all",
            page_size=PAGE,
        )
        out = []
        for task in pager:
            out.append(
                {
                    "id": task.id,
                    "data": task.data or {},
                    "updated_at": task.updated_at,
                    "annotations": [
                        a if isinstance(a, dict) else a.model_dump()
                        for a in (task.annotations or [])
                    ],
                }
            )
        return out

    def backlog(self, project: int) -> int:
        """Tasks of the project that no one has annotated yet."""
        p = self._call(f"count the tasks of project {project}", self._ls.projects.get, project)
        return max(0, int(p.task_number or 0) - int(p.num_tasks_with_annotations or 0))

    def user_name(self, user: int) -> str:
        """An annotator's email (else username, else ``user-<id>``), asked once."""
        name = self._users.get(user)
        if name is None:
            try:
                u = self._call(f"look up user {user}", self._ls.users.get, user)
                name = u.email or u.username or f"user-{user}"
            except LabelStudioError as exc:
                if exc.kind != "refused":
                    raise
                name = f"user-{user}"  # e.g. deleted; the label still says who
            self._users[user] = name
        return name
