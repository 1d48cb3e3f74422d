"""Ratios, targets, the printed table and ``BENCHMARKS.md``, all from the results dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bench.agreement import summary

#: the input rate of issue #15's latency targets: the machine half idle
CURVE_TARGET_RATE = 2000
TARGETS = (
    ("router_over_ceiling", ">=", 0.8, "router ≥ 0.8 × ceiling"),
    ("router_over_peer", ">=", 3.0, "router ≥ 3 × peer"),
    ("latency_p99_ms", "<=", 50.0, "p99 ≤ 50 ms at half the max rate"),
    # issue #15: the anchors, measured in the same run
    ("router_over_confluent_loop", ">=", 1.5, "router ≥ 1.5 × confluent-kafka loop"),
    ("router_over_quix", ">=", 2.5, "router ≥ 2.5 × Quix Streams app"),
    ("router_over_confluent_pass", ">=", 0.3, "router ≥ 0.3 × confluent-kafka pass-through"),
    (
        "curve_p99_over_pass",
        "<=",
        1.5,
        f"router p99 ≤ 1.5 × pass-through p99 at {CURVE_TARGET_RATE:,} msgs/s",
    ),
    (
        "curve_p50_minus_pass_ms",
        "<=",
        10.0,
        f"router p50 ≤ pass-through p50 + 10 ms at {CURVE_TARGET_RATE:,} msgs/s",
    ),
)
#: router / each anchor of issue #15 (results key → ratio name)
ANCHOR_RATIOS = {
    "confluent_loop": "router_over_confluent_loop",
    "quix": "router_over_quix",
    "confluent_pass": "router_over_confluent_pass",
}
LABELS = {
    "router": "router (1 worker)",
    "router_no_dedup": "router (1 worker), dedup off",
    "router_aiokafka": "router (1 worker) on aiokafka",
    "ceiling": "ceiling: aiokafka pass-through",
    "confluent_pass": "confluent-kafka pass-through (the limit)",
    "confluent_loop": "confluent-kafka loop, same rules and outputs",
    "quix": "Quix Streams app, same rules and outputs",
    "peer": "peer: hand-written kafka-python",
}
HEADERS = [
    "contender",
    "msgs/s",
    "msgs/s p10–p90",
    "outputs",
    "span s",
    "CPU µs/msg",
    "main thread µs/msg (waiting for a CPU)",
    "its cores",
    "broker CPU µs/msg",
    "other load (cores)",
]
#: the column of a run that checked fates (bench/agreement.py)
FATES_HEADER = "fates vs replay"
Result = dict[str, Any]


def named(results: Result) -> list[tuple[str, Result]]:
    """(label, result) of every contender in ``results``, scale-out runs included."""
    keys = (*LABELS, "latency", "latency-ceiling")
    out = [(LABELS.get(k, k), results[k]) for k in keys if k in results]
    return out + [(f"router, {k} worker(s)", r) for k, r in (results.get("scale") or {}).items()]


def derive(results: Result) -> None:
    """Add ``ratios`` and ``targets`` (pass/fail) to ``results``."""

    def rate(name: str) -> float | None:
        r = results.get(name) or {}
        return r.get("rate") if r.get("ok") else None

    router, ceiling, peer = rate("router"), rate("ceiling"), rate("peer")
    lat = results.get("latency") or {}
    values = {
        "router_over_ceiling": router / ceiling if router and ceiling else None,
        "router_over_peer": router / peer if router and peer else None,
        "latency_p99_ms": lat.get("append_p99_ms") if lat.get("ok") else None,
    }
    for key, ratio in ANCHOR_RATIOS.items():
        anchor = rate(key)
        values[ratio] = router / anchor if router and anchor else None
    values.update(curve_targets(results))
    results["ratios"] = {k: values[k] for k in ("router_over_ceiling", "router_over_peer")}
    results["ratios"].update({r: values[r] for r in ANCHOR_RATIOS.values() if values[r]})
    results["ratios"].update({k: v for k, v in curve_targets(results).items() if v is not None})
    no_dedup = rate("router_no_dedup")
    if no_dedup and ceiling:  # --load-control
        results["ratios"]["router_no_dedup_over_ceiling"] = no_dedup / ceiling
    targets = []
    for key, op, bound, text in TARGETS:
        value = values[key]
        ok = None if value is None else (value >= bound if op == ">=" else value <= bound)
        targets.append({"target": text, "metric": key, "value": value, "pass": ok})
    results["targets"] = targets


def curve_targets(results: Result) -> dict[str, float | None]:
    """The router's p99 over the confluent-kafka pass-through's, and its p50 minus the
    pass-through's (ms), fed at :data:`CURVE_TARGET_RATE` in the rate-latency curve.

    >>> at = {"router": {"ok": True, "append_p50_ms": 14.0, "append_p99_ms": 45.0}}
    >>> at["confluent-pass"] = {"ok": True, "append_p50_ms": 6.0, "append_p99_ms": 30.0}
    >>> curve_targets({"latency_curve": {"2000": at}})
    {'curve_p99_over_pass': 1.5, 'curve_p50_minus_pass_ms': 8.0}
    """
    at = (results.get("latency_curve") or {}).get(f"{CURVE_TARGET_RATE:g}") or {}
    router, limit = at.get("router") or {}, at.get("confluent-pass") or {}
    if not (router.get("ok") and limit.get("ok") and limit.get("append_p99_ms")):
        return {"curve_p99_over_pass": None, "curve_p50_minus_pass_ms": None}
    return {
        "curve_p99_over_pass": router["append_p99_ms"] / limit["append_p99_ms"],
        "curve_p50_minus_pass_ms": router["append_p50_ms"] - limit["append_p50_ms"],
    }


def _num(v: Any, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def _verdict(t: Result) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]


def _error(r: Result) -> str:
    return (r.get("error") or "?").splitlines()[0]


def disagreeing(results: Result) -> list[str]:
    """The contenders whose fates were checked and differ from replay's."""
    return [
        label
        for label, r in named(results)
        if (r.get("agreement") or {}).get("ok") is False or (r.get("agreement") or {}).get("error")
    ]


