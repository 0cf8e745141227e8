"""SMART Health Links over real HTTP (issue 19): a patient shares part of their record; a
receiver written from the spec alone (tests/support/shl_receiver.py, jwcrypto) opens it; every
opening is an access event on the ledger naming the recipient; wrong passcodes are counted to
the limit; revoked and expired links answer 404, as the spec says."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import shl_receiver as shl
from tests.support.nodes import Server, demo_node, login, serving

pytestmark = pytest.mark.integration
PASSCODE = "harbour-lights-7"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("links") / "node"
    demo_node(data, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def patient(server: Server) -> tuple[str, Path]:
    """A demo patient with records of several types (the node holds their key)."""
    keys = sorted((server.data_dir / "keys" / "patients").glob("*.key"))
    return keys[0].stem, keys[0]


@pytest.fixture
def own(server: Server, patient: tuple[str, Path]) -> Iterator[httpx.Client]:
    with login(server, patient[1]) as client:
        yield client


def make(own: httpx.Client, who: str, **body: Any) -> dict[str, Any]:
    answer = own.post(f"/v1/patients/{who}/links", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def receive(link: str, **kw: Any) -> list[shl.Received]:
    with httpx.Client(timeout=30) as client:
        return shl.open_link(link, client=client, **kw)


def openings(own: httpx.Client, who: str, link_id: str) -> list[dict[str, Any]]:
    log = own.get(f"/v1/patients/{who}/access-log").json()["accesses"]
    return [e for e in log if e["basis"] == {"kind": "link", "id": link_id}]


def test_a_patient_shares_and_a_spec_receiver_opens_the_link(
    own: httpx.Client, patient: tuple[str, Path]
) -> None:
    from fhir.resources.R4B.bundle import Bundle

    who = patient[0]
    made = make(own, who, types=["Observation", "Condition"], passcode=PASSCODE,
                label="For Dr Jones, urgent care", expires_in_days=7)  # fmt: skip
    assert made["shlink"].startswith("shlink:/") and made["flags"] == "P"
    assert made["qr_svg"].lstrip().startswith("<svg")
    payload = shl.parse_shlink(made["shlink"])
    assert payload["label"] == "For Dr Jones, urgent care" and len(payload["key"]) == 43
    assert shl.url_has_256_bit_token(payload["url"])
    (received,) = receive(made["shlink"], recipient="Dr Jones, Urgent Care", passcode=PASSCODE)
    assert received.content_type == "application/fhir+json"
    bundle = received.content
    Bundle.model_validate(bundle)
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert kinds <= {"Observation", "Condition"} and "Observation" in kinds
    # the opening is on the ledger, in the patient's "who saw my data", with the name given
    (logged,) = openings(own, who, made["id"])
    assert logged["recipient_name"] == "Dr Jones, Urgent Care"
    assert logged["purpose"] == "PATRQT" and logged["accessor"] == made["id"]
    served = {e["resource"]["id"] for e in bundle["entry"]}
    assert set(logged["records"]) == served
    assert "Jones" not in str(logged["recipient"])  # sealed on the ledger
    # the patient's list says what it is and how often it was opened
    (listed,) = [x for x in own.get(f"/v1/patients/{who}/links").json()["links"]
                 if x["id"] == made["id"]]  # fmt: skip
    assert listed["label"] == "For Dr Jones, urgent care" and listed["opened"] == 1
    assert listed["status"] == "active"
    # a wrong passcode: 401 with the attempts left; revoked: 404, and nothing more served
    with pytest.raises(shl.ShlError) as wrong:
        receive(made["shlink"], recipient="Someone", passcode="not-it-at-all")
    assert wrong.value.status == 401 and wrong.value.remaining_attempts == 4
    assert own.delete(f"/v1/patients/{who}/links/{made['id']}").status_code == 200
    with pytest.raises(shl.ShlError) as gone:
        receive(made["shlink"], recipient="Dr Jones, Urgent Care", passcode=PASSCODE)
    assert gone.value.status == 404
    assert len(openings(own, who, made["id"])) == 1


def test_passcode_attempts_run_out_and_the_ledger_disables_the_link(
    own: httpx.Client, patient: tuple[str, Path]
) -> None:
    who = patient[0]
    made = make(own, who, types=["Condition"], passcode=PASSCODE)
    left = []
    for _ in range(5):
        with pytest.raises(shl.ShlError) as wrong:
            receive(made["shlink"], recipient="Guesser", passcode="guess-guess")
        left.append(wrong.value.remaining_attempts)
    assert left == [4, 3, 2, 1, 0]
    with pytest.raises(shl.ShlError) as gone:  # even with the right one now
        receive(made["shlink"], recipient="Dr Jones", passcode=PASSCODE)
    assert gone.value.status == 404
    (listed,) = [x for x in own.get(f"/v1/patients/{who}/links").json()["links"]
                 if x["id"] == made["id"]]  # fmt: skip
    assert listed["status"] == "disabled"  # on the ledger: links.disable by the node
    assert openings(own, who, made["id"]) == []


def test_long_term_direct_and_location_links(
    server: Server, own: httpx.Client, patient: tuple[str, Path]
) -> None:
    who = patient[0]
    direct = make(own, who, types=["Condition"], direct=True, viewer="https://viewer.example/")
    viewer_link = direct["viewer_link"]
    assert viewer_link.startswith("https://viewer.example/#shlink:/")
    assert shl.parse_shlink(viewer_link) == shl.parse_shlink(direct["shlink"])
    (file,) = receive(direct["shlink"], recipient="Clinic app")
    assert file.content["resourceType"] == "Bundle"
    assert len(openings(own, who, direct["id"])) == 1
    # L follows later updates; a link without L serves what it was made with
    frozen = make(own, who, types=["Observation"])
    following = make(own, who, types=["Observation"], long_term=True)
    assert following["flags"] == "L"
    before = len(receive(following["shlink"], recipient="A")[0].content["entry"])
    observation = {"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                   "subject": {"reference": f"Patient/{who}"},
                   "effectiveDateTime": "2026-12-01T10:00:00Z",
                   "valueQuantity": {"value": 71, "unit": "/min"}}  # fmt: skip
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as clinician:
        assert clinician.post("/fhir/Observation", json=observation).status_code == 201
    assert len(receive(following["shlink"], recipient="A")[0].content["entry"]) == before + 1
    assert len(receive(frozen["shlink"], recipient="A")[0].content["entry"]) == before
    # a receiver that wants no embedded file gets a location URL, good for an hour
    (located,) = receive(frozen["shlink"], recipient="B", embedded_length_max=0)
    assert located.location is not None and "/shl/file/" in located.location
    assert httpx.get(located.location).status_code == 200
    assert own.delete(f"/v1/patients/{who}/links/{frozen['id']}").status_code == 200
    assert httpx.get(located.location).status_code == 404  # revoked: its files too


def test_a_patient_summary_link_is_an_ips_document(
    own: httpx.Client, patient: tuple[str, Path]
) -> None:
    from fhir.resources.R4B.bundle import Bundle

    who = patient[0]
    made = make(own, who, summary=True, label="My summary")
    (received,) = receive(made["shlink"], recipient="Travel clinic")
    document = received.content
    Bundle.model_validate(document)
    assert document["type"] == "document"
    composition = document["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    assert composition["type"]["coding"][0]["code"] == "60591-5"
    (logged,) = openings(own, who, made["id"])
    assert who in logged["records"]  # the Patient resource itself was served, and logged


def test_expired_links_answer_404(own: httpx.Client, patient: tuple[str, Path]) -> None:
    who = patient[0]
    soon = int(time.time()) + 3
    made = make(own, who, types=["Condition"], expires=soon)
    assert shl.parse_shlink(made["shlink"])["exp"] == soon
    time.sleep(4)
    with pytest.raises(shl.ShlError) as gone:
        receive(made["shlink"], recipient="Late")
    assert gone.value.status == 404
    (listed,) = [x for x in own.get(f"/v1/patients/{who}/links").json()["links"]
                 if x["id"] == made["id"]]  # fmt: skip
    assert listed["status"] == "expired"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"types": ["Nonsense"]}, "BAD_SELECTION"),
        ({}, "BAD_SELECTION"),
        ({"types": ["Condition"], "label": "x" * 81}, "BAD_LABEL"),
        ({"types": ["Condition"], "passcode": "123"}, "BAD_PASSCODE"),
        ({"types": ["Condition"], "passcode": PASSCODE, "direct": True}, "BAD_FLAGS"),
        ({"types": ["Condition"], "expires": "2001-01-01T00:00:00Z"}, "BAD_EXPIRY"),
        ({"types": ["Condition"], "since": "last year"}, "BAD_SELECTION"),
        ({"types": ["Condition"], "colour": "red"}, "BAD_REQUEST"),
        ({"types": ["Condition"], "key": "short"}, "BAD_SHLINK"),
        ({"types": ["Condition"], "viewer": "http://viewer.example/"}, "BAD_SHLINK"),
    ],
)
def test_bad_links_are_refused_clearly(
    own: httpx.Client, patient: tuple[str, Path], body: dict[str, Any], code: str
) -> None:
    answer = own.post(f"/v1/patients/{patient[0]}/links", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == code


def test_only_the_patient_shares_and_recipients_must_say_who_they_are(
    server: Server, own: httpx.Client, patient: tuple[str, Path]
) -> None:
    who = patient[0]
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as clinician:
        refused = clinician.post(f"/v1/patients/{who}/links", json={"types": ["Condition"]})
        assert refused.status_code == 403
        assert clinician.get(f"/v1/patients/{who}/links").status_code == 403
    made = make(own, who, types=["Condition"])
    url = shl.parse_shlink(made["shlink"])["url"]
    for body in ({}, {"recipient": ""}, {"recipient": "x" * 201}):
        answer = httpx.post(url, json=body)
        assert answer.status_code == 400, body
        assert answer.headers["access-control-allow-origin"] == "*"
    assert httpx.post(url + "x", json={"recipient": "A"}).status_code == 404
    unknown = url.rsplit("/", 1)[0] + "/" + "A" * 43
    assert httpx.post(unknown, json={"recipient": "A"}).status_code == 404
    assert httpx.get(url, params={"recipient": "A"}).status_code == 400  # not a U link
    preflight = httpx.options(url, headers={"origin": "https://viewer.example",
                                            "access-control-request-method": "POST"})  # fmt: skip
    assert preflight.status_code == 204


def test_a_health_card_any_verifier_accepts_until_it_is_revoked(
    own: httpx.Client, patient: tuple[str, Path]
) -> None:
    """A card of the patient's immunizations, checked by the verifier written from the SHC
    spec: the issuer's keys fetched from the node, the numeric QR decoding to the same JWS; once
    the patient revokes it, the issuer's revocation list (read from the ledger) refuses it."""
    from tests.support import shc_verifier as shc

    who = patient[0]
    issued = own.post(f"/v1/patients/{who}/cards", json={"kind": "immunizations"})
    assert issued.status_code == 201, issued.text
    card = issued.json()
    assert card["shc"].startswith("shc:/") and shc.decode_numeric(card["shc"]) == card["jws"]
    assert card["qr_svg"].lstrip().startswith("<svg") and 1 <= card["included"] <= card["held"]
    with httpx.Client(timeout=30) as client:
        verified = shc.verify_card(card["jws"], client=client)
        assert shc.verify_file(card["file"], client=client)
    claims = verified["payload"]
    subject = claims["vc"]["credentialSubject"]["fhirBundle"]
    kinds = [e["resource"]["resourceType"] for e in subject["entry"]]
    assert kinds[0] == "Patient" and set(kinds[1:]) == {"Immunization"}
    # every reference is to the card's own entries: nothing outside it is pointed at
    references = re.findall(r'"reference":\s*"([^"]*)"', json.dumps(subject))
    assert references and all(r.startswith("resource:") for r in references)
    assert "https://smarthealth.cards#immunization" in claims["vc"]["type"]
    listed = own.get(f"/v1/patients/{who}/cards").json()["cards"]
    assert [c["status"] for c in listed if c["id"] == card["id"]] == ["active"]
    # the issuing read the patient's own records: an access event, basis self
    log = own.get(f"/v1/patients/{who}/access-log").json()["accesses"]
    assert any(e["basis"]["kind"] == "self" and who in e["records"] for e in log)
    assert own.delete(f"/v1/patients/{who}/cards/{card['id']}").status_code == 200
    with httpx.Client(timeout=30) as client, pytest.raises(shc.ShcError) as revoked:
        shc.verify_card(card["jws"], client=client)
    assert "revok" in str(revoked.value).lower()
    again = own.delete(f"/v1/patients/{who}/cards/{card['id']}")
    assert again.status_code == 422 and again.json()["code"] == "CARD_REVOKED"
    labs = own.post(f"/v1/patients/{who}/cards", json={"kind": "lab-results"})
    assert labs.status_code in (201, 404)  # 404: this patient has no lab results held here
    assert own.post(f"/v1/patients/{who}/cards", json={"kind": "x"}).status_code == 400


