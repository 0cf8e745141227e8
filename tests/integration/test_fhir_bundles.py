"""POST /fhir with transaction (atomic) and batch Bundles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.fhir.validate import SUPPORTED_TYPES
from careledger.keyfile import read_key_file
from careledger.sdk import Client
from tests.support.nodes import Server, demo_node, serving

pytestmark = pytest.mark.integration
SYNTHEA = Path(__file__).resolve().parents[2] / "src" / "careledger" / "demo_data" / "synthea"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("bundles") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    key = read_key_file(server.data_dir / "keys" / "dr-ana-silva.key")[1]
    with Client(server.url, keypair=key) as c:
        token = c.login()
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        yield client


def synthea_transaction() -> dict[str, Any]:
    bundle = json.loads(next(SYNTHEA.glob("Clemente*.json")).read_text())
    bundle["entry"] = [
        e for e in bundle["entry"] if e["resource"]["resourceType"] in SUPPORTED_TYPES - {"Consent"}
    ]
    return bundle


def post(http: httpx.Client, bundle: dict[str, Any]) -> httpx.Response:
    return http.post(
        "/fhir", content=json.dumps(bundle), headers={"content-type": "application/fhir+json"}
    )


def test_transaction_creates_everything_with_resolved_references(http: httpx.Client) -> None:
    bundle = synthea_transaction()
    response = post(http, bundle)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert len(result["entry"]) == len(bundle["entry"])
    assert all(e["response"]["status"] == "201 Created" for e in result["entry"])
    patient = next(
        e["resource"]["id"] for e in result["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    everything = http.get(f"/fhir/Patient/{patient}/$everything").json()
    # the patient's records match; the Organization and Practitioner they name come along
    directory = {"Organization", "Practitioner"}
    assert everything["total"] == len(bundle["entry"]) - 2
    modes = {
        e["resource"]["resourceType"]: e["search"]["mode"]
        for e in everything["entry"]
        if e["resource"]["resourceType"] in directory
    }
    assert modes == {"Organization": "include", "Practitioner": "include"}
    refs = {
        e["resource"]["subject"]["reference"]
        for e in everything["entry"]
        if "subject" in e["resource"]
    }
    assert refs == {f"Patient/{patient}"}
    # Every record of the transaction was anchored by one ledger transaction.
    anchors = {
        http.get(f"/fhir/{e['resource']['resourceType']}/{e['resource']['id']}").headers[
            "X-CareLedger-Anchor-Tx"
        ]
        for e in result["entry"][:5]
    }
    assert len(anchors) == 1


def test_transaction_is_all_or_nothing(http: httpx.Client) -> None:
    made = post(http, synthea_transaction()).json()
    patient = next(
        e["resource"]["id"] for e in made["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    obs = next(
        e["resource"] for e in made["entry"] if e["resource"]["resourceType"] == "Observation"
    )
    before = http.get(f"/fhir/Patient/{patient}/$everything").json()["total"]
    new_obs = {k: v for k, v in obs.items() if k not in ("id", "meta")}
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": new_obs,
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": obs,
                "request": {"method": "PUT", "url": f"Observation/{obs['id']}", "ifMatch": 'W/"7"'},
            },
        ],
    }
    refused = post(http, bad)
    assert refused.status_code == 409
    assert refused.headers["X-CareLedger-Code"] == "VERSION_CONFLICT"
    assert http.get(f"/fhir/Patient/{patient}/$everything").json()["total"] == before
    invalid = {
        **bad,
        "entry": [bad["entry"][0], {**bad["entry"][0], "resource": {**new_obs, "status": "bogus"}}],
    }
    refused = post(http, invalid)
    assert refused.status_code == 400
    assert "Bundle.entry[1].resource.Observation.status" in refused.text
    assert http.get(f"/fhir/Patient/{patient}/$everything").json()["total"] == before


def test_batch_entries_stand_alone(http: httpx.Client) -> None:
    made = post(http, synthea_transaction()).json()
    obs = next(
        e["resource"] for e in made["entry"] if e["resource"]["resourceType"] == "Observation"
    )
    new_obs = {k: v for k, v in obs.items() if k not in ("id", "meta")}
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": new_obs, "request": {"method": "POST", "url": "Observation"}},
            {
                "resource": {**new_obs, "status": "bogus"},
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": new_obs, "request": {"method": "DELETE", "url": "Observation/x"}},
            {"resource": new_obs, "request": {"method": "PATCH", "url": "Observation/x"}},
        ],
    }
    result = post(http, batch).json()
    statuses = [e["response"]["status"] for e in result["entry"]]
    # no record x; a PATCH entry's resource is a Binary holding the patch, not an Observation
    assert statuses == ["201 Created", "400", "404", "400"]
    assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert post(http, {"resourceType": "Patient"}).status_code == 400


def test_transaction_size_limit(http: httpx.Client) -> None:
    entry = synthea_transaction()["entry"][1]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry] * 251}
    refused = post(http, bundle)
    assert refused.status_code == 400
    assert refused.headers["X-CareLedger-Code"] == "BUNDLE_TOO_LARGE"
