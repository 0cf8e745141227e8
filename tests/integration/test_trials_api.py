"""Trials over real HTTP: recruitment counts without identities, invitations to opted-in
patients only, e-consent with its FHIR Consent, CRF entries in the vault, paid visits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from careledger.keyfile import read_key_file
from careledger.sdk import Client, RemoteError
from tests.support.nodes import Server, demo_node, login, run_cli, serving, wait_for
from tests.support.recruitment import DIABETES, SITES, ask, new_patient
from tests.support.vectors import vector_path

pytestmark = pytest.mark.integration
DIABETICS = 33  # enough that a noisy count of them is released (withheld: p < 1e-6)


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("trials") / "node"
    demo_node(data, with_records=False, with_supply=False)
    return data


@pytest.fixture(scope="module")
def server(node_dir: Path) -> Iterator[Server]:
    with serving(node_dir) as running:
        yield running


@pytest.fixture(scope="module")
def world(server: Server, node_dir: Path) -> Iterator[dict[str, Any]]:
    keys = node_dir / "keys"
    clinician = login(server, keys / "dr-ana-silva.key")
    sponsor = login(server, keys / "trialco-admin.key")
    diabetics = [
        new_patient(clinician, born="1975-03-01", diabetic=True) for _ in range(DIABETICS - 3)
    ]
    older = [new_patient(clinician, born="1950-03-01", diabetic=True) for _ in range(3)]
    others = [new_patient(clinician, born="1980-03-01", diabetic=False) for _ in range(6)]
    try:
        yield {
            "keys": keys,
            "clinician": clinician,
            "sponsor": sponsor,
            "diabetics": diabetics,
            "older": older,
            "others": others,
        }
    finally:
        clinician.close()
        sponsor.close()


def patient_client(server: Server, world: dict[str, Any], pid: str) -> httpx.Client:
    return login(server, world["keys"] / "patients" / f"{pid}.key")


def test_counts_carry_noise_are_sealed_and_charged_to_the_budget(
    server: Server, world: dict[str, Any]
) -> None:
    sponsor = world["sponsor"]
    everyone = ask(sponsor, {"criteria": DIABETES, "sites": SITES})
    answer = everyone["answers"]["st-mary"]
    assert answer["private"] is True and answer["reason"] is None
    # 33 diabetics; the noise is two-sided geometric with epsilon 0.5 (|noise| > 30: p < 1e-6)
    assert abs(answer["count"] - DIABETICS) <= 30
    assert everyone["pending"] == ["northside-clinic"]  # no node of its own answers here
    # the ledger holds ciphertext only, even for a member who may read all of its state
    with login(server, world["keys"] / "st-mary-admin.key") as admin:
        stored = admin.get(f"/v1/state/trials/answer/{everyone['id']}/st-mary").json()
        assert set(stored["value"]) == {"sealed", "height"}, stored
        budgets = admin.get("/v1/recruitment/budget").json()["items"]
        (trialco,) = [b for b in budgets if b["sponsor"] == "trialco"]
        assert trialco["queries"] >= 1 and trialco["epsilon_spent"] == trialco["queries"] * 0.5
        assert trialco["epsilon_limit"] == 10
    # a member of neither the sponsor nor a site sees nothing of the query
    with login(server, world["keys"] / "acme-admin.key") as outsider:
        peek = outsider.get(f"/v1/recruitment/queries/{everyone['id']}")
        assert peek.status_code == 403 and peek.json()["code"] == "NOT_AUTHORISED"


def test_a_probe_for_one_person_and_the_reason_oracle_learn_nothing(
    world: dict[str, Any],
) -> None:
    """The three over-70 diabetics, then one of them by age: the old rule answered
    "small_cell" here and "overlap" there, and 0 for an empty cell; now every answer is a noisy
    count or the same "withheld" (how often each comes is what tests/unit/core/test_privacy
    bounds), and a site never says why."""
    sponsor = world["sponsor"]
    probes = [
        {"criteria": {**DIABETES, "age": [71, 150]}, "sites": ["st-mary"]},
        {"criteria": {**DIABETES, "age": [0, 70]}, "sites": ["st-mary"]},
        {"criteria": {**DIABETES, "age": [76, 76]}, "sites": ["st-mary"]},
        {"criteria": {**DIABETES, "age": [120, 150]}, "sites": ["st-mary"]},
    ]
    for probe in probes:
        answer = ask(sponsor, probe)["answers"]["st-mary"]
        if answer["count"] is None:
            assert answer["reason"] == "withheld"
        else:
            assert answer["count"] >= 10 and answer["reason"] is None


def test_a_spent_budget_refuses_further_questions(server: Server, world: dict[str, Any]) -> None:
    with login(server, world["keys"] / "st-mary-admin.key") as admin:
        wrong = admin.put("/v1/recruitment/budget/trialco", json={"epsilon": "lots"})
        assert wrong.status_code == 400 and wrong.json()["code"] == "BAD_ARGS"
        spent = next(
            b["epsilon_spent"]
            for b in admin.get("/v1/recruitment/budget").json()["items"]
            if b["sponsor"] == "trialco"
        )
        closed = admin.put("/v1/recruitment/budget/trialco", json={"epsilon": spent})
        assert closed.status_code == 200, closed.text
        refused = world["sponsor"].post(
            "/v1/recruitment/queries", json={"criteria": DIABETES, "sites": ["st-mary"]}
        )
        assert refused.status_code == 422 and refused.json()["code"] == "PRIVACY_BUDGET_SPENT"
        reopened = admin.put("/v1/recruitment/budget/trialco", json={"epsilon": 20})
        assert reopened.status_code == 200
    with login(server, world["keys"] / "dr-ana-silva.key") as clinician:
        denied = clinician.put("/v1/recruitment/budget/trialco", json={"epsilon": 100})
        assert denied.status_code == 403


def test_a_bad_query_is_refused_with_its_code(world: dict[str, Any]) -> None:
    sponsor, clinician = world["sponsor"], world["clinician"]
    text_only = {"criteria": {"conditions": [{"text": "diabetes"}]}, "sites": SITES}
    refused = sponsor.post("/v1/recruitment/queries", json=text_only)
    assert refused.status_code == 422 and refused.json()["code"] == "NOT_COMPUTABLE"
    by_clinician = clinician.post(
        "/v1/recruitment/queries", json={"criteria": DIABETES, "sites": SITES}
    )
    assert by_clinician.json()["code"] in {"NOT_AUTHORISED", "SCOPE"}
    assert sponsor.get(f"/v1/recruitment/queries/{'0' * 64}").status_code == 404


REGISTRATION = {
    "study": "GLYCO-1",
    "registry_id": "NCT88888888",
    "title": "Glycaemic control",
    "protocol_hash": "1" * 64,
    "sap_hash": "2" * 64,
    "primary": ["HbA1c change at week 1"],
    "secondary": [],
    "eligibility": DIABETES,
    "visits": [{"id": "baseline", "day": 0, "window": 3}, {"id": "week-1", "day": 7, "window": 3}],
    "sites": ["st-mary"],
}


def grant_research_contact(server: Server, world: dict[str, Any], pid: str) -> None:
    keypair = read_key_file(world["keys"] / "patients" / f"{pid}.key")[1]
    args = {
        "grantee": {"org": "st-mary"},
        "actions": ["read"],
        "resource_types": ["*"],
        "purposes": ["HRESCH"],
    }
    with Client(server.url, keypair=keypair) as c:
        assert c.call("consent", "grant", args)["result"] == "accepted"


def sponsor_pays(server: Server, world: dict[str, Any]) -> None:
    sponsor = world["sponsor"]
    for method, args in (
        ("deposit", {"credits": 1000, "reference": "wire 42"}),
        ("open_study", {"study": "GLYCO-1", "schedule": {"baseline": 40, "week-1": 60}}),
        ("fund", {"study": "GLYCO-1", "credits": 500}),
    ):
        done = sponsor.post(f"/v1/payments/{method}", json=args)
        assert done.status_code == 200, (method, done.text)
    assert sponsor.get("/v1/payments/balance").json()["credits"] == 0  # the org's, not the member's


def crf(pid: str, answer: int) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        "item": [{"linkId": "hypo-events", "answer": [{"valueInteger": answer}]}],
    }


def everything(http: httpx.Client, pid: str, kind: str) -> list[dict[str, Any]]:
    bundle = http.get(f"/fhir/Patient/{pid}/$everything").json()
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == kind]


def test_invitations_consent_capture_payment_and_withdrawal(
    server: Server, world: dict[str, Any]
) -> None:
    sponsor, investigator = world["sponsor"], world["clinician"]
    made = sponsor.post("/v1/trials", json={"registration": REGISTRATION})
    assert made.status_code == 201, made.text
    assert sponsor.post("/v1/trials", json={"registration": REGISTRATION}).json()["code"] == (
        "STUDY_EXISTS"
    )
    opted_in, silent = world["diabetics"][:2], world["diabetics"][2]
    for pid in opted_in:
        grant_research_contact(server, world, pid)
    # from r5 a sponsor's query cannot invite: the site invites on its own
    asked = sponsor.post("/v1/recruitment/queries", json={"study": "GLYCO-1", "invite": True})
    assert asked.status_code == 422 and asked.json()["code"] == "INVITE_BY_SITE"
    not_site = sponsor.post("/v1/trials/GLYCO-1/invitations")
    assert not_site.status_code == 403
    sent = investigator.post("/v1/trials/GLYCO-1/invitations")
    assert sent.status_code == 200, sent.text
    assert sent.json()["invited"] == len(opted_in) and sent.json()["matched"] >= DIABETICS

    # only the patients who opted in to research contact are invited; the sponsor learns no one
    with patient_client(server, world, silent) as other:
        assert other.get("/v1/recruitment/invitations").json()["items"] == []
    pid = opted_in[0]
    with patient_client(server, world, pid) as patient:
        (invitation,) = patient.get("/v1/recruitment/invitations").json()["items"]
        assert invitation["study"] == "GLYCO-1" and invitation["status"] == "open"
        said = patient.post(
            f"/v1/recruitment/invitations/{invitation['id']}", json={"answer": "interested"}
        )
        assert said.json()["status"] == "interested"
        log = patient.get(f"/v1/patients/{pid}/access-log").json()
        contacts = [e for e in log["accesses"] if e["purpose"] == "HRESCH"]
        assert len(contacts) == 1, log
        again = investigator.post("/v1/trials/GLYCO-1/invitations")  # no second contact
        assert again.json()["invited"] == 0
        assert len(patient.get("/v1/recruitment/invitations").json()["items"]) == 1
        log = patient.get(f"/v1/patients/{pid}/access-log").json()
        assert len([e for e in log["accesses"] if e["purpose"] == "HRESCH"]) == 1
        bad = patient.post(f"/v1/recruitment/invitations/{invitation['id']}", json={"answer": "x"})
        assert bad.status_code == 400 and bad.json()["code"] == "BAD_ANSWER"
    interested = investigator.get("/v1/trials/GLYCO-1/interested").json()["items"]
    assert [i["patient"] for i in interested] == [pid]
    assert sponsor.get("/v1/trials/GLYCO-1/interested").status_code == 403

    # enrolment by the site's investigator, consent by the participant's own (held) key
    assert sponsor.post("/v1/trials/GLYCO-1/participants", json={"participant": pid}).json()[
        "code"
    ] in {"NOT_AUTHORISED", "SCOPE"}
    enrolled = investigator.post("/v1/trials/GLYCO-1/participants", json={"participant": pid})
    assert enrolled.status_code == 201, enrolled.text
    data_url = f"/v1/trials/GLYCO-1/participants/{pid}/visits/baseline/data"
    early = investigator.post(data_url, json={"resources": [crf(pid, 0)]})
    assert early.status_code == 422 and early.json()["code"] == "NO_CONSENT", early.text
    with patient_client(server, world, pid) as patient:
        assert patient.post("/v1/trials/GLYCO-1/me/consent").status_code == 200
        assert not everything(patient, pid, "QuestionnaireResponse")  # the refusal wrote none
        consent = wait_for(lambda: everything(patient, pid, "Consent"), "the FHIR Consent")[0]
    assert consent["status"] == "active"
    assert consent["scope"]["coding"][0]["code"] == "research"
    assert consent["category"][0]["coding"][0]["code"] == "research"
    assert consent["policy"][0]["uri"].endswith(f":v1:{'1' * 64}")

    wrong = investigator.post(data_url, json={"resources": [crf(world["others"][0], 1)]})
    assert wrong.status_code == 400 and wrong.json()["code"] == "WRONG_SUBJECT"
    captured = investigator.post(data_url, json={"resources": [crf(pid, 2), crf(pid, 0)]})
    assert captured.status_code == 201, captured.text
    entries = captured.json()["entries"]
    assert len(entries) == 2 and all(e["type"] == "QuestionnaireResponse" for e in entries)
    with Client(server.url, keypair=read_key_file(world["keys"] / "st-mary-admin.key")[1]) as c:
        c.login()  # state names patients: an admin reads it (ADR 0012)
        anchored = c.state("trials", f"entry/GLYCO-1/{pid}/baseline/0")
        record = c.state("records", f"record/{entries[0]['record']}/v/00000001")
    assert anchored["hash"] == record["hash"] == entries[0]["hash"]

    # an attested visit pays the participant from the escrow, once
    attest_url = f"/v1/trials/GLYCO-1/participants/{pid}/visits/baseline/attest"
    unfunded = investigator.post(attest_url).json()
    assert unfunded["payment"]["code"] == "UNKNOWN_STUDY"  # no payment schedule yet
    sponsor_pays(server, world)
    with Client(server.url, keypair=read_key_file(world["keys"] / "trialco-admin.key")[1]) as c:
        args = {"study": "GLYCO-1", "participant": pid, "visit": "baseline"}
        assert c.call("payments", "pay_visit", args)["result"] == "accepted"  # claimed later
        with pytest.raises(RemoteError) as again:
            c.call("payments", "pay_visit", args)
        assert again.value.code == "ALREADY_PAID"
    with patient_client(server, world, pid) as patient:
        assert patient.get("/v1/payments/balance").json() == {"account": pid, "credits": 40}

        # withdrawal: no more data, and the FHIR Consent turns inactive
        assert patient.post("/v1/trials/GLYCO-1/me/withdraw").status_code == 200
        before = len(everything(patient, pid, "QuestionnaireResponse"))
        refused = investigator.post(data_url, json={"resources": [crf(pid, 5)]})
        assert refused.status_code == 422 and refused.json()["code"] == "WITHDRAWN"
        assert len(everything(patient, pid, "QuestionnaireResponse")) == before == 2
        wait_for(
            lambda: everything(patient, pid, "Consent")[0]["status"] == "inactive",
            "the Consent to become inactive",
        )


def test_an_attested_visit_pays_the_participant_at_once(
    server: Server, world: dict[str, Any]
) -> None:
    """Runs after the study is registered and funded above."""
    investigator = world["clinician"]
    pid = world["diabetics"][1]
    enrolled = investigator.post("/v1/trials/GLYCO-1/participants", json={"participant": pid})
    assert enrolled.status_code == 201, enrolled.text
    base = f"/v1/trials/GLYCO-1/participants/{pid}/visits/baseline"
    with patient_client(server, world, pid) as patient:
        assert patient.post("/v1/trials/GLYCO-1/me/consent").status_code == 200
        assert investigator.post(f"{base}/attest").json()["code"] == "NO_DATA"
        captured = investigator.post(f"{base}/data", json={"resources": [crf(pid, 1)]})
        assert captured.status_code == 201, captured.text
        attested = investigator.post(f"{base}/attest").json()
        assert attested["payment"] == {"result": "accepted"}
        assert patient.get("/v1/payments/balance").json()["credits"] == 40
        again = investigator.post(f"{base}/attest")
        assert again.status_code == 422 and again.json()["code"] == "ALREADY_ATTESTED"


def test_the_cli_registers_a_published_study_and_asks_for_counts(
    server: Server, world: dict[str, Any], tmp_path: Path
) -> None:
    key = str(world["keys"] / "trialco-admin.key")
    visits = tmp_path / "visits.json"
    visits.write_text(json.dumps([{"id": "baseline", "day": 0, "window": 7}]))
    record = vector_path("clinical-trial-matching-service", "NCT02513394.json")
    common = ("--key", key, "--url", server.url)
    made = run_cli(
        "trial", "register", str(record), "--study", "PALLAS", "--sites", "st-mary",
        "--visits", str(visits), *common, "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert orjson.loads(made.stdout)["study"] == "PALLAS"
    again = run_cli(
        "trial", "register", str(record), "--study", "PALLAS", "--sites", "st-mary", *common
    )
    assert again.returncode != 0 and "STUDY_EXISTS" in again.stdout + again.stderr
    criteria = tmp_path / "criteria.json"
    criteria.write_text(json.dumps(DIABETES))
    asked = run_cli(
        "trial", "feasibility", "--criteria", str(criteria), "--sites", "st-mary", *common, "--json"
    )
    assert asked.returncode == 0, asked.stderr
    answer = orjson.loads(asked.stdout)
    assert answer["pending"] == [] and answer["answers"]["st-mary"]["reason"] is None
    table = run_cli(
        "trial", "feasibility", "--criteria", str(criteria), "--sites", "st-mary", *common
    )
    assert table.returncode == 0 and "st-mary" in table.stdout
    silent = run_cli(
        "trial", "feasibility", "--criteria", str(criteria), "--sites", "st-mary,northside-clinic",
        "--wait", "1", *common,
    )  # fmt: skip
    assert silent.returncode == 0 and "no answer within 1 s" in silent.stdout  # northside
    missing = run_cli("trial", "feasibility", "--criteria", str(tmp_path / "nope.json"), *common)
    assert missing.returncode != 0 and "BAD_FILE" in missing.stdout + missing.stderr


def test_a_research_grant_of_data_is_paid_to_the_patient(
    server: Server, world: dict[str, Any]
) -> None:
    pid = world["diabetics"][5]
    keypair = read_key_file(world["keys"] / "patients" / f"{pid}.key")[1]
    grant = {
        "grantee": {"org": "trialco"},
        "actions": ["read"],
        "resource_types": ["Observation"],
        "purposes": ["CLINTRCH"],
    }
    with Client(server.url, keypair=keypair) as c:
        receipt = c.call("consent", "grant", grant)
    consent = receipt["tx_id"]
    sponsor = world["sponsor"]
    sponsor.post("/v1/payments/deposit", json={"credits": 100, "reference": "data grant"})
    paid = sponsor.post("/v1/payments/pay_data_use", json={"consent": consent, "credits": 15})
    assert paid.status_code == 200, paid.text
    again = sponsor.post("/v1/payments/pay_data_use", json={"consent": consent, "credits": 15})
    assert again.status_code == 422 and again.json()["code"] == "ALREADY_PAID"
    with patient_client(server, world, pid) as patient:
        assert patient.get("/v1/payments/balance").json()["credits"] == 15
    clinician = world["clinician"]
    assert clinician.post("/v1/payments/deposit", json={"credits": 1, "reference": "x"}).json()[
        "code"
    ] in {"NOT_AUTHORISED", "SCOPE"}
