"""Structured trial eligibility, evaluated over one patient's FHIR R4 resources. Pure.

A sponsor states criteria as codes, never as free text, so every custodian evaluates them the
same way over its own records and nothing but a yes or no per patient comes out:

    {"age": [18, 75], "sex": "FEMALE",
     "conditions": [{"system": "http://snomed.info/sct", "code": "44054006"}],
     "exclude_conditions": [...], "medications": [...], "exclude_medications": [...],
     "labs": [{"code": "4548-4", "min": 7.0, "max": 10.5, "unit": "%"}]}

``conditions`` and ``medications`` are any-of lists; a lab criterion holds when the patient's
latest final value of that LOINC code lies in the closed range. ICD-10 codes are hierarchical
by prefix (E11 covers E11.9); SNOMED CT and RxNorm match exactly, since subsumption needs a
terminology server this node does not have. Unknown facts never make a patient eligible: no
birth date fails an age criterion, no lab value fails a lab criterion.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
ALIASES = {
    "snomed": SNOMED,
    "sct": SNOMED,
    "icd10": ICD10,
    "icd-10": ICD10,
    "icd10cm": ICD10CM,
    "icd-10-cm": ICD10CM,
    "rxnorm": RXNORM,
    "loinc": LOINC,
}
HIERARCHICAL = frozenset({ICD10, ICD10CM})
SEXES = {"ALL": None, "FEMALE": "female", "MALE": "male"}
FIELDS = frozenset(
    {
        "age",
        "sex",
        "conditions",
        "exclude_conditions",
        "medications",
        "exclude_medications",
        "labs",
    }
)
MAX_CODES = 200
INACTIVE_CONDITION = frozenset({"inactive", "remission", "resolved"})
VOID = frozenset({"refuted", "entered-in-error"})
ACTIVE_MEDICATION = frozenset({"active", "intended", "on-hold"})
FINAL_OBSERVATION = frozenset({"final", "amended", "corrected"})
MEDICATION_TYPES = frozenset({"MedicationStatement", "MedicationRequest"})
TYPES = frozenset({"Patient", "Condition", "Observation", *MEDICATION_TYPES})


class CriteriaError(ValueError):
    """Criteria that cannot be evaluated; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Code = tuple[str, str]


@dataclass(frozen=True)
class Lab:
    code: Code
    low: float | None
    high: float | None
    unit: str | None


@dataclass(frozen=True)
class Criteria:
    age: tuple[int, int] | None = None
    sex: str | None = None
    conditions: frozenset[Code] = frozenset()
    exclude_conditions: frozenset[Code] = frozenset()
    medications: frozenset[Code] = frozenset()
    exclude_medications: frozenset[Code] = frozenset()
    labs: tuple[Lab, ...] = ()


def _system(raw: object) -> str:
    if not isinstance(raw, str) or not raw:
        raise CriteriaError("BAD_CRITERIA", "a code needs its system")
    return ALIASES.get(raw.lower(), raw)


def _norm(system: str, code: str) -> str:
    return code.replace(".", "").upper() if system in HIERARCHICAL else code


def _codes(raw: object, what: str) -> frozenset[Code]:
    """Codes from [{system, code}] or CodeableConcepts ({coding: [...]}), any of which counts."""
    if raw is None:
        return frozenset()
    if not isinstance(raw, list) or len(raw) > MAX_CODES:
        raise CriteriaError("BAD_CRITERIA", f"{what} is a list of at most {MAX_CODES} codes")
    out: set[Code] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise CriteriaError("BAD_CRITERIA", f"each of {what} is a code object")
        codings = item.get("coding") if "coding" in item else [item]
        if not isinstance(codings, list):
            raise CriteriaError("BAD_CRITERIA", f"{what}: coding is a list")
        found = [c for c in codings if isinstance(c, dict) and isinstance(c.get("code"), str)]
        if not found:
            text = item.get("text", "")
            raise CriteriaError(
                "NOT_COMPUTABLE",
                f"{what}: {text!r} has no code; give a SNOMED CT, ICD-10 or RxNorm code",
            )
        for coding in found:
            system = _system(coding.get("system"))
            out.add((system, _norm(system, coding["code"])))
    return frozenset(out)


