"""The FHIR HTTP details over real HTTP (issue 16): Prefer, absolute Location, HTTP-date
Last-Modified, conditional reads and updates with weak and strong ETags, 406, 405 with Allow,
DELETE as crypto-shredding and 410 Gone afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from tests.support.nodes import Server, demo_node, login, serving

pytestmark = pytest.mark.integration
FHIR = {"content-type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("fhir-http") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def clinician(server: Server) -> Iterator[httpx.Client]:
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as http:
        yield http


def make(http: httpx.Client, resource: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource),
        headers={**FHIR, **headers},
    )


def test_prefer_location_and_last_modified(server: Server, clinician: httpx.Client) -> None:
    minimal = make(
        clinician, {"resourceType": "Patient", "gender": "other"}, prefer="return=minimal"
    )
    assert minimal.status_code == 201 and minimal.content == b""
    location = minimal.headers["location"]
    assert location.startswith(f"{server.url}/fhir/Patient/") and "/_history/1" in location
    modified = parsedate_to_datetime(minimal.headers["last-modified"])
    assert modified.tzinfo is not None
    outcome = make(
        clinician, {"resourceType": "Patient", "gender": "other"}, prefer="return=OperationOutcome"
    )
    assert outcome.json()["resourceType"] == "OperationOutcome"
    full = make(clinician, {"resourceType": "Patient", "gender": "other"})
    assert full.json()["resourceType"] == "Patient"


def test_conditional_read_and_update(server: Server, clinician: httpx.Client) -> None:
    made = make(clinician, {"resourceType": "Patient", "gender": "female"}).json()
    url = f"/fhir/Patient/{made['id']}"
    assert clinician.get(url, headers={"if-none-match": 'W/"1"'}).status_code == 304
    assert clinician.get(url, headers={"if-none-match": '"1"'}).status_code == 304  # strong
    assert clinician.get(url, headers={"if-none-match": 'W/"7"'}).status_code == 200
    # another organisation's clinician, with no consent, learns nothing from a guessed version
    with login(server, server.data_dir / "keys" / "dr-ben-okafor.key") as stranger:
        probe = stranger.get(url, headers={"if-none-match": 'W/"1"'})
        assert probe.status_code == 403, probe.text
        assert stranger.get(url, headers={"if-none-match": 'W/"7"'}).status_code == 403
    body = json.dumps({**made, "gender": "male"})
    updated = clinician.put(url, content=body, headers={**FHIR, "if-match": '"1"'})
    assert updated.status_code == 200 and updated.headers["etag"] == 'W/"2"'
    stale = clinician.put(url, content=body, headers={**FHIR, "if-match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"
    bad = clinician.put(url, content=body, headers={**FHIR, "if-match": "yesterday"})
    assert bad.status_code == 400


def test_xml_is_not_acceptable_and_405_says_what_is_allowed(clinician: httpx.Client) -> None:
    xml = clinician.get("/fhir/metadata", headers={"accept": "application/fhir+xml"})
    assert xml.status_code == 406 and xml.json()["resourceType"] == "OperationOutcome"
    assert clinician.get("/fhir/metadata", headers={"accept": "*/*"}).status_code == 200
    posted = clinician.post("/fhir/Patient/whatever", content=b"{}")
    assert posted.status_code == 405
    allowed = {m.strip() for m in posted.headers["allow"].split(",")}
    assert {"GET", "PUT", "DELETE", "PATCH"} <= allowed


def test_delete_erases_and_a_later_read_is_gone(server: Server, clinician: httpx.Client) -> None:
    made = make(clinician, {"resourceType": "Patient", "gender": "female"}).json()
    pid = made["id"]
    note = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "note"},
        "subject": {"reference": f"Patient/{pid}"},
    }
    oid = make(clinician, note).json()["id"]
    refused = clinician.delete(f"/fhir/Observation/{oid}")  # only the patient erases here
    assert refused.status_code == 403
    with login(server, server.data_dir / "keys" / "patients" / f"{pid}.key") as patient:
        erased = patient.delete(f"/fhir/Observation/{oid}")
        assert erased.status_code == 200, erased.text
        assert erased.json()["resourceType"] == "OperationOutcome"
        gone = patient.get(f"/fhir/Observation/{oid}")
        assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
        again = patient.delete(f"/fhir/Observation/{oid}")
        assert again.status_code == 410


def test_json_patch(clinician: httpx.Client) -> None:
    made = make(clinician, {"resourceType": "Patient", "gender": "female"}).json()
    url = f"/fhir/Patient/{made['id']}"
    patch = {"content-type": "application/json-patch+json"}
    ops = [{"op": "replace", "path": "/gender", "value": "male"},
           {"op": "add", "path": "/birthDate", "value": "1970-01-01"}]  # fmt: skip
    done = clinician.patch(url, content=json.dumps(ops), headers={**patch, "if-match": 'W/"1"'})
    assert done.status_code == 200, done.text
    assert done.json()["gender"] == "male" and done.json()["meta"]["versionId"] == "2"
    stale = clinician.patch(url, content=json.dumps(ops), headers={**patch, "if-match": 'W/"1"'})
    assert stale.status_code == 412
    failing = [{"op": "test", "path": "/gender", "value": "secret-value-zq"}]
    refused = clinician.patch(url, content=json.dumps(failing), headers=patch)
    assert refused.status_code == 422 and "secret-value-zq" not in refused.text
    renamed = clinician.patch(
        url, content=json.dumps([{"op": "replace", "path": "/id", "value": "x"}]), headers=patch
    )
    assert renamed.status_code == 422
    invalid = clinician.patch(
        url,
        content=json.dumps([{"op": "replace", "path": "/gender", "value": "bogus"}]),
        headers=patch,
    )
    assert invalid.status_code == 400  # the patched resource must still be valid R4
    wrong = clinician.patch(url, content=json.dumps(ops), headers=FHIR)
    assert wrong.status_code == 415


def test_validate_operation(clinician: httpx.Client) -> None:
    good = {"resourceType": "Patient", "gender": "female"}
    ok = clinician.post("/fhir/Patient/$validate", content=json.dumps(good), headers=FHIR)
    assert ok.status_code == 200 and ok.json()["issue"][0]["severity"] == "information"
    bad = clinician.post(
        "/fhir/Patient/$validate",
        content=json.dumps({"resourceType": "Patient", "gender": "bogus"}),
        headers=FHIR,
    )
    assert bad.status_code == 200
    assert [i["expression"] for i in bad.json()["issue"]] == [["Patient.gender"]]
    wrapped = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": good}]}
    assert (
        clinician.post("/fhir/Patient/$validate", content=json.dumps(wrapped), headers=FHIR).json()[
            "issue"
        ][0]["severity"]
        == "information"
    )


def test_validate_an_update_or_an_erasure_of_one_resource(
    server: Server, clinician: httpx.Client
) -> None:
    """Instance $validate (issue 16): mode=update checks the resource as an update of this
    record and that the caller may make it; mode=delete whether the caller may erase it, and a
    record they may not erase is not found (its existence is not told)."""
    pid = make(clinician, {"resourceType": "Patient", "gender": "male"}).json()["id"]
    note = {"resourceType": "Observation", "status": "final", "code": {"text": "note"},
            "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    oid = make(clinician, note).json()["id"]
    url = f"/fhir/Observation/{oid}/$validate"
    ok = clinician.post(url, content=json.dumps({**note, "id": oid}), headers=FHIR)
    assert ok.status_code == 200 and ok.json()["issue"][0]["severity"] == "information"
    moved = clinician.post(url, content=json.dumps({**note, "id": "another"}), headers=FHIR)
    assert [i["expression"] for i in moved.json()["issue"]] == [["Observation.id"]]
    bad = clinician.post(url, content=json.dumps({**note, "status": "bogus"}), headers=FHIR)
    assert bad.json()["issue"][0]["severity"] == "error"
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "update"}, {"name": "resource", "resource": note}]}  # fmt: skip
    assert clinician.post(url, content=json.dumps(params), headers=FHIR).status_code == 200
    unknown = clinician.post("/fhir/Observation/nope/$validate", content=json.dumps(note),
                             headers=FHIR)  # fmt: skip
    assert unknown.status_code == 404
    assert clinician.post(f"{url}?mode=delete", headers=FHIR).status_code == 404  # not theirs
    assert clinician.post(f"{url}?mode=create", headers=FHIR).status_code == 400
    with login(server, server.data_dir / "keys" / "patients" / f"{pid}.key") as patient:
        may = patient.post(f"{url}?mode=delete", headers=FHIR)
        assert may.status_code == 200, may.text
        assert may.json()["issue"][0]["severity"] == "information"
        assert patient.post(url, content=json.dumps(note), headers=FHIR).status_code == 403
    assert clinician.get(f"/fhir/Observation/{oid}").status_code == 200  # nothing changed


def test_update_as_create_under_the_clients_id(clinician: httpx.Client) -> None:
    """A PUT to an id nobody holds creates the record under that id (201, FHIR's updateCreate,
    as HAPI allows client-assigned ids); a Patient's id is its ledger pseudonym, never chosen;
    an id another record holds is refused by the ledger, not overwritten."""
    import uuid

    pid = make(clinician, {"resourceType": "Patient", "gender": "other"}).json()["id"]
    chosen = f"client-{uuid.uuid4().hex[:12]}"
    note = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
            "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    made = clinician.put(f"/fhir/Observation/{chosen}", content=json.dumps(note), headers=FHIR)
    assert made.status_code == 201, made.text
    assert made.headers["location"].endswith(f"/fhir/Observation/{chosen}/_history/1")
    assert made.json()["id"] == chosen and made.json()["meta"]["versionId"] == "1"
    again = clinician.put(f"/fhir/Observation/{chosen}", content=json.dumps(note), headers=FHIR)
    assert again.status_code == 200 and again.json()["meta"]["versionId"] == "2"
    patient = {"resourceType": "Patient", "gender": "other"}
    refused = clinician.put(f"/fhir/Patient/{chosen}-p", content=json.dumps(patient), headers=FHIR)
    assert refused.status_code == 400
    condition = {"resourceType": "Condition", "code": {"text": "x"},
                 "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    taken = clinician.put(f"/fhir/Condition/{chosen}", content=json.dumps(condition), headers=FHIR)
    assert taken.status_code in (404, 409, 422), taken.text  # an Observation holds that id
    assert clinician.get(f"/fhir/Observation/{chosen}").json()["meta"]["versionId"] == "2"
    statement = clinician.get("/fhir/metadata").json()["rest"][0]["resource"]
    by_type = {r["type"]: r for r in statement}
    assert by_type["Observation"]["updateCreate"] is True
    assert by_type["Patient"]["updateCreate"] is False


def test_the_capability_statement_is_a_strict_r4_resource(clinician: httpx.Client) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    statement = clinician.get("/fhir/metadata").json()
    get_fhir_model_class("CapabilityStatement").model_validate(statement)
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {i["code"] for i in patient["interaction"]} >= {"read", "patch", "delete", "create"}
    assert patient["conditionalCreate"] is True


def test_batch_reads_searches_erases_and_writes(server: Server, clinician: httpx.Client) -> None:
    pid = make(clinician, {"resourceType": "Patient", "gender": "female"}).json()["id"]
    note = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "note"},
        "subject": {"reference": f"Patient/{pid}"},
    }
    oid = make(clinician, note).json()["id"]
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={pid}&status=final"}},
            {"request": {"method": "GET", "url": "Observation?colour=red"}},
            {"request": {"method": "POST", "url": "Observation"}, "resource": note},
        ],
    }
    answer = clinician.post("/fhir", content=json.dumps(batch), headers=FHIR).json()
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses[0] == "200 OK" and answer["entry"][0]["resource"]["id"] == pid
    assert answer["entry"][1]["resource"]["total"] == 1
    assert statuses[2] == "400" and statuses[3] == "201 Created"
    erase = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "DELETE", "url": f"Observation/{oid}"}}],
    }
    with login(server, server.data_dir / "keys" / "patients" / f"{pid}.key") as patient:
        erased = patient.post("/fhir", content=json.dumps(erase), headers=FHIR).json()
        assert erased["entry"][0]["response"]["status"] == "200 OK"
        assert patient.get(f"/fhir/Observation/{oid}").status_code == 410
    in_transaction = {**erase, "type": "transaction"}
    refused = clinician.post("/fhir", content=json.dumps(in_transaction), headers=FHIR)
    assert refused.status_code == 400


def test_conditional_update_updates_the_one_match_or_creates(clinician: httpx.Client) -> None:
    mrn = {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-CU-1"}
    body = {"resourceType": "Patient", "identifier": [mrn], "gender": "female"}
    query = f"identifier={mrn['system']}|{mrn['value']}"
    made = clinician.put(f"/fhir/Patient?{query}", content=json.dumps(body), headers=FHIR)
    assert made.status_code == 201, made.text  # nothing matched: created
    pid = made.json()["id"]
    again = clinician.put(f"/fhir/Patient?{query}",
                          content=json.dumps({**body, "gender": "other"}), headers=FHIR)  # fmt: skip
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["meta"]["versionId"]) == (pid, "2")
    assert clinician.get(f"/fhir/Patient/{pid}").json()["gender"] == "other"
    stale = clinician.put(f"/fhir/Patient?{query}", content=json.dumps(body),
                          headers={**FHIR, "if-match": 'W/"1"'})  # fmt: skip
    assert stale.status_code == 412
    wrong_id = clinician.put(f"/fhir/Patient?{query}",
                             content=json.dumps({**body, "id": "someone-else"}), headers=FHIR)  # fmt: skip
    assert wrong_id.status_code == 400
    # two matches: 412, nothing written
    twin = make(clinician, body).json()["id"]
    both = clinician.put(f"/fhir/Patient?{query}", content=json.dumps(body), headers=FHIR)
    assert both.status_code == 412
    assert both.headers["x-careledger-code"] == "MULTIPLE_MATCHES"
    assert clinician.get(f"/fhir/Patient/{twin}").json()["meta"]["versionId"] == "1"
    assert clinician.put("/fhir/Patient", content=json.dumps(body), headers=FHIR).status_code == 400
    statement = clinician.get("/fhir/metadata").json()["rest"][0]["resource"]
    assert all(r["conditionalUpdate"] is True for r in statement if r["type"] == "Patient")


def test_bundles_patch_update_as_create_and_conditional_update(clinician: httpx.Client) -> None:
    import base64

    pid = make(clinician, {"resourceType": "Patient", "gender": "female"}).json()["id"]
    note = {"resourceType": "Observation", "status": "preliminary", "code": {"text": "note"},
            "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    oid = make(clinician, note).json()["id"]
    patch = [{"op": "replace", "path": "/status", "value": "final"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(json.dumps(patch).encode()).decode()}  # fmt: skip
    chosen = f"client-{pid[-8:]}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "PATCH", "url": f"Observation/{oid}"}, "resource": binary},
        {"request": {"method": "PUT", "url": f"Observation/{chosen}"},
         "resource": {**note, "id": chosen}},
        {"request": {"method": "PUT", "url": f"Observation?_id={oid}&patient={pid}"},
         "resource": {**note, "status": "amended"}},
    ]}  # fmt: skip
    answer = clinician.post("/fhir", content=json.dumps(bundle), headers=FHIR)
    # the PATCH and the conditional update both write the same record: one transaction cannot
    # hold two new versions of it, and nothing is written
    assert answer.status_code == 409, answer.text
    assert clinician.get(f"/fhir/Observation/{oid}").json()["status"] == "preliminary"
    bundle["entry"] = bundle["entry"][:2]
    answer = clinician.post("/fhir", content=json.dumps(bundle), headers=FHIR)
    assert answer.status_code == 200, answer.text
    patched, created = (e for e in answer.json()["entry"])
    assert patched["response"]["status"] == "200 OK" and patched["resource"]["status"] == "final"
    assert created["response"]["status"] == "201 Created"
    assert created["resource"]["id"] == chosen
    conditional = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "PUT", "url": f"Observation?_id={oid}&patient={pid}"},
         "resource": {**note, "status": "amended"}},
        {"request": {"method": "PATCH", "url": f"Observation/{oid}"},
         "resource": {**binary, "contentType": "text/plain"}},
    ]}  # fmt: skip
    batch = clinician.post("/fhir", content=json.dumps(conditional), headers=FHIR).json()
    first, second = (e["response"]["status"] for e in batch["entry"])
    assert first == "200 OK" and second.startswith("4")
    assert clinician.get(f"/fhir/Observation/{oid}").json()["status"] == "amended"


def test_forwarded_headers_are_believed_from_a_trusted_proxy_only(
    server: Server, clinician: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    proxied = {"x-forwarded-proto": "https", "x-forwarded-host": "ehr.example.org"}
    # this node trusts no proxy: a client does not choose the URLs it is handed
    plain = make(clinician, {"resourceType": "Patient", "gender": "other"}, **proxied)
    assert plain.headers["location"].startswith(f"{server.url}/fhir/Patient/")
    data = tmp_path_factory.mktemp("proxied") / "node"
    demo_node(data, with_records=False, with_supply=False)
    node_file = data / "node.json"
    node_file.write_text(json.dumps({**json.loads(node_file.read_text()),
                                     "trusted_proxies": ["127.0.0.0/8"]}))  # fmt: skip
    with serving(data) as behind, login(behind, data / "keys" / "dr-ana-silva.key") as http:
        made = make(http, {"resourceType": "Patient", "gender": "other"}, **proxied)
        assert made.headers["location"].startswith("https://ehr.example.org/fhir/Patient/")
        bad = make(http, {"resourceType": "Patient", "gender": "other"},
                   **{"x-forwarded-host": "evil.example/x?", "x-forwarded-proto": "gopher"})  # fmt: skip
        assert bad.headers["location"].startswith(f"{behind.url}/fhir/Patient/")
        page = http.get("/fhir/Patient", params={"gender": "other"}, headers=proxied).json()
        assert all(link["url"].startswith("https://ehr.example.org/fhir/")
                   for link in page["link"])  # fmt: skip
        # the client side of the chain is the client's to write: the nearest untrusted hop is
        # the client, and the nearest proxy's scheme and host count (RFC 7239 is not read
        # unless node.json says so)
        chained = make(http, {"resourceType": "Patient", "gender": "other"}, **{
            "x-forwarded-host": "evil.example, ehr.example.org", "x-forwarded-proto": "https",
            "forwarded": "host=evil.example;proto=http"})  # fmt: skip
        assert chained.headers["location"].startswith("https://ehr.example.org/fhir/")
    node_file.write_text(json.dumps({**json.loads(node_file.read_text()),
                                     "trusted_proxies": ["not-an-address"]}))  # fmt: skip
    from tests.support.nodes import run_cli

    refused = run_cli("verify", str(data), "--ledger-only")
    assert refused.returncode != 0 and "trusted_proxies" in (refused.stdout + refused.stderr)


def test_type_and_system_history(server: Server, clinician: httpx.Client) -> None:
    pid = make(clinician, {"resourceType": "Patient", "gender": "female"}).json()["id"]
    note = {"resourceType": "Observation", "status": "preliminary", "code": {"text": "hx"},
            "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    made = make(clinician, note).json()
    clinician.put(f"/fhir/Observation/{made['id']}", headers=FHIR,
                  content=json.dumps({**made, "status": "final"}))  # fmt: skip
    org = make(clinician, {"resourceType": "Organization", "name": "History Clinic"}).json()
    whole = clinician.get("/fhir/Observation/_history").json()
    assert whole["type"] == "history"
    mine = [e for e in whole["entry"] if e["resource"]["id"] == made["id"]]
    assert [e["resource"]["meta"]["versionId"] for e in mine] == ["2", "1"]
    assert [e["request"]["method"] for e in mine] == ["PUT", "POST"]
    # paged at one ledger height: a write after the first page is not mixed in
    first = clinician.get("/fhir/Observation/_history", params={"_count": 1}).json()
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    make(clinician, note)
    second = clinician.get(next_url.split("/fhir", 1)[1].join(["/fhir", ""])).json()
    assert second["total"] == first["total"]
    # the patient's access log names the history read (interaction history)
    with login(server, server.data_dir / "keys" / "patients" / f"{pid}.key") as patient:
        log = patient.get(f"/v1/patients/{pid}/access-log").json()["accesses"]
        assert any(e.get("interaction") == "history" and made["id"] in e["records"] for e in log)
        # the patient's own history: their records only
        own = patient.get("/fhir/_history").json()
        assert {e["resource"].get("subject", {}).get("reference", f"Patient/{pid}")
                for e in own["entry"] if "resource" in e
                and e["resource"]["resourceType"] != "OperationOutcome"} <= {f"Patient/{pid}"}  # fmt: skip
    everything = clinician.get("/fhir/_history", params={"_count": 1000}).json()
    ids = {e["resource"]["id"] for e in everything["entry"] if "request" in e}
    assert {made["id"], org["id"], pid} <= ids
    since = clinician.get("/fhir/Organization/_history",
                          params={"_since": "2999-01-01T00:00:00Z"}).json()  # fmt: skip
    assert since["total"] == 0
    assert clinician.get("/fhir/Observation/_history", params={"_at": "2020"}).status_code == 400
    assert clinician.get("/fhir/_history", params={"_format": "xml"}).status_code == 406
    assert clinician.get("/fhir/Observation/_history", params={"_since": "soon"}).status_code == 400


def test_a_task_or_adverse_event_about_a_patient_is_theirs(clinician: httpx.Client) -> None:
    pid = make(clinician, {"resourceType": "Patient", "gender": "female"}).json()["id"]
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": f"Patient/{pid}"}, "description": "Book a follow-up"}  # fmt: skip
    event = {"resourceType": "AdverseEvent", "actuality": "actual",
             "subject": {"reference": f"Patient/{pid}"},
             "event": {"text": "rash after the first dose"}}  # fmt: skip
    ids = {}
    for resource in (task, event):
        made = make(clinician, resource)
        assert made.status_code == 201, made.text
        ids[resource["resourceType"]] = made.json()["id"]
    assert [e["resource"]["id"] for e in clinician.get(
        "/fhir/Task", params={"patient": pid}).json()["entry"]] == [ids["Task"]]  # fmt: skip
    assert [e["resource"]["id"] for e in clinician.get(
        "/fhir/AdverseEvent", params={"subject": f"Patient/{pid}"}).json()["entry"]] == [
        ids["AdverseEvent"]]  # fmt: skip
    everything = clinician.get(f"/fhir/Patient/{pid}/$everything").json()
    assert {"Task", "AdverseEvent"} <= {e["resource"]["resourceType"] for e in everything["entry"]}
    # a task for no patient (a practitioner's to-do) is not held: it would be nobody's record
    chore = {**task, "for": {"reference": "Practitioner/dr-ana-silva"}}
    refused = make(clinician, chore)
    assert refused.status_code == 400 and refused.headers["x-careledger-code"] == "NO_PATIENT"


def _interaction_works(
    http: httpx.Client, code: str, kind: str, body: dict[str, Any], made: dict[str, Any]
) -> bool:
    """One declared type-level interaction, exercised as R4 defines it."""
    url = f"/fhir/{kind}/{made['id']}"
    patch = {"content-type": "application/json-patch+json"}
    if code == "create":
        return make(http, body).status_code == 201
    if code == "read":
        return http.get(url).status_code == 200
    if code == "vread":
        return http.get(f"{url}/_history/1").status_code == 200
    if code == "update":
        return http.put(url, headers=FHIR, content=json.dumps(http.get(url).json())).is_success
    if code == "patch":
        op = [{"op": "add", "path": "/language", "value": "en"}]
        return http.patch(url, content=json.dumps(op), headers=patch).status_code == 200
    if code == "history-instance":
        return bool(http.get(f"{url}/_history").json()["type"] == "history")
    if code == "history-type":
        return bool(http.get(f"/fhir/{kind}/_history").json()["type"] == "history")
    if code == "search-type":
        found = http.get(f"/fhir/{kind}", params={"_id": made["id"]})
        return found.status_code == 200 and found.json()["total"] == 1
    raise AssertionError(f"{kind}: {code} is declared but not checked here")


def test_every_interaction_the_capability_statement_declares_works(
    server: Server, clinician: httpx.Client
) -> None:
    """Derived from the CapabilityStatement: each interaction it declares for a type (here
    Location, an organisation's record, and Observation, a patient's) and at system level is
    exercised over HTTP and answers as R4 says; an undeclared one is not served."""
    statement = clinician.get("/fhir/metadata").json()["rest"][0]
    declared = {r["type"]: {i["code"] for i in r["interaction"]} for r in statement["resource"]}
    pid = make(clinician, {"resourceType": "Patient", "gender": "other"}).json()["id"]
    samples = {
        "Location": {"resourceType": "Location", "name": "Room 1", "status": "active"},
        "Observation": {"resourceType": "Observation", "status": "final",
                        "code": {"text": "cap"}, "subject": {"reference": f"Patient/{pid}"}},
    }  # fmt: skip
    for kind, body in samples.items():
        made = make(clinician, body).json()
        assert "delete" in declared[kind]  # erasing: the custodian's admin's or the patient's
        for code in sorted(declared[kind] - {"delete"}):
            assert _interaction_works(clinician, code, kind, body, made), f"{kind}: {code}"
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        gone = make(clinician, samples["Location"]).json()["id"]
        assert admin.delete(f"/fhir/Location/{gone}").status_code == 200
        assert clinician.get(f"/fhir/Location/{gone}").status_code == 410
    system = {i["code"] for i in statement["interaction"]}
    assert system == {"transaction", "batch", "history-system"}
    for kind in ("transaction", "batch"):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": []}
        empty = clinician.post("/fhir", headers=FHIR, content=json.dumps(bundle))
        assert empty.status_code == 200 and empty.json()["type"] == f"{kind}-response"
    assert clinician.get("/fhir/_history").json()["type"] == "history"
    # nothing undeclared is served: a system-level search is not declared, and not answered
    assert clinician.get("/fhir", params={"_id": "x"}).status_code in (404, 405)
