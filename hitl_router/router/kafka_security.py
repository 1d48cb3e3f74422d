"""``kafka.security``: how the worker authenticates to Kafka and encrypts its connections.

The config names where the password is (an environment variable or a file), never the
password itself, so a config file can be printed, hashed and committed. The password is
read only when a connection is made (:meth:`SecurityConfig.password`): ``check-config``
works without it.

>>> sec = parse_security({"protocol": "SASL_SSL", "username": "router",
...                       "password_env": "HITL_KAFKA_PASSWORD", "ca_file": "ca.pem"})
>>> sec.sasl, sec.tls, sec.sasl_mechanism
(True, True, 'SCRAM-SHA-512')
>>> parse_security({"protocol": "SASL_SSL", "username": "router", "password": "hunter2"})
Traceback (most recent call last):
...
hitl_router.errors.ConfigError: kafka.security.password: a password is never written in the \
config; name where it is with password_env (an environment variable) or password_file
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hitl_router.errors import ConfigError

KEY = "kafka.security"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SASL_KEYS = ("username", "password_env", "password_file")
_TLS_KEYS = ("ca_file", "cert_file", "key_file")


@dataclass(frozen=True)
class SecurityConfig:
    """Where and how to authenticate; holds no secret (only where to read it)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    #: name of the environment variable holding the password
    password_env: str | None = None
    #: path of a file holding the password (one trailing newline is ignored)
    password_file: str | None = None
    #: CA bundle (PEM) that signed the brokers' certificates; None: the system's
    ca_file: str | None = None
    #: client certificate and key (PEM) for mutual TLS; both or neither
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def password_source(self) -> str:
        """Where the password comes from, for messages (never the password)."""
        if self.password_env:
            return f"environment variable {self.password_env}"
        return f"file {self.password_file}"

    def password(self) -> str:
        """The SASL password, read now from the environment or the file.

        Raises :class:`ConfigError` naming the key when it is missing, empty or
        unreadable; the message never contains the password.
        """
        if not self.sasl:
            raise ConfigError(f"{KEY}.protocol", f"{self.protocol} uses no password")
        if self.password_env:
            value = os.environ.get(self.password_env, "")
            if not value:
                raise ConfigError(
                    f"{KEY}.password_env",
                    f"environment variable {self.password_env} is not set or empty",
                )
            return value
        path = Path(str(self.password_file)).expanduser()
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"{KEY}.password_file", f"cannot read password file {path}: {reason}"
            ) from None
        value = value.removesuffix("\n").removesuffix("\r")
        if not value:
            raise ConfigError(f"{KEY}.password_file", f"password file {path} is empty")
        return value


def parse_security(value: Any, key: str = KEY) -> SecurityConfig:
    """Validate the ``kafka.security`` mapping (None or absent: PLAINTEXT)."""
    if value is None:
        return SecurityConfig()
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    if "password" in value:
        raise ConfigError(
            f"{key}.password",
            "a password is never written in the config; name where it is with "
            "password_env (an environment variable) or password_file",
        )
    allowed = {f.name for f in fields(SecurityConfig)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}"
        )
    values: dict[str, Any] = {}
    for name in allowed & set(value):
        item = value[name]
        if name == "check_hostname":
            if not isinstance(item, bool):
                raise ConfigError(f"{key}.{name}", f"expected true or false, got {item!r}")
        elif item is not None and (not isinstance(item, str) or not item):
            raise ConfigError(f"{key}.{name}", f"expected a non-empty string, got {item!r}")
        values[name] = item
    sec = SecurityConfig(**values)
    if sec.protocol not in PROTOCOLS:
        raise ConfigError(f"{key}.protocol", f"expected one of {', '.join(PROTOCOLS)}")
    if sec.sasl_mechanism not in MECHANISMS:
        raise ConfigError(f"{key}.sasl_mechanism", f"expected one of {', '.join(MECHANISMS)}")
    if sec.sasl:
        _check_sasl(sec, key)
    else:
        for name in (*_SASL_KEYS, "sasl_mechanism"):
            if name in value:
                raise ConfigError(f"{key}.{name}", f"only with a SASL protocol, not {sec.protocol}")
    if not sec.tls:
        for name in (*_TLS_KEYS, "check_hostname"):
            if name in value:
                raise ConfigError(f"{key}.{name}", f"only with SSL or SASL_SSL, not {sec.protocol}")
    if (sec.cert_file is None) != (sec.key_file is None):
        missing = "key_file" if sec.key_file is None else "cert_file"
        raise ConfigError(f"{key}.{missing}", "cert_file and key_file go together (mutual TLS)")
    return sec


def _check_sasl(sec: SecurityConfig, key: str) -> None:
    if sec.username is None:
        raise ConfigError(f"{key}.username", f"required with {sec.protocol}")
    if (sec.password_env is None) == (sec.password_file is None):
        raise ConfigError(
            f"{key}.password_env",
            f"{sec.protocol} needs exactly one of password_env (an environment variable's "
            "name) or password_file (a path)",
        )
    if sec.password_env is not None and not _ENV_NAME.match(sec.password_env):
        raise ConfigError(
            f"{key}.password_env",
            f"expected the name of an environment variable, got {sec.password_env!r}",
        )
