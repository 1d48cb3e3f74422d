"""The Label Studio bridge against a real Label Studio (its PyPI package, SQLite, on
localhost) and the real local Kafka (one file: ``make test`` runs a file per pytest-xdist
worker, so the session's one Label Studio serves all of them). First the local server
itself (health, tokens); then the bridge: the routing worker's review items and eval samples
become tasks, once each; annotations made through Label Studio's API come back as
labels the labels agent joins; an unreachable Label Studio or a refused token acks
nothing until Label Studio takes the tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from hitl_router.labelstudio.interface import alias
from hitl_router.locallabelstudio import LabelStudioError, LabelStudioServer, health, whoami
from hitl_router.simulate import Simulator
from tests.conftest import REPO, free_port
from tests.integration.faults import replay_fates
from tests.integration.helpers import (
    drain,
    produce,
    scrape,
    start_cli,
    start_worker,
    stop,
    total,
    until,
    wait_metrics,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.labelstudio, pytest.mark.timeout(900)]
TOKEN_ENV = "HITL_TEST_BRIDGE_TOKEN"


# ---- the local Label Studio of the session -------------------------------------------


def test_health_answers_up(label_studio: LabelStudioServer) -> None:
    assert health(label_studio.url)
    with urllib.request.urlopen(f"{label_studio.url}/health", timeout=10) as resp:
        assert resp.status == 200
        assert json.loads(resp.read()) == {"status": "UP"}


def test_admin_token_authenticates(label_studio: LabelStudioServer) -> None:
    me = whoami(label_studio.url, label_studio.token)
    assert me["id"] == label_studio.admin_id
    assert isinstance(me["id"], int)


def test_annotator_token_is_a_different_user(label_studio: LabelStudioServer) -> None:
    if label_studio.annotator_token is None:
        pytest.skip("HITL_TEST_LABEL_STUDIO_URL: an external server has no annotator")
    me = whoami(label_studio.url, label_studio.annotator_token)
    assert me["id"] == label_studio.annotator_id
    assert me["id"] != label_studio.admin_id
    assert me["email"] == label_studio.annotator_email == "annotator@hitl-router.local"


def test_wrong_token_gets_401(label_studio: LabelStudioServer) -> None:
    with pytest.raises(LabelStudioError) as info:
        whoami(label_studio.url, "0" * 40)
    assert info.value.kind == "unauthorized"
    assert "HTTP 401" in str(info.value)
    request = urllib.request.Request(f"{label_studio.url}/api/projects")  # no token at all
    with pytest.raises(urllib.error.HTTPError) as http_info:
        urllib.request.urlopen(request, timeout=10)
    assert http_info.value.code == 401


# ---- the bridge --------------------------------------------------------------------------


def _config(path: Path, bootstrap: str, url: str, **label_studio: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    section = {
        "url": url,
        "token_env": TOKEN_ENV,
        "title_prefix": f"t{tag} review: ",
        "eval_project": f"t{tag} eval",
        "poll_interval_s": 1.0,
        "poll_overlap_s": 2.0,
        "state_topic": f"ls-state-{tag}",
        "group_id": f"ls-bridge-{tag}",
        "metrics_port": free_port(),
        **label_studio,
    }
    return write_config(
        path,
        bootstrap,
        eval_sample={"rate": 0.2, "salt": "bridge"},
        queues=[
            {
                "name": "uncertain",
                "topic": f"review-uncertain-{tag}",
                "when": {"max_prob_below": 0.95},
            }
        ],
        labels={"decision_wait_s": 2},
        label_studio=section,
    )


def _start_bridge(cfg_path: Path, log: Path, token: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, TOKEN_ENV: token}
    return start_cli(log, "bridge", "label-studio", "-c", str(cfg_path), env=env)


def _client(url: str, token: str) -> Any:
    from label_studio_sdk.client import LabelStudio

    return LabelStudio(base_url=url, api_key=token)


def _project(ls: Any, title: str) -> int | None:
    for p in ls.projects.list(page_size=100):
        if p.title == title:
            return int(p.id)
    return None


def _tasks(ls: Any, title: str) -> list[Any]:
    pid = _project(ls, title)
    return [] if pid is None else list(ls.tasks.list(project=pid, fields="all", page_size=1000))


def _annotate(
    ls: Any,
    task_id: int,
    index: int | None,
    reason: str | None = None,
    note: str | None = None,
    cancelled: bool = False,
) -> Any:
    result: list[dict[str, Any]] = []
    if index is not None:
        result.append(
            {
                "from_name": "label",
                "to_name": "item",
                "type": "choices",
                "value": {"choices": [alias(index)]},
            }
        )
    if reason is not None:
        result.append(
            {
                "from_name": "correction_reason",
                "to_name": "item",
                "type": "choices",
                "value": {"choices": [reason]},
            }
        )
    if note is not None:
        result.append(
            {
                "from_name": "correction_note",
                "to_name": "item",
                "type": "textarea",
                "value": {"text": [note]},
            }
        )
    return ls.annotations.create(task_id, result=result, was_cancelled=cancelled)


def _label_schema() -> Any:
    import jsonschema

    schema = json.loads((REPO / "schemas" / "label.v1.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def test_items_become_tasks_once_and_annotations_come_back_as_joined_labels(
    kafka_bootstrap, label_studio, tmp_path
):
    cfg_path = tmp_path / "bridge.yaml"
    cfg = _config(cfg_path, kafka_bootstrap, label_studio.url)
    t, section = cfg["topics"], cfg["label_studio"]
    review_topic = cfg["queues"][0]["topic"]
    review_title, eval_title = section["title_prefix"] + "uncertain", section["eval_project"]
    raws = list(Simulator(seed=5, flag_rate=0.0, sharpen=0.3, id_prefix="b").messages(150))
    truths = {d["id"]: d["label"] for d in map(orjson.loads, raws)}
    verdicts = replay_fates(tmp_path, cfg_path, raws)
    eval_ids = {v["id"] for v in verdicts if v["fate"] == "eval"}
    review_ids = {v["id"] for v in verdicts if v["fate"] == "review"}
    assert len(eval_ids) >= 15 and len(review_ids) >= 15

    router_port, labels_port = free_port(), free_port()
    router = start_worker(
        cfg_path, router_port, tmp_path / "router.log", "--agents", "router,sampler"
    )
    labeller = start_worker(cfg_path, labels_port, tmp_path / "labels.log", "--agents", "labels")
    bridge_log = tmp_path / "bridge.log"
    bridge = _start_bridge(cfg_path, bridge_log, label_studio.token)
    bport = section["metrics_port"]
    procs = [router, labeller, bridge]
    try:
        wait_metrics(router, router_port, log=tmp_path / "router.log")
        wait_metrics(labeller, labels_port, log=tmp_path / "labels.log")
        wait_metrics(bridge, bport, log=bridge_log)
        produce(kafka_bootstrap, t["predictions"], raws)
        items = drain(
            kafka_bootstrap,
            [t["eval"], review_topic],
            until=len(eval_ids) + len(review_ids),
            timeout=90,
            idle=0.5,
        )
        by_id = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in items}
        if set(by_id) != eval_ids | review_ids:  # what the router did, to tell why
            decided = total(scrape(router_port), "hitl_predictions_total")
            tail = (tmp_path / "router.log").read_text(errors="replace")[-3000:]
            raise AssertionError(
                f"{len(by_id)} of {len(eval_ids | review_ids)} items; the router decided "
                f"{decided} of {len(raws)}; its log ends:\n{tail}"
            )

        admin = _client(label_studio.url, label_studio.token)
        until(lambda: len(_tasks(admin, review_title)), len(review_ids), 120, "review tasks")
        until(lambda: len(_tasks(admin, eval_title)), len(eval_ids), 60, "eval tasks")

        # review tasks: the model's answer as a pre-annotation, its scores, reasons, priority
        review_tasks = {task.data["id"]: task for task in _tasks(admin, review_title)}
        assert set(review_tasks) == review_ids
        for pid, task in review_tasks.items():
            item = by_id[pid]
            probs = item["prediction"]["probs"]
            top = max(range(len(probs)), key=probs.__getitem__)
            (pre,) = task.predictions
            pre = pre if isinstance(pre, dict) else pre.model_dump()
            assert pre["result"][0]["value"] == {"choices": [alias(top)]}
            assert pre["score"] == pytest.approx(item["scores"]["max_prob"])
            assert pre["model_version"] == item["model"]
            assert task.data["priority"] == pytest.approx(item["priority"])
            assert task.data["reasons"] == item["reasons"]
            assert task.data["scores"] == item["scores"]
            assert task.data["queue"] == "uncertain" and task.data["predicted"] == top
        # eval tasks are blind: nothing of the model's answer
        eval_tasks = {task.data["id"]: task for task in _tasks(admin, eval_title)}
        assert set(eval_tasks) == eval_ids
        for task in eval_tasks.values():
            assert not task.predictions
            assert not {"predicted", "scores", "reasons", "probs"} & set(task.data)
            assert "0.9" not in task.data["header"]

        # a redelivery (the same items again, as after a crash before the commit): no task
        again = [r for r in items if orjson.loads(r.value)["id"] in review_ids][:10]
        again += [r for r in items if orjson.loads(r.value)["id"] in eval_ids][:5]
        produce(
            kafka_bootstrap,
            review_topic,
            [r.value for r in again if r.topic == review_topic],
            [r.key for r in again if r.topic == review_topic],
        )
        produce(
            kafka_bootstrap,
            t["eval"],
            [r.value for r in again if r.topic == t["eval"]],
            [r.key for r in again if r.topic == t["eval"]],
        )
        until(
            lambda: total(scrape(bport), "hitl_bridge_tasks_skipped_total"),
            len(again),
            60,
            "redelivered items recognised",
        )
        assert len(_tasks(admin, review_title)) == len(review_ids)
        assert len(_tasks(admin, eval_title)) == len(eval_ids)
        assert total(scrape(bport), "hitl_bridge_tasks_created_total") == len(by_id)

        # annotations through Label Studio's API, as the annotator
        ann = _client(label_studio.url, label_studio.annotator_token)
        r_ids, e_ids = sorted(review_ids), sorted(eval_ids)
        expected: dict[str, dict[str, Any]] = {}
        for k, pid in enumerate(r_ids[:6]):
            predicted = review_tasks[pid].data["predicted"]
            if k % 2 == 0:  # agrees, no reason given: model_correct
                _annotate(ann, review_tasks[pid].id, predicted)
                expected[pid] = {"label": str(predicted), "reason": "model_correct"}
            else:
                wrong = (predicted + 1) % 10
                _annotate(ann, review_tasks[pid].id, wrong, "ambiguous_input", "two loops")
                expected[pid] = {
                    "label": str(wrong),
                    "reason": "ambiguous_input",
                    "note": "two loops",
                }
        for pid in e_ids[:4]:
            truth = truths[pid]
            _annotate(ann, eval_tasks[pid].id, int(truth))
            expected[pid] = {"label": str(truth)}
        _annotate(ann, review_tasks[r_ids[6]].id, None, cancelled=True)  # skipped: no label

        records = drain(kafka_bootstrap, [t["labels"]], until=len(expected), timeout=60, idle=3)
        labels = [orjson.loads(r.value) for r in records]
        assert len(labels) == len(expected), labels
        validator = _label_schema()
        for doc, record in zip(labels, records, strict=True):
            validator.validate(doc)
            assert record.key == doc["id"].encode()
            want = expected[doc["id"]]
            assert doc["label"] == want["label"]
            assert doc["annotator"] == label_studio.annotator_email
            if doc["id"] in review_ids:
                assert doc["source"] == "review" and doc["queue"] == "uncertain"
                assert doc["correction"]["reason"] == want["reason"]
                assert doc["correction"].get("note") == want.get("note")
            else:
                assert doc["source"] == "eval" and "correction" not in doc

        # an updated annotation sends a new label
        first = next(d for d in labels if d["id"] == r_ids[0])
        ann.annotations.update(
            first["annotation_id"],
            result=[
                {
                    "from_name": "label",
                    "to_name": "item",
                    "type": "choices",
                    "value": {"choices": [alias(3)]},
                },
                {
                    "from_name": "correction_reason",
                    "to_name": "item",
                    "type": "choices",
                    "value": {"choices": ["wrong_class_boundary"]},
                },
            ],
        )
        records = drain(kafka_bootstrap, [t["labels"]], until=len(expected) + 1, timeout=60, idle=3)
        assert len(records) == len(expected) + 1
        update = orjson.loads(records[-1].value)
        assert (update["id"], update["label"], update["correction"]["reason"]) == (
            r_ids[0],
            "3",
            "wrong_class_boundary",
        )
        assert update["annotation_id"] == first["annotation_id"]
        assert update["revision"] != first["revision"]

        # the labels agent joins them: every label, none dead-lettered
        until(
            lambda: total(scrape(labels_port), "hitl_labels_total"),
            len(expected) + 1,
            90,
            "labels joined",
        )
        assert total(scrape(labels_port), "hitl_labels_total", source="eval") == 4
        assert total(scrape(labels_port), "hitl_label_deadletter_total") == 0

        metrics = scrape(bport)
        assert total(metrics, "hitl_bridge_labels_sent_total", source="review") == 7
        assert total(metrics, "hitl_bridge_labels_sent_total", source="eval") == 4
        assert total(metrics, "hitl_bridge_label_latency_seconds_count") == 10
        # the skipped task is still to be labelled: Label Studio counts it as not annotated
        assert total(metrics, "hitl_bridge_backlog", project=review_title) == len(review_ids) - 6
        assert total(metrics, "hitl_bridge_backlog", project=eval_title) == len(eval_ids) - 4
        assert total(metrics, "hitl_bridge_errors_total") == 0

        # the bridge stopped: labels made meanwhile arrive after its restart, none twice, and
        # it makes no task again (it resumes from its committed offsets)
        stop([bridge])
        assert bridge.returncode == 0, bridge_log.read_text()[-3000:]
        _annotate(ann, review_tasks[r_ids[7]].id, 0, "guideline_gap")
        _annotate(ann, eval_tasks[e_ids[4]].id, 1)
        bridge = _start_bridge(cfg_path, bridge_log, label_studio.token)
        procs.append(bridge)
        wait_metrics(bridge, bport, log=bridge_log)
        records = drain(kafka_bootstrap, [t["labels"]], until=len(expected) + 3, timeout=60, idle=4)
        ids = Counter(orjson.loads(r.value)["id"] for r in records)
        assert len(records) == len(expected) + 3, ids
        assert {r_ids[7], e_ids[4]} <= set(ids)
        metrics = scrape(bport)
        assert total(metrics, "hitl_bridge_tasks_created_total") == 0
        assert total(metrics, "hitl_bridge_tasks_skipped_total") == 0
        assert total(metrics, "hitl_bridge_labels_sent_total") == 2
        assert label_studio.token not in bridge_log.read_text()
    finally:
        stop(procs)


def _review_items(n: int, queue: str, tag: str) -> list[bytes]:
    """Review items as the router writes them (the bridge reads nothing else)."""
    out = []
    for i in range(n):
        probs = [0.6, 0.3, 0.1]
        out.append(
            orjson.dumps(
                {
                    "id": f"{tag}-{i}",
                    "model": "m@1",
                    "queue": queue,
                    "priority": 0.4,
                    "reasons": [
                        {
                            "queue": queue,
                            "rule": "max_prob_below",
                            "metric": "max_prob",
                            "value": 0.6,
                            "op": "<",
                            "threshold": 0.7,
                        }
                    ],
                    "scores": {"max_prob": 0.6, "margin": 0.3, "entropy": 0.9, "entropy_norm": 0.8},
                    "temperature": 1.0,
                    "prediction": {
                        "id": f"{tag}-{i}",
                        "model": "m@1",
                        "probs": probs,
                        "classes": ["cat", "dog", "bird"],
                        "features": {"x": i},
                    },
                    "routed_at": time.time(),
                    "router": {"version": "test", "config_hash": "abc"},
                }
            )
        )
    return out


def _committed(bootstrap: str, group: str, topic: str) -> int:
    """Offsets the group committed on ``topic``, summed over partitions (0: none)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(max(0, o.offset) for tp, o in offsets.items() if tp.topic == topic)


