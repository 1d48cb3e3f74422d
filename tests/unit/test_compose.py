"""docker-compose.yml and the files it uses (deploy/), checked without a Docker engine.

The compose file, the worker config it mounts, the Prometheus and Grafana provisioning
and the Dockerfile must agree with each other and with the code: the config parses
with the project's own loader and names the compose broker; the commands parse with
the real command line; the scrape jobs name the worker services and the metrics port;
the inline scripts (topic creation, review team, healthcheck) run here against fakes
or a local HTTP server.
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
import inspect
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hitl_router.agents import preflight
from hitl_router.agents import topics as topics_module
from hitl_router.agents.app import default_agents
from hitl_router.agents.preflight import TopicFacts
from hitl_router.cli import _build_parser
from hitl_router.router.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
WORKERS = ("router", "labels")
HITL_SERVICES = tuple(name for name, s in SERVICES.items() if "build" in s)
CONFIG_TARGET = "/config/config.yaml"


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of a service's bind
    mounts, short or long syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source.startswith((".", "/")):
            out[target.rstrip("/") or "/"] = source
    return out


def host_path(source: str) -> Path:
    assert not source.startswith("/"), f"{source}: bind mounts must be inside the repository"
    return REPO / source


def published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port -> (host ip, host port) of a service's published ports."""
    out = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out[int(port["target"])] = (port.get("host_ip", ""), int(port["published"]))
            continue
        parts = str(port).split("/")[0].split(":")
        assert len(parts) >= 2, f"{port}: a container port alone picks a random host port"
        ip = parts[-3] if len(parts) == 3 else ""
        out[int(parts[-1])] = (ip, int(parts[-2]))
    return out


def env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def inline_script(service: str) -> tuple[str, list[str]]:
    """The code and arguments of a service run as ``python -c CODE ARGS...``."""
    s = SERVICES[service]
    argv = [*s.get("entrypoint", []), *s.get("command", [])]
    assert argv[:2] == ["python", "-c"], argv
    return argv[2], argv[3:]