def one_line(res: Result) -> str:
    if not res.get("ok"):
        return f"FAILED: {_error(res)}"
    if "drift_us" in res:
        return (
            f"decide {res['decide_us']:.1f} µs/prediction, drift {res['drift_us']:.1f} "
            f"µs/prediction ({res['drift_over_decide']:.0%})"
        )
    if "rate" in res:
        return (
            f"{res['rate']:,.0f} msgs/s over {res['span_s']:.1f} s, {res['outputs']} outputs "
            f"({res['duplicates']} duplicates), {res['cpu_us_per_msg']:.0f} µs CPU/msg"
            + (
                f" ({res['main_cpu_us_per_msg']:.0f} on the main thread, which waited "
                f"{res.get('main_cpu_wait_us_per_msg', 0):.0f} for a CPU)"
                if res.get("main_cpu_us_per_msg") is not None
                else ""
            )
            + (f"; fates: {summary(res['agreement'])}" if res.get("agreement") else "")
        )
    return (
        f"p50 {_num(res.get('append_p50_ms'), '.1f')} ms, "
        f"p99 {_num(res.get('append_p99_ms'), '.1f')} ms, "
        f"max {_num(res.get('append_max_ms'), '.0f')} ms to broker append "
        f"at {res['achieved_rate']:,.0f} msgs/s (target {res['target_rate']:,.0f})"
    )


def headers(results: Result) -> list[str]:
    """The throughput table's columns: with the fates' check when the run made it."""
    checked = any("agreement" in r for _, r in named(results))
    return [*HEADERS, FATES_HEADER] if checked else HEADERS


def _main_thread(r: Result) -> str:
    """The main thread's CPU per message, and its wait for a CPU, when measured."""
    if r.get("main_cpu_us_per_msg") is None:
        return "—"
    return f"{r['main_cpu_us_per_msg']:.0f} ({r.get('main_cpu_wait_us_per_msg', 0):.0f})"


def throughput_rows(results: Result) -> list[list[str]]:
    rows = []
    width = len(headers(results))
    for label, r in named(results):
        if "target_rate" in r:  # the latency run has its own table
            continue
        if not r.get("ok"):
            rows.append([label, "FAILED", *[""] * (width - 2)])
            continue
        rows.append(
            [
                label,
                _num(r["rate"]),
                _num(r.get("rate_p10_p90")),
                f"{r['outputs']:,} ({r['duplicates']} dup)",
                _num(r["span_s"], ".1f"),
                _num(r["cpu_us_per_msg"]),
                _main_thread(r),
                _num(r.get("procs_cores"), ".2f"),
                _num(r.get("broker_cpu_us_per_msg")),
                _num(r.get("others_cores"), ".2f"),
                *([summary(r.get("agreement"))] if width > len(HEADERS) else []),
            ]
        )
    return rows


