"""A node ordering through a NATS server that demands TLS client certificates and an NKey.

Certificates come from a throwaway CA made here (cryptography); the NKey user from nkeys. The
node connects with both and commits; without its NKey it refuses to start, saying why.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import httpx
import nkeys
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from careledger.cluster.natsd import NatsServer, free_port
from careledger.cluster.natsd import NatsServerSpec as Spec
from careledger.keyfile import generate_keypair, read_key_file
from careledger.sdk import Client
from tests.support.nodes import demo_node, run_cli, serving

pytestmark = pytest.mark.integration


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_tls_and_nkey_protected_nats(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, None, ca=True)
    _write(pki / "ca", ca, ca_key)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(pki / name, _cert(name, key, ca, ca_key), key)
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    user = nkeys.from_seed(seed).public_key.decode()

    spec = Spec(
        name="nats-tls",
        port=free_port(),
        cluster_port=free_port(),
        monitor_port=free_port(),
        store_dir=tmp_path / "nats" / "jetstream",
        tls=(pki / "server.pem", pki / "server.key", pki / "ca.pem"),
        nkey_users=(user,),
    )
    server = NatsServer(spec, [spec])
    server.start()
    try:
        server.wait_ready()
        data = tmp_path / "node"
        demo_node(data, with_records=False, with_supply=False)
        (data / "secrets").mkdir()
        (data / "secrets" / "node.nk").write_bytes(seed)
        for name in ("ca.pem", "client.pem", "client.key"):
            (data / "secrets" / name).write_bytes((pki / name).read_bytes())
        config = orjson.loads((data / "node.json").read_bytes())
        ordering = {
            "kind": "jetstream",
            "servers": [f"tls://127.0.0.1:{spec.port}"],
            "replicas": 1,
            "tls_ca": "secrets/ca.pem",
            "tls_cert": "secrets/client.pem",
            "tls_key": "secrets/client.key",
            "nkey_seed": "secrets/node.nk",
        }
        (data / "node.json").write_bytes(orjson.dumps({**config, "ordering": ordering}))
        with serving(data) as node:
            cluster = httpx.get(f"{node.url}/v1/cluster").json()
            assert cluster["kind"] == "jetstream" and cluster["connected"] is True
            admin = read_key_file(data / "keys" / "st-mary-admin.key")[1]
            with Client(node.url, keypair=admin) as client:
                args = {"id": "tls-1", "name": "T", "roles": ["nurse"]}
                receipt = client.call(
                    "identity", "add_member", {**args, "public_key": generate_keypair().public_b64}
                )
            assert receipt["result"] == "accepted"
        # Without its NKey, the server refuses the node, and the node says why and stops.
        del ordering["nkey_seed"]
        (data / "node.json").write_bytes(orjson.dumps({**config, "ordering": ordering}))
        refused = run_cli("serve", str(data), "--port", str(free_port()), timeout=90)
        assert refused.returncode != 0
        assert "NATS" in refused.stdout + refused.stderr
    finally:
        server.stop()
