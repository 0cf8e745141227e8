"""Federated health records across a 3-node consortium (St Mary's holds the demo records).

City Pharmacy's pharmacist reads, through City Pharmacy's own node, a record St Mary's holds:
St Mary's node checks the consent on the ledger, commits the access event and answers; the
pharmacy's node checks the answer against the ledger anchor. Without consent it is refused;
with the custodian down, $everything is partial and says so.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from careledger.cluster.local import LocalCluster
from careledger.core.keys import b64url_encode
from careledger.errors import VerificationError
from careledger.health.federation import FederationClient, request_bytes
from careledger.keyfile import read_key_file
from careledger.ledger.engine import Ledger
from careledger.sdk import Client
from careledger.storage.sqlite import SQLiteStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster.create(tmp_path_factory.mktemp("fed") / "c", 3, with_demo_data=True)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def token(cluster: LocalCluster, url: str, member: str) -> httpx.Client:
    key = read_key_file(cluster.nodes[0].dir / "keys" / f"{member}.key")[1]
    with Client(url, keypair=key) as c:
        value = c.login()
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {value}"}, timeout=30)


_granted: dict[str, tuple[str, str, str]] = {}


def consented(cluster: LocalCluster) -> tuple[str, str, str]:
    """(a patient who lets City Pharmacy read everything for treatment, one of that patient's
    Observations, another patient with records and no such consent). The grant is signed with
    the patient's own key (St Mary's holds it for the demo patients) and committed once."""
    if "x" in _granted:
        return _granted["x"]
    st_mary = cluster.nodes[0]
    keys = st_mary.dir / "keys" / "patients"
    patients = sorted(p.name.split(".")[0] for p in keys.iterdir())
    with_obs = [p for p in patients if _records_of(cluster, p, "Observation")]
    patient, other = with_obs[0], with_obs[1]
    grant = {
        "grantee": {"org": "city-pharmacy"},
        "actions": ["read"],
        "resource_types": ["*"],
        "purposes": ["TREAT"],
    }
    with Client(st_mary.url, keypair=read_key_file(keys / f"{patient}.key")[1]) as client:
        assert client.call("consent", "grant", grant)["result"] == "accepted"
    record = _records_of(cluster, patient, "Observation")[0]
    _granted["x"] = (patient, record, other)
    return _granted["x"]


def test_a_record_is_read_through_the_readers_own_node(cluster: LocalCluster) -> None:
    _, pharmacy_node, _ = cluster.nodes
    patient, record, other = consented(cluster)
    with token(cluster, pharmacy_node.url, "ph-chen-li") as http:
        deadline = time.monotonic() + 20  # the grant reaches the pharmacy's node via the stream
        response = http.get(f"/fhir/Observation/{record}")
        while response.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            response = http.get(f"/fhir/Observation/{record}")
        assert response.status_code == 200
        assert response.json()["id"] == record
    # St Mary's committed the access event, naming the reader and the reader's organisation
    deadline = time.monotonic() + 20
    seen = False
    while time.monotonic() < deadline and not seen:
        entries = _accesses(pharmacy_node.dir, patient)
        seen = any(
            e["accessor"] == "ph-chen-li" and e["accessor_org"] == "city-pharmacy" for e in entries
        )
        time.sleep(0.2)
    assert seen, "no access event for the federated read"
    # without a consent, the custodian refuses, and the code comes back through the reader's node
    with token(cluster, pharmacy_node.url, "ph-chen-li") as http:
        others = _records_of(cluster, other, "Observation")
        refused = http.get(f"/fhir/Observation/{others[0]}")
        assert refused.status_code == 403
        assert refused.headers["X-CareLedger-Code"] in ("NO_CONSENT", "SCOPE")


def _accesses(node_dir: Path, patient: str) -> list[dict[str, Any]]:
    store = SQLiteStore(node_dir / "ledger.sqlite", readonly=True)
    try:
        keys = store.state_keys("audit", f"access/{patient}/", 10_000)
        return [orjson.loads(store.get_state("audit", k) or b"{}") for k in keys]
    finally:
        store.close()


def _store_records(cluster: LocalCluster, patient: str) -> list[str]:
    store = SQLiteStore(cluster.nodes[0].dir / "ledger.sqlite", readonly=True)
    try:
        return store.state_keys("records", f"patient/{patient}/", 10_000)
    finally:
        store.close()


def _records_of(cluster: LocalCluster, patient: str, kind: str) -> list[str]:
    store = SQLiteStore(cluster.nodes[0].dir / "ledger.sqlite", readonly=True)
    try:
        out = []
        for key in store.state_keys("records", f"patient/{patient}/", 10_000):
            entry = orjson.loads(store.get_state("records", key) or b"{}")
            if entry.get("type") == kind:
                out.append(key.rsplit("/", 1)[1])
        return out
    finally:
        store.close()


def test_node_requests_are_authenticated(cluster: LocalCluster) -> None:
    st_mary, pharmacy_node, _ = cluster.nodes
    _, record, _ = consented(cluster)
    key = read_key_file(cluster.nodes[0].dir / "keys" / "city-pharmacy-node.key")[1]

    def ask(
        body: dict[str, Any], node: str = "city-pharmacy-node", sign: Any = key
    ) -> httpx.Response:
        signature = b64url_encode(sign.sign(request_bytes("read", body)))
        return httpx.post(
            f"{st_mary.url}/v1/federation/read",
            content=orjson.dumps(body),
            headers={"X-CareLedger-Node": node, "X-CareLedger-Signature": signature},
            timeout=10,
        )

    def body(**over: Any) -> dict[str, Any]:
        base = {
            "reader": "ph-chen-li",
            "scopes": ["user/*.read"],
            "type": "Observation",
            "record": record,
            "purpose": "TREAT",
            "custodian": "st-mary",
            "chain": "careledger.demo",
            "time": time.time_ns() // 1_000_000,
            "nonce": secrets.token_hex(16),
        }
        return {**base, **over}

    good = body()
    assert ask(good).status_code == 200
    elsewhere = body(custodian="acme-pharma")  # addressed to another custodian
    refused = ask(elsewhere)
    assert (refused.status_code, refused.json()["code"]) == (401, "WRONG_AUDIENCE")
    replay = ask(good)
    assert (replay.status_code, replay.json()["code"]) == (401, "REPLAYED_REQUEST")
    stale = ask(body(time=time.time_ns() // 1_000_000 - 600_000))
    assert (stale.status_code, stale.json()["code"]) == (401, "STALE_REQUEST")
    forged = ask(body(), sign=read_key_file(cluster.nodes[0].dir / "keys" / "acme-node.key")[1])
    assert (forged.status_code, forged.json()["code"]) == (401, "BAD_SIGNATURE")
    not_a_node = ask(body(), node="ph-chen-li")
    assert (not_a_node.status_code, not_a_node.json()["code"]) == (401, "UNKNOWN_PEER")
    wrong_org = ask(
        body(reader="dr-ben-okafor")
    )  # a Northside clinician, asked for by the pharmacy
    assert (wrong_org.status_code, wrong_org.json()["code"]) == (403, "NOT_AUTHORISED")
    # an answer that does not match its ledger anchor is refused by the reader's node
    answer = ask(body()).json()["resources"][0]
    answer["resource"] = {**answer["resource"], "status": "cancelled"}
    store = SQLiteStore(pharmacy_node.dir / "ledger.sqlite", readonly=True)
    try:
        ledger = Ledger(store, node_name="x", node_key=key)

        class Records:
            pass

        records = Records()
        records.ledger = ledger  # type: ignore[attr-defined]
        client = FederationClient(records)  # type: ignore[arg-type]
        with pytest.raises(VerificationError) as tampered:
            client._verified("st-mary", answer)
        assert tampered.value.code == "REMOTE_TAMPERED"
    finally:
        store.close()
    # Replay protection survives a restart of the custodian's node (it forgot every nonce).
    st_mary.stop()
    st_mary.start()
    st_mary.wait_ready()
    after_restart = ask(good)
    assert (after_restart.status_code, after_restart.json()["code"]) == (401, "REPLAYED_REQUEST")


def test_everything_is_partial_when_a_custodian_is_down(cluster: LocalCluster) -> None:
    st_mary, pharmacy_node, _ = cluster.nodes
    patient, _, _ = consented(cluster)
    with token(cluster, pharmacy_node.url, "ph-chen-li") as http:
        whole = http.get(f"/fhir/Patient/{patient}/$everything").json()
        matches = [e for e in whole["entry"] if e["search"]["mode"] == "match"]
        assert len(matches) == len(_store_records(cluster, patient))
        sources = {x["valueString"] for e in matches for x in e["extension"]}
        assert sources == {"st-mary"}
        assert not [e for e in whole["entry"] if e["search"]["mode"] == "outcome"]
        st_mary.stop()
        try:
            bundle = http.get(f"/fhir/Patient/{patient}/$everything").json()
        finally:
            st_mary.start()
            st_mary.wait_ready()
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    issue = outcomes[0]["resource"]["issue"][0]
    assert issue["severity"] == "warning" and "st-mary" in issue["diagnostics"]
    assert issue["details"]["coding"][0]["code"] == "REMOTE_UNAVAILABLE"