class _Proxy:
    """A TCP proxy to Label Studio that starts listening only when told: Label Studio
    unreachable, then back."""

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        host, port = self.target.rsplit(":", 1)
        code = (
            "import asyncio\n"
            "async def pipe(r, w):\n"
            "    try:\n"
            "        while data := await r.read(65536):\n"
            "            w.write(data); await w.drain()\n"
            "    finally:\n"
            "        w.close()\n"
            "async def handle(r, w):\n"
            f"    ur, uw = await asyncio.open_connection({host.split('//')[-1]!r}, {port})\n"
            "    await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)\n"
            "async def main():\n"
            f"    s = await asyncio.start_server(handle, '127.0.0.1', {self.port})\n"
            "    await s.serve_forever()\n"
            "asyncio.run(main())\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def test_label_studio_unreachable_acks_nothing_and_retries_until_it_answers(
    kafka_bootstrap, label_studio, tmp_path
):
    port = free_port()
    cfg_path = tmp_path / "down.yaml"
    cfg = _config(cfg_path, kafka_bootstrap, f"http://127.0.0.1:{port}")
    section, queue = cfg["label_studio"], cfg["queues"][0]
    raws = _review_items(5, "uncertain", "down")
    produce(kafka_bootstrap, queue["topic"], [b"{not json", *raws])
    log = tmp_path / "bridge.log"
    bridge = _start_bridge(cfg_path, log, label_studio.token)
    proxy = _Proxy(port, label_studio.url)
    bport = section["metrics_port"]
    try:
        wait_metrics(bridge, bport, log=log)
        until(
            lambda: total(scrape(bport), "hitl_bridge_errors_total", kind="unreachable"),
            lambda n: n >= 3,
            60,
            "failed attempts",
        )
        text = log.read_text()
        assert f"Label Studio at http://127.0.0.1:{port} is unreachable" in text
        assert "nothing acked, retrying in" in text
        assert _committed(kafka_bootstrap, section["group_id"], queue["topic"]) == 0
        assert (
            drain(kafka_bootstrap, [cfg["topics"]["deadletter"]], until=1, timeout=3, idle=0) == []
        )

        proxy.start()  # Label Studio answers again
        admin = _client(label_studio.url, label_studio.token)
        title = section["title_prefix"] + "uncertain"
        until(lambda: len(_tasks(admin, title)), 5, 60, "tasks once it answers")
        letters = drain(kafka_bootstrap, [cfg["topics"]["deadletter"]], until=1, timeout=30)
        (letter,) = [orjson.loads(r.value) for r in letters]
        assert letter["error"]["code"] == "not_json"
        assert letter["source"]["topic"] == queue["topic"]
        until(
            lambda: _committed(kafka_bootstrap, section["group_id"], queue["topic"]),
            6,
            30,
            "all acked",
        )
        assert total(scrape(bport), "hitl_bridge_errors_total", kind="invalid_item") == 1
    finally:
        stop([bridge])
        proxy.stop()


