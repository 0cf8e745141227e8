"""Who reaches an organisation's own records (r10), in-process on a real demo node: a Group is
never reached through a patient launch nor searched on a read-only or restricted scope; such a
record carries no patient's data in its structure; an update-as-create at a taken id seals
nothing; a transaction resolves references to the organisation records it creates later."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from careledger.callers.caller import SYSTEM, Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.errors import Conflict, Forbidden, ValidationError
from careledger.fhir.extract import patient_id
from careledger.fhir.search import parse_search
from careledger.health import bundles
from careledger.health.search import run_search
from careledger.health.service import HealthRecords
from careledger.node import Node
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration
DR = Caller("dr-ana-silva", "st-mary", frozenset({"clinician"}),
            parse_scopes(default_scopes({"clinician"})))  # fmt: skip
DR_ADMIN = Caller("st-mary-admin", "st-mary", frozenset({"admin"}),
                  parse_scopes(default_scopes({"admin"})))  # fmt: skip


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthRecords]:
    data: Path = tmp_path_factory.mktemp("org-access") / "node"
    demo_node(data, with_supply=False)
    node = Node(Settings.load(data))
    node.start()
    held = HealthRecords.for_node(node)
    try:
        yield held
    finally:
        held.close()
        node.stop()


def make(records: HealthRecords, resource: dict, caller: Caller = DR) -> str:
    return records.create(caller, resource, patient_of=patient_id).record_id


def search(records: HealthRecords, caller: Caller, kind: str, query: str = "") -> list[str]:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    found = run_search(records, caller, parse_search(kind, pairs), purpose="TREAT",
                       base_url="", now=datetime.now(UTC))  # fmt: skip
    return [s.record_id for s in found.page]


def group(identifier: str, *members: str) -> dict:
    return {"resourceType": "Group", "type": "person", "actual": True,
            "identifier": [{"value": identifier}],
            "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members]}  # fmt: skip


def test_a_group_is_not_searched_on_a_read_only_or_restricted_scope(
    records: HealthRecords,
) -> None:
    cohort = make(records, group("cohort-1", "patient-0001"))
    other = make(records, group("hiv-cohort", "patient-0002"))
    reader = Caller("grp-app", "st-mary", frozenset({SYSTEM}),
                    parse_scopes("system/Group.r?identifier=cohort-1"), app="grp-app")  # fmt: skip
    with pytest.raises(Forbidden) as refused:
        search(records, reader, "Group")
    assert refused.value.code == "SCOPE"
    narrowed = Caller("grp-app", "st-mary", frozenset({SYSTEM}),
                      parse_scopes("system/Group.rs?identifier=cohort-1"), app="grp-app")  # fmt: skip
    assert search(records, narrowed, "Group") == [cohort]
    assert search(records, DR, "Group", "identifier=hiv-cohort") == [other]


def test_a_patient_launch_never_reaches_the_organisations_lists(records: HealthRecords) -> None:
    listed = make(records, group("launch-test", "patient-0002"))
    launched = Caller("dr-ana-silva", "st-mary", frozenset({"clinician"}),
                      parse_scopes("patient/*.read"), app="smart-app",
                      patient="patient-0001")  # fmt: skip
    for attempt in (
        lambda: records.read(launched, "Group", listed),
        lambda: search(records, launched, "Group", "identifier=launch-test"),
    ):
        with pytest.raises(Forbidden):
            attempt()
    # the directory stays readable to that launch
    org = make(records, {"resourceType": "Organization", "name": "Launch Clinic"})
    assert records.read(launched, "Organization", org).resource["name"] == "Launch Clinic"


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Organization", "name": "X",
         "contained": [{"resourceType": "Patient", "id": "p", "gender": "female"}]},
        {"resourceType": "Location", "name": "Bed 4",
         "managingOrganization": {"reference": "Patient/patient-0001"}},
        {"resourceType": "Group", "type": "person", "actual": True,
         "managingEntity": {"reference": "Patient/patient-0001"}},
        {"resourceType": "Group", "type": "person", "actual": True,
         "member": [{"entity": {"reference": "Patient/patient-0001"},
                     "extension": [{"url": "http://x", "valueReference": {
                         "reference": "Patient/patient-0002"}}]}]},
        {"resourceType": "Location", "name": "A",
         "managingOrganization": {"reference": " Patient/patient-0001"}},
        {"resourceType": "Location", "name": "B",
         "managingOrganization": {"reference": "Patient?identifier=urn:oid:1.2.3|MRN-42"}},
        {"resourceType": "Location", "name": "C",
         "extension": [{"url": "http://x", "valueReference": {"reference": "Encounter/e1"}}]},
        {"resourceType": "Group", "type": "person", "actual": True,
         "managingEntity": {"reference": "RelatedPerson/r1"}},
    ],
    ids=["contained", "reference", "group-manager", "member-extension", "leading-space",
         "conditional", "patients-record", "related-person"],
)  # fmt: skip
def test_an_organisation_record_carries_no_patients_data(
    records: HealthRecords, resource: dict
) -> None:
    with pytest.raises(ValidationError) as refused:
        make(records, resource)
    assert refused.value.code == "NO_PATIENT_DATA"


def test_an_update_as_create_at_a_taken_id_seals_nothing(records: HealthRecords) -> None:
    taken = make(records, {"resourceType": "Organization", "name": "Taken"})
    before = records.vault.store.get(taken)
    with pytest.raises(Conflict) as refused:
        records.create_at(DR, {"resourceType": "Practitioner", "active": True}, taken,
                          patient_of=patient_id)  # fmt: skip
    assert refused.value.code == "ID_TAKEN"
    assert records.vault.store.get(taken) == before


def test_a_transaction_resolves_references_to_organisation_records_listed_later(
    records: HealthRecords,
) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:enc", "request": {"method": "POST", "url": "Encounter"},
         "resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                "code": "AMB"},
                      "subject": {"reference": "Patient/patient-0001"},
                      "serviceProvider": {"reference": "urn:uuid:org"}}},
        {"fullUrl": "urn:uuid:org", "request": {"method": "POST", "url": "Organization"},
         "resource": {"resourceType": "Organization", "name": "Later Clinic"}},
    ]}  # fmt: skip
    answer = bundles.transaction(records, DR, bundle, "TREAT")
    encounter, org = (e["resource"] for e in answer["entry"])
    assert encounter["serviceProvider"]["reference"] == f"Organization/{org['id']}"


def observation(patient: str, status: str = "final") -> dict:
    return {"resourceType": "Observation", "status": status, "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient}"}}  # fmt: skip


def test_an_update_keeps_the_records_patient(records: HealthRecords) -> None:
    """From a review: an update naming another patient moved that patient's data into a
    record sealed, anchored and logged as the first patient's."""
    made = records.create(DR, observation("patient-0001"), patient_of=patient_id)
    moved = {**observation("patient-0002"), "id": made.record_id}
    with pytest.raises(ValidationError) as refused:
        records.update(DR, moved, made.record_id)
    assert refused.value.code == "PATIENT_CHANGED"
    kept = records.update(DR, {**observation("patient-0001", "amended"), "id": made.record_id},
                          made.record_id)  # fmt: skip
    assert kept.version == 2


