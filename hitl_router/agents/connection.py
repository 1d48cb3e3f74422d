"""Client settings for ``kafka.security``: Faust (aiokafka) and kafka-python's admin.

Both clients get the same TLS context and SASL credentials. Faust hands
``broker_credentials`` to every aiokafka client it makes (``credentials_to_aiokafka_auth``
in its aiokafka driver): the consumer, the producer, and the clients that create its
internal topics, so one setting covers the whole worker.

The password is read here, when a client is configured, never at config parse time;
Faust's ``SASLCredentials`` and this module's objects keep it out of their ``repr``.
"""

from __future__ import annotations

import ssl
from typing import Any

from hitl_router.errors import ConfigError
from hitl_router.router.kafka_security import KEY, SecurityConfig


def ssl_context(security: SecurityConfig) -> ssl.SSLContext | None:
    """The TLS context of ``security`` (None without TLS): the CA bundle (else the system's
    trust store), the client certificate for mutual TLS, hostname checking as configured."""
    if not security.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=security.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{KEY}.ca_file", f"cannot load CA file {security.ca_file}: {_reason(exc)}"
        ) from None
    if security.cert_file:
        try:
            context.load_cert_chain(security.cert_file, security.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{KEY}.cert_file",
                f"cannot load {security.cert_file} / {security.key_file}: {_reason(exc)}",
            ) from None
    context.check_hostname = security.check_hostname
    if not security.check_hostname:
        context.verify_mode = ssl.CERT_REQUIRED  # still verify the chain, not the name
    return context


def faust_kwargs(security: SecurityConfig) -> dict[str, Any]:
    """Keyword arguments of ``faust.App`` for ``security`` (none for PLAINTEXT)."""
    import faust

    context = ssl_context(security)
    if security.sasl:
        credentials = faust.SASLCredentials(
            username=security.username,
            password=security.password(),
            mechanism=security.sasl_mechanism,
            ssl_context=context,
        )
        return {"broker_credentials": credentials}
    if context is not None:
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {}


def kafka_python_kwargs(security: SecurityConfig) -> dict[str, Any]:
    """Keyword arguments of kafka-python's clients (``KafkaAdminClient``) for ``security``."""
    out: dict[str, Any] = {"security_protocol": security.protocol}
    context = ssl_context(security)
    if context is not None:
        out["ssl_context"] = context
        out["ssl_check_hostname"] = security.check_hostname
    if security.sasl:
        out["sasl_mechanism"] = security.sasl_mechanism
        out["sasl_plain_username"] = security.username
        out["sasl_plain_password"] = security.password()
    return out


def describe(security: SecurityConfig) -> str:
    """How the worker connects, for logs and messages (never the password)."""
    if security.sasl:
        return f"{security.protocol}, {security.sasl_mechanism}"
    return security.protocol


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
