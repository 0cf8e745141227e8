"""EPCIS capture and query over real HTTP: whole documents or nothing, anchored, queryable."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest

from careledger.keyfile import read_key_file
from careledger.sdk import Client
from careledger.supply.epcis_ops import location_gln
from careledger.supply.event_hash import document_event_hash_ids
from tests.support.nodes import Server, demo_node, serving
from tests.support.vectors import vector_path

pytestmark = pytest.mark.integration


def document(name: str, folder: str = "Documents") -> dict[str, Any]:
    return json.loads(vector_path("openepcis", "Capture", folder, name).read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("epcis") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


def client_for(server: Server, member: str) -> httpx.Client:
    key = read_key_file(server.data_dir / "keys" / f"{member}.key")[1]
    with Client(server.url, keypair=key) as c:
        token = c.login()
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=60
    )


@pytest.fixture(scope="module")
def maker(server: Server) -> Iterator[httpx.Client]:
    with client_for(server, "acme-admin") as http:
        yield http


def claim_sites(http: httpx.Client, doc: dict[str, Any]) -> None:
    """Register the document's locations to the capturing organisation: from ruleset r3 on, an
    event is anchored only by the organisation at whose location it happened."""
    for event in doc["epcisBody"]["eventList"]:
        gln = location_gln(event)
        if gln is not None:
            answer = http.post("/v1/supply/locations", json={"gln": gln, "name": "corpus site"})
            assert answer.is_success, answer.text


def capture(http: httpx.Client, doc: dict[str, Any]) -> dict[str, Any]:
    claim_sites(http, doc)
    response = http.post("/epcis/capture", content=json.dumps(doc))
    assert response.status_code == 202, response.text
    status = http.get(response.headers["Location"]).json()
    assert status == response.json()
    return status


def test_capture_anchors_and_serves_queries(server: Server, maker: httpx.Client) -> None:
    doc = document("ObjectEvent.json")
    status = capture(maker, doc)
    assert (status["success"], status["events"], status["errors"]) == (True, 2, [])
    with Client(server.url) as c:
        receipt = c.tx(status["ledgerTransaction"])["receipt"]
    assert receipt["result"] == "accepted"
    shipped = maker.get("/epcis/events", params={"EQ_bizStep": "shipping"}).json()
    events = shipped["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert events
    for hash_id in document_event_hash_ids(doc):  # every event's hash is anchored on the ledger
        anchored = maker.get(f"/v1/state/supply/event/{hash_id.split(';')[1][:64]}").json()
        assert anchored["value"]["capture"] == status["captureID"]
    assert all(e["bizStep"].endswith("shipping") for e in events)
    # A URN and the Digital Link of the same pack find the same events.
    urn = maker.get("/epcis/epcs/urn:epc:id:sgtin:0614141.107346.2017/events").json()
    link = maker.get(
        "/epcis/events", params={"MATCH_epc": "https://id.gs1.org/01/10614141073464/21/2017"}
    ).json()
    found = urn["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert found
    assert found == link["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    window = maker.get(
        "/epcis/events",
        params={"GE_eventTime": "2005-04-04T00:00:00Z", "LT_eventTime": "2005-04-05T00:00:00Z"},
    ).json()
    assert all(
        "2005-04-0" in e["eventTime"]
        for e in window["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    )


def test_a_document_is_captured_whole_or_not_at_all(maker: httpx.Client) -> None:
    doc = document("AggregationEvent.json")
    assert capture(maker, doc)["success"] is True
    again = capture(
        maker, doc
    )  # the same events again: refused by the ledger, nothing stored twice
    assert again["success"] is False
    assert again["errors"][0]["code"] == "DUPLICATE_EVENT"
    invalid = capture(
        maker, document("ObjectEvent_with_non_standard_bizStep_in_second_event.json", "Invalid")
    )
    assert invalid["success"] is False
    assert {(e["index"], e["code"]) for e in invalid["errors"]} == {(1, "UNKNOWN_BIZSTEP")}
    assert invalid["ledgerTransaction"] is None


def test_paging_and_access(server: Server, maker: httpx.Client) -> None:
    capture(maker, document("TransformationEvent.json"))
    first = maker.get("/epcis/events", params={"perPage": 1})
    body = first.json()
    assert len(body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 1
    assert 'rel="next"' in first.headers["Link"]
    second = maker.get(
        "/epcis/events", params={"perPage": 1, "nextPageToken": body["nextPageToken"]}
    ).json()
    assert (
        second["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
        != body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    )
    assert httpx.get(f"{server.url}/epcis/events").status_code == 401
    assert maker.get("/epcis/capture/nope").status_code == 404
    with client_for(server, "dr-ana-silva") as clinician:
        refused = clinician.post("/epcis/capture", content=json.dumps(document("ObjectEvent.json")))
        assert refused.status_code == 403


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"example:x": value}
    return value


def test_a_document_that_cannot_be_stored_is_not_anchored(
    server: Server, maker: httpx.Client
) -> None:
    """An extension nested 150 levels was committed on the ledger, answered 500, lost its body
    and left epcis.sqlite locked; now it is refused before the ledger and nothing is locked."""
    doc = document("ObjectEvent.json")
    doc["epcisBody"]["eventList"][0]["example:ext"] = nested(150)
    doc["@context"] = [*doc.get("@context", []), {"example": "https://example.com/x#"}]
    claim_sites(maker, doc)
    head = httpx.get(f"{server.url}/v1/head").json()["height"]
    posted = maker.post("/epcis/capture", content=json.dumps(doc))
    refused = maker.get(posted.headers["Location"]).json()
    assert refused["success"] is False and refused["ledgerTransaction"] is None
    assert refused["errors"][0]["code"] == "NESTING_TOO_DEEP"
    assert httpx.get(f"{server.url}/v1/head").json()["height"] == head  # nothing anchored
    fine = document("ObjectEvent.json")
    for i, item in enumerate(fine["epcisBody"]["eventList"]):  # new events, not seen before
        item["eventTime"] = f"2026-01-02T03:04:{i:02d}.000Z"
    stored = capture(maker, fine)
    assert stored["success"] is True, stored["errors"]  # the repository is not locked
    listed = maker.get("/epcis/events", params={"perPage": 500}).json()
    events = listed["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert all("example:ext" not in e for e in events)


def stored_rows(server: Server) -> tuple[int, int]:
    """How many captures (failed ones too) and events the node's EPCIS store holds."""
    path = server.data_dir / "epcis.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM captures), (SELECT COUNT(*) FROM events)"
        ).fetchone()
    return int(row[0]), int(row[1])


