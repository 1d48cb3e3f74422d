"""The project book's own logic (which project, which tasks are new) against an
in-memory stand-in for Label Studio's API; the real server is in
tests/integration/test_label_studio_bridge.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from hitl_router.errors import LabelStudioError
from hitl_router.labelstudio.interface import classes_of, label_config
from hitl_router.labelstudio.projects import ProjectBook
from hitl_router.labelstudio.tasks import eval_task, review_task
from hitl_router.router.config import DEFAULT_REASONS
from hitl_router.router.label_studio import LabelStudioConfig


class FakeClient:
    """Projects and tasks as Label Studio keeps them: no de-duplication of its own."""

    def __init__(self) -> None:
        self.made: dict[int, dict[str, Any]] = {}
        self.tasks: list[tuple[int, int, dict[str, Any]]] = []  # (task id, project, task)
        self.fail_next_import: str | None = None

    # the Client's interface
    def projects(self) -> dict[str, tuple[int, str]]:
        return {p["title"]: (pid, p["config"]) for pid, p in self.made.items()}

    def create_project(self, title: str, config: str, description: str) -> int:
        pid = len(self.made) + 1
        self.made[pid] = {"title": title, "config": config}
        return pid

    def task_ids(self, project: int) -> dict[str, int]:
        return {t["data"]["id"]: tid for tid, p, t in self.tasks if p == project}

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int] | None:
        ids = []
        for task in tasks:
            ids.append(len(self.tasks) + 1)
            self.tasks.append((ids[-1], project, task))
        if self.fail_next_import:  # e.g. a timeout after the server made them
            kind, self.fail_next_import = self.fail_next_import, None
            raise LabelStudioError("Label Studio at x is unreachable (import)", kind)
        return ids

    def ids_in(self, project: int) -> list[str]:
        return [t["data"]["id"] for _, p, t in self.tasks if p == project]


def _item(pid: str, classes=("a", "b")) -> bytes:
    return orjson.dumps({
        "id": pid, "model": "m", "queue": "uncertain", "priority": 0.5, "reasons": [],
        "scores": {"max_prob": 0.6}, "routed_at": 1.0,
        "prediction": {"id": pid, "model": "m", "probs": [0.6, 0.4][: len(classes)] + [0.0] *
                       (len(classes) - 2), "classes": list(classes)},
    })  # fmt: skip


def _book(server: FakeClient, **ls: Any) -> ProjectBook:
    return ProjectBook(server, LabelStudioConfig(**ls), DEFAULT_REASONS)  # type: ignore[arg-type]


def test_each_prediction_id_gets_one_task_whatever_is_redelivered():
    server = FakeClient()
    book = _book(server, title_prefix="q: ", import_batch=2)
    specs = [review_task(_item(f"p{i}")) for i in range(5)]
    done = book.write(specs + [specs[0]])  # twice in one batch
    assert done.created == {"q: uncertain": 5} and done.skipped == {"q: uncertain": 1}
    done = book.write(specs[:3])  # a redelivery
    assert done.created == {} and done.skipped == {"q: uncertain": 3}
    # a restart: a new book reads what the server holds
    again = _book(server, title_prefix="q: ")
    assert again.write(specs).created == {}
    assert sorted(server.ids_in(1)) == [f"p{i}" for i in range(5)]
    assert classes_of(server.made[1]["config"]) == ("a", "b")


def test_a_failed_import_is_checked_against_the_server_before_the_retry():
    server = FakeClient()
    book = _book(server)
    specs = [review_task(_item(f"p{i}")) for i in range(3)]
    server.fail_next_import = "unreachable"
    with pytest.raises(LabelStudioError):
        book.write(specs)
    assert book.write(specs).created == {}  # the server had made them: none twice
    assert sorted(server.ids_in(1)) == ["p0", "p1", "p2"]


def test_a_rebalance_makes_the_book_read_the_tasks_again():
    server = FakeClient()
    book, other = _book(server), _book(server)
    book.write([review_task(_item("p0"))])
    other.write([review_task(_item("p1"))])  # another bridge, before a rebalance
    book.invalidate()
    assert book.write([review_task(_item("p1"))]).created == {}
    assert server.ids_in(1) == ["p0", "p1"]


def test_other_classes_go_to_a_sibling_project_and_eval_to_its_own():
    server = FakeClient()
    book = _book(server, title_prefix="q: ", eval_project="E")
    book.write([review_task(_item("p0")), review_task(_item("p1", ("x", "y", "z")))])
    titles = sorted(p["title"] for p in server.made.values())
    assert titles[0] == "q: uncertain" and titles[1].startswith("q: uncertain [")
    sample = orjson.dumps({"id": "e0", "model": "m", "prediction": {"probs": [0.3, 0.7]}})
    book.write([eval_task(sample)])
    (eval_project,) = [p for p in server.made.values() if p["title"] == "E"]
    assert "correction_reason" not in eval_project["config"]
    # a project the team made with its own labelling config is used as it is
    server2 = FakeClient()
    server2.create_project("q: uncertain", label_config(["a", "b"], None).replace("c0", "k0"), "")
    _book(server2, title_prefix="q: ").write([review_task(_item("p0"))])
    assert len(server2.made) == 1 and server2.ids_in(1) == ["p0"]