def test_an_organisation_record_stays_free_of_patient_data_when_updated(
    records: HealthRecords,
) -> None:
    place = make(records, {"resourceType": "Location", "name": "Ward 9"})
    for changed in (
        {"resourceType": "Location", "id": place, "name": "Ward 9",
         "contained": [{"resourceType": "Patient", "id": "p", "gender": "male"}]},
        {"resourceType": "Location", "id": place, "name": "Ward 9",
         "partOf": {"reference": "Patient/patient-0001"}},
    ):  # fmt: skip
        with pytest.raises(ValidationError) as refused:
            records.update(DR, changed, place)
        assert refused.value.code == "NO_PATIENT_DATA"


def test_history_is_not_for_a_query_restricted_scope_and_a_count_is_an_access(
    records: HealthRecords,
) -> None:
    from careledger.health.history import history

    labs_only = Caller("lab-app", "st-mary", frozenset({SYSTEM}),
                       parse_scopes("system/Observation.rs?category=laboratory"),
                       app="lab-app")  # fmt: skip
    with pytest.raises(Forbidden) as refused:
        history(records, labs_only, ["Observation"], since_ms=None, at=None, count=10,
                offset=0, purpose="TREAT")  # fmt: skip
    assert refused.value.code == "SCOPE"
    # a page that shows nothing still counts: every counted record is in an access event
    made = records.create(DR, observation("patient-0003"), patient_of=patient_id)
    before = len(records.access_log(DR_ADMIN, "patient-0003"))
    page = history(records, DR, ["Observation"], since_ms=None, at=None, count=0, offset=0,
                   purpose="TREAT")  # fmt: skip
    assert page.page == [] and page.total > 0
    log = records.access_log(DR_ADMIN, "patient-0003")
    assert len(log) > before and made.record_id in log[-1]["records"]


@pytest.mark.parametrize(
    ("entity", "code"),
    [
        ({"reference": "http://elsewhere.example/fhir/Patient/patient-0001"}, "BAD_MEMBER"),
        ({"type": "Patient", "identifier": {"value": "MRN-1"}}, "BAD_MEMBER"),
        ({"reference": "Patient?identifier=MRN-1"}, "BAD_MEMBER"),
        ({"reference": "Patient/no-such-patient"}, "UNKNOWN_PATIENT"),
    ],
)
def test_a_groups_patients_are_named_alike_for_every_reader(
    records: HealthRecords, entity: dict, code: str
) -> None:
    """From a review: a member named by an absolute URL was skipped by the export and by its
    check alike, so an export missing that patient proved complete."""
    with pytest.raises(ValidationError) as refused:
        make(records, {"resourceType": "Group", "type": "person", "actual": True,
                       "member": [{"entity": entity}]})  # fmt: skip
    assert refused.value.code == code
