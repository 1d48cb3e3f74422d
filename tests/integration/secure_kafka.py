"""A local broker with a SASL_SSL listener and ACLs, certificates made here (trustme)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hitl_router.localkafka import LocalKafka
from tests.conftest import free_port


@dataclass(frozen=True)
class SecureBroker:
    kafka: LocalKafka
    ca_file: Path
    #: the PLAINTEXT listener, whose ANONYMOUS principal is a super user (the test admin)
    admin_bootstrap: str
    #: the SASL_SSL listener the router connects to
    bootstrap: str


def make_certs(directory: Path) -> tuple[Path, Path]:
    """A throwaway CA and a broker certificate for 127.0.0.1/localhost: (ca.pem, keystore
    PEM holding the PKCS#8 key and the certificate chain, the form Kafka's PEM keystore
    reads)."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    keystore = directory / "broker-keystore.pem"
    keystore.write_bytes(pkcs8 + b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    keystore.chmod(0o600)
    return ca_file, keystore


def start_secure_broker(run_dir: Path, users: Iterable[tuple[str, str]]) -> SecureBroker:
    ca_file, keystore = make_certs(run_dir / "tls")
    kafka = LocalKafka(
        port=free_port(),
        controller_port=free_port(),
        run_dir=run_dir / "kafka",
        sasl_ssl_port=free_port(),
        ssl_keystore_pem=keystore,
        scram_users=tuple(users),
        acls=True,
    )
    kafka.start(timeout=120)
    return SecureBroker(
        kafka=kafka,
        ca_file=ca_file,
        admin_bootstrap=kafka.bootstrap,
        bootstrap=f"{kafka.host}:{kafka.sasl_ssl_port}",
    )


def allow(
    admin_bootstrap: str, principal: str, grants: Iterable[tuple[str, str, str, str]]
) -> None:
    """Create ALLOW ACLs for ``principal``: each grant is (resource type TOPIC|GROUP,
    name, pattern LITERAL|PREFIXED, operation)."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        KafkaAdminClient,
        ResourcePattern,
        ResourceType,
    )

    acls = [
        ACL(
            principal=principal,
            host="*",
            operation=ACLOperation[op],
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                ResourceType[kind], name, ACLResourcePatternType[pattern]
            ),
        )
        for kind, name, pattern, op in grants
    ]
    admin = KafkaAdminClient(bootstrap_servers=admin_bootstrap, client_id="test-acl-admin")
    try:
        result = admin.create_acls(acls)
        assert not result["failed"], result["failed"]
    finally:
        admin.close()


def create_topics(admin_bootstrap: str, topics: Iterable[str], partitions: int) -> None:
    from hitl_router.agents.topics import ensure_topics

    ensure_topics(admin_bootstrap, topics, partitions)
