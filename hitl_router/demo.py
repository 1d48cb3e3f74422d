"""``hitl-router demo``: a local broker, a worker and a real model's predictions, live.

Starts a local Kafka when none answers at ``--bootstrap``, runs a worker with
the embedded config (``demo_config.yaml``) in a subprocess, publishes the
digits committee's predictions for ``--duration`` seconds, and counts every
fate from the output topics as they arrive.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from hitl_router.errors import InputError, KafkaSetupError
from hitl_router.review_team import ReviewTeam, ReviewTeamThread
from hitl_router.router.config import Config, parse_config

if TYPE_CHECKING:
    from hitl_router.localprom import LocalPrometheus


def default_config_text() -> str:
    return resources.files("hitl_router").joinpath("demo_config.yaml").read_text("utf-8")


def demo_config(
    bootstrap: str, metrics_port: int, config_path: str | None, profile: Path | None = None
) -> tuple[Config, str]:
    """The demo's config (embedded default unless ``config_path``) and its YAML text;
    ``profile``: the drift profile the embedded default watches with."""
    text = Path(config_path).read_text("utf-8") if config_path else default_config_text()
    data = yaml.safe_load(text) or {}
    data.setdefault("kafka", {})["bootstrap_servers"] = bootstrap
    data.setdefault("metrics", {})["port"] = metrics_port
    if not config_path:
        data.setdefault("topics", {}).setdefault("accepted", "accepted")
        if profile is not None:
            data["drift"] = {"profile": str(profile), "window": DRIFT_WINDOW}
    return parse_config(data), yaml.safe_dump(data, sort_keys=False)


#: the demo's drift windows: short, so a drift raises the alarm within seconds
DRIFT_WINDOW = 500


def demo_profile(path: Path, sharpen: float) -> Path:
    """The drift reference profile of a clean pool of the demo's model (what
    ``hitl-router profile POOL.jsonl`` builds), published as the demo publishes it."""
    from hitl_router.router.drift_pool import build_profile
    from hitl_router.router.drift_profile import save_profile
    from hitl_router.simulate import Simulator

    pool = Simulator(seed=12345, sharpen=sharpen).records(8_000)
    save_profile(build_profile(pool, window=DRIFT_WINDOW, bootstrap=400, seed=0), path)
    return path


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="local Kafka + worker + a real model's predictions")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of traffic (30)")
    p.add_argument("--rate", type=float, default=300.0, help="predictions per second (300)")
    p.add_argument("--bootstrap", default=os.environ.get("HITL_BOOTSTRAP", "127.0.0.1:9092"))
    p.add_argument("--config", help="YAML config instead of the embedded default")
    p.add_argument("--metrics-port", type=int, default=9108)
    p.add_argument("--malformed-rate", type=float, default=0.002)
    p.add_argument("--drift-at", type=int, help="degrade the model's inputs from message N on")
    p.add_argument(
        "--sharpen",
        type=float,
        default=0.3,
        help="publish softmax(log p / T) of the committee: below 1 over-confident, which the "
        "label loop's temperature fit undoes (default: %(default)s; 1 = as trained)",
    )
    p.add_argument("--seed", type=int, help="seed of the predictions and the review team")
    p.add_argument(
        "--review-error-rate",
        type=float,
        default=0.05,
        help="share of the simulated review team's labels that are wrong (%(default)s)",
    )
    p.add_argument(
        "--keep-kafka",
        action="store_true",
        help="leave a broker the demo started running at the end",
    )
    p.add_argument(
        "--prometheus",
        action="store_true",
        help="also run a local Prometheus scraping the workers, with the alert rules "
        "(Debian's package, fetched on first use: `hitl-router prometheus fetch`)",
    )
    p.add_argument("--prometheus-port", type=int, default=9090, help="(9090)")
    p.add_argument(
        "--keep-prometheus",
        action="store_true",
        help="leave that Prometheus running at the end, to browse what the demo did",
    )
    p.set_defaults(handler=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    from hitl_router.localkafka.broker import LocalKafka, is_reachable
    from hitl_router.simulate import Simulator, batch_for_rate, publish

    logging.getLogger("kafka").setLevel(logging.WARNING)  # the tally's client is chatty
    if args.duration <= 0 or args.rate <= 0:
        raise InputError("--duration and --rate must be > 0")
    if not 0.0 <= args.review_error_rate <= 1.0:
        raise InputError("--review-error-rate must be between 0 and 1")
    profile = None
    if not args.config:  # the embedded default watches for drift: a profile of a clean pool
        profile = demo_profile(Path(tempfile.mkstemp(prefix="hitl-demo-profile-")[1]), args.sharpen)
    config, config_text = demo_config(args.bootstrap, args.metrics_port, args.config, profile)
    seed = args.seed if args.seed is not None else int(time.time())
    broker = None
    if not is_reachable(args.bootstrap):
        host, _, port = args.bootstrap.rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port.isdigit():
            raise KafkaSetupError(
                f"no broker answers at {args.bootstrap}, and the demo only "
                "starts a local one on 127.0.0.1"
            )
        broker = LocalKafka(port=int(port))
        print(f"No broker at {args.bootstrap}: starting a local Kafka (KRaft)…", flush=True)
        broker.start()
    cfg_file = Path(tempfile.mkstemp(prefix="hitl-demo-", suffix=".yaml")[1])
    cfg_file.write_text(config_text, encoding="utf-8")
    worker = labeller = None
    prometheus: LocalPrometheus | None = None
    tally: _Tally | None = None
    team: ReviewTeamThread | None = None
    stop = threading.Event()
    try:
        from hitl_router.agents.topics import ensure_topics

        ensure_topics(
            config.kafka.bootstrap_servers,
            [config.topics.predictions, config.topics.labels, *config.output_topics()],
            config.kafka.partitions,
            config.kafka.replication_factor,
            configs=config.topic_configs(),
        )
        # with --seed, the same ids (so the same eval sample): a reproducible run
        run_id = f"s{args.seed:07d}" if args.seed is not None else uuid.uuid4().hex[:8]
        tally = _Tally(config, prefix=f"demo-{run_id}-")
        tally.start()
        # the review team answers eval and review items of this run as they arrive
        team = ReviewTeamThread(
            config,
            ReviewTeam(error_rate=args.review_error_rate, seed=seed),
            id_prefix=f"demo-{run_id}-",
        )
        team.start()
        agents = "router,sampler,drift" if config.drift.profile else "router,sampler"
        worker = _start_worker(cfg_file, agents, args.metrics_port, "")
        # the label loop runs in a worker (and consumer group) of its own
        labels_port = _free_port()
        labeller = _start_worker(cfg_file, "labels", labels_port, ".labels")
        print(
            f"Worker pid {worker.pid} (log {cfg_file.with_suffix('.log')}); "
            f"metrics on http://127.0.0.1:{args.metrics_port}/metrics\n"
            f"Label-loop worker pid {labeller.pid} (log {cfg_file.with_suffix('.labels.log')}); "
            f"metrics on http://127.0.0.1:{labels_port}/metrics",
            flush=True,
        )
        _wait_metrics(args.metrics_port, worker, timeout=60)
        _wait_metrics(labels_port, labeller, timeout=60)
        if args.prometheus:
            prometheus = _start_prometheus(args.prometheus_port, args.metrics_port, labels_port)
            print(
                f"Prometheus on {prometheus.url} (scraping both workers every "
                f"{SCRAPE_S}s, with the alert rules; log {prometheus.log_file})",
                flush=True,
            )
        count = int(args.rate * args.duration)
        sim = Simulator(
            seed=seed,
            malformed_rate=args.malformed_rate,
            drift_at=args.drift_at,
            id_prefix=f"demo-{run_id}",
            batch=batch_for_rate(args.rate),
            sharpen=args.sharpen,
        )
        sent: list[int] = []
        producer_thread = threading.Thread(
            target=lambda: sent.append(
                publish(
                    config.kafka.bootstrap_servers,
                    config.topics.predictions,
                    sim.messages(count),
                    args.rate,
                    stop=stop,
                )
            ),
            daemon=True,
        )
        print(
            f"Publishing {count} predictions of a scikit-learn committee on the digits "
            f"data at {args.rate:g}/s for {args.duration:g}s…\n",
            flush=True,
        )
        producer_thread.start()
        started = time.time()
        while producer_thread.is_alive():
            producer_thread.join(timeout=2.0)
            print(tally.line(time.time() - started), flush=True)
            for proc, suffix in ((worker, ".log"), (labeller, ".labels.log")):
                if proc.poll() is not None:
                    raise KafkaSetupError(
                        f"a worker exited with {proc.returncode}; see "
                        f"{cfg_file.with_suffix(suffix)}"
                    )
        total = sent[0] if sent else 0
        deadline = time.time() + 30
        while tally.decided() < total and time.time() < deadline:
            time.sleep(0.5)
        print(tally.line(time.time() - started), flush=True)
        labelled = _wait_labels(labels_port, team, timeout=20)
        print(tally.summary(total, _scrape(args.metrics_port)))
        print(_loop_summary(team, labelled, labels_port))
        if config.drift.profile:
            print(_drift_summary(args.metrics_port, config))
        print(_where_to_look(args, prometheus))
        return 0 if tally.decided() >= total else 1
    finally:
        stop.set()
        if prometheus is not None and not args.keep_prometheus:
            prometheus.stop()
        if tally is not None:
            tally.close()
        if team is not None:
            team.close()
        for proc in (worker, labeller):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if broker is not None and not args.keep_kafka:
            broker.stop()
            print("Stopped the local Kafka the demo started (--keep-kafka keeps it).")


class _Tally(threading.Thread):
    """Consumes every output topic from the moment the demo starts; counts this run's ids."""

    def __init__(self, config: Config, prefix: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.config = config
        self.prefix = prefix
        self._halt = threading.Event()
        self.by_topic: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()
        self.examples: dict[str, dict[str, Any]] = {}
        self.consumer = KafkaConsumer(
            bootstrap_servers=config.kafka.bootstrap_servers,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            group_id=None,
        )
        t = config.topics
        # the fates' topics (not the label loop's, which the summary reads from /metrics)
        topics = [t.eval, t.deadletter, *config.review_topics()]
        self.consumer.subscribe(topics + ([t.accepted] if t.accepted else []))
        while not self.consumer.assignment():
            self.consumer.poll(timeout_ms=200)
        self.consumer.seek_to_end()
        for tp in self.consumer.assignment():
            self.consumer.position(tp)

    def close(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.consumer.close()

    def run(self) -> None:
        while not self._halt.is_set():
            for records in self.consumer.poll(timeout_ms=200).values():
                for r in records:
                    msg = orjson.loads(r.value)
                    pid = msg.get("id") or ""
                    # dead letters of unparseable payloads have no id: since the tally
                    # starts at the topics' ends, they are this run's
                    anonymous = r.topic == self.config.topics.deadletter and not pid
                    if not (anonymous or pid.startswith(self.prefix)):
                        continue
                    self.by_topic[r.topic] += 1
                    if r.topic == self.config.topics.deadletter:
                        self.codes[msg["error"]["code"]] += 1
                    elif "reasons" in msg:
                        self.examples.setdefault(msg["queue"], msg)

    def decided(self) -> int:
        return sum(self.by_topic.values())

    def line(self, elapsed: float) -> str:
        c, t = self.by_topic, self.config.topics
        queues = " ".join(f"{q.name}={c[q.topic]}" for q in self.config.queues)
        passed = c[t.accepted] if t.accepted else "-"
        return (
            f"[{elapsed:5.1f}s] decided={self.decided():6d}  eval={c[t.eval]:5d}  "
            f"review: {queues}  pass={passed}  deadletter={c[t.deadletter]}"
        )

    def summary(self, sent: int, scraped: dict[str, float]) -> str:
        c, t = self.by_topic, self.config.topics
        decided = self.decided()
        valid = max(decided - c[t.deadletter], 1)
        lines = [
            "",
            "=== hitl-router demo summary ===",
            f"published {sent}, decided {decided} (each exactly one fate)",
            f"eval sample   {c[t.eval]:6d}  ({c[t.eval] / valid:.2%} of valid; "
            f"configured {self.config.eval_sample.rate:.2%})",
        ]
        for q in self.config.queues:
            lines.append(
                f"review/{q.name:<12s}{c[q.topic]:6d}  ({c[q.topic] / valid:.2%}) → topic {q.topic}"
            )
        if t.accepted:
            lines.append(f"pass          {c[t.accepted]:6d}  ({c[t.accepted] / valid:.2%})")
        lines.append(f"dead letters  {c[t.deadletter]:6d}  {dict(self.codes)}")
        for queue, item in self.examples.items():
            reasons = "; ".join(
                f"{r['metric']} {r['op']} {r['threshold']} (value {r['value']})"
                for r in item["reasons"]
            )
            lines.append(f"  e.g. {item['id']} → {queue}: {reasons}")
        if scraped:
            lines.append("metrics: " + ", ".join(f"{k}={v:g}" for k, v in scraped.items()))
        return "\n".join(lines)


def _start_worker(
    cfg_file: Path, agents: str, port: int, log_suffix: str
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "hitl_router.cli", "worker", "-c", str(cfg_file)]
    argv += ["--agents", agents, "--metrics-port", str(port), "--loglevel", "warning"]
    log = cfg_file.with_suffix(f"{log_suffix}.log")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


#: the demo's Prometheus scrapes and evaluates rules this often (seconds)
SCRAPE_S = 2
#: the source tree's deploy/ files (the rules and the dashboard ship with it, not the wheel)
_SOURCE = Path(__file__).resolve().parents[1]
RULES = _SOURCE / "deploy" / "prometheus" / "rules"


def prometheus_config(metrics_port: int, labels_port: int, rules: Path | None) -> dict[str, Any]:
    """The demo Prometheus's config: both workers, and the project's alert rules."""
    return {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(rules / "*.yml")] if rules is not None else [],
        "scrape_configs": [
            {
                "job_name": "hitl-router",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            },
            {
                "job_name": "hitl-router-labels",
                "static_configs": [{"targets": [f"127.0.0.1:{labels_port}"]}],
            },
        ],
    }


def _start_prometheus(port: int, metrics_port: int, labels_port: int) -> LocalPrometheus:
    from hitl_router.localprom import LocalPrometheus

    home = Path(tempfile.mkdtemp(prefix="hitl-demo-prometheus-"))
    rules = RULES if RULES.is_dir() else None  # the rules ship with the source tree
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(metrics_port, labels_port, rules)))
    return LocalPrometheus(config, port, home / "data").start()