def table(results: Result) -> str:
    """The plain-text summary printed at the end of a run."""
    rows = [headers(results), *throughput_rows(results)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for key in ("latency", "latency-ceiling"):
        if key in results:
            lines.append(f"{key}: {one_line(results[key])}")
    lines.append("")
    for t in results.get("targets", []):
        lines.append(f"{_verdict(t):4}  {t['target']}: {_num(t['value'], '.2f')}")
    m = results.get("machine", {})
    lines.append(
        f"machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}); "
        f"run took {results.get('duration_s', 0):.0f} s"
    )
    return "\n".join(lines)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _md_header(results: Result) -> list[str]:
    m, v, s = (results.get(k, {}) for k in ("machine", "versions", "source"))
    w = results.get("workload", {})
    dirty = " plus uncommitted changes in `hitl_router/`" if s.get(
        "hitl_router_uncommitted_changes"
    ) else ""  # fmt: skip
    return [
        "# Benchmarks",
        "",
        "This page is written by the benchmark from one run; re-run it to refresh it "
        "(`make bench`, i.e. `.venv/bin/python -m bench.run $(BENCH_ARGS)`). Ratios compare "
        "contenders measured in the same run, on the same broker, one after the other.",
        "",
        f"- **Command**: `{results.get('command')}`",
        f"- **When**: {results.get('started_at')}; the whole run took "
        f"{results.get('duration_s', 0):.0f} s",
        f"- **Code measured**: commit `{s.get('commit')}`{dirty} "
        f"(hash of `hitl_router/**/*.py`: `{s.get('hitl_router_sha256')}`)",
        f"- **Machine**: {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('mem_gib')} GiB, "
        f"Linux {m.get('kernel')}. The broker, the contender and the load generator share "
        "those CPUs, and the machine may be running other work (column *other load* shows how "
        "much did): compare ratios within a run, not absolute numbers across runs.",
        "- **Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- **Workload**: {w.get('count', 0):,} predictions from `hitl_router.simulate` (the "
        "digits committee: 10 classes, a 5-member ensemble, 5 features; ~1% flags, ~0.1% "
        f"malformed: here {w.get('flagged', 0):,} flagged and {w.get('malformed', 0):,} "
        f"malformed), {w.get('avg_message_bytes', 0):.0f} bytes on average, keyed by id, in "
        f"one topic of {w.get('topic_partitions')} partitions (prefilled at "
        f"{_num(w.get('prefill_rate'))} msgs/s with aiokafka).",
        "",
    ]


def _md_drift(results: Result) -> list[str]:
    res = results.get("drift_cost")
    if not res:
        return []
    if not res.get("ok"):
        return ["### Drift cost", "", f"FAILED: {_error(res)}", ""]
    return [
        "### Drift cost per prediction",
        "",
        "CPU time (`process_time`, best of 3) over the same batches, no broker "
        "(`bench/drift_cost.py`): the routing decision (`decide_batch`) and the drift "
        f"monitor (`DriftMonitor.update`, windows of {res['window']}, 5 input features plus "
        "`max_prob` and the predicted class, profile built from a separate pool).",
        "",
        *_md_table(
            [
                "predictions",
                "decide µs/prediction",
                "drift µs/prediction",
                "drift / decide",
                "reports",
            ],
            [
                [
                    f"{res['predictions']:,}",
                    _num(res["decide_us"], ".1f"),
                    _num(res["drift_us"], ".1f"),
                    f"{res['drift_over_decide']:.0%}",
                    f"{res['reports']:,}",
                ]
            ],
        ),
        "",
    ]


def _md_targets(results: Result, anchors: Result | None = None) -> list[str]:
    """The targets of ``results``; those it did not measure and the anchors run
    (``anchors``, derived) did come from that run, marked †."""
    theirs = {t["metric"]: t for t in (anchors or {}).get("targets", [])}
    rows, borrowed = [], False
    for t in results["targets"]:
        other = theirs.get(t["metric"])
        if t["value"] is None and other is not None and other["value"] is not None:
            t, borrowed = other, True
            rows.append([t["target"], _num(t["value"], ".2f") + " †", _verdict(t)])
        else:
            rows.append([t["target"], _num(t["value"], ".2f"), _verdict(t)])
    note = (
        [
            f"† measured in the anchors run (`{(anchors or {}).get('command')}`, section "
            "*Anchors* above), not in the run of the results table.",
            "",
        ]
        if borrowed
        else []
    )
    return [
        "## Targets",
        "",
        *_md_table(["target", "measured", "verdict"], rows),
        *note,
        "Reported as measured; nothing was tuned to meet them.",
        "",
    ]


ANCHORS = Path(__file__).with_name("results") / "anchors.json"


def load_anchors(path: Path = ANCHORS) -> Result | None:
    """The results of the last anchors run (issue #15), derived; None if there is none."""
    if not path.exists():
        return None
    r: Result = orjson.loads(path.read_bytes())
    derive(r)
    return r


def _ratio_lines(results: Result) -> list[str]:
    """Router / each anchor, against its target, with each round's ratio."""
    ratios = results.get("ratios", {})
    rounds = results.get("round_ratios_anchors") or {}
    bounds = {metric: (bound, text) for metric, _, bound, text in TARGETS}
    out = []
    for key, metric in ANCHOR_RATIOS.items():
        if key not in results:
            continue
        bound, _ = bounds[metric]
        each = ", ".join(_num(x, ".2f") for x in rounds.get(key, []))
        out.append(
            f"- router / {LABELS[key].split(',')[0]} = **{_num(ratios.get(metric), '.2f')}** "
            f"(target ≥ {bound:g})" + (f"; each round: {each}" if each else "")
        )
    return out + [""] if out else []


def md_anchors(results: Result, anchors: Result | None) -> list[str]:
    """The anchors of issue #15: from ``results`` when it measured them, else from the
    anchors run's own results file (``ANCHORS``)."""
    own = any(k in results for k in ANCHOR_RATIOS)
    r = results if own else anchors
    if r is None or not any(k in r for k in ANCHOR_RATIOS):
        return []
    src, p = r.get("source", {}), r.get("params", {})
    rounds, v = p.get("rounds", 1), r.get("versions", {})
    lines = [
        "## Anchors: librdkafka and Quix Streams (issue #15)",
        "",
        "What the router is measured against besides its aiokafka ceiling: the limit of a "
        "Python process — a confluent-kafka (librdkafka) pass-through of the same bytes — "
        "and the router's own rules and outputs written by hand on confluent-kafka and as a "
        "Quix Streams app (`bench/anchor_rules.py`, per message; see *how measured*). Each "
        "read the same prefilled topic with a fresh group and wrote its own topics; their "
        "fates were checked against `hitl-router replay`'s on every id (column *fates vs "
        "replay*; dead letters: the same ids), and so were their decision records (the "
        "router's record of every eval and review item, for the label loop: ~14% of the "
        "inputs, on a topic of their own).",
        "",
    ]
    if not own:
        w = r.get("workload", {})
        lines += [
            f"Measured by `{r.get('command')}` at {r.get('started_at')}, commit "
            f"`{src.get('commit')}`"
            f"{' plus uncommitted changes' if src.get('hitl_router_uncommitted_changes') else ''}"
            f", {w.get('count', 0):,} predictions in {w.get('topic_partitions')} partitions, "
            f"confluent-kafka {v.get('confluent-kafka')}, Quix's venv: "
            f"{v.get('quixstreams (own venv)')}"
            + (
                f" ({rounds} rounds, the order rotated each round; each row is that "
                "contender's median run):"
                if rounds > 1
                else ":"
            ),
            "",
            *_md_table(headers(r), throughput_rows(r)),
        ]
    return lines + _ratio_lines(r) + _md_curve(r) + ANCHOR_NOTES


#: the curve's contenders, as its table names them
CURVE_LABELS = {
    "confluent-pass": "confluent-kafka pass-through",
    "router": "router (librdkafka)",
    "router-aiokafka": "router (aiokafka)",
}


def _md_curve(results: Result) -> list[str]:
    """Issue #15's rate-latency curve: each contender fed live at each rate."""
    curve = results.get("latency_curve") or {}
    if not curve:
        return []
    headers = ["input msgs/s", "fed to", "achieved msgs/s", "outputs timed", "p50 ms", "p99 ms"]
    headers += ["max ms", "its cores", "machine busy (cores)", "pacer's longest stall ms"]
    headers += ["lead-in: max ms", "lead-in: pacer's stall ms"]
    rows = []
    for rate, row in curve.items():
        for of, lat in row.items():
            label = CURVE_LABELS.get(of, of)
            if not lat.get("ok"):
                rows.append([rate, label, f"FAILED: {_error(lat)}", *[""] * (len(headers) - 3)])
                continue
            rows.append(
                [
                    _num(float(rate)),
                    label,
                    _num(lat["achieved_rate"]),
                    *_timed(lat),
                    _num(lat.get("pacer_max_gap_ms"), ".0f"),
                    _num(lat.get("lead_in_max_ms"), ".0f"),
                    _num(lat.get("lead_in_pacer_max_gap_ms"), ".0f"),
                ]
            )
    t = curve_targets(results)
    return [
        "### Rate–latency curve",
        "",
        "Each contender fed live at each rate on a topic of its own (the latency run of "
        "*how measured*, 10 s each after a lead-in of 1 s): prediction `ts` → its output's "
        "LogAppendTime. The pacer stamps each message when it builds its batch; its longest "
        "stall between two rounds (2 ms apart when it keeps up) delays what it stamped just "
        "before. Traffic starting stalled it 170–340 ms in about half the runs, for every "
        "contender: the lead-in (`bench.latency.LEAD_IN_S`) is paced the same way and "
        "reported apart, not in the percentiles.",
        "",
        *_md_table(headers, rows),
        f"At {CURVE_TARGET_RATE:,} msgs/s: router p99 / pass-through p99 = "
        f"**{_num(t['curve_p99_over_pass'], '.2f')}** (target ≤ 1.5), router p50 − "
        f"pass-through p50 = **{_num(t['curve_p50_minus_pass_ms'], '.1f')} ms** "
        "(target ≤ 10).",
        "",
    ]


#: what the anchors runs showed (written by hand, dated)
ANCHOR_NOTES = [
    "Measured on 2026-12-01 (the run above, commit `947f2c8`, 18:02, three rounds, and the "
    "runs of the same day named below); every id of the 200,000 got replay's fate from the "
    "router, the confluent-kafka loop and the Quix app in every round, and each wrote a "
    "decision record for exactly replay's 28,627 eval and review items:",
    "",
    "- *The anchors now write the decision records too.* The router writes one for every "
    "eval and review item (`topics.decisions`: what the label loop joins labels with, "
    "~14% of the inputs here); until this run the loop and the Quix app wrote none, and "
    "the router's went to the shared `hitl.decisions`, unchecked. Each contender now "
    "writes them to a topic of its own, settled like its outputs, read back after it "
    "stopped and checked. The loop did not get measurably slower: 16,273, 18,290 and "
    "19,564 msgs/s at 57–63 µs of CPU per message (16,835, 18,769 and 17,355 at 58–64 in "
    "the 16:20 run, without them).",
    '- *Three fixes of the benchmark, for every contender* (ANALYSIS.md "Latency '
    "tails\"): output topics are settled before a contender starts (a fresh partition's "
    "first index entries stalled the broker's produce path for up to 1.5 s); the page "
    "cache is written back before each contender (`os.sync`: the writeback of earlier "
    "runs had taken 0.25 cores in the middle of later ones); latency runs pace 1 s before "
    "the clock (the pacer stalled 135–290 ms at the start of traffic in most runs, see its "
    "columns in the curve).",
    "- *The router reads and writes with librdkafka* (`worker.consumer` and "
    '`worker.producer`, README "The agents"): 20,574, 24,885 and 24,749 msgs/s at 45, 42 '
    "and 43 µs of CPU per message (36, 33 and 34 on its main thread); on aiokafka 21,772, "
    "22,292 and 19,168 at 42–45. The anchors: the loop as above (45–49 µs on its main "
    "thread), the Quix app 7,900, 10,039 and 8,793 at 108–132, the pass-through 180,343, "
    "187,617 and 127,796 at 5–6 (the issue's: ~22,100 at 46, ~9,100 at 116, "
    "126,000–174,000 at 5).",
    "- *Against the loop and Quix, three rounds a run.* Router / loop 1.26, 1.36 and 1.27 "
    "by round (1.35 on the medians, target 1.5), router / Quix 2.60, 2.48 and 2.81 (2.81, "
    "target 2.5: met). The 16:20 run, the same router code, gave 1.49, 1.53 and 1.33 "
    "(1.45) and 2.23, 2.54 and 1.84 (2.22); the two-round runs earlier that day 1.45 and "
    "1.43, 2.67 and 2.53 (12:08, commit `a58d852`); 1.06 and 1.08, 1.99 and 2.13 (14:00, "
    "commit `63f8293`). Between runs the same code's CPU per message moves by up to 15% "
    "either way (the kafka-python peer, unchanged: 478, 558, 614 and 580 µs in four "
    "runs), so a ratio near its target is settled by no single round. By CPU per message "
    "the router does the loop's work for 0.7–0.75 of its cost here. What the loop "
    "spends and the router does not is the rules in plain Python per message; what both "
    "spend is the JSON of every prediction and output and the client calls, where the "
    'router\'s vectorised decision cannot help (ANALYSIS.md "By C function").',
    "- *0.3 × the pass-through is out of reach for this work per message* (0.11, 0.13 "
    "and 0.19 by round here; 0.23, 0.14 and 0.12 at 16:20; 0.18 and 0.18 at 14:00, 0.27 "
    "and 0.22 at 12:08). The pass-through costs "
    "4–7 µs per message; the "
    "router's own Python per message, offline on one batch of 1,000 (parse 6.4–7.3 µs, "
    "decide 1.8, outputs 3.2–4.6 with the worker's malloc settings; ANALYSIS.md "
    '"Memory"), is ~12 µs before any Kafka client, and 26.5 µs in the worker (stage '
    "timings: the same steps on fresh data, with librdkafka's threads and the broker on the "
    "same two cores). Parsing is the largest part and is already msgspec's typed decode in "
    "C; pysimdjson 7.0.2 reading the probabilities straight into buffers was no faster, "
    'nor the ensembles once checked as the typed path must (ANALYSIS.md "By C '
    "function\", with where the worker's CPU goes by C function). 0.3 × 125,000–210,000 "
    "msgs/s would be 16–27 µs per message for everything.",
    "- *Latency at 2,000 msgs/s* (one 10 s run per contender and rate): router p99 41.0 "
    "ms against the pass-through's 27.8 here (1.47×: met), p50 20.9 against 16.0. At 16:20: "
    "46.8 against 25.8 (1.82×); that curve run alone at 16:39 (`--curve-rates 2000`): 34.4 "
    "against 28.6 (1.20×); at 12:08 and 14:00: 34.4 against 25.0 and 25.5 (1.35–1.38×): "
    "one run per point says little about a 1.5× bound on p99. Before the "
    "lead-in, 10 of 16 runs at ~2,000 met the p99 target; each miss came from outputs of "
    "the first 0.1 s, which the pacer's stall at the start of traffic had held (now in the "
    "lead-in columns: up to 400 ms, for every contender).",
    "- *The anchors read what is fetched.* `consume(n, t)` waits until it has n messages "
    "or t is up: the pass-through's p50 was 517 ms at 1,000 msgs/s and 277 ms at 2,000. "
    "They (and the router's reader) now take what librdkafka has fetched at once and wait "
    "for the first message only.",
    "- *Small produce requests.* librdkafka sends one produce request per partition: over "
    "the loop's 42 output partitions (7 topics × 6) at `linger.ms` 5 (the worker's) its "
    "requests hold a few messages each; the broker spends more CPU per message on the "
    "loop than on the router, which produces a batch at a time.",
    "- *numpy per message* (the checks and the seven scores of 10 classes and 5 members) "
    "took 100–150 µs of CPU on this machine, plain Python ~35: `bench/anchor_rules.py` "
    "uses plain Python. *The Quix app* runs the same `decide`; on top, Quix's per-message "
    "path and its copies at the branching point (~23 µs per message offline).",
    "",
]


def _timed(lat: Result) -> list[str]:
    """A latency run's cells: outputs timed, p50/p99/max ms, its cores, machine busy."""
    return [
        f"{lat.get('measured', 0):,}",
        _num(lat.get("append_p50_ms"), ".1f"),
        _num(lat.get("append_p99_ms"), ".1f"),
        _num(lat.get("append_max_ms"), ".1f"),
        _num(lat.get("worker_cores"), ".2f"),
        _num(lat.get("machine_busy_cores"), ".2f"),
    ]


def _md_latency(results: Result) -> list[str]:
    headers = ["fed to", "input msgs/s (target)", "seconds", "outputs timed", "p50 ms", "p99 ms"]
    headers += ["max ms", "its cores", "machine busy (cores)", "other load (cores)"]
    rows = []
    for key, label in (("latency", "router (1 worker)"), ("latency-ceiling", "ceiling")):
        lat = results.get(key)
        if lat is None:
            continue
        if not lat.get("ok"):
            rows.append([label, f"FAILED: {_error(lat)}", *[""] * (len(headers) - 2)])
            continue
        rows.append(
            [
                label,
                f"{_num(lat['achieved_rate'])} ({_num(lat['target_rate'])})",
                _num(lat["seconds"], ".1f"),
                *_timed(lat),
                _num(lat.get("others_cores"), ".2f"),
            ]
        )
    return [
        "### Latency at half the router's maximum rate",
        "",
        "The router, fed live at half the rate it reached above; the ceiling fed the same way "
        "at the same rate, for comparison. p50/p99/max: prediction `ts` → the output's "
        "LogAppendTime (appended by the broker: readable), read after the run. *Machine "
        "busy*: all of the 2 CPUs' work meanwhile — the contender, the broker, the pacer "
        "(see *how measured*).",
        "",
        *_md_table(headers, rows),
    ]


def _md_scale(results: Result) -> list[str]:
    m, p = results.get("machine", {}), results.get("params", {})
    headers = ["workers", "msgs/s", "× 1 worker", "CPU µs/msg (all workers)", "group ready s"]
    rows = []
    scale = results["scale"]
    base = (scale.get("1") or {}).get("rate")
    for k, r in scale.items():
        if not r.get("ok"):
            rows.append([k, "FAILED", "", "", ""])
            continue
        rows.append(
            [
                k,
                _num(r["rate"]),
                _num(r["rate"] / base if base else None, ".2f"),
                _num(r["cpu_us_per_msg"]),
                _num(r.get("group_ready_after_s"), ".1f"),
            ]
        )
    return [
        "### Scale-out: worker processes in one consumer group",
        "",
        f"{p.get('partitions')} partitions; the {m.get('nproc')} CPUs are shared by the "
        "workers, the broker and the driver writing the input (see *how measured*).",
        "",
        *_md_table(headers, rows),
    ]


LOAD_CONTROL = Path(__file__).with_name("results") / "load_control.json"


def md_load_control(path: Path = LOAD_CONTROL) -> list[str]:
    """The section of the last ``--load-control`` run (its own file: a full run keeps it)."""
    if not path.exists():
        return []
    r = orjson.loads(path.read_bytes())
    derive(r)
    ratios = r.get("ratios", {})
    src = r.get("source", {})
    rounds = r.get("params", {}).get("rounds", 1)
    lines = [
        "## Load control (issue #11)",
        "",
        "The router with `bench.contenders.LOAD_CONTROL` on its queues: priorities on two, a "
        "10% target rate and a diversity cap on `disagreement`, a budget of 3,000 a minute "
        "on `uncertain` (most of its items pass over budget); dedup on (the routing worker "
        "keeps the ids it routed in its Faust table), and the same config with dedup off. "
        f"Measured by `{r.get('command')}` at {r.get('started_at')}, commit "
        f"`{src.get('commit')}`"
        f"{' plus uncommitted changes' if src.get('hitl_router_uncommitted_changes') else ''}; "
        "its own ceiling, in the same run"
        + (
            f" ({rounds} rounds, the order rotated each round; each row is that contender's "
            "median run):"
            if rounds > 1
            else ":"
        ),
        "",
        *_md_table(headers(r), throughput_rows(r)),
        f"router / ceiling = **{_num(ratios.get('router_over_ceiling'), '.2f')}** with "
        "load control and dedup (target ≥ 0.8); "
        f"**{_num(ratios.get('router_no_dedup_over_ceiling'), '.2f')}** with dedup off.",
        "",
    ]
    if r.get("round_ratios"):
        each = ", ".join(_num(x, ".2f") for x in r["round_ratios"])
        lines += [f"Router / ceiling of each round: {each}.", ""]
    return lines + LOAD_CONTROL_NOTES


#: what profiles of --load-control runs showed (written by hand, dated)
LOAD_CONTROL_NOTES = [
    "Measured on 2026-11-30 (py-spy, `--load-control --py-spy`): dedup first wrote each "
    "routed id with Faust's `Table.send_changelog` (its producer buffer, a `FutureMessage`, "
    "sensors and an `await send()` per change): about a tenth of the routing worker's "
    "samples, router / ceiling 0.57–0.62. Its changelog records are now outputs of the "
    "batch, published with the others. Two 3-round runs that day: 0.72 with dedup on and "
    "0.72 off (commit 4c6d5fa, the ceiling at 24–28 µs of CPU per message), then 0.61 and "
    "0.66 (commit b9f27f6, the machine slower: the ceiling at 33–35 µs; rounds of the "
    "router without dedup 0.64–0.77), so dedup costs 0–8% here. Against the plain "
    "router's profile, load control and dedup together add about 13% of samples, spread "
    "over a dozen places of 1–2% each (budget admission, "
    "target-rate quantiles, event times, priorities, dedup lookups, headers). The plain "
    "router, in a 3-round run the same hour, measured router / ceiling 0.75 (0.90, 0.72, "
    "0.73): what keeps this config under 0.8 is the router's per-message cost against the "
    "pass-through (decoding ~30% of its samples, outputs ~15%, publishing ~15%), the "
    "subject of issue #15.",
    "",
    "Measured again on 2026-12-01, with the router on librdkafka (issue #15), two 3-round "
    "runs: 0.80 (17:36, commit `8ca6c3d`: 21,643 against 27,155 msgs/s; rounds 0.95, 0.84, "
    "0.79; 0.87 with dedup off) and the run above, 0.81 (18:17, commit `947f2c8`; rounds "
    "0.84, 0.76, 0.76; 0.87 with dedup off). The target sits within the noise of the "
    "rounds: dedup costs ~7% here (0.81 against 0.87 without it), load control and dedup "
    "together ~13% (the plain router measured 0.93 against its ceiling at 18:02).",
    "",
]


def markdown(results: Result, anchors_path: Path = ANCHORS) -> str:
    derive(results)  # the targets of this module (a saved run may predate some)
    anchors = None if any(k in results for k in ANCHOR_RATIOS) else load_anchors(anchors_path)
    parts = _md_header(results)
    parts += ["## Results", "", *_md_table(headers(results), throughput_rows(results))]
    ratios = results.get("ratios", {})
    parts += [
        f"router / ceiling = **{_num(ratios.get('router_over_ceiling'), '.2f')}**, "
        f"router / peer = **{_num(ratios.get('router_over_peer'), '.2f')}**.",
        "",
    ]
    if "latency" in results or "latency-ceiling" in results:
        parts += _md_latency(results)
    if results.get("scale"):
        parts += _md_scale(results)
    parts += _md_drift(results)
    parts += md_anchors(results, anchors)
    parts += md_load_control()
    parts += _md_targets(results, anchors)
    settings = [[f"`{k}`", f"`{v}`"] for k, v in results.get("worker_settings", {}).items()]
    parts += [
        "## Settings that matter",
        "",
        "Read at run time from the Faust app that `hitl_router.agents.app.build_app` makes for "
        "the benchmark's config; the ceiling's aiokafka clients use the same values, and so "
        "do the confluent-kafka contenders' librdkafka clients where librdkafka has them. "
        "`consumer_fetch_max_wait_ms` and `consumer_fetch_min_bytes` are not Faust settings "
        "(Faust's aiokafka driver hard-codes 1500 ms and leaves aiokafka's 1 byte): the "
        "worker's consumer sets them from `worker.fetch_max_wait_ms` and "
        "`worker.fetch_min_bytes`.",
        "",
        *_md_table(["setting", "value"], settings),
        HOW_MEASURED,
    ]
    analysis = Path(__file__).with_name("ANALYSIS.md")
    if analysis.exists():  # the hand-written part: profiles and design notes
        parts += ["", analysis.read_text(encoding="utf-8")]
    failed = [(label, _error(r)) for label, r in named(results) if not r.get("ok")]
    failed += [(label, "its fates differ from replay's") for label in disagreeing(results)]
    if failed:
        parts += ["## Failures", ""] + [f"- **{label}**: {error}" for label, error in failed]
        parts.append("")
    return "\n".join(parts)


HOW_MEASURED = """## How measured

- **One run, one broker.** `bench.run` starts a dedicated single-node Kafka (KRaft, own
  ports, own directory, stopped at the end) unless `--bootstrap` is given, generates the
  workload with `hitl_router.simulate.Simulator` and prefills one topic. Each contender
  then reads that same topic from the earliest offset with its own fresh consumer group and
  writes to its own fresh output topics; contenders run one after the other, never together.
  Those output topics are settled before the contender starts (`bench.kafka_io.settle`:
  three records per partition, which the output reader skips): a fresh partition's first
  index entries fault in new mmapped pages, and here that held the broker's produce path
  for up to 1.5 s at the start of a run, most for contenders writing many topics.
  Before the first measured contender, one unmeasured pass-through over the topic warms the
  broker: on a fresh JVM its JIT compiler threads took ~3 s of CPU during the first
  contender (under 1 s on later ones), which charged that work to whichever ran first.
- **The broker's JVM** runs with Kafka's own start-script settings (1 GB heap, G1 with a
  20 ms pause goal) and 16 MB G1 regions, as Kafka's operations docs advise. With a small
  heap's 1 MB regions, every produce request over 512 KB was a humongous allocation that
  began a concurrent mark cycle: on this load ~3 cycles a second, up to half a core of
  the machine and 20–60 ms pauses.
- **Contenders are subprocesses**, started the same way and stopped (SIGTERM, then SIGKILL
  after 20 s) when done, on failure, on Ctrl-C, or after `--timeout` (600 s), which counts
  as a failure:
  - *router*: `python -m hitl_router.cli worker -c CONFIG --metrics-port P --loglevel
    warning`, both agents (router and sampler) in one worker, with `topics.accepted` set so
    that every input gives exactly one output (eval, review, accepted or dead letter);
  - *ceiling* (`bench/ceiling.py`): aiokafka `getmany(max_records=batch_size)` →
    `AIOKafkaProducer.send` per message → await the batch's futures → commit per batch, the
    same bytes to one topic, with the worker's client settings (table above);
  - *peer* (`bench/peer.py`): what a team would write by hand — kafka-python
    `KafkaConsumer`/`KafkaProducer` with their defaults, `json.loads`, the scores and the
    same three queues plus a 2% eval draw (BLAKE2b of the id) in plain Python, try/except
    per message with a dead-letter topic, one `json.dumps` output per input;
  - *confluent-kafka pass-through* (`bench/confluent_pass.py`, the limit of a Python
    process): `Consumer.consume(num_messages=1000)` → `Producer.produce` per message (its
    key, the same bytes, one topic), and every commit interval (1 s, the worker's) a
    `flush()` until everything produced is delivered, then a commit of the position:
    at-least-once, consuming and producing pipelined in between. librdkafka takes the
    worker's client settings where it has them (`fetch.wait.max.ms`, `fetch.min.bytes`,
    `max.partition.fetch.bytes`, `acks`, `linger.ms`, `batch.size`, `message.max.bytes`,
    `compression.type`, `request.timeout.ms`), its defaults otherwise, and reports only
    failed deliveries;
  - *confluent-kafka loop* (`bench/confluent_loop.py`): the same loop and clients, and per
    message `bench.anchor_rules.decide` — what a team would write by hand: `orjson.loads`,
    a check of the message contract (the router's verdicts on this workload), the keyed
    BLAKE2b eval draw, the router's scores in plain Python per message, the three queues
    (the first that matches wins), the router's output documents with the prediction
    embedded as received (`orjson.Fragment`), one `orjson.dumps` and one `produce` to the
    fate's topic, keyed by the id (review items with their `priority` header), and for an
    eval or review item the router's decision record
    (`hitl_router.router.join.decision_record`: what the label loop joins labels with),
    dumped and produced to the records' topic.
    Until the evening of 2026-12-01 the anchors wrote no decision records while the
    router did (to `hitl.decisions`), ~14% more messages than theirs;
  - *Quix Streams app* (`bench/quix_app.py`, quixstreams 3.28.1 in a venv of its own,
    `bench/quix_venv.py`: it pins confluent-kafka and pydantic below the project's):
    `Application` with its defaults (at-least-once, a checkpoint every 5 s), the input as
    bytes, `.apply` of the same `decide`, then one branch per fate (`.filter` → `.apply` →
    `.set_headers` for review items → `.to_topic`, keyed by the id) and one for the
    decision records, Quix's JSON serializer (orjson). At the branching point Quix pickles
    the value once and unpickles a copy for every branch but the first: that is part of
    what it costs. Quix gives an
    output its input's timestamp, so its output topics stamp records at append
    (`LogAppendTime`) and throughput is taken from those stamps.
- **Fates**: after each contender that decides (router, confluent-kafka loop, Quix app)
  stopped, its outputs are read back with the topic each id was written to, and compared
  with `hitl-router replay`'s path (`decide_batch` in batches of 1,000) over the prefilled
  messages with the benchmark's config (`bench/agreement.py`): the same fate for every id,
  the same queue for review items, dead letters with the same ids (and as many without
  one), no id in two fates' topics; and a decision record (read from its own topic, after
  the contender stopped) for exactly the eval and review ids. Any difference is counted in
  the table's *fates vs replay* column, logged as an error, and makes the run exit
  non-zero.
- **Throughput** = N / (t_last − t_first), where t are the **CreateTime stamps of the
  output records** (set by each contender's producer when it sends), read back after the
  run from every output partition. The run polls the output topics' end offsets until one
  output per input exists, then reads them all and checks that the distinct ids (plus
  unkeyed dead letters) number N. *msgs/s p10–p90* is the rate between the 10th and the
  90th percentile output, leaving out start-up and tail effects. Process start-up (start to
  first output) is excluded from both.
- **CPU µs/msg** is the user+system CPU time of the contender's processes (and of the
  broker) from `/proc/<pid>/stat`, between the first poll that saw an output and the one
  that saw the N-th, divided by the outputs written in between. It is less sensitive to
  the machine's noise than msgs/s. *Its cores* is the same CPU time per second of that
  window: well under 1.0 per process means the contender spent time waiting, not
  computing. *Main thread* is the CPU per message of the processes' main threads alone
  (`/proc/<pid>/task/<pid>/stat`: a Python process's limit, its librdkafka threads run
  beside it) and, in brackets, how long that thread waited, runnable, for a CPU
  (`/proc/<pid>/task/<pid>/schedstat`): the two cores were busy with others.
- **Other load** is the machine's busy CPU over the same window (from `/proc/stat`, in
  cores) minus what the contender, the broker and the benchmark's driver used: other work
  on the machine that competed with the measurement. (With `--bootstrap` the broker's CPU
  is unknown and counts as other load.)
- **Latency**: a fresh router worker on a fresh, empty topic; once its group is assigned and
  a warm-up of 500 messages went through, `bench/latency.py` (its producer connected first)
  sends pre-generated predictions at half the router's measured rate for a lead-in of 1 s
  and then `--latency-seconds` (20 s), rewriting each message's `ts` to the time of its
  send; only predictions stamped after the lead-in are timed. The output topics are
  created and settled (three records per partition) before the contender starts, with
  `message.timestamp.type=LogAppendTime`, so the broker stamps each output when it appends
  it — when it becomes readable: latency = that stamp − `prediction.ts` (for dead letters,
  the `ts` inside `raw` when it has one) → p50, p99, max, and the target is judged on it.
  The outputs are read once every one of them is written (the driver polls end offsets
  meanwhile): reading and parsing them live, as earlier runs did, took ~0.2–0.3 of the
  2 cores from the contender being timed.
- **Scale-out**: the router with 1, 2, 3 worker processes in one fresh consumer group, each
  setting on a fresh topic with the same partitions. The workers are started on the empty
  topic; once every one of them holds partitions, the driver writes the same N messages
  into it as fast as aiokafka goes (faster than the workers read, so they always have a
  backlog), and the outputs are measured as above. Started on the full topic instead, the
  first worker to join takes every partition and the others' arrival forces a rebalance
  mid-run, which measures the rebalance rather than the workers.
"""


def main() -> None:
    """``python -m bench.report [RESULTS.json [OUT.md]]``: rewrite the Markdown report from
    saved results (e.g. after editing this module), without re-running anything."""
    import json
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else repo / "bench" / "results" / "latest.json"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else repo / "BENCHMARKS.md"
    out.write_text(markdown(json.loads(src.read_text())))
    print(f"wrote {out} from {src}")


if __name__ == "__main__":
    main()
