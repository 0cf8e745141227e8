"""R4 search semantics over resources as JSON: each case is one the old search got wrong or a
rule of http://hl7.org/fhir/R4/search.html."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger.fhir.outcome import FhirError
from careledger.fhir.search import matches, parameters, parse_date, parse_search, sort_key

NOW = datetime(2026, 12, 6, tzinfo=UTC)
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def obs(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", **fields}


def hr(when: str, value: float = 72) -> dict[str, Any]:
    return obs(
        code={"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        category=[{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        effectiveDateTime=when,
        issued="2026-01-01T00:00:00Z",
        valueQuantity={"value": value, "unit": "/min", "system": "http://unitsofmeasure.org",
                       "code": "/min"},
        subject={"reference": "Patient/p1"},
    )  # fmt: skip


def found(resource: dict[str, Any], query: str, kind: str = "Observation") -> bool:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")]
    request = parse_search(kind, pairs)  # type: ignore[arg-type]
    return matches(resource, request, now=NOW, base_url="https://ledger.example/fhir")


def refused(query: str, kind: str = "Observation") -> FhirError:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&")]
    with pytest.raises(FhirError) as caught:
        parse_search(kind, pairs)  # type: ignore[arg-type]
    return caught.value


# -- dates ----------------------------------------------------------------------------------


def test_dates_are_instants_compared_in_utc_not_strings() -> None:
    """10:15 at +01:00 is 09:15Z: before 09:30Z (the old search compared strings)."""
    resource = hr("2024-03-05T10:15:00+01:00")
    assert found(resource, "date=lt2024-03-05T09:30:00Z")
    assert not found(resource, "date=gt2024-03-05T09:30:00Z")
    assert found(resource, "date=2024-03-05")  # the day contains it
    assert found(resource, "date=2024-03")
    assert found(resource, "date=ge2024-03-05&date=le2024-03-05")


def test_observation_date_is_effective_not_issued() -> None:
    resource = hr("2020-05-01")
    assert not found(resource, "date=2026-01-01")  # that is when it was issued
    assert found(resource, "date=2020")


def test_periods_and_prefixes_follow_the_interval_rules() -> None:
    stay = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "period": {"start": "2024-01-10", "end": "2024-01-20"},
    }
    assert found(stay, "date=2024-01", "Encounter")  # wholly inside January
    assert not found(stay, "date=2024-01-15", "Encounter")  # eq: not inside one day
    assert found(stay, "date=ne2024-01-15", "Encounter")
    assert found(stay, "date=gt2024-01-15", "Encounter")  # goes on after the 15th
    assert found(stay, "date=lt2024-01-15", "Encounter")  # began before it
    assert found(stay, "date=sa2024-01-09", "Encounter")
    assert not found(stay, "date=sa2024-01-10", "Encounter")
    assert found(stay, "date=eb2024-01-21", "Encounter")
    assert found(stay, "date=ap2024-01-15", "Encounter")
    open_ended = {**stay, "period": {"start": "2024-01-10"}}
    assert found(open_ended, "date=gt2030-01-01", "Encounter")


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(min_value=-14, max_value=14),
)
def test_a_moment_is_the_same_in_any_time_zone(moment: datetime, hours: int) -> None:
    utc = moment.strftime("%Y-%m-%dT%H:%M:%S") + "Z"
    shifted = moment.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=hours)))
    sign = "+" if hours >= 0 else "-"
    local = shifted.strftime("%Y-%m-%dT%H:%M:%S") + f"{sign}{abs(hours):02d}:00"
    assert parse_date(utc) == parse_date(local)


def test_bad_dates_and_prefixes_are_refused() -> None:
    assert refused("date=2024-13-01").issues[0].expression == ("date",)
    assert refused("date=xx2024").issues
    assert refused("value-quantity=sa5").issues  # sa/eb are for dates


# -- tokens ---------------------------------------------------------------------------------


def test_tokens_match_system_and_code() -> None:
    resource = hr("2024-01-01")
    assert found(resource, f"code={LOINC}|8867-4")
    assert found(resource, "code=8867-4")
    assert found(resource, f"code={LOINC}|")
    assert not found(resource, "code=|8867-4")  # it has a system
    assert not found(resource, "code=http://snomed.info/sct|8867-4")
    assert found(resource, "code=1234-5,8867-4")  # OR
    assert found(resource, "category=vital-signs")
    assert not found(resource, "category=laboratory")


def test_status_is_a_filter_not_a_hint() -> None:
    stopped = {
        "resourceType": "MedicationRequest",
        "status": "stopped",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "amoxicillin"},
    }
    assert not found(stopped, "status=active", "MedicationRequest")
    assert found(stopped, "status=active,stopped", "MedicationRequest")


def test_not_and_text_modifiers() -> None:
    resource = hr("2024-01-01")
    assert not found(resource, "code:not=8867-4")
    assert found(resource, "code:not=1234-5")
    assert found(resource, "code:text=heart")
    assert not found(resource, "code:text=blood")


def test_identifier_of_type() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                     "code": "MR"}]},
                "system": "urn:oid:1.2.36.146.595.217.0.1",
                "value": "12345",
            }
        ],
    }  # fmt: skip
    assert found(patient, "identifier=urn:oid:1.2.36.146.595.217.0.1|12345", "Patient")
    assert found(
        patient,
        "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345",
        "Patient",
    )
    assert not found(
        patient,
        "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|12345",
        "Patient",
    )


# -- strings, references, quantities ---------------------------------------------------------


def test_strings_start_with_ignoring_case_and_accents() -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "Müller", "given": ["José"]}]}
    assert found(patient, "name=mull", "Patient")
    assert found(patient, "family=MULLER", "Patient")
    assert found(patient, "given=jose", "Patient")
    assert not found(patient, "name=ller", "Patient")
    assert found(patient, "name:contains=ller", "Patient")
    assert found(patient, "family:exact=Müller", "Patient")
    assert not found(patient, "family:exact=muller", "Patient")


def test_references_relative_absolute_and_typed() -> None:
    resource = hr("2024-01-01")
    assert found(resource, "patient=Patient/p1")
    assert found(resource, "patient=p1")
    assert found(resource, "subject=https://ledger.example/fhir/Patient/p1")
    assert found(resource, "subject:Patient=p1")
    assert not found(resource, "subject:Group=p1")
    assert not found(resource, "patient=p2")


def test_quantities_with_precision_and_units() -> None:
    resource = hr("2024-01-01", value=72.4)
    assert found(resource, "value-quantity=72")  # 72 means [71.5, 72.5)
    assert not found(resource, "value-quantity=72.0")  # [71.95, 72.05)
    assert found(resource, "value-quantity=gt70|http://unitsofmeasure.org|/min")
    assert not found(resource, "value-quantity=gt70|http://unitsofmeasure.org|mm[Hg]")
    assert found(resource, "value-quantity=le72.4")
    assert found(resource, "value-quantity=ap75")


def test_composite_code_value_quantity() -> None:
    bp = obs(
        code={"coding": [{"system": LOINC, "code": "85354-9"}]},
        component=[
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": {"value": 150, "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": {"value": 90, "code": "mm[Hg]"}},
        ],
    )  # fmt: skip
    assert found(bp, f"component-code-value-quantity={LOINC}|8480-6$gt140")
    # the two parts must hold on the same component: 8462-4 is 90, not above 140
    assert not found(bp, f"component-code-value-quantity={LOINC}|8462-4$gt140")


def test_missing() -> None:
    resource = hr("2024-01-01")
    assert found(resource, "value-string:missing=true")
    assert not found(resource, "value-quantity:missing=true")


# -- what is refused, and lenient handling ---------------------------------------------------


def test_unknown_parameters_modifiers_and_chains_are_refused_by_name() -> None:
    error = refused("colour=red&code:below=8867-4&subject.name=ana&_has:x=1")
    named = [i.expression for i in error.issues]
    assert named == [("colour",), ("code:below",), ("subject.name",), ("_has:x",)]
    assert error.code == "UNSUPPORTED_SEARCH" and error.http_status == 400


def test_lenient_handling_ignores_and_says_so() -> None:
    request = parse_search("Observation", [("colour", "red"), ("code", "8867-4")], lenient=True)
    assert [n for n, _ in request.ignored] == ["colour"]
    assert request.kept == [("code", "8867-4")]


def test_count_is_capped_not_refused() -> None:
    assert parse_search("Observation", [("_count", "100000")]).count == 1_000
    refused("_count=-1")


def test_sort_puts_the_latest_first_and_missing_last() -> None:
    request = parse_search("Observation", [("_sort", "-date")])
    ((param, descending),) = request.sort
    rows = [hr("2020-01-01"), obs(), hr("2024-06-01"), hr("2022-01-01")]
    rows.sort(key=lambda r: sort_key(r, param, descending), reverse=descending)
    assert [r.get("effectiveDateTime") for r in rows] == [
        "2024-06-01",
        "2022-01-01",
        "2020-01-01",
        None,
    ]


def test_includes_name_a_reference_parameter() -> None:
    request = parse_search("MedicationRequest", [("_include", "MedicationRequest:patient")])
    assert request.includes[0].param.code == "patient"
    refused("_include=MedicationRequest:status", "MedicationRequest")
    refused("_include=*", "MedicationRequest")


# -- every type ------------------------------------------------------------------------------

US_CORE = {
    "Patient": "_id identifier name family given birthdate gender",
    "Observation": "patient category code date status",
    "Condition": "patient category clinical-status code onset-date",
    "MedicationRequest": "patient status intent authoredon",
    "Encounter": "patient class date type status",
    "AllergyIntolerance": "patient clinical-status",
    "Procedure": "patient date code",
    "DiagnosticReport": "patient category code date",
    "DocumentReference": "patient category type date",
    "Immunization": "patient date status",
}


@pytest.mark.parametrize("kind", sorted(US_CORE))
def test_us_core_parameters_are_all_evaluated(kind: str) -> None:
    have = parameters(kind)
    for code in US_CORE[kind].split():
        assert code in have, f"{kind}?{code}"


def test_every_r4_type_has_id_and_last_updated() -> None:
    from careledger.fhir.search import _definitions

    types = {b for d in _definitions() for b in d["base"]} - {"Resource", "DomainResource"}
    assert len(types) == 133  # R4 types with search parameters of their own
    for kind in types:
        assert {"_id", "_lastUpdated"} <= set(parameters(kind)), kind


# -- edges an outside review found ---------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["9999", "9999-12", "9999-12-31", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"],
)
def test_every_date_r4_allows_parses(text: str) -> None:
    parsed = parse_date(text)
    assert parsed is not None and parsed[0] < parsed[1]


def test_a_no_end_period_is_indexed_and_found() -> None:
    from careledger.fhir.blind_terms import index_terms

    stay = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"code": "IMP"},
        "period": {"start": "2024-01-01", "end": "9999-12-31"},
    }
    assert "Encounter.date@wide" in index_terms(stay)
    assert found(stay, "date=gt2030-01-01", "Encounter")


def test_odd_numbers_are_refused_not_crashed_on() -> None:
    for query in ("_count=²", "_offset=²", "_at=²", "value-quantity=1e999999999",
                  "value-quantity=1e-999999999"):  # fmt: skip
        assert refused(query).code == "UNSUPPORTED_SEARCH", query
    huge = hr("2024-01-01")
    huge["valueQuantity"]["value"] = "1e999999999"
    assert not found(huge, "value-quantity=gt5")  # a value no lab writes is no match, no crash


def test_a_refusal_never_echoes_the_value_searched_for() -> None:
    """A search value may be PHI (a birthdate, a name): errors name the parameter only."""
    for query in ("birthdate=1970-13-31", "value-quantity=secret-41"):
        kind = "Patient" if query.startswith("birthdate") else "Observation"
        error = refused(query, kind)
        value = query.split("=", 1)[1]
        assert value not in str(error.operation_outcome()) and value not in error.message
