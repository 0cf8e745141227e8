"""How a FHIR resource reads in a list: its date, a title, and a number to plot if it has one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_DATE_FIELDS = (
    "effectiveDateTime",
    "authoredOn",
    "recordedDate",
    "onsetDateTime",
    "occurrenceDateTime",
    "performedDateTime",
    "issued",
    "date",
    "birthDate",
)


def when(resource: Mapping[str, Any]) -> str:
    for name in _DATE_FIELDS:
        value = resource.get(name)
        if isinstance(value, str):
            return value[:10]
    for name in ("period", "effectivePeriod", "performedPeriod"):
        period = resource.get(name)
        if isinstance(period, dict) and isinstance(period.get("start"), str):
            return str(period["start"])[:10]
    return ""


def _concept_text(concept: object) -> str | None:
    if not isinstance(concept, dict):
        return None
    if isinstance(concept.get("text"), str):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            return str(coding["display"])
    return None


def title(resource: Mapping[str, Any]) -> str:
    for name in ("code", "medicationCodeableConcept", "vaccineCode", "type"):
        value = resource.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        text = _concept_text(value)
        if text:
            return text
    if resource.get("resourceType") == "Patient":
        names = resource.get("name") or [{}]
        given = " ".join(names[0].get("given") or [])
        return f"{given} {names[0].get('family', '')}".strip() or "Patient"
    return str(resource.get("resourceType", "Resource"))


def quantity(resource: Mapping[str, Any]) -> tuple[float, str] | None:
    value = resource.get("valueQuantity")
    if isinstance(value, dict) and isinstance(value.get("value"), int | float):
        return float(value["value"]), str(value.get("unit") or "")
    return None
