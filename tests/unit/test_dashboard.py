"""The Grafana dashboard: the checked-in JSON is what the code builds, and it is
well-formed for Grafana's provisioning. (Its queries run against a real Prometheus in
tests/integration/test_observability.py.)"""

from __future__ import annotations

import json

from hitl_router import dashboard
from tests.conftest import REPO


def test_the_checked_in_dashboard_is_the_generated_one():
    path = REPO / dashboard.OUT
    assert path.read_text(encoding="utf-8") == dashboard.render(dashboard.build()), (
        "deploy/grafana/dashboards/hitl-router.json is stale: run python -m hitl_router.dashboard"
    )


def test_every_panel_queries_the_provisioned_prometheus():
    board = json.loads((REPO / dashboard.OUT).read_text(encoding="utf-8"))
    assert board["uid"] == dashboard.UID and board["title"] == "hitl-router"
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == [title for title, _ in dashboard.ROWS]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) == sum(len(ps) for _, ps in dashboard.ROWS)
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": dashboard.DATASOURCE_UID}
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
        assert p["description"]
    # laid out on Grafana's 24-column grid without overlap
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        cells |= mine


def test_the_datasource_the_dashboard_names_is_provisioned():
    import yaml

    provisioned = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d.get("uid") for d in provisioned["datasources"]}
    assert dashboard.DATASOURCE_UID in uids


def test_queries_cover_the_metrics_the_issue_names():
    text = " ".join(expr for _, expr in dashboard.queries(dashboard.build()))
    for name in (
        "hitl_predictions_total",
        "hitl_decisions_total",
        "faust_topic_partition_end_offset",
        "hitl_decision_latency_seconds_bucket",
        "hitl_deadletter_total",
        "hitl_rule_fired_total",
        "hitl_budget_used",
        "hitl_budget_dropped_total",
        "hitl_rule_threshold",
        "hitl_class_entropy",
        "hitl_drift_score",
        "hitl_drift_threshold",
        "hitl_drift_alarm",
        "hitl_eval_accuracy_lower",
        "hitl_eval_recall",
        "hitl_ece_calibrated",
        "hitl_calibration_temperature",
        "hitl_label_agreement",
        "hitl_label_kappa",
    ):
        assert name in text, name


def test_every_metric_the_workers_export_is_on_the_dashboard():
    """Each hitl_ metric family the routing and label workers register is read by some
    panel's query (Faust's own series only where the dashboard needs them: lag)."""
    from prometheus_client import CollectorRegistry

    from hitl_router.feedback_metrics import FeedbackMetrics
    from hitl_router.metrics import RouterMetrics

    registry = CollectorRegistry()
    router = RouterMetrics(registry)
    FeedbackMetrics(registry, router.model_label)
    names = {family.name for family in registry.collect()}
    assert len(names) > 40
    text = " ".join(expr for _, expr in dashboard.queries(dashboard.build()))
    assert sorted(n for n in names if n not in text) == []