def test_a_document_with_ignore_fields_is_refused_before_anything_is_stored(
    server: Server, maker: httpx.Client
) -> None:
    """Capture hashed with the document's ignoreFields list while the ledger (r3 on) hashed every
    field: the stored row named a hash the ledger did not hold (and on r2 the submitter chose
    which fields the anchored hash covered). Such a document is now refused outright."""
    rx = {"repository-x": "https://repository-x.example.com/"}
    doc = document("ObjectEvent.json")
    doc["@context"] = [*doc["@context"], rx]
    for i, item in enumerate(doc["epcisBody"]["eventList"]):  # new events, not seen before
        item["eventTime"] = f"2026-02-03T04:05:{i:02d}.000Z"
        item["example:captureID"] = f"capture-{i}"
    claim_sites(maker, doc)
    window = {"GE_eventTime": "2026-02-03T00:00:00Z", "LT_eventTime": "2026-02-04T00:00:00Z"}
    full_hashes = document_event_hash_ids(doc)
    for where, key in [
        (doc, "repository-x:ignoreFields"),  # the one upstream's hash honours
        (doc, "ignoreFields"),
        (doc, "acme:ignoreFields"),
        (doc["epcisBody"].setdefault("queryResults", {}), "repository-x:ignoreFields"),
    ]:
        where[key] = ["example:captureID"]
        honoured = set(document_event_hash_ids(doc))
        head = httpx.get(f"{server.url}/v1/head").json()["height"]
        rows = stored_rows(server)
        refused = maker.post("/epcis/capture", content=json.dumps(doc))
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "location" not in refused.headers
        problem = refused.json()
        assert problem["code"] == "IGNORE_FIELDS_UNSUPPORTED"
        assert key in problem["detail"] and "re-hashes" in problem["detail"]
        assert httpx.get(f"{server.url}/v1/head").json()["height"] == head  # nothing anchored
        assert stored_rows(server) == rows  # not even a failed capture
        for hash_id in honoured | set(full_hashes):
            answer = maker.get(f"/v1/state/supply/event/{hash_id.split(';')[1][:64]}")
            assert answer.status_code == 404, answer.text
        found = maker.get("/epcis/events", params=window).json()
        assert found["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == []
        del where[key]
    del doc["epcisBody"]["queryResults"]
    stored = capture(maker, doc)  # without the member: captured, every field hashed
    assert stored["success"] is True, stored["errors"]
    for hash_id in full_hashes:
        anchored = maker.get(f"/v1/state/supply/event/{hash_id.split(';')[1][:64]}").json()
        assert anchored["value"]["capture"] == stored["captureID"]