def test_openings_are_throttled_and_malformed_requests_are_400(
    server: Server, own: httpx.Client, patient: tuple[str, Path]
) -> None:
    """Each opening is an access event for ever: whoever holds a link cannot flood the log
    (20 in ten minutes, then 429 with Retry-After, as the spec allows). Malformed bodies are
    400s, never 500s, and nothing half-made is left on the ledger."""
    who = patient[0]
    made = make(own, who, types=["Condition"])
    url = shl.parse_shlink(made["shlink"])["url"]
    answers = [httpx.post(url, json={"recipient": f"R{i}"}).status_code for i in range(21)]
    assert answers[:20] == [200] * 20 and answers[20] == 429
    limited = httpx.post(url, json={"recipient": "R"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    assert len(openings(own, who, made["id"])) == 20
    nested = b'{"recipient": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    assert httpx.post(url, content=nested).status_code == 400
    assert httpx.post(url, content=b"\xff\xfe").status_code == 400
    before = len(own.get(f"/v1/patients/{who}/links").json()["links"])
    for body in (b"not json", b"", b"[]"):
        answer = own.post(f"/v1/patients/{who}/links", content=body,
                          headers={"content-type": "application/json"})  # fmt: skip
        assert answer.status_code == 400, body
    surrogate = b'{"types": ["Condition"], "passcode": "abc\\ud800defgh"}'
    answer = own.post(f"/v1/patients/{who}/links", content=surrogate,
                      headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 400  # not text: refused before anything is signed
    zero = own.post(f"/v1/patients/{who}/links", json={"types": ["Condition"], "key": "A" * 43})
    assert zero.status_code == 400 and zero.json()["code"] == "BAD_SHLINK"
    assert len(own.get(f"/v1/patients/{who}/links").json()["links"]) == before
    bad = own.request("DELETE", f"/v1/patients/{who}/links/{made['id']}", content=b"{")
    assert bad.status_code == 400


def test_the_recipients_name_is_the_patients_and_an_erasure_ends_location_files(
    server: Server, own: httpx.Client, patient: tuple[str, Path]
) -> None:
    who = patient[0]
    made = make(own, who, types=["Condition"])
    (located,) = receive(made["shlink"], recipient="A private clinic", embedded_length_max=0)
    assert located.location is not None and httpx.get(located.location).status_code == 200
    (logged,) = openings(own, who, made["id"])
    assert logged["recipient_name"] == "A private clinic"
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        log = admin.get(f"/v1/patients/{who}/access-log").json()["accesses"]
    (seen,) = [e for e in log if e["basis"] == {"kind": "link", "id": made["id"]}]
    assert "recipient_name" not in seen  # oversight sees an opening, not whom it was for
    served = located.content["entry"][0]["resource"]["id"]
    assert own.delete(f"/fhir/Condition/{served}").status_code == 200
    assert httpx.get(located.location).status_code == 404  # the file went with the record


def test_the_cli_shares_for_a_patient_the_node_signs_for_and_one_with_their_own_key(
    server: Server, patient: tuple[str, Path]
) -> None:
    """`careledger share make|list|revoke`: the node signs links.create for a patient whose key
    it holds; a patient with their own key signs it in the CLI, as the node prepared it."""
    from tests.support.nodes import run_cli

    for key in (patient[1], server.data_dir / "keys" / "patient-0001.key"):
        made = run_cli("share", "make", "--key", str(key), "--type", "Condition",
                       "--passcode", "--label", "From the CLI", "--url", server.url,
                       "--json", env={"CARELEDGER_SHARE_PASSCODE": PASSCODE})  # fmt: skip
        assert made.returncode == 0, made.stderr
        link = json.loads(made.stdout)
        (received,) = receive(link["shlink"], recipient="CLI test", passcode=PASSCODE)
        assert received.content["resourceType"] == "Bundle"
        listed = run_cli("share", "list", "--key", str(key), "--url", server.url, "--json")
        assert link["id"] in {x["id"] for x in json.loads(listed.stdout)["items"]}
        words = run_cli("share", "list", "--key", str(key), "--url", server.url)
        assert "From the CLI" in words.stdout and "Traceback" not in words.stderr
        ended = run_cli("share", "revoke", "--key", str(key), link["id"], "--url", server.url)
        assert ended.returncode == 0, ended.stderr
        with pytest.raises(shl.ShlError) as gone:
            receive(link["shlink"], recipient="CLI test", passcode=PASSCODE)
        assert gone.value.status == 404
    shown = run_cli("share", "make", "--key", str(patient[1]), "--summary", "--url", server.url)
    assert shown.returncode == 0 and "shlink:/" in shown.stdout and "▀" in shown.stdout  # a QR
    bad = run_cli("share", "make", "--key", str(patient[1]), "--type", "Nonsense",
                  "--url", server.url)  # fmt: skip
    assert bad.returncode == 2 and "BAD_SELECTION" in bad.stderr and "Traceback" not in bad.stderr
