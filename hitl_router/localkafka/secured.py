"""The local broker's optional SASL_SSL listener, SCRAM users and ACL authorizer.

For tests of the worker's security: the PLAINTEXT listener (and the controller's) stay
as they are, and with the authorizer on, their principal ``User:ANONYMOUS`` is a super
user, so a test's admin on PLAINTEXT can create topics, users and ACLs while the client
under test connects to SASL_SSL with its own principal. A test-broker choice: a real
cluster would authenticate every listener.

SCRAM users are written into the metadata log when the storage is formatted (KRaft has
no ZooKeeper to hold them); the password reaches the format tool only salted and hashed.

>>> arg = scram_credential("router", "s3cret", salt=b"0123456789abcdef")
>>> arg.startswith('SCRAM-SHA-512=[name=router,iterations=8192,salt="MDEyMzQ1Njc4OWFiY2RlZg=="')
True
>>> "s3cret" in arg
False
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SCRAM_ITERATIONS = 8192
#: the ACL authorizer; ANONYMOUS (PLAINTEXT, controller) may do anything: see above
AUTHORIZER_PROPERTIES = (
    f"authorizer.class.name={AUTHORIZER}",
    "super.users=User:ANONYMOUS",
    "allow.everyone.if.no.acl.found=false",
)
_USER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def scram_credential(
    name: str, password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """A ``kafka-storage format --add-scram`` argument for a SCRAM-SHA-512 user, carrying
    the salted password (RFC 5802 ``Hi()``, i.e. PBKDF2-HMAC-SHA512), not the password."""
    if not _USER.match(name):
        raise ValueError(f"SCRAM user name must match {_USER.pattern}, got {name!r}")
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-512=[name={name},iterations={iterations},"
        f'salt="{b64(salt).decode()}",saltedpassword="{b64(salted).decode()}"]'
    )


def listener_properties(keystore_pem: Path) -> list[str]:
    """server.properties lines of the SASL_SSL listener: SCRAM-SHA-512 over TLS with a PEM
    keystore (the PKCS#8 private key and the certificate chain in one file)."""
    return [
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.ssl.keystore.type=PEM",
        f"listener.name.sasl_ssl.ssl.keystore.location={keystore_pem}",
        "listener.name.sasl_ssl.ssl.client.auth=none",
    ]