def _bound(raw: object, what: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise CriteriaError("BAD_CRITERIA", f"{what} is a number")
    return float(raw)


def _labs(raw: object) -> tuple[Lab, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_CODES:
        raise CriteriaError("BAD_CRITERIA", "labs is a list of {code, min, max}")
    out = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("code"), str):
            raise CriteriaError("BAD_CRITERIA", "a lab criterion names its LOINC code")
        unknown = set(item) - {"system", "code", "min", "max", "unit"}
        if unknown:
            raise CriteriaError("BAD_CRITERIA", f"unknown lab fields {sorted(unknown)}")
        low, high = _bound(item.get("min"), "min"), _bound(item.get("max"), "max")
        if low is None and high is None:
            raise CriteriaError("BAD_CRITERIA", f"lab {item['code']} needs a min or a max")
        if low is not None and high is not None and low > high:
            raise CriteriaError("BAD_CRITERIA", f"lab {item['code']}: min is above max")
        unit = item.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise CriteriaError("BAD_CRITERIA", "a lab unit is a UCUM text")
        out.append(Lab((_system(item.get("system", LOINC)), item["code"]), low, high, unit))
    return tuple(out)


def parse_criteria(raw: Mapping[str, Any]) -> Criteria:
    """Checked criteria, or CriteriaError naming what cannot be evaluated."""
    if not isinstance(raw, Mapping):
        raise CriteriaError("BAD_CRITERIA", "criteria are an object")
    unknown = set(raw) - FIELDS
    if unknown:
        raise CriteriaError("BAD_CRITERIA", f"unknown criteria {sorted(unknown)}")
    age = raw.get("age")
    ages: tuple[int, int] | None = None
    if age is not None:
        if (
            not isinstance(age, list | tuple)
            or len(age) != 2
            or not all(type(a) is int and 0 <= a <= 150 for a in age)
            or age[0] > age[1]
        ):
            raise CriteriaError("BAD_CRITERIA", "age is [min, max] in whole years, 0..150")
        ages = (age[0], age[1])
    sex = raw.get("sex", "ALL")
    if sex not in SEXES:
        raise CriteriaError("BAD_CRITERIA", f"sex is one of {sorted(SEXES)}")
    criteria = Criteria(
        age=ages,
        sex=SEXES[sex],
        conditions=_codes(raw.get("conditions"), "conditions"),
        exclude_conditions=_codes(raw.get("exclude_conditions"), "exclude_conditions"),
        medications=_codes(raw.get("medications"), "medications"),
        exclude_medications=_codes(raw.get("exclude_medications"), "exclude_medications"),
        labs=_labs(raw.get("labs")),
    )
    if criteria == Criteria():
        raise CriteriaError("BAD_CRITERIA", "criteria select nobody in particular: give one")
    return criteria


# -- facts about one patient ---------------------------------------------------------------------


@dataclass
class Facts:
    """What the criteria look at, gathered from one patient's resources."""

    birth: date | None = None
    gender: str | None = None
    conditions: set[Code] = field(default_factory=set)
    medications: set[Code] = field(default_factory=set)
    labs: dict[Code, tuple[datetime, float, str | None]] = field(default_factory=dict)


def _coded(concept: object) -> list[Code]:
    if not isinstance(concept, dict):
        return []
    out = []
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            system = str(coding.get("system") or "")
            out.append((system, _norm(system, coding["code"])))
    return out


def _status(concept: object) -> str | None:
    codes = _coded(concept)
    return codes[0][1] if codes else None


def _instant(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        if len(text) == 4:
            text += "-01-01"
        elif len(text) == 7:
            text += "-01"
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def gather(resources: Iterable[Mapping[str, Any]]) -> Facts:
    facts = Facts()
    for res in resources:
        kind = res.get("resourceType")
        if kind == "Patient":
            born = _instant(res.get("birthDate"))
            facts.birth = born.date() if born else None
            gender = res.get("gender")
            facts.gender = gender if isinstance(gender, str) else None
        elif kind == "Condition":
            if _status(res.get("clinicalStatus")) in INACTIVE_CONDITION:
                continue
            if _status(res.get("verificationStatus")) in VOID:
                continue
            facts.conditions.update(_coded(res.get("code")))
        elif kind in MEDICATION_TYPES:
            if res.get("status") in ACTIVE_MEDICATION:
                facts.medications.update(_coded(res.get("medicationCodeableConcept")))
        elif kind == "Observation":
            _add_lab(facts, res)
    return facts


def _add_lab(facts: Facts, res: Mapping[str, Any]) -> None:
    if res.get("status") not in FINAL_OBSERVATION:
        return
    quantity = res.get("valueQuantity")
    if not isinstance(quantity, dict):
        return
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    period = res.get("effectivePeriod")
    when = _instant(res.get("effectiveDateTime")) or _instant(
        period.get("start") if isinstance(period, dict) else res.get("issued")
    )
    if when is None:
        return
    unit = quantity.get("code") or quantity.get("unit")
    for code in _coded(res.get("code")):
        known = facts.labs.get(code)
        if known is None or known[0] < when:
            facts.labs[code] = (when, float(value), unit if isinstance(unit, str) else None)


def _age(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _any(wanted: frozenset[Code], held: set[Code]) -> bool:
    if wanted & held:
        return True
    for system, code in wanted:
        if system in HIERARCHICAL and any(s == system and c.startswith(code) for s, c in held):
            return True
    return False


def eligible(criteria: Criteria, facts: Facts, on: date) -> bool:
    """Whether a patient meets every criterion on ``on`` (the query's block date)."""
    if criteria.age is not None and not (
        facts.birth is not None and criteria.age[0] <= _age(facts.birth, on) <= criteria.age[1]
    ):
        return False
    if criteria.sex is not None and facts.gender != criteria.sex:
        return False
    if criteria.conditions and not _any(criteria.conditions, facts.conditions):
        return False
    if _any(criteria.exclude_conditions, facts.conditions):
        return False
    if criteria.medications and not _any(criteria.medications, facts.medications):
        return False
    if _any(criteria.exclude_medications, facts.medications):
        return False
    for lab in criteria.labs:
        latest = facts.labs.get(lab.code)
        if latest is None:
            return False
        _, value, unit = latest
        if lab.unit is not None and unit != lab.unit:
            return False
        if (lab.low is not None and value < lab.low) or (lab.high is not None and value > lab.high):
            return False
    return True
