import orjson
import pytest

from hitl_router.errors import ConfigError
from hitl_router.router.config import load_config, parse_config

SPEC_EXAMPLE = """
kafka: {bootstrap_servers: "localhost:9092"}
topics: {predictions: predictions, eval: eval.samples,
         deadletter: predictions.deadletter, labels: review.labels}
eval_sample: {rate: 0.02, salt: "change-me"}
queues:
  - name: flagged
    topic: review.flagged
    when: {flags_any: [pii, user_report]}
  - name: disagreement
    when: {ensemble_kl_above: 0.3}
  - name: uncertain
    when: {any: [{max_prob_below: 0.7}, {margin_below: 0.1}]}
drift: {profile: profile.json, window: 1000}
metrics: {port: 9108}
"""


def test_spec_example_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(SPEC_EXAMPLE)
    cfg = load_config(path)
    assert [q.name for q in cfg.queues] == ["flagged", "disagreement", "uncertain"]
    assert [q.topic for q in cfg.queues] == [
        "review.flagged",
        "review.disagreement",
        "review.uncertain",
    ]
    assert cfg.eval_sample.rate == 0.02 and cfg.drift.window == 1000
    assert cfg.topics.accepted is None
    assert len(cfg.config_hash) == 12


def test_defaults_when_empty():
    cfg = parse_config({})
    assert cfg.queues == () and cfg.topics.predictions == "predictions"
    assert cfg.limits.max_message_bytes == 1_048_576


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"kafak": {}}, "kafak", "unknown key"),
        ({"kafka": {"bootstrap": "x"}}, "kafka.bootstrap", "unknown key"),
        ({"eval_sample": {"rate": "high"}}, "eval_sample.rate", "expected a number"),
        ({"eval_sample": {"rate": -0.1}}, "eval_sample.rate", "between 0 and 1"),
        ({"eval_sample": {"salt": ""}}, "eval_sample.salt", "non-empty"),
        ({"metrics": {"port": True}}, "metrics.port", "expected an integer"),
        ({"queues": {"a": 1}}, "queues", "list"),
        ({"queues": [{"name": "a"}]}, "queues[0].when", "missing"),
        ({"queues": [{"when": {"max_prob_below": 1}}]}, "queues[0].name", "expected a name"),
        (
            {
                "queues": [
                    {"name": "a", "when": {"max_prob_below": 0.5}},
                    {"name": "a", "when": {"margin_below": 0.5}},
                ]
            },
            "queues[1].name",
            "duplicate",
        ),
        (
            {"queues": [{"name": "a", "when": {"confidence_below": 0.5}}]},
            "queues[0].when.confidence_below",
            "unknown score",
        ),
        (
            {"queues": [{"name": "a", "when": {"max_prob_below": "0.5"}}]},
            "queues[0].when.max_prob_below",
            "must be a number",
        ),
        ({"queues": [{"name": "a", "when": {"any": []}}]}, "queues[0].when.any", "non-empty"),
        (
            {"queues": [{"name": "a", "when": {"flags_any": "pii"}}]},
            "queues[0].when.flags_any",
            "list",
        ),
        (
            {"queues": [{"name": "a", "when": {"not": {"sometimes": 1}}}]},
            "queues[0].when.not.sometimes",
            "unknown rule key",
        ),
        (
            {"queues": [{"name": "a", "when": {"all": [{"margin_below": 0.1}, 3]}}]},
            "queues[0].when.all[1]",
            "mapping",
        ),
        (
            {"queues": [{"name": "a", "topic": "bad topic", "when": {"margin_below": 0.1}}]},
            "queues[0].topic",
            "legal Kafka topic",
        ),
        (
            {"queues": [{"name": "a", "topic": "eval.samples", "when": {"margin_below": 0.1}}]},
            "queues[0].topic",
            "already used",
        ),
        (
            {"queues": [{"name": "a", "when": {"margin_below": 0.1}, "colour": "red"}]},
            "queues[0].colour",
            "unknown key",
        ),
        ({"calibration": {"temperatures": {"m": 0}}}, "calibration.temperatures.m", "> 0"),
        ({"worker": {"max_in_flight": 0}}, "worker.max_in_flight", "1 to 100"),
        ({"worker": {"max_in_flight": 2.5}}, "worker.max_in_flight", "expected an integer"),
        ({"worker": {"delivery_timeout_s": 0.5}}, "worker.delivery_timeout_s", "between 1"),
        ({"worker": {"shutdown_timeout_s": 0}}, "worker.shutdown_timeout_s", "between 1"),
        ({"worker": {"session_timeout_ms": 3000}}, "worker.session_timeout_ms", "6000"),
        (
            {"worker": {"session_timeout_ms": 9000, "heartbeat_interval_ms": 4000}},
            "worker.heartbeat_interval_ms",
            "a third",
        ),
        ({"worker": {"group_instance_id": "a b"}}, "worker.group_instance_id", "letters"),
        ({"worker": {"producer": "kafka-python"}}, "worker.producer", "librdkafka, aiokafka"),
        ({"worker": {"consumer": "faust"}}, "worker.consumer", "librdkafka, aiokafka"),
        ({"limits": {"max_output_bytes": 0}}, "limits.max_output_bytes", "≥ 1"),
        (
            {"limits": {"dead_letter_raw_bytes": 200_000}},
            "limits.dead_letter_raw_bytes",
            "lower it to at most 163936",
        ),
        ({"metrics": {"models": "m"}}, "metrics.models", "list of model names"),
        ({"metrics": {"models": ["a", "b"], "max_models": 1}}, "metrics.models", "more than"),
        ({"metrics": {"colour": 1}}, "metrics.colour", "unknown key"),
    ],
)
def test_bad_config_names_key_and_problem(data, key, fragment):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.key == key
    assert fragment in err.value.problem
    assert isinstance(err.value, ValueError)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("queues: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_is_frozen_and_hash_tracks_content():
    a = parse_config({"eval_sample": {"rate": 0.1}})
    with pytest.raises(AttributeError):
        a.eval_sample.rate = 0.5  # type: ignore[misc]
    assert a.config_hash == parse_config({"eval_sample": {"rate": 0.1}}).config_hash
    assert a.config_hash != parse_config({"eval_sample": {"rate": 0.2}}).config_hash


def test_calibration_temperature_by_bare_name_or_version():
    cfg = parse_config({"calibration": {"temperatures": {"m": 2.0, "m@3": 1.5}}})
    assert cfg.calibration.temperature("m@3") == 1.5
    assert cfg.calibration.temperature("m@4") == 2.0
    assert cfg.calibration.temperature("other") == 1.0


def test_worker_fetch_settings():
    assert parse_config({}).worker.fetch_min_bytes == 32768
    cfg = parse_config({"worker": {"fetch_min_bytes": 1, "fetch_max_wait_ms": 0}})
    assert (cfg.worker.fetch_min_bytes, cfg.worker.fetch_max_wait_ms) == (1, 0)
    with pytest.raises(ConfigError, match="worker.fetch_min_bytes"):
        parse_config({"worker": {"fetch_min_bytes": 0}})


def test_failure_and_membership_settings():
    w = parse_config({}).worker
    assert (w.delivery_timeout_s, w.shutdown_timeout_s) == (30.0, 15.0)
    assert (w.session_timeout_ms, w.heartbeat_interval_ms, w.group_instance_id) == (
        10000,
        3000,
        None,
    )
    cfg = parse_config(
        {"worker": {"group_instance_id": "{hostname}-router", "delivery_timeout_s": 5}}
    )
    assert cfg.worker.group_instance_id == "{hostname}-router"
    assert cfg.worker.delivery_timeout_s == 5.0


def test_check_config_shows_a_salt_fingerprint_never_the_salt():
    a = parse_config({"eval_sample": {"salt": "s3cret-salt"}})
    b = parse_config({"eval_sample": {"salt": "other-salt"}})
    shown = a.describe()
    assert "s3cret-salt" not in orjson.dumps(shown).decode()
    assert "s3cret-salt" not in repr(a)
    assert (
        shown["eval_sample"]["salt_fingerprint"] != b.describe()["eval_sample"]["salt_fingerprint"]
    )
    assert a.config_hash != b.config_hash  # another salt is another eval sample


def test_limits_for_outputs():
    limits = parse_config({}).limits
    assert (limits.max_output_bytes, limits.dead_letter_raw_bytes) == (1_000_000, 65_536)
    # the largest raw prefix whose worst escaping still fits is accepted
    ok = parse_config({"limits": {"dead_letter_raw_bytes": 163_936}}).limits
    assert ok.dead_letter_raw_bytes == 163_936


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1", "::", "::1", "localhost", "metrics.svc"])
def test_metrics_host_takes_an_address_or_a_host_name(host):
    cfg = parse_config({"metrics": {"host": host}})
    assert cfg.metrics.host == host
    assert cfg.describe()["metrics"]["host"] == host  # check-config shows it


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("0.0.0.0:9108", "without a port"),
        ("http://0.0.0.0", "without a port or scheme"),
        ("[::1]", "IP address or a host name"),
        ("", "IP address or a host name"),
        ("999.1.1.1", "IP address or a host name"),
        ("my host", "IP address or a host name"),
        ("-metrics", "IP address or a host name"),
        (9108, "expected a string"),
        (None, "must not be null"),
    ],
)
def test_bad_metrics_host_stops_the_start_naming_the_key(host, fragment):
    with pytest.raises(ConfigError, match=fragment) as exc:
        parse_config({"metrics": {"host": host}})
    assert exc.value.key == "metrics.host"
    assert str(exc.value).startswith("metrics.host: ")


def test_metrics_host_default_keeps_the_hash_of_older_configs():
    """A config without metrics.host (all configs before it existed) hashes as it did:
    the key is shown by check-config but counts in the hash only when set otherwise."""
    plain = parse_config({"metrics": {"port": 9200}})
    assert plain.metrics.host == "0.0.0.0" and plain.describe()["metrics"]["host"] == "0.0.0.0"
    assert parse_config({"metrics": {"port": 9200, "host": "0.0.0.0"}}).config_hash == (
        plain.config_hash
    )
    local = parse_config({"metrics": {"port": 9200, "host": "127.0.0.1"}})
    assert local.config_hash != plain.config_hash


def test_the_output_client_is_not_in_the_hash():
    """worker.producer and worker.consumer pick the Kafka clients that write the outputs
    and read the inputs: the decisions, and so the routing hash, are the same with any."""
    plain = parse_config({})
    assert plain.worker.producer == "librdkafka"
    assert plain.describe()["worker"]["producer"] == "librdkafka"
    aio = parse_config({"worker": {"producer": "aiokafka", "consumer": "librdkafka"}})
    assert aio.worker.producer == "aiokafka" and aio.worker.consumer == "librdkafka"
    assert aio.config_hash == plain.config_hash
