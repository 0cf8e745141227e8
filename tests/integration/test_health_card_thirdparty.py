"""A SMART Health Card this node issues, checked by a verifier we did not write: PathCheck's
``@pathcheck/shc-sdk`` (npm, pinned in scripts/vendor-assets.sh, installed in build/npm, not
shipped), run by ``node`` on the card's ``shc:/`` QR text and on its JWS.

What the SDK does (lib/shc.js, lib/resolver.js of 0.0.8): it decodes the numeric QR (one chunk
only), inflates the DEFLATEd payload, takes ``iss`` and the header's ``kid``, fetches
``{iss}/.well-known/jwks.json`` itself (any scheme: our loopback ``http://`` issuer is fine) and
checks the ES256 signature with the key of that ``kid``. Before that, for an ``iss#kid`` it was
not handed, it downloads PathCheck's public trust registry: handing it the issuer's JWKS (its
``publicKeyArray`` argument) keeps it offline; it still verifies against the JWKS it fetched from
the issuer. It checks no revocation, no ``nbf``/``exp`` and no FHIR content: revocation is the
spec verifier's to check (tests/integration/test_health_links.py).

The node process runs with every non-loopback connection refused and recorded, so the test
proves it stayed offline.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.nodes import Server, demo_node, login, serving
from tests.support.shc_verifier import decode_numeric, encode_numeric

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "build" / "npm" / "node_modules" / "@pathcheck" / "shc-sdk"
NODE = shutil.which("node")
IMMUNIZATION = "https://smarthealth.cards#immunization"

# Reads {"sdk", "mode": "qr" | "jws", "card", "trusted"} on stdin; writes one JSON object.
HARNESS = r"""
'use strict';
const net = require('net');
const http = require('http');
const https = require('https');
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);
const connections = [];
const requests = [];
const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  let o = Array.isArray(args[0]) ? args[0][0] : args[0];
  if (typeof o !== 'object' || o === null) o = {port: args[0], host: args[1]};
  if (o.path) return connect.apply(this, args);
  const host = String(o.host || 'localhost');
  connections.push(host + ':' + o.port);
  if (!LOOPBACK.has(host)) {
    process.nextTick(() => this.destroy(new Error('offline test: no connection to ' + host)));
    return this;
  }
  return connect.apply(this, args);
};
for (const [mod, scheme] of [[http, 'http:'], [https, 'https:']]) {
  const request = mod.request;
  mod.request = function (...args) {
    const o = args[0];
    requests.push(typeof o === 'string' || o instanceof URL ? String(o)
      : (o.protocol || scheme) + '//' + (o.host || o.hostname) + (o.path || '/'));
    return request.apply(this, args);
  };
}
console.log = console.error;  // the SDK logs its errors with console.log: keep stdout for us
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const sdk = require(input.sdk);
(async () => {
  let out;
  if (input.mode === 'qr') {
    const r = await sdk.unpackAndVerify(input.card, input.trusted);
    out = r === undefined ? {valid: false} : {
      valid: true, iss: r.credential.iss, kid: r.raw.header.kid, key: r.issuer.didDocument,
      status: r.issuer.status, vc: r.credential.vc};
  } else {
    out = {valid: await sdk.verify(input.card, input.trusted)};
  }
  process.stdout.write(JSON.stringify({...out, connections, requests}));
})().catch((e) => { console.error(e); process.exit(2); });
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NODE is None:
        pytest.skip("node is not installed: the third-party SHC verifier runs on node")
    if not (SDK / "package.json").exists():
        raise AssertionError(f"{SDK} is missing: run scripts/vendor-assets.sh")
    script = tmp_path_factory.mktemp("shc-sdk") / "verify.js"
    script.write_text(HARNESS)
    return script


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("shc3p") / "node"
    demo_node(data, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def card(server: Server) -> dict[str, Any]:
    """An immunization card of a demo patient, issued over HTTP by the patient."""
    key = sorted((server.data_dir / "keys" / "patients").glob("*.key"))[0]
    with login(server, key) as own:
        issued = own.post(f"/v1/patients/{key.stem}/cards", json={"kind": "immunizations"})
    assert issued.status_code == 201, issued.text
    return dict(issued.json())


@pytest.fixture(scope="module")
def jwks(card: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.get(f"{card['issuer']}/.well-known/jwks.json", timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def third_party(harness: Path, mode: str, text: str, trusted: dict[str, Any]) -> dict[str, Any]:
    """Run the SDK on ``text`` (a ``shc:/`` QR text or a JWS) in a node process of its own."""
    assert NODE is not None
    stdin = json.dumps({"sdk": str(SDK), "mode": mode, "card": text, "trusted": trusted})
    run = subprocess.run([NODE, str(harness)], input=stdin, capture_output=True, text=True,
                         timeout=60, cwd=harness.parent, check=False)  # fmt: skip
    assert run.returncode == 0, f"node failed:\n{run.stdout}\n{run.stderr}"
    out = dict(json.loads(run.stdout))
    out["stderr"] = run.stderr
    offline = all(c.split(":")[0] in ("127.0.0.1", "localhost", "::1") for c in out["connections"])
    assert offline, f"the verifier tried to leave the machine: {out['connections']}"
    return out


def refused_by_signature(out: dict[str, Any]) -> bool:
    """Refused at the signature check, with the issuer's key fetched: node-jose's "no key found"
    is its answer when no key (here: the one of the header's kid) verifies the signature."""
    fetched = any(u.endswith("/.well-known/jwks.json") for u in out["requests"])
    return not out["valid"] and fetched and "Error: no key found" in out["stderr"]


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _deflate_raw(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _claims(jws: str) -> dict[str, Any]:
    return dict(json.loads(zlib.decompress(_b64d(jws.split(".")[1]), -15)))


def test_the_third_party_verifier_accepts_our_card(
    harness: Path, card: dict[str, Any], jwks: dict[str, Any]
) -> None:
    assert decode_numeric(card["shc"]) == card["jws"]
    trusted = {card["issuer"]: jwks}
    out = third_party(harness, "qr", card["shc"], trusted)
    assert out["valid"], out["stderr"]
    (published,) = jwks["keys"]
    assert out["iss"] == card["issuer"] and out["kid"] == published["kid"]
    assert out["key"] == published  # the key it checked the signature with: the issuer's
    # it fetched the issuer's keys itself, from the issuer named in the card, over loopback
    assert f"{card['issuer']}/.well-known/jwks.json" in out["requests"], out["requests"]
    assert IMMUNIZATION in out["vc"]["type"]
    entries = out["vc"]["credentialSubject"]["fhirBundle"]["entry"]
    assert entries[0]["resource"]["resourceType"] == "Patient"
    assert {e["resource"]["resourceType"] for e in entries[1:]} == {"Immunization"}
    assert out["vc"] == _claims(card["jws"])["vc"]
    # the JWS itself, and the one in the .smart-health-card file, pass its verify() too
    assert third_party(harness, "jws", card["jws"], trusted)["valid"]
    (in_file,) = card["file"]["verifiableCredential"]
    assert third_party(harness, "jws", in_file, trusted)["valid"]


def test_the_third_party_verifier_refuses_a_tampered_card(
    harness: Path, card: dict[str, Any], jwks: dict[str, Any]
) -> None:
    trusted = {card["issuer"]: jwks}
    header, payload, signature = card["jws"].split(".")
    # another name in the payload, the issuer's signature kept
    claims = _claims(card["jws"])
    claims["vc"]["credentialSubject"]["fhirBundle"]["entry"][0]["resource"]["name"] = [
        {"family": "Forger", "given": ["Mallory"]}
    ]
    body = _b64e(_deflate_raw(json.dumps(claims, separators=(",", ":")).encode()))
    renamed = f"{header}.{body}.{signature}"
    assert refused_by_signature(third_party(harness, "qr", encode_numeric(renamed), trusted))
    # one character of the signature changed
    i = len(signature) // 2
    flipped = signature[:i] + ("A" if signature[i] != "A" else "B") + signature[i + 1 :]
    flipped_jws = f"{header}.{payload}.{flipped}"
    assert refused_by_signature(third_party(harness, "qr", encode_numeric(flipped_jws), trusted))
    assert refused_by_signature(third_party(harness, "jws", flipped_jws, trusted))
    # the same header (our kid) and payload, signed with a key that is not the issuer's
    other = ec.generate_private_key(ec.SECP256R1())
    r, s = decode_dss_signature(
        other.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    )
    forged = f"{header}.{payload}.{_b64e(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    assert refused_by_signature(third_party(harness, "qr", encode_numeric(forged), trusted))