def _where_to_look(args: argparse.Namespace, prometheus: LocalPrometheus | None) -> str:
    """How to see the dashboard's numbers."""
    from hitl_router.dashboard import OUT

    board = _SOURCE / OUT
    lines = ["", "=== where to look ==="]
    lines.append(f"raw metrics: curl http://127.0.0.1:{args.metrics_port}/metrics (while it runs)")
    if prometheus is None:
        lines.append(
            "the dashboard's numbers: run the demo with --prometheus (a local Prometheus with "
            "the alert rules; --keep-prometheus to browse after the end)"
        )
    else:
        state = "keeps running" if args.keep_prometheus else "stopped with the demo"
        lines.append(
            f"Prometheus {state}: {prometheus.url}/graph?g0.expr=hitl_eval_accuracy "
            f"(alerts: {prometheus.url}/alerts)"
        )
        if args.keep_prometheus:
            lines.append(f"  stop it with: kill {prometheus.pid()}")
    lines.append(
        f"the Grafana dashboard: {board} (import it with a Prometheus datasource of uid "
        "'prometheus'), or `docker compose up` for the whole stack, provisioned"
    )
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_metrics(port: int, worker: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if worker.poll() is not None:
            raise KafkaSetupError(f"the worker exited with {worker.returncode} at start")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
            return
        except OSError:
            time.sleep(0.5)
    raise KafkaSetupError(f"the worker's /metrics did not answer on port {port} in {timeout}s")


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _drift_summary(port: int, config: Config) -> str:
    """What the drift agent judged, per model, from the worker's metrics."""
    samples = _samples(port)
    by_model: dict[str, Counter[str]] = {}
    for (name, labels), v in samples.items():
        ls = dict(labels)
        if name == "hitl_drift_windows_total":
            by_model.setdefault(ls["model"], Counter())[ls["drifted"]] += int(v)
        elif name == "hitl_drift_alarms_total":
            by_model.setdefault(ls["model"], Counter())["alarms"] += int(v)
    p = config.drift.persistence
    lines = [
        f"drift: windows of {config.drift.window}; an alarm is {p.drifted} drifted of the "
        f"last {p.windows}"
    ]
    for model, c in sorted(by_model.items()):
        on = samples.get(("hitl_drift_alarm", (("model", model),)), 0.0) == 1.0
        lines.append(
            f"  {model}: {c['true'] + c['false']} windows, {c['true']} drifted; "
            f"{c['alarms']} alarm(s){', on at the end' if on else ''}"
        )
    return "\n".join(lines)


def _wait_labels(port: int, team: ReviewTeamThread, timeout: float) -> float:
    """Until the worker has joined every label the team sent (or ``timeout``); returns
    how many it joined."""
    deadline = time.time() + timeout
    joined = 0.0
    while time.time() < deadline:
        joined = sum(v for (n, _), v in _samples(port).items() if n == "hitl_labels_total")
        if joined >= sum(team.sent.values()) > 0:
            break
        time.sleep(0.5)
    return joined


def _loop_summary(team: ReviewTeamThread, joined: float, port: int) -> str:
    """What the labels say: honest accuracy, ECE before/after and the temperature."""
    samples = _samples(port)

    def get(name: str, **labels: str) -> float | None:
        for (n, ls), v in samples.items():
            if n == name and all(dict(ls).get(k) == x for k, x in labels.items()):
                return v
        return None

    sent = team.sent
    lines = [
        f"labels sent by the review team: eval {sent['eval']}, review {sent['review']}, "
        f"qa {sent['qa']}; joined {joined:g}"
    ]
    models = sorted({dict(ls)["model"] for (n, ls) in samples if n == "hitl_eval_labels"})
    for m in models:
        n = get("hitl_eval_labels", model=m)
        acc, lo, hi = (get(f"hitl_eval_accuracy{s}", model=m) for s in ("", "_lower", "_upper"))
        ece, ece_t = get("hitl_ece", model=m), get("hitl_ece_calibrated", model=m)
        # the T in use: the window's own fit, else its bare name's (a version without a fit
        # of its own is routed at its model's)
        t = get("hitl_calibration_temperature", model=m)
        if t is None:
            t = get("hitl_calibration_temperature", model=m.split("@", 1)[0])
        fits = get("hitl_calibration_fits_total", model=m, outcome="accepted") or 0
        if acc is None or ece is None or ece_t is None:
            continue
        lines.append(
            f"{m}: eval accuracy {acc:.3f} [{lo:.3f}, {hi:.3f}] on n={n:g} eval labels; "
            f"ECE {ece:.3f} before, {ece_t:.3f} after temperature "
            + (
                f"T={t:.3f} (fitted; {fits:g} accepted here)"
                if t is not None
                else "T=1 (no fit yet)"
            )
        )

    def total(name: str, **labels: str) -> float:
        return sum(
            v
            for (n, ls), v in samples.items()
            if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
        )

    wrong = total("hitl_trigger_labels_total", model_wrong="true")
    right = total("hitl_trigger_labels_total", model_wrong="false")
    if wrong + right:
        lines.append(
            f"review precision (model wrong when a rule fired): {wrong / (wrong + right):.2%}"
        )
    return "\n".join(lines)


def _scrape(port: int) -> dict[str, float]:
    """A few of the worker's own metrics, read from /metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name in ("hitl_predictions", "hitl_deadletter"):
            out[family.name + "_total"] = sum(
                s.value for s in family.samples if s.name.endswith("_total")
            )
        if family.name == "hitl_decision_latency_seconds":
            for s in family.samples:
                if s.name.endswith("_count"):
                    out["latency_count"] = s.value
                if s.name.endswith("_sum"):
                    out["latency_sum_s"] = s.value
    return out