def run_inline(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a service's inline script here, with the host path of each mounted file in
    place of its container path."""
    code, args = inline_script(service)
    mounts = bind_mounts(SERVICES[service])
    argv = [str(host_path(mounts[a])) if a in mounts else a for a in args]
    monkeypatch.setattr(sys, "argv", ["-c", *argv])
    exec(compile(code, f"<{service}>", "exec"), {"__name__": "__main__"})


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: d.get("condition", "service_started") for name, d in deps.items()}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(host_path(bind_mounts(SERVICES["router"])[CONFIG_TARGET]))


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- services and images


def test_the_services_exist() -> None:
    wanted = {"kafka", "topics", *WORKERS, "simulator", "prometheus", "grafana"}
    assert wanted <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_image_is_pinned(name: str) -> None:
    service = SERVICES[name]
    if "build" in service:
        build = service["build"]
        assert (REPO / build["context"] / build["dockerfile"]).is_file()
        assert "image" not in service or ":" in service["image"].rsplit("/", 1)[-1]
        return
    image = service["image"]
    repo_name, _, tag = image.rpartition(":")
    assert repo_name and "/" not in tag, f"{name}: {image} has no tag"
    assert tag != "latest", f"{name}: {image}"


def test_the_images_are_the_ones_chosen() -> None:
    assert SERVICES["kafka"]["image"] == "apache/kafka:4.0.2"
    assert re.fullmatch(r"prom/prometheus:v[23]\.\d+\.\d+", SERVICES["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", SERVICES["grafana"]["image"])


def test_the_dockerfile_pins_its_base_images() -> None:
    stages = dockerfile_stages()
    for stage in stages:
        assert stage[0][1].split()[0] == "python:3.11-slim"


@pytest.mark.parametrize("name", WORKERS)
def test_the_workers_scale(name: str, config: Config) -> None:
    """No fixed name, hostname or host port: ``--scale`` would make them collide."""
    service = SERVICES[name]
    assert not {"container_name", "hostname", "ports"} & set(service)
    assert [str(p) for p in service["expose"]] == [str(config.metrics.port)]
    assert "replicas" not in service.get("deploy", {})


def test_the_published_ports() -> None:
    assert published(SERVICES["kafka"]) == {9092: ("127.0.0.1", 9092)}
    assert published(SERVICES["prometheus"]) == {9090: ("127.0.0.1", 9090)}
    assert published(SERVICES["grafana"]) == {3000: ("127.0.0.1", 3000)}
    for name in set(SERVICES) - {"kafka", "prometheus", "grafana"}:
        assert not published(SERVICES[name]), name


def test_kafka_listeners_match_the_published_port() -> None:
    kafka = env(SERVICES["kafka"])
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    advertised = dict(a.split("://") for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised == {"PLAINTEXT": "kafka:19092", "EXTERNAL": "localhost:9092"}
    listeners = dict(a.split("://") for a in kafka["KAFKA_LISTENERS"].split(","))
    assert listeners["PLAINTEXT"] == ":19092" and listeners["EXTERNAL"] == ":9092"
    assert "healthcheck" in SERVICES["kafka"]


# ---------------------------------------------------------------- mounts and config


MOUNTS = sorted(
    (name, source) for name, s in SERVICES.items() for source in bind_mounts(s).values()
)


@pytest.mark.parametrize(("name", "source"), MOUNTS)
def test_every_bind_mount_exists_in_the_repository(name: str, source: str) -> None:
    assert host_path(source).exists(), f"{name}: {source}"


def test_the_mounted_files_of_the_other_deploy_parts_exist() -> None:
    """Written apart from this file (alert rules, dashboard), mounted by it."""
    rules = host_path(bind_mounts(SERVICES["prometheus"])["/etc/prometheus/rules"])
    assert (rules / "hitl-router.rules.yml").is_file()
    dashboards = host_path(bind_mounts(SERVICES["grafana"])["/var/lib/grafana/dashboards"])
    assert (dashboards / "hitl-router.json").is_file()


def test_every_hitl_container_gets_the_same_config(config: Config) -> None:
    sources = {bind_mounts(SERVICES[name]).get(CONFIG_TARGET) for name in HITL_SERVICES}
    assert sources == {"./deploy/compose-config.yaml"}
    assert config.kafka.bootstrap_servers == "kafka:19092"  # the internal listener
    assert str(config.kafka.partitions) == env(SERVICES["kafka"])["KAFKA_NUM_PARTITIONS"]


@pytest.mark.parametrize(("name", "agents"), [("router", None), ("labels", ("labels",))])
def test_the_worker_commands_parse(name: str, agents: tuple[str, ...] | None, config: Config):
    args = _build_parser().parse_args(SERVICES[name]["command"])
    assert args.command == "worker"
    assert args.config == CONFIG_TARGET
    assert args.metrics_port is None  # /metrics on metrics.port, which Prometheus scrapes
    # on every interface: Prometheus (and nothing on 127.0.0.1) scrapes it from outside
    assert (args.metrics_host or config.metrics.host) == "0.0.0.0"
    chosen = {a.strip() for a in args.agents.split(",")}
    if "all" in chosen:
        chosen = set(default_agents(config))
    assert chosen == set(agents or default_agents(config))


def test_the_simulator_publishes_where_the_router_reads(config: Config) -> None:
    args = _build_parser().parse_args(SERVICES["simulator"]["command"])
    assert args.command == "simulate"
    assert args.bootstrap == config.kafka.bootstrap_servers
    assert args.topic == config.topics.predictions
    assert args.rate > 0 and args.out is None


def transitive_dependencies(name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    todo = [name]
    while todo:
        for dep, condition in depends_on(SERVICES[todo.pop()]).items():
            if dep not in out:
                out[dep] = condition
                todo.append(dep)
    return out


@pytest.mark.parametrize("name", [*WORKERS, "review-team", "simulator"])
def test_nothing_touches_kafka_before_the_topics_exist(name: str) -> None:
    deps = transitive_dependencies(name)
    assert deps.get("topics") == "service_completed_successfully"
    assert depends_on(SERVICES["topics"]) == {"kafka": "service_healthy"}
    assert SERVICES["topics"].get("restart", "no") == "no"


def test_the_simulator_waits_for_healthy_routers() -> None:
    assert depends_on(SERVICES["simulator"])["router"] == "service_healthy"


@pytest.mark.parametrize("name", WORKERS)
def test_a_stop_gives_the_worker_its_shutdown_timeout(name: str, config: Config) -> None:
    grace = seconds(SERVICES[name]["stop_grace_period"])
    assert grace > config.worker.shutdown_timeout_s


# ---------------------------------------------------------------- inline scripts


class FakeTopics:
    """ensure_topics, admin_client and topic_facts, recording the calls."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions
        self.ensured: list[tuple[Any, ...]] = []
        # the real signatures, taken before the fakes replace them: a call must fit them
        self.ensure_signature = inspect.signature(topics_module.ensure_topics)
        self.admin_signature = inspect.signature(topics_module.admin_client)

    def ensure_topics(self, *args: Any, **kwargs: Any) -> list[str]:
        self.ensure_signature.bind(*args, **kwargs)
        self.ensured.append((args, kwargs))
        return list(args[1])

    @contextlib.contextmanager
    def admin_client(self, *args: Any, **kwargs: Any) -> Iterator[object]:
        self.admin_signature.bind(*args, **kwargs)
        yield object()

    def topic_facts(self, admin: Any, names: Any) -> dict[str, TopicFacts]:
        return {n: TopicFacts(self.partitions[n], 2**20) for n in names if n in self.partitions}


def fake_topics(monkeypatch: pytest.MonkeyPatch, partitions: dict[str, int]) -> FakeTopics:
    fake = FakeTopics(partitions)
    monkeypatch.setattr(topics_module, "ensure_topics", fake.ensure_topics)
    monkeypatch.setattr(topics_module, "admin_client", fake.admin_client)
    monkeypatch.setattr(preflight, "topic_facts", fake.topic_facts)
    return fake


def all_topics(config: Config) -> list[str]:
    return [config.topics.predictions, config.topics.labels, *config.output_topics()]


def test_the_topics_service_creates_every_topic_with_the_configured_partitions(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fake_topics(monkeypatch, dict.fromkeys(all_topics(config), config.kafka.partitions))
    run_inline("topics", monkeypatch)
    [(args, kwargs)] = fake.ensured
    bootstrap, names, partitions, replication = args
    assert bootstrap == "kafka:19092"
    assert names[0] == "predictions" and set(names) == set(all_topics(config))
    assert partitions == config.kafka.partitions == 6
    assert replication == 1
    assert kwargs["configs"]["calibration"] == {"cleanup.policy": "compact"}
    assert "6 partitions each" in capsys.readouterr().out


@pytest.mark.parametrize("topic", ["predictions", "review.labels", "hitl.decisions", "missing"])
def test_the_topics_service_fails_on_a_wrong_partition_count(
    topic: str, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    partitions = dict.fromkeys(all_topics(config), config.kafka.partitions)
    if topic == "missing":
        del partitions["hitl.labels.joined"]
    else:
        partitions[topic] = 1
    fake_topics(monkeypatch, partitions)
    with pytest.raises(SystemExit) as exc:
        run_inline("topics", monkeypatch)
    assert isinstance(exc.value.code, str)  # exit status 1, with the message
    assert ("hitl.labels.joined" if topic == "missing" else f"'{topic}': 1") in exc.value.code


def test_the_review_team_runs_the_demos_team(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hitl_router import review_team

    made: list[Config] = []
    signature = inspect.signature(review_team.ReviewTeamThread)  # the real one

    class FakeThread:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            signature.bind(*args, **kwargs)
            assert isinstance(args[1], review_team.ReviewTeam)
            made.append(args[0])

        def start(self) -> None: ...

        def join(self) -> None: ...

    monkeypatch.setattr(review_team, "ReviewTeamThread", FakeThread)
    with pytest.raises(SystemExit) as exc:  # its thread never ends: if it does, exit 1
        run_inline("review-team", monkeypatch)
    assert isinstance(exc.value.code, str)
    [team_config] = made
    assert team_config.kafka.bootstrap_servers == config.kafka.bootstrap_servers


@contextlib.contextmanager
def probe_server(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/readyz" else 404)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None: ...

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", WORKERS)
@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_worker_healthcheck_asks_readyz(
    name: str, status: int, healthy: bool, config: Config
) -> None:
    """The healthcheck's own command, run against a server on another port: exit 0 only
    when /readyz answers 200."""
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    url = f"http://127.0.0.1:{config.metrics.port}/readyz"
    assert url in test[3]
    with probe_server(status) as port:
        code = test[3].replace(url, f"http://127.0.0.1:{port}/readyz")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert (done.returncode == 0) == healthy, done.stderr.decode()


# ---------------------------------------------------------------- Prometheus and Grafana


def test_prometheus_scrapes_every_worker_replica(
    prometheus: dict[str, Any], config: Config
) -> None:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    for job_name, service in (("hitl-router", "router"), ("hitl-router-labels", "labels")):
        assert "static_configs" not in jobs[job_name]
        [sd] = jobs[job_name]["dns_sd_configs"]
        assert sd["names"] == [service] and service in SERVICES
        assert sd["type"] == "A"
        assert sd["port"] == config.metrics.port
        assert jobs[job_name].get("metrics_path", "/metrics") == "/metrics"
    assert prometheus["global"]["scrape_interval"] in ("10s", "15s")


def test_prometheus_reads_the_mounted_rules(prometheus: dict[str, Any]) -> None:
    mounts = bind_mounts(SERVICES["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    rules = host_path(mounts["/etc/prometheus/rules"])
    found = [p.name for p in rules.iterdir() if fnmatch.fnmatch(p.name, "*.yml")]
    assert "hitl-router.rules.yml" in found


def grafana_file(relative: str) -> dict[str, Any]:
    path = REPO / "deploy/grafana/provisioning" / relative
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_grafana_has_the_prometheus_datasource() -> None:
    [source] = grafana_file("datasources/prometheus.yml")["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["isDefault"] is True
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", source["url"])
    assert match, source["url"]
    host, port = match.groups()
    assert host == "prometheus" and host in SERVICES
    assert int(port) in published(SERVICES["prometheus"])


def test_grafana_loads_the_mounted_dashboards() -> None:
    grafana = SERVICES["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    [provider] = grafana_file("dashboards/hitl-router.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] in mounts
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mount, _, name = home.rpartition("/")
    assert mount == provider["options"]["path"] and name == "hitl-router.json"


def test_grafana_lets_anyone_look_and_nobody_edit() -> None:
    grafana = env(SERVICES["grafana"])
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def datasource_refs(node: Any) -> Iterator[Any]:
    """Every value of a ``datasource`` key in a dashboard, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    path = REPO / "deploy/grafana/dashboards/hitl-router.json"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "hitl-router"
    refs = list(datasource_refs(dashboard))
    uids = {ref.get("uid") if isinstance(ref, dict) else ref for ref in refs}
    uids.discard(None)  # a panel without its own datasource uses the default
    assert refs and all(u == "prometheus" or str(u).startswith("$") for u in uids), uids


# ---------------------------------------------------------------- the image


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined."""
    text = (REPO / "deploy/Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def test_the_image_runs_as_a_fixed_unprivileged_user(config: Config) -> None:
    final = dockerfile_stages()[-1]
    users = [rest for instruction, rest in final if instruction == "USER"]
    assert users, "the final stage must set USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, users[-1]
    exposed = [rest for instruction, rest in final if instruction == "EXPOSE"]
    assert str(config.metrics.port) in " ".join(exposed).split()
    [entrypoint] = [rest for instruction, rest in final if instruction == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["hitl-router"]


def test_the_final_image_has_no_build_tools() -> None:
    final = " ".join(rest for _, rest in dockerfile_stages()[-1])
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make|apt-get install)\b", final)
    assert len(dockerfile_stages()) >= 2  # the wheel is built in a stage of its own


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins;
    a pattern matching a directory matches what is inside)."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        patterns = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_image_needs_and_nothing_else() -> None:
    sources = []
    for instruction, rest in dockerfile_stages()[0]:
        if instruction == "COPY" and "--from" not in rest:
            sources += rest.split()[:-1]
    assert sources
    needed = [p for s in sources for p in ([s] if (REPO / s).is_file() else [])]
    needed += [
        str(p.relative_to(REPO))
        for s in sources
        if (REPO / s).is_dir()
        for p in (REPO / s).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert "hitl_router/demo_config.yaml" in needed
    assert not [p for p in needed if dockerignored(p)]
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_compose.py",
        "bench/results/partial.json",
        ".hypothesis/examples/x",
        "hitl_router/__pycache__/cli.cpython-311.pyc",
        "hitl_router.egg-info/PKG-INFO",
    ):
        assert dockerignored(left_out), left_out