def test_a_refused_token_is_a_clear_error_and_nothing_is_acked_until_it_is_taken(
    kafka_bootstrap, label_studio, label_studio_server, tmp_path
):
    token = uuid.uuid4().hex + "0" * 8
    cfg_path = tmp_path / "token.yaml"
    cfg = _config(cfg_path, kafka_bootstrap, label_studio.url)
    section, queue = cfg["label_studio"], cfg["queues"][0]
    produce(kafka_bootstrap, queue["topic"], _review_items(3, "uncertain", "tok"))
    log = tmp_path / "bridge.log"
    bridge = _start_bridge(cfg_path, log, token)
    bport = section["metrics_port"]
    try:
        wait_metrics(bridge, bport, log=log)
        until(
            lambda: total(scrape(bport), "hitl_bridge_errors_total", kind="unauthorized"),
            lambda n: n >= 2,
            60,
            "refused attempts",
        )
        text = log.read_text()
        assert f"refused the token from environment variable {TOKEN_ENV} (401)" in text
        assert token not in text
        assert _committed(kafka_bootstrap, section["group_id"], queue["topic"]) == 0
        admin = _client(label_studio.url, label_studio.token)
        assert _project(admin, section["title_prefix"] + "uncertain") is None

        # the token becomes a user's: the next retry goes through
        label_studio_server.add_user(f"bridge-{token[:6]}@hitl-router.local", "pass-123456", token)
        until(
            lambda: len(_tasks(admin, section["title_prefix"] + "uncertain")),
            3,
            60,
            "tasks once the token is taken",
        )
        until(
            lambda: _committed(kafka_bootstrap, section["group_id"], queue["topic"]),
            3,
            30,
            "all acked",
        )
    finally:
        stop([bridge])
