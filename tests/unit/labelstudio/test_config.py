"""The ``label_studio`` section: refused with the key and the problem, never holding the
token, and not part of the routing config's hash."""

from __future__ import annotations

import pytest

from hitl_router.errors import ConfigError
from hitl_router.router.config import parse_config
from hitl_router.router.label_studio import LabelStudioConfig, parse_label_studio

QUEUES = [{"name": "uncertain", "when": {"max_prob_below": 0.7}}]


@pytest.mark.parametrize(
    ("section", "key", "problem"),
    [
        ({"token": "s3cret"}, "label_studio.token", "never written in the config"),
        ({"url": "ftp://x"}, "label_studio.url", "expected an http(s) URL"),
        ({"url": "http://"}, "label_studio.url", "expected an http(s) URL"),
        ({"poll_interval_s": 0}, "label_studio.poll_interval_s", "positive number"),
        ({"import_batch": 0}, "label_studio.import_batch", "positive integer"),
        ({"blind_eval": "yes"}, "label_studio.blind_eval", "true or false"),
        ({"token_env": "1BAD"}, "label_studio.token_env", "not an environment variable"),
        ({"state_topic": "a b"}, "label_studio.state_topic", "not a legal topic"),
        ({"retry_initial_s": 5, "retry_max_s": 1}, "label_studio.retry_max_s", "at least"),
        ({"colour": "red"}, "label_studio.colour", "unknown key"),
        ({"queues": ["nope"]}, "label_studio.queues", "no queue named 'nope'"),
        ({"projects": {"nope": "T"}}, "label_studio.projects.nope", "no queue named"),
        ({"projects": {"uncertain": ""}}, "label_studio.projects.uncertain", "non-empty"),
        (
            {"projects": {"uncertain": "Same"}, "eval_project": "Same"},
            "label_studio.projects",
            "share a title",
        ),
        ("http://ls", "label_studio", "expected a mapping"),
    ],
)
def test_bad_sections_are_refused_with_the_key(section, key, problem):
    with pytest.raises(ConfigError) as exc:
        parse_config({"queues": QUEUES, "label_studio": section})
    assert exc.value.key == key
    assert problem in exc.value.problem


def test_the_section_does_not_change_the_routing_hash():
    plain = parse_config({"queues": QUEUES})
    bridged = parse_config({"queues": QUEUES, "label_studio": {"url": "http://ls:8080"}})
    other = parse_config({"queues": QUEUES, "label_studio": {"url": "http://other:1"}})
    assert plain.config_hash == bridged.config_hash == other.config_hash
    assert bridged.describe()["label_studio"]["url"] == "http://ls:8080"
    assert "label_studio" not in plain.describe()


def test_the_token_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    ls = parse_label_studio({"token_env": "HITL_LS_TOKEN_TEST"})
    monkeypatch.delenv("HITL_LS_TOKEN_TEST", raising=False)
    with pytest.raises(ConfigError) as exc:
        ls.token()
    assert exc.value.key == "label_studio.token_env"
    assert "HITL_LS_TOKEN_TEST is not set" in exc.value.problem
    monkeypatch.setenv("HITL_LS_TOKEN_TEST", "abc123\n")
    assert ls.token() == "abc123"
    assert "abc123" not in repr(ls) and "abc123" not in str(ls.describe())

    path = tmp_path / "token"
    path.write_text("from-file\n")
    by_file = parse_label_studio({"token_file": str(path)})
    assert by_file.token() == "from-file"
    assert by_file.token_source() == f"file {path}"
    path.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        by_file.token()
    missing = parse_label_studio({"token_file": str(tmp_path / "none")})
    with pytest.raises(ConfigError) as exc:
        missing.token()
    assert exc.value.key == "label_studio.token_file"


def test_defaults_and_titles():
    ls = LabelStudioConfig()
    assert ls.token_env == "LABEL_STUDIO_API_KEY" and ls.blind_eval and ls.eval
    assert ls.title_of("flagged") == "hitl-router review: flagged"
    parsed = parse_label_studio({"projects": {"flagged": "PII review"}, "queues": ["flagged"]})
    assert parsed.title_of("flagged") == "PII review" and parsed.queues == ("flagged",)
