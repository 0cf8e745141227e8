"""The health services decide by the clock and randomness they are given (issue 14): a federation
request carries the client's time and a nonce from its source and is judged fresh by the
server's clock; record ids, patient pseudonyms, lastUpdated and consent decisions come from the
records service's sources; a share link's document is dated and identified by the link
service's; a confidential app's secret comes from the apps service's; and NodeServices hands
its own clock and randomness to each of them."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from careledger.api.routes.links import _expiry
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.contracts.apps import app_of
from careledger.contracts.consent import NAMESPACE as CONSENT
from careledger.contracts.consent import consent_key, patient_consents_prefix
from careledger.core.keys import KeyPair, b64url_decode, b64url_encode, verify_signature
from careledger.errors import Forbidden, Unauthorized
from careledger.fhir.extract import patient_id
from careledger.health import federation
from careledger.health.federation import (
    FEDERATION_NONCES_FILE,
    MAX_AGE_MS,
    FederationClient,
    FederationServer,
    request_bytes,
)
from careledger.health.replay_guard import ReplayGuard
from careledger.health.service import HealthRecords
from careledger.health.share_links import Selection, ShareLinks
from careledger.health_links import jwe
from careledger.health_links.link import parse_uri
from careledger.node import Node
from careledger.smart.apps_service import AppsService
from careledger.wiring import NodeServices
from tests.support.nodes import demo_node
from tests.support.sources import FakeClock

NOW = 1_000_000_000  # 2001-09-09T01:46:40Z: far from the machine's clock
NOW_ISO = "2001-09-09T01:46:40Z"
NOW_MS = NOW * 1000


class RecordingRandom:
    """Distinct, predictable bytes (a SHA-256 counter stream), each draw remembered."""

    def __init__(self, seed: bytes = b"careledger") -> None:
        self.seed = seed
        self.draws: list[bytes] = []

    def token_bytes(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            count = len(self.draws) * 1000 + len(out)
            out += hashlib.sha256(self.seed + count.to_bytes(8, "big")).digest()
        self.draws.append(out[:n])
        return out[:n]


# -- federation: no node needed ----------------------------------------------------------------

KEY = KeyPair.from_seed(bytes(range(32)))


class _Ledger:
    chain = "demo"
    node_name = "pharmacy-node"
    node_key = KEY

    def state(self, namespace: str, key: str) -> dict[str, Any] | None:
        return {"status": "active", "endpoint": "https://st-mary.example/"}


class _Records:
    ledger = _Ledger()
    org = "st-mary"


def _asked(monkeypatch: pytest.MonkeyPatch, client: FederationClient) -> dict[str, Any]:
    """The body the client signs and posts for an ``everything`` request (answered empty)."""
    sent: list[tuple[str, bytes, dict[str, str]]] = []

    def post(url: str, *, content: bytes, headers: dict[str, str], timeout: float) -> Any:
        sent.append((url, content, headers))
        return httpx.Response(200, json={"resources": []})

    monkeypatch.setattr(federation.httpx, "post", post)
    caller = Caller("ph-chen-li", "city-pharmacy", frozenset({"pharmacist"}), ())
    found, missing = client.everything(caller, "pt-1", ["st-mary"], types=None, purpose="TREAT")
    assert (found, missing) == ([], [])
    ((url, content, headers),) = sent
    assert url == "https://st-mary.example/v1/federation/everything"
    body: dict[str, Any] = orjson.loads(content)
    signature = b64url_decode(headers[federation.SIGNATURE_HEADER])
    assert verify_signature(KEY.public_key, request_bytes("everything", body), signature)
    return body


def test_a_federation_request_carries_the_clock_time_and_a_nonce_from_the_random(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    random = RecordingRandom()
    client = FederationClient(_Records(), clock=FakeClock(NOW), random=random)  # type: ignore[arg-type]
    body = _asked(monkeypatch, client)
    (drawn,) = random.draws
    assert (body["time"], body["nonce"], len(drawn)) == (NOW_MS, drawn.hex(), 16)
    again = _asked(monkeypatch, client)
    assert again["nonce"] == random.draws[-1].hex() != body["nonce"]  # a fresh draw each time


def test_the_federation_server_judges_freshness_by_its_clock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    body = _asked(monkeypatch, FederationClient(_Records(), clock=FakeClock(NOW)))  # type: ignore[arg-type]
    guard = ReplayGuard(tmp_path / FEDERATION_NONCES_FILE, keep_ms=2 * MAX_AGE_MS)
    try:
        clock = FakeClock(NOW + 60)
        server = FederationServer(_Records(), guard, clock=clock)  # type: ignore[arg-type]
        server._fresh(body)  # 2001 by the server's clock too: fresh
        with closing(sqlite3.connect(tmp_path / FEDERATION_NONCES_FILE)) as conn:
            seen = conn.execute("SELECT nonce, at FROM seen").fetchall()
        assert seen == [(body["nonce"], NOW_MS + 60_000)]  # seen at the server's now
        with pytest.raises(Unauthorized) as replayed:
            server._fresh(body)
        assert replayed.value.code == "REPLAYED_REQUEST"
        late = {**body, "nonce": "f" * 32}
        clock.now = NOW + MAX_AGE_MS // 1000 + 1
        with pytest.raises(Unauthorized) as stale:
            server._fresh(late)
        assert stale.value.code == "STALE_REQUEST"
        by_machine = FederationServer(_Records(), guard)  # type: ignore[arg-type]
        with pytest.raises(Unauthorized) as machine:
            by_machine._fresh({**body, "nonce": "e" * 32})  # 2001 is stale by the system clock
        assert machine.value.code == "STALE_REQUEST"
    finally:
        guard.close()


def test_a_link_expiry_in_days_counts_from_the_given_clock() -> None:
    assert _expiry({"expires_in_days": 2}, FakeClock(NOW + 0.9)) == NOW + 2 * 86_400
    assert _expiry({"expires": 1234}, FakeClock(NOW)) == 1234
    assert _expiry({}, FakeClock(NOW)) is None


# -- on a demo node ------------------------------------------------------------------------------

LATER = 1_700_000_000  # 2023-11-14T22:13:20Z
LATER_ISO = "2023-11-14T22:13:20Z"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    data = tmp_path_factory.mktemp("sources") / "node"
    demo_node(data, with_supply=False)
    running = Node(Settings.load(data))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def records_with(node: Node) -> Iterator[Any]:
    made: list[HealthRecords] = []

    def build(clock: FakeClock, random: RecordingRandom) -> HealthRecords:
        records = HealthRecords.for_node(node, clock=clock, random=random)
        made.append(records)
        return records

    yield build
    for records in made:
        records.close()


def _patients(node: Node) -> list[str]:
    return sorted(p.stem for p in (node.settings.data_dir / "keys" / "patients").glob("*.key"))


def _clinician() -> Caller:
    roles = frozenset({"clinician"})
    return Caller("dr-ana-silva", "st-mary", roles, parse_scopes(default_scopes(roles)))


def _patient(patient: str) -> Caller:
    roles = frozenset({"patient"})
    return Caller(patient, "st-mary", roles, parse_scopes(default_scopes(roles)))


@pytest.mark.integration
def test_a_record_id_and_its_last_updated_come_from_the_records_sources(
    node: Node, records_with: Any
) -> None:
    random = RecordingRandom(b"records")
    records = records_with(FakeClock(LATER + 0.7), random)
    patient = _patients(node)[0]
    condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient}"},
                 "code": {"text": "injected sources"}}  # fmt: skip
    stored = records.create(_clinician(), condition, patient_of=patient_id)
    sixteen = [d for d in random.draws if len(d) == 16]
    assert sixteen and stored.record_id == sixteen[-1].hex()
    assert stored.resource["meta"]["lastUpdated"] == LATER_ISO
    assert stored.last_updated == LATER_ISO
    # the vault row is created by the same clock, so the node audit finds it after lastUpdated
    assert records.vault.store.get(stored.record_id).created == LATER_ISO
    assert records.read(_clinician(), "Condition", stored.record_id).resource == stored.resource


@pytest.mark.integration
def test_a_patient_pseudonym_comes_from_the_records_random(node: Node, records_with: Any) -> None:
    random = RecordingRandom(b"patients")
    records = records_with(FakeClock(LATER), random)
    pseudonym = records.register_patient(None)
    assert pseudonym == f"pt-{random.draws[0].hex()}" and len(random.draws[0]) == 8


@pytest.mark.integration
def test_a_consent_is_judged_at_the_records_clock(node: Node, records_with: Any) -> None:
    """Northside reads under the demo consent from its start, and not a millisecond before,
    by the records service's clock (the machine's would find it in force either way)."""
    state = node.ledger.state
    found = [
        (patient, entry)
        for patient in _patients(node)
        for key in node.ledger.store.state_keys(CONSENT, patient_consents_prefix(patient), 10)
        if (entry := state(CONSENT, consent_key(key.rsplit("/", 1)[1]))) is not None
        and entry["grantee"].get("org") == "northside-clinic"
    ]
    assert found, "the demo has a consent to Northside Clinic"
    patient, consent = found[0]
    roles = frozenset({"clinician"})
    reader = Caller("dr-ben-okafor", "northside-clinic", roles, parse_scopes(default_scopes(roles)))
    clock = FakeClock((consent["start"] - 1) / 1000)
    records = records_with(clock, RecordingRandom())
    with pytest.raises(Forbidden) as early:
        records.access_args(reader, patient, [], {"Condition"}, "read", "TREAT")
    assert early.value.code == "NO_CONSENT"
    clock.now = consent["start"] / 1000
    basis = records.access_args(reader, patient, [], {"Condition"}, "read", "TREAT")["basis"]
    assert basis["kind"] == "consent"


@pytest.mark.integration
def test_a_share_link_summary_is_dated_and_identified_by_the_link_sources(
    node: Node, records_with: Any
) -> None:
    records = records_with(FakeClock(LATER), RecordingRandom(b"records"))
    random = RecordingRandom(b"links")
    clock = FakeClock(NOW + 0.4)
    links = ShareLinks(records, node.settings.data_dir, clock=clock, random=random)
    try:
        patient = _patients(node)[0]
        origin = "https://node.example"
        made = {}
        for name, selection in (("summary", Selection((), summary=True)),
                                ("conditions", Selection(("Condition",))),):  # fmt: skip
            made[name] = links.create(_patient(patient), patient, origin=origin,
                                      selection=selection, flags="U", passcode=None,
                                      expires=None, label=None)  # fmt: skip
        payload = parse_uri(made["summary"]["shlink"])
        before = len(random.draws)
        sealed = links.direct(payload.url.rsplit("/", 1)[1], "Dr Jones", origin)
        (drawn,) = random.draws[before:]  # the summary's id, and nothing else
        document = orjson.loads(jwe.decrypt(sealed, payload.key)[0])
        assert document["type"] == "document"
        assert document["id"] == str(uuid.UUID(bytes=drawn, version=4))
        assert (document["timestamp"], document["entry"][0]["resource"]["date"]) == (
            NOW_ISO,
            NOW_ISO,
        )
        clock.now = NOW + 3600
        payload = parse_uri(made["conditions"]["shlink"])
        sealed = links.direct(payload.url.rsplit("/", 1)[1], "Dr Jones", origin)
        document = orjson.loads(jwe.decrypt(sealed, payload.key)[0])
        assert document["type"] == "collection"
        assert document["timestamp"] == "2001-09-09T02:46:40Z"
    finally:
        links.close()


@pytest.mark.integration
def test_a_client_secret_comes_from_the_apps_random(node: Node) -> None:
    random = RecordingRandom(b"apps")
    apps = AppsService(node, random=random)
    admin = Caller("st-mary-admin", "st-mary", frozenset({"admin"}), ())
    answer = apps.register(admin, {"client_id": "clock-billing", "name": "Clock billing",
                                   "kind": "confidential", "scopes": "user/*.rs",
                                   "redirect_uris": ["https://billing.example/cb"]})  # fmt: skip
    (drawn,) = random.draws
    assert answer["client_secret"] == b64url_encode(drawn) and len(drawn) == 32
    held = app_of(node.ledger.state, "clock-billing")
    assert held is not None
    assert held["secret_hash"] == hashlib.sha256(answer["client_secret"].encode()).hexdigest()


@pytest.mark.integration
@pytest.mark.slow
def test_node_services_hand_their_sources_to_the_health_services(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_supply=False)
    clock, random = FakeClock(LATER), RecordingRandom(b"wiring")
    services = NodeServices(Settings.load(data), clock=clock, random=random)
    services.start()
    try:
        assert (services.health.clock, services.health.random) == (clock, random)
        client = services.health.federation
        assert client is not None
        assert (client._clock, client._random) == (clock, random)
        assert services.federation._clock is clock
        before = len(random.draws)
        assert services.health.new_record_id() == random.draws[before].hex()
        admin = Caller("st-mary-admin", "st-mary", frozenset({"admin"}), ())
        answer = services.apps.register(admin, {"client_id": "wired-app", "name": "Wired",
                                                "kind": "confidential", "scopes": "user/*.rs",
                                                "redirect_uris": ["https://w.example/cb"]})  # fmt: skip
        assert answer["client_secret"] == b64url_encode(random.draws[-1])
    finally:
        services.close()
