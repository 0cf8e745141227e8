"""EPCIS 2.0 capture-document validation against the OpenEPCIS test resources (Apache-2.0).

Vectors: tests/vectors/openepcis/Capture (Documents = must accept, Events = single events,
Invalid = must reject). The GS1 standard examples have no open licence and are read from
../shared/corpora/gs1-epcis at test time only, never copied.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from careledger.errors import ValidationError
from careledger.supply import epcis_validate as ev
from careledger.supply.epcis_validate import (
    CBV_BIZSTEPS,
    CBV_DISPOSITIONS,
    EpcisRejected,
    EventError,
    validate_document,
    validate_event,
)
from tests.support.vectors import load_json, vector_path

CAPTURE = ("openepcis", "Capture")
DOCUMENTS = sorted(p.name for p in vector_path(*CAPTURE, "Documents").glob("*.json"))
EVENTS = sorted(p.name for p in vector_path(*CAPTURE, "Events").glob("*.json"))
INVALID = sorted(p.name for p in vector_path(*CAPTURE, "Invalid").glob("*.json"))

# "Valid" OpenEPCIS documents that this validator refuses, with the errors it must name.
KNOWN_REFUSED_DOCUMENTS: dict[str, set[tuple[int | None, str, str]]] = {
    # Fails the GS1 JSON Schema: two sensorReports without the required "type" (known upstream).
    # Its event 12 also carries a GRAI Digital Link with a malformed key (18 digits, no leading 0).
    "SensorData_with_combined_events.json": {
        (8, "epcisBody.eventList[8].sensorElementList[0].sensorReport[0]", "SCHEMA"),
        (8, "epcisBody.eventList[8].sensorElementList[0].sensorReport[1]", "SCHEMA"),
        (12, "epcisBody.eventList[12].epcList[0]", "BAD_EPC"),
    },
    # Passes the schema, but its GRAI .../8003/030013450007718765 has check digit 7; GS1 mod-10
    # gives 1. A drug-traceability ledger must not accept a GS1 key with a wrong check digit.
    "Combination_of_different_event.json": {
        (0, "epcisBody.eventList[0].epcList[0]", "BAD_EPC"),
    },
}

# Every must-reject document and the errors (index, path, code) it must at least produce.
EXPECTED_INVALID: dict[str, set[tuple[int | None, str, str]]] = {
    "Combination_of_events_with_missing_mandatory_fields.json": {
        (0, "epcisBody.eventList[0]", "SCHEMA"),
        (1, "epcisBody.eventList[1]", "SCHEMA"),
        (1, "epcisBody.eventList[1].eventTimeZoneOffset", "BAD_TIME_ZONE_OFFSET"),
    },
    "Combination_of_multiple_invalid_fields.json": {
        (0, "epcisBody.eventList[0].bizStep", "UNKNOWN_BIZSTEP"),
        (1, "epcisBody.eventList[1].disposition", "UNKNOWN_DISPOSITION"),
        (3, "epcisBody.eventList[3].ilmd.materialType", "EXTENSION_WITHOUT_NAMESPACE"),
        (4, "epcisBody.eventList[4].action", "SCHEMA"),
        (4, "epcisBody.eventList[4].eventTime", "SCHEMA"),
        (4, "epcisBody.eventList[4].eventTime", "BAD_EVENT_TIME"),
    },
    "EPCISDocument_without_context.json": {(None, "", "SCHEMA")},
    "ObjectEvent_with_invalid_action.json": {(0, "epcisBody.eventList[0].action", "SCHEMA")},
    "ObjectEvent_with_invalid_certificationInfo.json": {
        (0, "epcisBody.eventList[0].certificationInfo", "SCHEMA")
    },
    "ObjectEvent_with_invalid_eventTime_format.json": {
        (0, "epcisBody.eventList[0].eventTime", "SCHEMA"),
        (0, "epcisBody.eventList[0].eventTime", "BAD_EVENT_TIME"),
    },
    "ObjectEvent_with_quantity_as_text.json": {
        (0, "epcisBody.eventList[0].quantityList[0].quantity", "SCHEMA")
    },
    "ObjectEvent_with_unknown_field_in_quantityList.json": {
        (0, "epcisBody.eventList[0].quantityList[0]", "SCHEMA")
    },
    "ObjectEvent_without_action_and_eventTime.json": {
        (0, "epcisBody.eventList[0]", "SCHEMA"),
        (0, "epcisBody.eventList[0].eventTime", "BAD_EVENT_TIME"),
        (0, "epcisBody.eventList[0].eventTimeZoneOffset", "BAD_TIME_ZONE_OFFSET"),
    },
    "ObjectEvent_without_identifier_list.json": {(0, "epcisBody.eventList[0]", "SCHEMA")},
    # The five that pass the JSON Schema and fail only CBV vocabulary / namespace rules. For
    # these the error set is exact.
    "Combination_of_non_standard_bizStep_and_disposition.json": {
        (0, "epcisBody.eventList[0].bizStep", "UNKNOWN_BIZSTEP"),
        (1, "epcisBody.eventList[1].disposition", "UNKNOWN_DISPOSITION"),
    },
    "ObjectEvent_with_ilmd_field_without_namespace.json": {
        (0, "epcisBody.eventList[0].ilmd.materialType", "EXTENSION_WITHOUT_NAMESPACE")
    },
    "ObjectEvent_with_non_standard_bizStep.json": {
        (0, "epcisBody.eventList[0].bizStep", "UNKNOWN_BIZSTEP")
    },
    "ObjectEvent_with_non_standard_bizStep_in_second_event.json": {
        (1, "epcisBody.eventList[1].bizStep", "UNKNOWN_BIZSTEP")
    },
    "ObjectEvent_with_non_standard_disposition.json": {
        (0, "epcisBody.eventList[0].disposition", "UNKNOWN_DISPOSITION")
    },
}
SEMANTIC_ONLY = {
    "Combination_of_non_standard_bizStep_and_disposition.json",
    "ObjectEvent_with_ilmd_field_without_namespace.json",
    "ObjectEvent_with_non_standard_bizStep.json",
    "ObjectEvent_with_non_standard_bizStep_in_second_event.json",
    "ObjectEvent_with_non_standard_disposition.json",
}


def _refusal(doc: object) -> EpcisRejected:
    with pytest.raises(EpcisRejected) as info:
        validate_document(doc)
    return info.value


def _triples(exc: EpcisRejected) -> set[tuple[int | None, str, str]]:
    return {(e.index, e.path, e.code) for e in exc.errors}


def _minimal(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": "2026-07-22T06:45:00+02:00",
        "eventTimeZoneOffset": "+02:00",
        "action": "OBSERVE",
        "epcList": ["urn:epc:id:sgtin:0614141.107346.2017"],
    }
    event.update(fields)
    return {
        "@context": [
            "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
            {"ex": "https://ns.example.com/epcis/"},
        ],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2026-07-22T10:30:00Z",
        "epcisBody": {"eventList": [event]},
    }


# --------------------------------------------------------------------------------------------
# The corpus


def test_corpus_is_complete() -> None:
    assert (len(DOCUMENTS), len(EVENTS), len(INVALID)) == (38, 5, 15)
    assert set(INVALID) == set(EXPECTED_INVALID)
    assert set(KNOWN_REFUSED_DOCUMENTS) <= set(DOCUMENTS)


@pytest.mark.parametrize("name", [n for n in DOCUMENTS if n not in KNOWN_REFUSED_DOCUMENTS])
def test_valid_capture_document_is_accepted(name: str) -> None:
    doc = load_json(*CAPTURE, "Documents", name)
    events = validate_document(doc)
    assert events == doc["epcisBody"]["eventList"]
    assert events


@pytest.mark.parametrize("name", sorted(KNOWN_REFUSED_DOCUMENTS))
def test_known_bad_valid_document_is_refused(name: str) -> None:
    exc = _refusal(load_json(*CAPTURE, "Documents", name))
    assert _triples(exc) == KNOWN_REFUSED_DOCUMENTS[name]


def test_sensor_data_combined_events_names_missing_type() -> None:
    exc = _refusal(load_json(*CAPTURE, "Documents", "SensorData_with_combined_events.json"))
    schema = [e for e in exc.errors if e.code == "SCHEMA"]
    assert schema and all("'type' is a required property" in e.message for e in schema)


@pytest.mark.parametrize("name", EVENTS)
def test_single_event_is_accepted(name: str) -> None:
    event = load_json(*CAPTURE, "Events", name)
    assert validate_document(event) == [event]
    validate_event(event)


@pytest.mark.parametrize("name", INVALID)
def test_invalid_document_is_refused(name: str) -> None:
    exc = _refusal(load_json(*CAPTURE, "Invalid", name))
    assert exc.code == "EPCIS_INVALID"
    got = _triples(exc)
    assert EXPECTED_INVALID[name] <= got
    if name in SEMANTIC_ONLY:
        assert got == EXPECTED_INVALID[name]
        assert "SCHEMA" not in exc.codes


def test_second_event_is_named_by_index() -> None:
    exc = _refusal(
        load_json(*CAPTURE, "Invalid", "ObjectEvent_with_non_standard_bizStep_in_second_event.json")
    )
    (error,) = exc.errors
    assert error == EventError(
        1,
        "epcisBody.eventList[1].bizStep",
        "UNKNOWN_BIZSTEP",
        error.message,
    )
    assert "'transforming'" in error.message and "bizStep" in error.message


# --------------------------------------------------------------------------------------------
# Rules one by one


def test_rejection_is_a_validation_error() -> None:
    exc = _refusal(_minimal(bizStep="transforming"))
    assert isinstance(exc, ValidationError)
    assert exc.http_status == 400
    assert "UNKNOWN_BIZSTEP" in exc.message


@pytest.mark.parametrize(
    "value",
    [
        "shipping",
        "https://ref.gs1.org/cbv/BizStep-shipping",
        "cbv:BizStep-shipping",
        "https://example.com/bizStep/inspecting",  # a user vocabulary URI
        "urn:example:bizstep:triage",
        "ex:triage",  # a CURIE with a prefix declared in @context
    ],
)
def test_bizstep_forms_accepted(value: str) -> None:
    validate_document(_minimal(bizStep=value))


@pytest.mark.parametrize(
    "value",
    [
        "transforming",
        "Shipping",
        "https://ref.gs1.org/cbv/BizStep-transforming",
        "cbv:BizStep-transforming",
        "undeclared:triage",
    ],
)
def test_bizstep_nonstandard_refused(value: str) -> None:
    exc = _refusal(_minimal(bizStep=value))
    assert _triples(exc) == {(0, "epcisBody.eventList[0].bizStep", "UNKNOWN_BIZSTEP")}


@pytest.mark.parametrize(
    "value",
    ["in_transit", "https://ref.gs1.org/cbv/Disp-in_transit", "cbv:Disp-in_transit"],
)
def test_disposition_forms_accepted(value: str) -> None:
    validate_document(_minimal(disposition=value))


@pytest.mark.parametrize(
    ("field", "value", "codes"),
    [
        ("bizStep", "urn:epcglobal:cbv:bizstep:shipping", {"SCHEMA"}),
        ("bizStep", "urn:epcglobal:cbv:bizstep:transforming", {"SCHEMA", "UNKNOWN_BIZSTEP"}),
        ("disposition", "urn:epcglobal:cbv:disp:in_transit", {"SCHEMA"}),
        ("disposition", "urn:epcglobal:cbv:disp:in_transport", {"SCHEMA", "UNKNOWN_DISPOSITION"}),
    ],
)
def test_epcis1_urn_forms_refused_by_schema(field: str, value: str, codes: set[str]) -> None:
    # The EPCIS 2.0 JSON Schema ("vocab-other-uri") forbids urn:epcglobal:cbv values: the JSON /
    # JSON-LD binding writes CBV values as bare words or Web URIs. The semantic layer still
    # recognises the 1.x form, so a non-standard word gets its precise code as well.
    exc = _refusal(_minimal(**{field: value}))
    assert exc.codes == codes
    assert {e.path for e in exc.errors} == {f"epcisBody.eventList[0].{field}"}


def test_persistent_disposition_checked() -> None:
    doc = _minimal(persistentDisposition={"set": ["completeness_verified"], "unset": ["lost"]})
    exc = _refusal(doc)
    assert _triples(exc) == {
        (0, "epcisBody.eventList[0].persistentDisposition.unset[0]", "UNKNOWN_DISPOSITION")
    }


def test_extensions_need_declared_namespace() -> None:
    validate_document(_minimal(**{"ex:batchNote": {"free": "nested keys are not checked"}}))
    validate_document(_minimal(action="ADD", ilmd={"ex:lot": "A1", "cbvmda:lotNumber": "A1"}))
    exc = _refusal(_minimal(action="ADD", ilmd={"zz:lot": "A1", "lot": "A1"}))
    assert _triples(exc) == {
        (0, "epcisBody.eventList[0].ilmd.zz:lot", "EXTENSION_WITHOUT_NAMESPACE"),
        (0, "epcisBody.eventList[0].ilmd.lot", "EXTENSION_WITHOUT_NAMESPACE"),
    }
    exc = _refusal(_minimal(readPoint={"id": "urn:epc:id:sgln:0614141.07346.1234", "room": "3"}))
    assert (0, "epcisBody.eventList[0].readPoint.room", "EXTENSION_WITHOUT_NAMESPACE") in _triples(
        exc
    )


def test_event_level_extension_without_namespace() -> None:
    exc = _refusal(_minimal(batchNote="x"))
    path = "epcisBody.eventList[0].batchNote"
    assert (0, path, "EXTENSION_WITHOUT_NAMESPACE") in _triples(exc)


def test_prefix_declared_in_event_context() -> None:
    doc = _minimal(**{"@context": [{"loc": "https://ns.example.org/"}], "loc:ward": "7"})
    validate_document(doc)


def test_field_of_another_event_type_is_an_extension() -> None:
    exc = _refusal(_minimal(childEPCs=["urn:epc:id:sgtin:0614141.107346.2018"]))
    assert (0, "epcisBody.eventList[0].childEPCs", "EXTENSION_WITHOUT_NAMESPACE") in _triples(exc)


def test_bad_epcs() -> None:
    doc = _minimal(
        epcList=[
            "https://id.gs1.org/01/09521141012345/21/2017",
            "https://id.gs1.org/01/09521141012346/21/2017",  # bad check digit
            "urn:uuid:2f7c8e5c-1d1f-4f8c-9b7a-2c1f1f1f1f1f",  # not a GS1 EPC
        ]
    )
    exc = _refusal(doc)
    assert _triples(exc) == {
        (0, "epcisBody.eventList[0].epcList[1]", "BAD_EPC"),
        (0, "epcisBody.eventList[0].epcList[2]", "BAD_EPC"),
    }
    # Messages name the field and the identifier error code, not the identifier.
    assert all("09521141012346" not in e.message for e in exc.errors)
    assert "BAD_CHECK_DIGIT" in exc.errors[0].message


def test_parent_and_transformation_epcs() -> None:
    doc = _minimal()
    event = doc["epcisBody"]["eventList"][0]
    del event["epcList"], event["action"]
    event.update(
        type="TransformationEvent",
        inputEPCList=["urn:epc:id:sgtin:0614141.107346.2017"],
        outputEPCList=["urn:epc:id:sgtin:0614141.107346"],  # not a pure identity
    )
    exc = _refusal(doc)
    assert _triples(exc) == {(0, "epcisBody.eventList[0].outputEPCList[0]", "BAD_EPC")}
    doc = _minimal()
    event = doc["epcisBody"]["eventList"][0]
    del event["epcList"]
    event.update(type="AggregationEvent", parentID="urn:epc:id:sscc:0614141.1234567891")
    event["childEPCs"] = ["urn:epc:id:sgtin:0614141.107346.2017"]
    validate_document(doc)
    event["parentID"] = "urn:epc:id:sscc:0614141"
    assert _triples(_refusal(doc)) == {(0, "epcisBody.eventList[0].parentID", "BAD_EPC")}


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("eventTime", "2026-07-22 06:45:00+02:00", "BAD_EVENT_TIME"),
        ("eventTime", "2026-02-30T06:45:00Z", "BAD_EVENT_TIME"),
        ("eventTime", "2026-07-22T06:45:00", "BAD_EVENT_TIME"),
        ("eventTimeZoneOffset", "+15:00", "BAD_TIME_ZONE_OFFSET"),
        ("eventTimeZoneOffset", "+0200", "BAD_TIME_ZONE_OFFSET"),
        ("eventTimeZoneOffset", "-12:30", "BAD_TIME_ZONE_OFFSET"),
    ],
)
def test_bad_times(field: str, value: str, code: str) -> None:
    exc = _refusal(_minimal(**{field: value}))
    assert (0, f"epcisBody.eventList[0].{field}", code) in _triples(exc)


def test_good_times() -> None:
    validate_document(_minimal(eventTime="2026-07-22T04:45:00.123Z", eventTimeZoneOffset="-05:30"))


def test_every_error_is_listed() -> None:
    doc = _minimal(
        action="ADD", bizStep="transforming", disposition="in_transport", ilmd={"lot": "x"}
    )
    second = copy.deepcopy(doc["epcisBody"]["eventList"][0])
    second.update(action="CREATE", eventTimeZoneOffset="2h")
    del second["ilmd"], second["bizStep"], second["disposition"]
    doc["epcisBody"]["eventList"].append(second)
    exc = _refusal(doc)
    assert {
        (0, "UNKNOWN_BIZSTEP"),
        (0, "UNKNOWN_DISPOSITION"),
        (0, "EXTENSION_WITHOUT_NAMESPACE"),
        (1, "SCHEMA"),
        (1, "BAD_TIME_ZONE_OFFSET"),
    } <= {(e.index, e.code) for e in exc.errors}


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ([], "SCHEMA"),
        ("EPCISDocument", "SCHEMA"),
        ({"type": "EPCISQueryDocument", "@context": []}, "NOT_A_CAPTURE_DOCUMENT"),
        ({"type": "Whatever", "@context": []}, "SCHEMA"),
    ],
)
def test_not_a_capture_document(doc: object, code: str) -> None:
    assert code in _refusal(doc).codes


def test_unsupported_event_type_in_list() -> None:
    doc = _minimal(type="https://ns.example.com/epcis/CustomEvent")
    assert (0, "epcisBody.eventList[0].type", "UNSUPPORTED_EVENT_TYPE") in _triples(_refusal(doc))


def test_validate_event_rejects_documents() -> None:
    with pytest.raises(EpcisRejected) as info:
        validate_event(_minimal())
    assert info.value.codes == {"UNSUPPORTED_EVENT_TYPE"}
    event = load_json(*CAPTURE, "Events", "ObjectEvent.json")
    event["bizStep"] = "transforming"
    with pytest.raises(EpcisRejected) as info:
        validate_event(event)
    assert _triples(info.value) == {(None, "bizStep", "UNKNOWN_BIZSTEP")}


# --------------------------------------------------------------------------------------------
# The shipped schema and the code lists


def test_schema_is_offline_and_agrees_with_code_lists() -> None:
    schema_path = Path(ev.__file__).with_name("schema") / "EPCIS-JSON-Schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    refs.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    assert refs and all(r.startswith("#/") for r in refs)
    with pytest.raises(LookupError):
        ev._refuse_retrieval("https://example.com/schema.json")
    defs = schema["definitions"]
    assert set(defs["bizStep"]["anyOf"][1]["enum"]) == CBV_BIZSTEPS
    assert set(defs["disposition"]["anyOf"][1]["enum"]) == CBV_DISPOSITIONS
    assert (len(CBV_BIZSTEPS), len(CBV_DISPOSITIONS)) == (41, 33)
    assert (schema_path.parent / "NOTICE").is_file()


# --------------------------------------------------------------------------------------------
# GS1 standard examples (read in place, never copied: no open licence)

GS1_EPCIS = Path(
    os.environ.get(
        "CARELEDGER_GS1_EPCIS_CORPUS",
        Path(__file__).resolve().parents[4] / "shared" / "corpora" / "gs1-epcis",
    )
)
# Every example is accepted except these, refused with exactly these codes.
GS1_EXPECTED_REFUSED = {"EPCISQueryDocument.jsonld": {"NOT_A_CAPTURE_DOCUMENT"}}


def test_gs1_standard_examples(capsys: pytest.CaptureFixture[str]) -> None:
    folder = GS1_EPCIS / "JSON"
    if not folder.is_dir():
        pytest.skip(f"GS1 EPCIS examples not present at {folder} (not committed: no open licence)")
    outcomes: dict[str, str] = {}
    refused: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.jsonld")):
        name = path.relative_to(folder).as_posix()
        doc = json.loads(path.read_text(encoding="utf-8"))
        try:
            events = validate_document(doc)
        except EpcisRejected as exc:
            refused[name] = set(exc.codes)
            outcomes[name] = "refused " + ",".join(sorted(exc.codes))
        else:
            outcomes[name] = f"accepted ({len(events)} events)"
    with capsys.disabled():
        print(
            f"\nGS1 EPCIS 2.0 examples: {len(outcomes) - len(refused)} accepted, "
            f"{len(refused)} refused"
        )
        for name, outcome in outcomes.items():
            print(f"  {name}: {outcome}")
    assert len(outcomes) >= 40
    assert all(codes and "EPCIS_INVALID" not in codes for codes in refused.values())
    assert refused == GS1_EXPECTED_REFUSED
