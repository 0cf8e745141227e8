"""Drug traceability over real HTTP: EPCIS captures move units; verification, recalls, suspects.

One node (uvicorn, SQLite), the demo organisations: Acme (manufacturer), Medline (distributor)
and City Pharmacy. Units are commissioned, packed, shipped, received and dispensed by EPCIS
documents, captured by each organisation's own member; every check reads the API's answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.supply.epcis_ops import location_gln
from tests.integration.test_epcis_api import client_for
from tests.support.nodes import Server, demo_node, run_cli, serving
from tests.support.vectors import vector_path
from tests.unit.contracts.test_supply import EXPIRY, GTIN, LOT, PREFIX, cd
from tests.unit.contracts.test_supply_epcis import (
    commissioning,
    object_event,
    pack,
    sgln,
    sgtin,
    shipping,
    sscc,
)

pytestmark = pytest.mark.integration

ACME_GLN = cd(PREFIX + "00001")
MEDLINE_GLN = cd("0361414" + "00002")
PHARMACY_GLN = cd("0361414" + "00003")
CASE = cd("0" + PREFIX + "000000101")
SERIALS = [f"P{i}" for i in range(8)]


def doc(*events: dict[str, Any]) -> dict[str, Any]:
    return {
        "@context": ["https://ref.gs1.org/standards/epcis/epcis-context.jsonld"],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2026-11-24T10:00:00.000Z",
        "epcisBody": {"eventList": list(events)},
    }


def at(event: dict[str, Any], gln: str) -> dict[str, Any]:
    return {**event, "bizLocation": {"id": sgln(gln)}}


def capture(http: httpx.Client, *events: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/epcis/capture", content=json.dumps(doc(*events)))
    assert response.status_code == 202, response.text
    return dict(response.json())


def captured(http: httpx.Client, *events: dict[str, Any]) -> None:
    status = capture(http, *events)
    assert status["success"] is True, status["errors"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("supply") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def acme(server: Server) -> Iterator[httpx.Client]:
    with client_for(server, "acme-admin") as http:
        yield http


@pytest.fixture(scope="module")
def medline(server: Server) -> Iterator[httpx.Client]:
    with client_for(server, "medline-admin") as http:
        yield http


@pytest.fixture(scope="module")
def pharmacy(server: Server) -> Iterator[httpx.Client]:
    with client_for(server, "ph-chen-li") as http:
        yield http


@pytest.fixture(scope="module")
def journey(
    acme: httpx.Client, medline: httpx.Client, pharmacy: httpx.Client, server: Server
) -> None:
    """Acme -> Medline -> City Pharmacy, by EPCIS documents only (after the set-up calls)."""
    assert acme.post("/v1/supply/prefixes", json={"prefix": PREFIX}).status_code == 201
    for http, gln, name in (
        (acme, ACME_GLN, "Acme plant"),
        (medline, MEDLINE_GLN, "Medline DC"),
        (pharmacy, PHARMACY_GLN, "City Pharmacy"),
    ):
        response = http.post("/v1/supply/locations", json={"gln": gln, "name": name})
        assert response.status_code == 201, response.text
    captured(
        acme,
        at(commissioning(SERIALS), ACME_GLN),
        pack(CASE, [sgtin(s) for s in SERIALS[:4]], ACME_GLN),
        shipping([sscc(CASE), *[sgtin(s) for s in SERIALS[4:]]], ACME_GLN, MEDLINE_GLN),
    )
    everything = [sscc(CASE), *[sgtin(s) for s in SERIALS[4:]]]
    captured(medline, object_event("receiving", "OBSERVE", everything, MEDLINE_GLN))
    captured(medline, shipping(everything, MEDLINE_GLN, PHARMACY_GLN))
    captured(
        pharmacy,
        object_event("receiving", "OBSERVE", everything, PHARMACY_GLN),
        pack(CASE, [], PHARMACY_GLN, "DELETE"),
        object_event("dispensing", "OBSERVE", [sgtin("P0")], PHARMACY_GLN),
    )


def unit(http: httpx.Client, serial: str) -> dict[str, Any]:
    response = http.get(f"/v1/supply/units/{GTIN}/{serial}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_epcis_captures_move_units_along_the_chain(journey: None, pharmacy: httpx.Client) -> None:
    assert unit(pharmacy, "P0")["status"] == "dispensed"
    p1 = unit(pharmacy, "P1")
    assert (p1["owner"], p1["holder_location"], p1["status"], p1["parent"]) == (
        "city-pharmacy",
        PHARMACY_GLN,
        "received",
        None,
    )
    stock = pharmacy.get("/v1/supply/inventory", params={"gtin": GTIN}).json()
    assert stock["locations"] == [
        {"gtin": GTIN, "gln": PHARMACY_GLN, "org": "city-pharmacy", "quantity": 7}
    ]
    assert stock["totals"] == [{"gtin": GTIN, "quantity": 7}]
    by_place = pharmacy.get("/v1/supply/inventory", params={"location": ACME_GLN}).json()
    assert by_place["locations"] == []


def test_a_second_dispense_is_refused_and_alerted(
    journey: None, pharmacy: httpx.Client, acme: httpx.Client, medline: httpx.Client
) -> None:
    twice = object_event("dispensing", "OBSERVE", [sgtin("P0")], PHARMACY_GLN)
    seen = object_event("storing", "OBSERVE", [sgtin("P1")], PHARMACY_GLN)
    status = capture(pharmacy, seen, twice)
    assert status["success"] is False
    (error,) = status["errors"]
    assert (error["index"], error["code"]) == (1, "ALREADY_DISPENSED")
    assert error["message"].startswith("event 1: ")
    # the refused document's events are not queryable
    found = pharmacy.get("/epcis/events", params={"EQ_bizStep": "storing"}).json()
    assert found["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == []
    alerts = acme.get("/v1/supply/alerts", params={"kind": "dispensed_twice"}).json()["items"]
    assert [(a["serial"], a["org"], a["location"]) for a in alerts] == [
        ("P0", "city-pharmacy", PHARMACY_GLN)
    ]
    assert medline.get("/v1/supply/alerts").json()["items"] == []  # not theirs to see
    bad = acme.get("/v1/supply/alerts", params={"kind": "bogus"})
    assert (bad.status_code, bad.json()["code"]) == (400, "BAD_ALERT_KIND")


def test_dscsa_verification_answers_and_logs(
    journey: None, server: Server, pharmacy: httpx.Client, acme: httpx.Client
) -> None:
    path = f"/v1/supply/verify/01/{GTIN}/21/P1"
    ok = pharmacy.get(path, params={"10": LOT, "17": EXPIRY, "corrUUID": "c-1"}).json()
    assert ok["data"] == {"verified": True}
    assert ok["corrUUID"] == "c-1" and ok["responderGLN"] == ACME_GLN
    serial_only = pharmacy.get(path).json()["data"]  # a copied label carries GTIN and serial
    assert serial_only == {
        "verified": False,
        "verificationFailureReason": "No_match_GTIN_Serial_Lot_Expiry",
    }
    wrong_lot = httpx.get(f"{server.url}{path}", params={"10": "OTHER", "17": EXPIRY}).json()
    assert wrong_lot["data"] == {
        "verified": False,
        "verificationFailureReason": "No_match_GTIN_Serial_Lot",
    }
    link = f"https://id.gs1.org/01/{GTIN}/21/NOPE?10={LOT}&17={EXPIRY}"
    unknown = httpx.get(f"{server.url}/v1/supply/verify", params={"link": link}).json()
    assert unknown["data"]["verificationFailureReason"] == "No_match_GTIN_Serial"
    body = {"gtin": GTIN, "serialNumber": "P2", "lotNumber": LOT, "expirationDate": EXPIRY}
    assert pharmacy.post("/v1/supply/verify", json=body).json()["data"]["verified"] is True
    bad_digit = GTIN[:-1] + str((int(GTIN[-1]) + 1) % 10)
    refused = httpx.get(f"{server.url}/v1/supply/verify/01/{bad_digit}/21/P1")
    assert refused.status_code == 400 and refused.json()["code"] == "BAD_CHECK_DIGIT"
    extra = pharmacy.post("/v1/supply/verify", json={**body, "patient": "x"})
    assert extra.status_code == 400
    # a bad token is refused, not treated as anonymous
    forged = httpx.get(f"{server.url}{path}", headers={"authorization": "Bearer nope"})
    assert forged.status_code == 401
    log = acme.get("/v1/supply/verifications", params={"gtin": GTIN}).json()["items"]
    assert {(v["serialNumber"], v["requester"], v["verified"]) for v in log} >= {
        ("P1", "ph-chen-li", True),
        ("P1", "anonymous", False),
        ("NOPE", "anonymous", False),
    }
    mine = pharmacy.get("/v1/supply/verifications").json()["items"]
    assert {v["requester"] for v in mine} == {"ph-chen-li"}


def test_verifying_a_decommissioned_pack_raises_an_alert(
    journey: None, pharmacy: httpx.Client, acme: httpx.Client
) -> None:
    captured(
        pharmacy,
        object_event(
            "decommissioning", "DELETE", [sgtin("P7")], PHARMACY_GLN, disposition="damaged"
        ),
    )
    assert unit(pharmacy, "P7")["reason"] == "damaged"
    full = {"10": LOT, "17": EXPIRY}  # all four identifiers: GTIN and serial alone never verify
    answer = pharmacy.get(f"/v1/supply/verify/01/{GTIN}/21/P7", params=full).json()
    assert answer["data"]["verified"] is False
    dispensed = pharmacy.get(f"/v1/supply/verify/01/{GTIN}/21/P0", params=full).json()["data"]
    assert dispensed == {"verified": False, "verificationFailureReason": "No_reason_provided"}
    alerts = acme.get("/v1/supply/alerts", params={"kind": "verified_after_decommission"})
    assert [(a["serial"], a["org"], a["detail"]["status"]) for a in alerts.json()["items"]] == [
        ("P7", "city-pharmacy", "decommissioned"),
        ("P0", "city-pharmacy", "dispensed"),
    ]


def test_recall_lists_holders_by_gln_and_tracks_closure(
    journey: None,
    server: Server,
    acme: httpx.Client,
    pharmacy: httpx.Client,
    medline: httpx.Client,
) -> None:
    start = httpx.get(f"{server.url}/v1/head").json()["header"]["height"]
    assert (
        pharmacy.post(
            "/v1/supply/recalls", json={"gtin": GTIN, "lots": [LOT], "reason": "x"}
        ).status_code
        == 403
    )
    refused = medline.post("/v1/supply/recalls", json={"gtin": GTIN, "lots": [LOT], "reason": "x"})
    assert (refused.status_code, refused.json()["code"]) == (422, "NOT_PREFIX_OWNER")
    response = acme.post(
        "/v1/supply/recalls", json={"gtin": GTIN, "lots": [LOT], "reason": "particulates"}
    )
    assert response.status_code == 201, response.text
    recall = response.json()
    open_units = 6  # 8, less P0 dispensed and P7 decommissioned
    assert recall["holders"] == {PHARMACY_GLN: {"org": "city-pharmacy", "quantity": open_units}}
    assert recall["current_holders"] == recall["holders"]
    # the holder hears of it: a recall notice event names its GLN
    with client_for(server, "city-pharmacy-admin") as holder:  # its admin reads the events
        stream = holder.get(
            "/v1/events", params={"from_height": start, "follow": "false"}, timeout=30
        ).text
    notices = [
        json.loads(line[6:])["data"]
        for line in stream.splitlines()
        if line.startswith("data: ") and '"supply.recall_notice"' in line
    ]
    assert [(n["gln"], n["quantity"]) for n in notices] == [(PHARMACY_GLN, open_units)]
    assert unit(pharmacy, "P1")["flags"] == ["recalled"]
    refusal = pharmacy.post(
        f"/v1/supply/units/{GTIN}/P1/suspect", json={"reason": "recalled stock"}
    )
    assert refusal.status_code == 200
    captured(pharmacy, object_event("destroying", "OBSERVE", [sgtin("P2")], PHARMACY_GLN))
    later = acme.get(response.headers["Location"]).json()
    assert later["open_units"] == open_units - 2  # P1 quarantined, P2 destroyed
    assert later["closed_units"] == 4
    # a recalled pack is "verified" as the standard says, and the verdict says do not dispense
    checked = pharmacy.get(
        f"/v1/supply/verify/01/{GTIN}/21/P4", params={"10": LOT, "17": EXPIRY, "explain": "true"}
    ).json()
    assert checked["data"] == {"verified": True, "additionalInfo": "Recalled"}
    assert checked["verdict"]["dispense"] is False
    assert checked["verdict"]["reason"].startswith("Recalled by Acme Pharmaceuticals on ")
    assert checked["verdict"]["reason"].endswith(f"lot {LOT}.")
    plain = pharmacy.get(f"/v1/supply/verify/01/{GTIN}/21/P4", params={"10": LOT, "17": EXPIRY})
    assert "verdict" not in plain.json()  # the standard answer stays as it is unless asked
    link = f"https://id.gs1.org/01/{GTIN}/21/P4?10={LOT}&17={EXPIRY}"
    cli = run_cli("product", "verify", link, "--url", server.url)
    assert cli.returncode == 1 and "DO NOT DISPENSE" in cli.stdout and "Recalled by" in cli.stdout
    dispensed = pharmacy.get(
        f"/v1/supply/verify/01/{GTIN}/21/P0", params={"10": LOT, "17": EXPIRY, "explain": "true"}
    ).json()["verdict"]
    assert not dispensed["dispense"] and "already dispensed on" in dispensed["reason"]


def test_suspect_workflow_with_the_notification_deadline(
    journey: None, pharmacy: httpx.Client, acme: httpx.Client, medline: httpx.Client
) -> None:
    base = f"/v1/supply/units/{GTIN}/P3"
    step = pharmacy.post(f"{base}/suspect", json={"reason": "label misprint"})
    assert step.status_code == 200, step.text
    assert "suspect" in step.json()["unit"]["flags"]
    assert pharmacy.post(f"{base}/investigation", json={"note": "photos sent"}).status_code == 200
    refused = medline.post(f"{base}/investigation", json={"note": "x"})
    assert (refused.status_code, refused.json()["code"]) == (403, "NOT_AUTHORISED")
    bad = pharmacy.post(f"{base}/determination", json={"determination": "maybe"})
    assert bad.status_code == 400
    assert pharmacy.post(f"{base}/determination", json={"determination": "illegitimate"}).is_success
    cases = {c["serial"]: c for c in acme.get("/v1/supply/suspects").json()["items"]}
    case = cases["P3"]
    assert case["stage"] == "illegitimate" and case["overdue"] is False and "notify_by" in case
    assert [n["note"] for n in case["notes"]] == ["photos sent"]
    verify = pharmacy.get(
        f"/v1/supply/verify/01/{GTIN}/21/P3", params={"10": LOT, "17": EXPIRY}
    ).json()["data"]
    assert verify == {"verified": False, "additionalInfo": "Illegitimate"}
    assert pharmacy.post(f"{base}/notification", json={"reference": "FDA-3911"}).is_success
    open_cases = acme.get("/v1/supply/suspects", params={"open": "true"}).json()["items"]
    assert "P3" not in {c["serial"] for c in open_cases}
    alerts = acme.get("/v1/supply/alerts", params={"kind": "illegitimate"}).json()["items"]
    assert [a["serial"] for a in alerts] == ["P3"]


def test_roles_and_bad_input(journey: None, server: Server) -> None:
    with client_for(server, "dr-ana-silva") as clinician:
        assert clinician.get("/v1/supply/inventory").status_code == 403
        assert clinician.get("/v1/supply/alerts").status_code == 403
    assert httpx.get(f"{server.url}/v1/supply/alerts").status_code == 401
    with client_for(server, "acme-admin") as acme:
        missing = acme.get(f"/v1/supply/units/{GTIN}/NOPE")
        assert (missing.status_code, missing.json()["code"]) == (404, "UNKNOWN_SERIAL")
        assert acme.get("/v1/supply/recalls/" + "0" * 64).status_code == 404
        bad_gln = acme.post("/v1/supply/locations", json={"gln": "1234567890123", "name": "x"})
        assert bad_gln.status_code == 400


def test_cli_capture_and_verify(
    journey: None, server: Server, tmp_path: Path, acme: httpx.Client
) -> None:
    key = str(server.data_dir / "keys" / "acme-admin.key")
    fresh = tmp_path / "commission.json"
    fresh.write_text(json.dumps(doc(at(commissioning(["CLI1", "CLI2"]), ACME_GLN))))
    done = run_cli("epcis", "capture", str(fresh), "--key", key, "--url", server.url, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["success"] is True
    # A standards example naming a serial of Acme's prefix that was never commissioned here.
    corpus = vector_path("openepcis", "Capture", "Documents", "ObjectEvent.json")
    for event in json.loads(corpus.read_text())["epcisBody"]["eventList"]:  # Acme's sites (r3)
        site = {"gln": location_gln(event), "name": "corpus site"}
        assert acme.post("/v1/supply/locations", json=site).is_success
    refused = run_cli("epcis", "capture", str(corpus), "--key", key, "--url", server.url)
    assert refused.returncode == 1
    assert "UNKNOWN_SERIAL" in refused.stdout and "refused" in refused.stdout
    ghosts = acme.get("/v1/supply/alerts", params={"kind": "never_commissioned"}).json()
    assert "2017" in {a["serial"] for a in ghosts["items"]}
    missing = run_cli("epcis", "capture", str(tmp_path / "nope.json"), "--key", key)
    assert missing.returncode == 2 and "BAD_FILE" in missing.stderr
    link = f"https://id.gs1.org/01/{GTIN}/21/CLI1?10={LOT}&17={EXPIRY}"
    ok = run_cli("product", "verify", link, "--url", server.url)
    assert ok.returncode == 0 and "OK TO DISPENSE" in ok.stdout
    as_json = run_cli("product", "verify", link, "--url", server.url, "--key", key, "--json")
    assert json.loads(as_json.stdout)["data"] == {"verified": True}
    fake = run_cli("product", "verify", link.replace("CLI1", "FAKE9"), "--url", server.url)
    assert fake.returncode == 1 and "No_match_GTIN_Serial" in fake.stdout
    bad = run_cli(
        "product", "verify", f"https://id.gs1.org/01/{GTIN[:-1]}0/21/X", "--url", server.url
    )
    assert bad.returncode == 2 and "BAD_CHECK_DIGIT" in bad.stderr


def test_narrowed_tokens_cannot_write_and_anonymous_checks_raise_no_alerts(
    journey: None, server: Server, acme: httpx.Client, pharmacy: httpx.Client
) -> None:
    from careledger.keyfile import read_key_file
    from careledger.sdk import Client

    key = read_key_file(server.data_dir / "keys" / "acme-admin.key")[1]
    with Client(server.url, keypair=key) as client:
        narrow = client.login(scope="user/Observation.read")
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {narrow}"}) as http:
        recall = http.post("/v1/supply/recalls", json={"gtin": GTIN, "lots": [LOT], "reason": "x"})
        assert (recall.status_code, recall.json()["code"]) == (403, "SCOPE")
        refused = http.post("/epcis/capture", content=json.dumps(doc(commissioning(["Z9"]))))
        assert (refused.status_code, refused.json()["code"]) == (403, "SCOPE")
        assert http.get("/epcis/events").status_code == 403
    kind = {"kind": "verified_after_decommission"}
    before = acme.get("/v1/supply/alerts", params=kind).json()["items"]
    anonymous = httpx.get(f"{server.url}/v1/supply/verify/01/{GTIN}/21/P0").json()
    assert anonymous["data"]["verified"] is False
    assert acme.get("/v1/supply/alerts", params=kind).json()["items"] == before
    blamed = pharmacy.get(f"/v1/supply/verify/01/{GTIN}/21/P0", params={"reqGLN": MEDLINE_GLN})
    assert blamed.status_code == 200
    latest = acme.get("/v1/supply/alerts", params=kind).json()["items"][-1]
    assert latest["org"] == "city-pharmacy" and latest["location"] is None  # not Medline's site
