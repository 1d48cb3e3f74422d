"""Client settings from kafka.security: what Faust's aiokafka clients and kafka-python's
admin receive (no broker needed)."""

from __future__ import annotations

import ssl

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from hitl_router.agents.connection import faust_kwargs, kafka_python_kwargs, ssl_context
from hitl_router.errors import ConfigError
from hitl_router.router.kafka_security import parse_security

SECRET = "s3cret-for-the-broker-only"


@pytest.fixture
def ca_file(tmp_path):
    import trustme

    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def sasl_ssl(ca_file, monkeypatch):
    monkeypatch.setenv("HITL_PW", SECRET)
    return parse_security(
        {
            "protocol": "SASL_SSL",
            "username": "router",
            "password_env": "HITL_PW",
            "ca_file": str(ca_file),
        }
    )


def test_plaintext_changes_nothing():
    plain = parse_security(None)
    assert faust_kwargs(plain) == {}
    assert kafka_python_kwargs(plain) == {"security_protocol": "PLAINTEXT"}
    assert ssl_context(plain) is None


def test_sasl_ssl_reaches_every_aiokafka_client_faust_makes(sasl_ssl):
    creds = faust_kwargs(sasl_ssl)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert SECRET not in repr(creds)
    # what Faust's driver passes to its consumer, producer and topic-creating clients
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("router", SECRET)
    context = auth["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1  # the configured CA, not the system's


def test_sasl_ssl_for_kafka_python(sasl_ssl):
    kw = kafka_python_kwargs(sasl_ssl)
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "router" and kw["sasl_plain_password"] == SECRET
    assert isinstance(kw["ssl_context"], ssl.SSLContext) and kw["ssl_check_hostname"] is True


def test_sasl_plaintext_and_ssl_only(ca_file, monkeypatch):
    monkeypatch.setenv("HITL_PW", SECRET)
    plain = parse_security(
        {"protocol": "SASL_PLAINTEXT", "username": "u", "password_env": "HITL_PW",
         "sasl_mechanism": "SCRAM-SHA-256"}
    )  # fmt: skip
    auth = credentials_to_aiokafka_auth(faust_kwargs(plain)["broker_credentials"])
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"
    tls = parse_security({"protocol": "SSL", "ca_file": str(ca_file), "check_hostname": False})
    auth = credentials_to_aiokafka_auth(faust_kwargs(tls)["broker_credentials"])
    assert auth["security_protocol"] == "SSL" and auth["ssl_context"].check_hostname is False
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the chain still checked
    assert "sasl_mechanism" not in kafka_python_kwargs(tls)


def test_mutual_tls_loads_the_client_certificate(tmp_path):
    import trustme

    ca = trustme.CA()
    client = ca.issue_cert("router@example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    sec = parse_security(
        {"protocol": "SSL", "ca_file": str(tmp_path / "ca.pem"),
         "cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem")}
    )  # fmt: skip
    assert isinstance(ssl_context(sec), ssl.SSLContext)
    bad = parse_security(
        {"protocol": "SSL", "cert_file": str(tmp_path / "key.pem"),
         "key_file": str(tmp_path / "key.pem")}
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        ssl_context(bad)
    assert info.value.key == "kafka.security.cert_file"


def test_missing_ca_file_names_the_key(tmp_path):
    sec = parse_security({"protocol": "SSL", "ca_file": str(tmp_path / "nope.pem")})
    with pytest.raises(ConfigError) as info:
        ssl_context(sec)
    assert info.value.key == "kafka.security.ca_file" and "nope.pem" in str(info.value)


def test_missing_password_is_a_config_error_at_connect_time(ca_file, monkeypatch):
    monkeypatch.delenv("HITL_PW", raising=False)
    sec = parse_security(
        {"protocol": "SASL_SSL", "username": "u", "password_env": "HITL_PW",
         "ca_file": str(ca_file)}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="HITL_PW is not set"):
        faust_kwargs(sec)


def test_worker_without_its_password_exits_2_naming_the_key(tmp_path, capsys, monkeypatch):
    """The secret is looked for before any connection (no broker needed to fail)."""
    import yaml

    from hitl_router.cli import main

    monkeypatch.delenv("HITL_PW", raising=False)
    cfg = tmp_path / "c.yaml"
    security = {"protocol": "SASL_PLAINTEXT", "username": "u", "password_env": "HITL_PW"}
    cfg.write_text(
        yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1", "security": security}})
    )
    assert main(["worker", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "kafka.security.password_env: environment variable HITL_PW is not set" in err
