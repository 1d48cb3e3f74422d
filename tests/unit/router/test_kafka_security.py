"""kafka.security: parsing (each error names its dotted key), the password read at the
edge, and check-config / the config hash free of secrets."""

from __future__ import annotations

import pytest
import yaml

from hitl_router.cli import main
from hitl_router.errors import ConfigError
from hitl_router.router.config import parse_config
from hitl_router.router.kafka_security import SecurityConfig, parse_security

SECRET = "s3cret-Pa55-never-printed"
SASL = {"protocol": "SASL_SSL", "username": "router", "password_env": "HITL_PW"}


def config(security: dict) -> dict:
    return {"kafka": {"bootstrap_servers": "b:9093", "security": security}}


def test_absent_means_plaintext_and_the_hash_of_older_configs_holds():
    assert parse_config({}).kafka.security == SecurityConfig()
    assert parse_config({"kafka": {"security": {}}}).config_hash == parse_config({}).config_hash
    assert "security" not in parse_config({}).describe()["kafka"]


def test_sasl_ssl_parsed():
    sec = parse_config(config({**SASL, "ca_file": "/etc/ca.pem", "check_hostname": False}))
    sec = sec.kafka.security
    assert (sec.protocol, sec.sasl_mechanism, sec.username) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "router",
    )
    assert sec.password_env == "HITL_PW" and sec.password_file is None
    assert sec.ca_file == "/etc/ca.pem" and sec.check_hostname is False
    assert sec.sasl and sec.tls


@pytest.mark.parametrize(
    ("security", "key", "problem"),
    [
        ({"password": "x", **SASL}, "kafka.security.password", "never written in the config"),
        ({**SASL, "pasword_env": "X"}, "kafka.security.pasword_env", "unknown key"),
        ({**SASL, "protocol": "SASL_TLS"}, "kafka.security.protocol", "expected one of"),
        ({**SASL, "sasl_mechanism": "GSSAPI"}, "kafka.security.sasl_mechanism", "one of"),
        ({"protocol": "SASL_SSL", "password_env": "X"}, "kafka.security.username", "required"),
        ({"protocol": "SASL_SSL", "username": "u"}, "kafka.security.password_env", "exactly one"),
        (
            {**SASL, "password_file": "/run/pw"},
            "kafka.security.password_env",
            "exactly one",
        ),
        ({**SASL, "password_env": "1-bad"}, "kafka.security.password_env", "environment"),
        ({**SASL, "username": ""}, "kafka.security.username", "non-empty string"),
        ({**SASL, "ca_file": 3}, "kafka.security.ca_file", "non-empty string"),
        ({**SASL, "check_hostname": "no"}, "kafka.security.check_hostname", "true or false"),
        ({**SASL, "cert_file": "c.pem"}, "kafka.security.key_file", "go together"),
        ({"protocol": "SSL", "username": "u"}, "kafka.security.username", "only with a SASL"),
        (
            {
                "protocol": "SASL_PLAINTEXT",
                **{k: v for k, v in SASL.items() if k != "protocol"},
                "ca_file": "ca.pem",
            },
            "kafka.security.ca_file",
            "only with SSL or SASL_SSL",
        ),
        ([1], "kafka.security", "expected a mapping"),
    ],
)
def test_errors_name_the_dotted_key(security, key, problem):
    with pytest.raises(ConfigError) as info:
        parse_config(config(security))
    assert info.value.key == key
    assert problem in info.value.problem


def test_password_from_the_environment(monkeypatch):
    sec = parse_security(SASL)
    monkeypatch.delenv("HITL_PW", raising=False)
    with pytest.raises(ConfigError) as info:
        sec.password()
    assert info.value.key == "kafka.security.password_env"
    assert "HITL_PW is not set" in str(info.value)
    monkeypatch.setenv("HITL_PW", SECRET)
    assert sec.password() == SECRET


def test_password_from_a_file(tmp_path):
    path = tmp_path / "pw"
    path.write_text(SECRET + "\n")  # as `echo` writes it: the newline is not the password's
    sec = parse_security(
        {"protocol": "SASL_PLAINTEXT", "username": "u", "password_file": str(path)}
    )
    assert sec.password() == SECRET
    path.write_text(" spaced \n\n")
    assert sec.password() == " spaced \n"  # only one trailing newline is dropped
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty") as info:
        sec.password()
    assert info.value.key == "kafka.security.password_file"
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read password file") as info:
        sec.password()
    assert info.value.key == "kafka.security.password_file"


def test_unreadable_or_binary_file_message_has_no_content(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"\xff\xfe" + SECRET.encode())
    sec = parse_security({"protocol": "SASL_SSL", "username": "u", "password_file": str(path)})
    with pytest.raises(ConfigError) as info:
        sec.password()
    assert SECRET not in str(info.value) and "not UTF-8" in str(info.value)


def test_plaintext_has_no_password():
    with pytest.raises(ConfigError):
        SecurityConfig().password()


def test_check_config_prints_where_the_password_is_never_the_password(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HITL_PW", SECRET)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config({**SASL, "ca_file": "/etc/ca.pem"})))
    assert main(["check-config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    shown = yaml.safe_load(out.split("# config OK")[0])["kafka"]["security"]
    assert shown["password_env"] == "HITL_PW" and shown["username"] == "router"
    assert "password" not in shown
    # works without the secret too, and the hash does not depend on it
    hash_with = parse_config(config(SASL)).config_hash
    monkeypatch.delenv("HITL_PW")
    assert main(["check-config", str(cfg)]) == 0
    assert parse_config(config(SASL)).config_hash == hash_with
    assert hash_with != parse_config({}).config_hash


def test_check_config_refuses_a_password_in_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config({**SASL, "password": SECRET})))
    assert main(["check-config", str(cfg)]) == 2
    out, err = capsys.readouterr()
    assert "kafka.security.password: a password is never written" in err
    assert SECRET not in out + err
