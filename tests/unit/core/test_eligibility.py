"""Eligibility criteria over one patient's FHIR resources: codes, ages, labs, exclusions."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger.core.eligibility import (
    ICD10,
    LOINC,
    RXNORM,
    SNOMED,
    CriteriaError,
    eligible,
    gather,
    parse_criteria,
)

TODAY = date(2026, 11, 24)


def patient(birth: str = "1970-06-15", gender: str = "female") -> dict[str, Any]:
    return {"resourceType": "Patient", "birthDate": birth, "gender": gender}


def condition(system: str, code: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"code": status}]},
        "code": {"coding": [{"system": system, "code": code}]},
    }


def med(code: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "MedicationStatement",
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
    }


def lab(code: str, value: float, when: str, unit: str = "%") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "code": unit},
    }


def check(raw: dict[str, Any], *resources: dict[str, Any]) -> bool:
    return eligible(parse_criteria(raw), gather(resources), TODAY)


def test_codes_ages_sex_and_exclusions() -> None:
    diabetic = [patient(), condition(ICD10, "E11.9"), med("860975")]
    assert check({"conditions": [{"system": "icd10", "code": "E11"}]}, *diabetic)
    assert not check({"conditions": [{"system": "icd10", "code": "E10"}]}, *diabetic)
    assert check({"age": [56, 56], "sex": "FEMALE"}, *diabetic)  # 56 on 2026-11-24
    assert not check({"age": [57, 80]}, *diabetic)
    assert not check({"sex": "MALE"}, *diabetic)
    assert not check({"age": [18, 99]}, condition(ICD10, "E11"))  # no birth date: not eligible
    assert check({"medications": [{"system": "rxnorm", "code": "860975"}]}, *diabetic)
    assert not check(
        {"age": [18, 99], "exclude_medications": [{"system": RXNORM, "code": "860975"}]}, *diabetic
    )
    resolved = [patient(), condition(SNOMED, "44054006", status="resolved")]
    assert not check({"conditions": [{"system": SNOMED, "code": "44054006"}]}, *resolved)
    stopped = [patient(), med("860975", status="stopped")]
    assert not check({"medications": [{"system": RXNORM, "code": "860975"}]}, *stopped)
    concept = {"coding": [{"system": SNOMED, "code": "44054006"}], "text": "Type 2 diabetes"}
    assert check({"conditions": [concept]}, patient(), condition(SNOMED, "44054006"))


def test_the_latest_final_lab_value_decides() -> None:
    labs = [
        patient(),
        lab("4548-4", 9.1, "2025-01-10T08:00:00Z"),
        lab("4548-4", 6.2, "2026-03-01"),
    ]
    hba1c = {"code": "4548-4", "min": 7.0, "max": 10.5, "unit": "%"}
    assert not check({"labs": [hba1c]}, *labs)
    assert check({"labs": [{**hba1c, "min": 6.0}]}, *labs)
    assert not check({"labs": [{**hba1c, "min": 6.0, "unit": "mmol/mol"}]}, *labs)
    assert not check({"labs": [{"code": "2339-0", "min": 1}]}, *labs)  # never measured


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({}, "BAD_CRITERIA"),
        ({"age": [70, 18]}, "BAD_CRITERIA"),
        ({"sex": "X"}, "BAD_CRITERIA"),
        ({"conditions": [{"text": "Breast cancer"}]}, "NOT_COMPUTABLE"),
        ({"labs": [{"code": "4548-4"}]}, "BAD_CRITERIA"),
        ({"labs": [{"code": "4548-4", "min": float("nan")}]}, "BAD_CRITERIA"),
        ({"smoker": True}, "BAD_CRITERIA"),
    ],
)
def test_criteria_that_cannot_be_evaluated_are_refused(raw: dict[str, Any], code: str) -> None:
    with pytest.raises(CriteriaError) as err:
        parse_criteria(raw)
    assert err.value.code == code


@given(st.dates(date(1900, 1, 1), TODAY), st.integers(0, 150), st.integers(0, 150))
def test_age_bounds_are_whole_years_inclusive(born: date, low: int, high: int) -> None:
    low, high = min(low, high), max(low, high)
    age = TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))
    assert check({"age": [low, high]}, patient(born.isoformat())) == (low <= age <= high)
