"""The Grafana dashboard, built from code with Grafana's own ``grafana-foundation-sdk``.

``python -m hitl_router.dashboard [-o deploy/grafana/dashboards/hitl-router.json]`` writes
it; the checked-in JSON is that output (a unit test compares them), and an integration test
runs every panel's query against a real Prometheus scraping real workers. Four rows, one
question each: is it up and keeping up; what goes to people; is the model still the one we
trained; is the model any good. Queries read the workers' own series (no recording rule
needed), per worker (``instance``) where a series belongs to one worker's windows.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

UID = "hitl-router"
DATASOURCE_UID = "prometheus"  # the provisioned datasource (deploy/grafana/provisioning)
OUT = Path("deploy/grafana/dashboards/hitl-router.json")

#: (row title, [(panel title, kind, unit, [(expr, legend)], description)])
Panel = tuple[str, str, str, list[tuple[str, str]], str]
ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Up and keeping up",
        [
            (
                "Workers up",
                "stat",
                "none",
                [('sum by (job) (up{job=~"hitl-router.*"})', "{{job}}")],
                "Scraped workers answering, per job (routing workers, label workers).",
            ),
            (
                "Predictions per second, per model",
                "timeseries",
                "reqps",
                [("sum by (model) (rate(hitl_predictions_total[$__rate_interval]))", "{{model}}")],
                "Valid predictions read, per model.",
            ),
            (
                "Fates per second, per model",
                "timeseries",
                "reqps",
                [
                    (
                        "sum by (model, fate) (rate(hitl_decisions_total[$__rate_interval]))",
                        "{{model}} {{fate}}",
                    )
                ],
                "What the router decided, per model: pass, review, eval (the uncontaminated "
                "sample).",
            ),
            (
                "Consumer lag per partition",
                "timeseries",
                "short",
                [
                    (
                        "max by (topic, partition) (faust_topic_partition_end_offset) - "
                        "max by (topic, partition) (faust_topic_partition_offset_commited)",
                        "{{topic}}[{{partition}}]",
                    )
                ],
                "End offset minus committed offset, per input partition.",
            ),
            (
                "Decision latency p50 / p99",
                "timeseries",
                "s",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        "(rate(hitl_decision_latency_seconds_bucket[$__rate_interval])))",
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        "(rate(hitl_decision_latency_seconds_bucket[$__rate_interval])))",
                        "p99",
                    ),
                ],
                "Prediction time (its ts) to decision. The alert's objective: p99 500 ms.",
            ),
            (
                "Dead letters per second, by code",
                "timeseries",
                "reqps",
                [
                    ("sum by (code) (rate(hitl_deadletter_total[$__rate_interval]))", "{{code}}"),
                    (
                        "sum by (code) (rate(hitl_label_deadletter_total[$__rate_interval]))",
                        "labels: {{code}}",
                    ),
                ],
                "Predictions and labels sent to the dead-letter topics, with the reason.",
            ),
            (
                "Batch size and agent errors",
                "timeseries",
                "short",
                [
                    (
                        "sum(rate(hitl_batch_size_sum[$__rate_interval])) / "
                        "sum(rate(hitl_batch_size_count[$__rate_interval]))",
                        "mean batch",
                    ),
                    (
                        "sum by (agent) (increase(hitl_agent_errors_total[$__rate_interval]))",
                        "errors: {{agent}}",
                    ),
                    (
                        "sum(increase(hitl_model_label_overflow_total[$__rate_interval]))",
                        "model label overflow",
                    ),
                ],
                "Messages per decided batch; batches an agent had to redo one by one (a "
                "bug met some input); predictions whose model got the label 'other'.",
            ),
        ],
    ),
    (
        "What goes to people",
        [
            (
                "Review items per second, per queue",
                "timeseries",
                "reqps",
                [
                    (
                        'sum by (queue) (rate(hitl_decisions_total{fate="review"}'
                        "[$__rate_interval]))",
                        "{{queue}}",
                    )
                ],
                "Items routed to each review queue.",
            ),
            (
                "Rules fired per second",
                "timeseries",
                "reqps",
                [
                    (
                        "sum by (queue, rule) (rate(hitl_rule_fired_total[$__rate_interval]))",
                        "{{queue}}: {{rule}}",
                    )
                ],
                "Every rule that fired on a routed item (its reasons).",
            ),
            (
                "Budget use and quota",
                "timeseries",
                "short",
                [
                    ("sum by (queue) (hitl_budget_used)", "{{queue}} used"),
                    ("sum by (queue) (hitl_budget_quota)", "{{queue}} budget"),
                ],
                "Items admitted in the current period, against the queue's budget (summed "
                "over workers: each holds its share).",
            ),
            (
                "Matched but passed: budget, diversity, duplicates",
                "timeseries",
                "reqps",
                [
                    (
                        "sum by (queue) (rate(hitl_budget_dropped_total[$__rate_interval]))",
                        "{{queue}} over budget",
                    ),
                    (
                        "sum by (queue) (rate(hitl_diversity_dropped_total[$__rate_interval]))",
                        "{{queue}} diversity cap",
                    ),
                    (
                        "sum by (queue) (rate(hitl_duplicates_total[$__rate_interval]))",
                        "{{queue}} duplicate",
                    ),
                ],
                "Items that matched a queue and passed, with the reason.",
            ),
            (
                "Target-rate thresholds",
                "timeseries",
                "short",
                [("hitl_rule_threshold", "{{queue}}: {{rule}} ({{instance}})")],
                "The live threshold of each target-rate rule, per worker.",
            ),
            (
                "Queue concentration: class entropy",
                "timeseries",
                "short",
                [
                    ('hitl_class_entropy{queue!=""}', "{{queue}} ({{instance}})"),
                    ('hitl_class_entropy{queue=""}', "stream ({{instance}})"),
                ],
                "Entropy of the predicted-class mix of each queue against the stream's: a "
                "queue far below the stream keeps selecting the same classes.",
            ),
        ],
    ),
    (
        "Is the model still the one we trained (drift)",
        [
            (
                "Drift score / threshold, per feature and method",
                "timeseries",
                "short",
                [
                    (
                        "hitl_drift_score / hitl_drift_threshold",
                        "{{model}} {{feature}} {{method}} ({{instance}})",
                    )
                ],
                "Each test's score over its threshold: above 1 the test fired. Windows are "
                "each worker's (the instance).",
            ),
            (
                "Drift alarm per model and worker",
                "timeseries",
                "short",
                [
                    ("hitl_drift_alarm", "alarm {{model}} ({{instance}})"),
                    ("hitl_drift_window_drifted", "window {{model}} ({{instance}})"),
                ],
                "The alarm is on while drift.persistence.drifted of the model's last "
                "drift.persistence.windows windows drifted; the window verdict beside it.",
            ),
            (
                "Windows judged and drifted per minute",
                "timeseries",
                "short",
                [
                    (
                        "sum by (model, drifted) "
                        "(rate(hitl_drift_windows_total[$__rate_interval])) * 60",
                        "{{model}} drifted={{drifted}}",
                    )
                ],
                "Drift windows per minute, by verdict.",
            ),
            (
                "Drift tests fired and alarms started",
                "timeseries",
                "short",
                [
                    ("sum by (model, method) (hitl_drift_detected)", "{{model}} {{method}}"),
                    ("sum by (model) (increase(hitl_drift_alarms_total[1h]))", "{{model}} alarms"),
                ],
                "How many features each method finds drifted in the last window, and drift "
                "alarms started over the last hour.",
            ),
        ],
    ),
    (
        "Is the model any good",
        [
            (
                "Eval accuracy with its 95% interval",
                "timeseries",
                "percentunit",
                [
                    ("hitl_eval_accuracy", "{{model}}"),
                    ("hitl_eval_accuracy_lower", "{{model}} lower"),
                    ("hitl_eval_accuracy_upper", "{{model}} upper"),
                ],
                "Accuracy on the uncontaminated eval sample (Wilson interval).",
            ),
            (
                "Per-class recall on the eval sample",
                "timeseries",
                "percentunit",
                [("hitl_eval_recall", "{{model}} class {{cls}}")],
                "Classes drifting apart is a warning sign.",
            ),
            (
                "ECE before and after temperature scaling",
                "timeseries",
                "short",
                [
                    ("hitl_ece", "{{model}} raw"),
                    ("hitl_ece_calibrated", "{{model}} calibrated"),
                    ("hitl_ece_calibrated_lower", "{{model}} calibrated lower"),
                    ("hitl_ece_calibrated_upper", "{{model}} calibrated upper"),
                    ('hitl_ece_equal_mass{stage="calibrated"}', "{{model}} equal-mass bins"),
                    ("hitl_ece_warning", "{{model}} warning"),
                ],
                "Expected calibration error on the eval sample; above 0.10 routing on "
                "uncertainty is unreliable.",
            ),
            (
                "Brier score and NLL, raw and calibrated",
                "timeseries",
                "short",
                [
                    ("hitl_brier", "{{model}} Brier {{stage}}"),
                    ("hitl_nll", "{{model}} NLL {{stage}}"),
                ],
                "Proper scores on the eval window, before and after temperature scaling.",
            ),
            (
                "Eval labels and temperature fits",
                "timeseries",
                "short",
                [
                    ("hitl_eval_labels", "{{model}} eval labels"),
                    (
                        "sum by (model, outcome) (increase(hitl_calibration_fits_total[1h]))",
                        "{{model}} fits {{outcome}}",
                    ),
                ],
                "Eval labels in each model's window (the n of every number here), and "
                "temperature fits over the last hour: accepted, rejected, too few labels.",
            ),
            (
                "Temperature in use",
                "timeseries",
                "short",
                [("hitl_calibration_temperature", "{{model}}")],
                "The accepted temperature fit (else the config's).",
            ),
            (
                "Label agreement and kappa",
                "timeseries",
                "percentunit",
                [
                    ('hitl_label_agreement{scope="source"}', "agreement {{name}}"),
                    ('hitl_label_agreement_lower{scope="source"}', "lower {{name}}"),
                    ('hitl_label_agreement_upper{scope="source"}', "upper {{name}}"),
                    ('hitl_label_kappa{scope="source"}', "kappa {{name}}"),
                ],
                "Double-labelled items (QA): agreement on review items against eval items.",
            ),
            (
                "What routing buys: review items the model got wrong",
                "timeseries",
                "percentunit",
                [
                    (
                        'sum by (queue) (increase(hitl_trigger_labels_total{model_wrong="true"}'
                        "[1h])) / sum by (queue) (increase(hitl_trigger_labels_total[1h]))",
                        "{{queue}}",
                    ),
                    ("1 - avg(hitl_eval_accuracy)", "random (eval) items"),
                ],
                "Share of each queue's labelled items the model had wrong, against the "
                "error rate of random items: a queue at or below it buys nothing.",
            ),
            (
                "Labels per second, by source",
                "timeseries",
                "reqps",
                [("sum by (source) (rate(hitl_labels_total[$__rate_interval]))", "{{source}}")],
                "Labels joined to their prediction: eval and review.",
            ),
            (
                "Label loop: pairs, QA items, labels read again",
                "timeseries",
                "short",
                [
                    ('hitl_label_pairs{scope="source"}', "pairs {{name}}"),
                    ("sum by (queue) (increase(hitl_qa_items_total[1h]))", "QA items {{queue}}"),
                    ("sum(increase(hitl_labels_redelivered_total[1h]))", "redelivered"),
                    ("sum(increase(hitl_labels_rekeyed_total[1h]))", "re-keyed"),
                ],
                "Double-labelled pairs in the window, review items re-queued for QA, labels "
                "read again after a failover (ignored) or read off their id's partition.",
            ),
            (
                "Corrections by reason",
                "timeseries",
                "short",
                [("sum by (reason) (increase(hitl_corrections_total[1h]))", "{{reason}}")],
                "Why the model was wrong, per the reviewers (the correction taxonomy).",
            ),
        ],
    ),
]


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a dict)."""
    from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
    from grafana_foundation_sdk.builders.prometheus import Dataquery
    from grafana_foundation_sdk.builders.stat import Panel as Stat
    from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    source = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    board = (
        Dashboard("hitl-router")
        .uid(UID)
        .tags(["hitl-router", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
    )
    for row_title, panels in ROWS:
        board = board.with_row(Row(row_title))
        for title, kind, unit, queries, description in panels:
            panel = (Stat() if kind == "stat" else Timeseries()).title(title)
            panel = panel.description(description).unit(unit).datasource(source)
            panel = panel.height(8).span(8)
            for i, (expr, legend) in enumerate(queries):
                query = Dataquery().expr(expr).legend_format(legend).ref_id("ABCDEFGH"[i])
                panel = panel.with_target(query.datasource(source))
            board = board.with_panel(panel)
    data: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))
    return data


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every panel of a dashboard JSON."""
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets") or []:
            yield panel["title"], target["expr"]


def render(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hitl_router.dashboard", description=__doc__)
    p.add_argument("-o", "--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(build()), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
