"""A patient summary document in the shape of the International Patient Summary (HL7 IPS IG,
FHIR R4), for sharing through a SMART Health Link.

The document is a ``Bundle`` of type ``document`` whose first entry is a ``Composition`` coded
LOINC 60591-5 "Patient summary Document". Its sections follow the IPS: medications (10160-0),
allergies (48765-2) and problems (11450-4) are required and say "no information" through
``emptyReason`` when empty; results (30954-2), immunizations (11369-6) and vital signs (8716-3)
appear when they have entries. Every section has a narrative (IPS requires ``section.text``).
"""

from __future__ import annotations

import copy
import html
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from careledger.errors import ValidationError

__all__ = ["SECTIONS", "patient_summary"]

LOINC = "http://loinc.org"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_EMPTY_REASON = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
            "code": "unavailable",
            "display": "Unavailable",
        }
    ]
}
_XHTML = "http://www.w3.org/1999/xhtml"
# FHIR R4 ``instant`` (Bundle.timestamp): seconds and a time zone are required.
_INSTANT = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_AUTHOR_TYPES = frozenset(
    {"Practitioner", "PractitionerRole", "Organization", "Device", "RelatedPerson", "Patient"}
)


@dataclass(frozen=True)
class Section:
    key: str
    code: str
    display: str
    title: str
    required: bool


# LOINC codes and displays as the IPS IG's own examples write them.
SECTIONS = (
    Section(
        "medications", "10160-0", "History of Medication use Narrative", "Medication Summary", True
    ),
    Section(
        "allergies",
        "48765-2",
        "Allergies and adverse reactions Document",
        "Allergies and Intolerances",
        True,
    ),
    Section("problems", "11450-4", "Problem list - Reported", "Problem List", True),
    Section(
        "results",
        "30954-2",
        "Relevant diagnostic tests/laboratory data Narrative",
        "Results",
        False,
    ),
    Section(
        "immunizations", "11369-6", "History of Immunization Narrative", "Immunizations", False
    ),
    Section("vital_signs", "8716-3", "Vital signs", "Vital Signs", False),
)

_SECTION_OF_TYPE = {
    "MedicationStatement": "medications",
    "MedicationRequest": "medications",
    "MedicationAdministration": "medications",
    "MedicationDispense": "medications",
    "AllergyIntolerance": "allergies",
    "Condition": "problems",
    "DiagnosticReport": "results",
    "Immunization": "immunizations",
}


def _bad(message: str) -> ValidationError:
    return ValidationError(message, code="BAD_PATIENT_SUMMARY")


def _is_vital_sign(observation: Mapping[str, Any]) -> bool:
    for category in observation.get("category") or []:
        codings = category.get("coding") if isinstance(category, Mapping) else None
        for coding in codings or []:
            if (
                isinstance(coding, Mapping)
                and coding.get("system") == _OBSERVATION_CATEGORY
                and coding.get("code") == "vital-signs"
            ):
                return True
    return False


def _section_of(resource: Mapping[str, Any]) -> str | None:
    kind = resource["resourceType"]
    if kind == "Observation":
        return "vital_signs" if _is_vital_sign(resource) else "results"
    return _SECTION_OF_TYPE.get(kind)


def _key(resource: object, what: str) -> str:
    if not isinstance(resource, Mapping):
        raise _bad(f"{what} must be a FHIR resource (a JSON object)")
    kind, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(kind, str) or not kind:
        raise _bad(f"{what} has no resourceType")
    if not isinstance(rid, str) or not _FHIR_ID.fullmatch(rid):
        raise _bad(f"{what} ({kind}) has no valid id, so references to it cannot be resolved")
    return f"{kind}/{rid}"


def _concept_label(concept: object) -> str | None:
    if not isinstance(concept, Mapping):
        return None
    if isinstance(concept.get("text"), str) and concept["text"]:
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, Mapping):
            for field in ("display", "code"):
                if isinstance(coding.get(field), str) and coding[field]:
                    return str(coding[field])
    return None


def _label(resource: Mapping[str, Any], by_key: Mapping[str, Mapping[str, Any]]) -> str:
    """A line of narrative for one entry: its concept, and a measured value if it has one."""
    label = None
    for field in ("code", "medicationCodeableConcept", "vaccineCode"):
        label = label or _concept_label(resource.get(field))
    medication = resource.get("medicationReference")
    if label is None and isinstance(medication, Mapping):
        target = by_key.get(str(medication.get("reference", "")))
        label = _concept_label(target.get("code")) if target else None
        display = medication.get("display")
        label = label or (display if isinstance(display, str) and display else None)
    label = label or str(resource["resourceType"])
    quantity = resource.get("valueQuantity")
    if isinstance(quantity, Mapping) and "value" in quantity:
        unit = quantity.get("unit") or quantity.get("code") or ""
        label = f"{label}: {quantity['value']} {unit}".rstrip()
    return label


def _narrative(lines: Iterable[str]) -> dict[str, str]:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    body = f"<ul>{items}</ul>" if items else "<p>No information available.</p>"
    return {"status": "generated", "div": f'<div xmlns="{_XHTML}">{body}</div>'}


def _rewrite_references(value: object, full_urls: Mapping[str, str]) -> None:
    if isinstance(value, list):
        for item in value:
            _rewrite_references(item, full_urls)
    elif isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str):
            target = full_urls.get(reference.split("/_history/", 1)[0])
            if target is not None:
                value["reference"] = target
        for item in value.values():
            _rewrite_references(item, full_urls)


def patient_summary(
    patient: Mapping[str, Any],
    resources: Iterable[Mapping[str, Any]],
    *,
    now_iso: str,
    bundle_id: str,
    author: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary document of ``patient`` built from ``resources`` (their own FHIR R4 JSON).

    ``now_iso`` is the document's time (a FHIR instant, with seconds and zone); ``bundle_id``
    a UUID the caller drew, which is the document's identity. Each entry's ``fullUrl`` is
    ``urn:uuid:`` + UUIDv5(bundle_id, "Type/id"), so the same inputs give the same document,
    while two documents do not share identifiers that would link them. ``author`` (an
    Organization, Practitioner or Device resource) defaults to the patient, who is sharing
    their own summary.

    References between the given resources become those fullUrls; references to anything not
    in the document are left as they are. Resource ids are dropped: they are the custodian's
    internal identifiers, and the document identifies its entries by fullUrl.
    """
    if not isinstance(now_iso, str) or not _INSTANT.fullmatch(now_iso):
        raise _bad("now_iso must be a FHIR instant, e.g. 2024-05-01T12:00:00Z")
    try:
        namespace = uuid.UUID(bundle_id)
    except (TypeError, ValueError, AttributeError):
        raise _bad("bundle_id must be a UUID") from None
    if str(namespace) != bundle_id:
        raise _bad("bundle_id must be a UUID in its canonical lower-case form")
    patient_key = _key(patient, "patient")
    if patient["resourceType"] != "Patient":
        raise _bad("patient must be a Patient resource")

    ordered: list[Mapping[str, Any]] = [patient]
    keys = {patient_key}
    if author is not None:
        author_key = _key(author, "author")
        if author["resourceType"] not in _AUTHOR_TYPES:
            raise _bad(f"a {author['resourceType']} cannot author a patient summary")
        if author_key not in keys:
            ordered.append(author)
            keys.add(author_key)
    else:
        author_key = patient_key
    for index, resource in enumerate(resources):
        key = _key(resource, f"resources[{index}]")
        if key in keys:
            if key in (patient_key, author_key):
                continue  # the patient (or author) again, as a list of "everything" contains it
            raise _bad(f"resources[{index}] repeats {key.split('/')[0]} with the same id")
        keys.add(key)
        ordered.append(resource)

    def full_url(key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(namespace, key)}"

    full_urls = {key: full_url(key) for key in keys}
    by_key = {_key(resource, "resource"): resource for resource in ordered}

    members: dict[str, list[str]] = {section.key: [] for section in SECTIONS}
    lines: dict[str, list[str]] = {section.key: [] for section in SECTIONS}
    entries: list[dict[str, Any]] = []
    for resource in ordered:
        key = _key(resource, "resource")
        copied = copy.deepcopy(dict(resource))
        copied.pop("id", None)
        _rewrite_references(copied, full_urls)
        entries.append({"fullUrl": full_urls[key], "resource": copied})
        placed = _section_of(resource) if resource is not patient else None
        if placed is not None:
            members[placed].append(full_urls[key])
            lines[placed].append(_label(resource, by_key))

    sections: list[dict[str, Any]] = []
    for section in SECTIONS:
        if not members[section.key] and not section.required:
            continue
        body: dict[str, Any] = {
            "title": section.title,
            "code": {
                "coding": [{"system": LOINC, "code": section.code, "display": section.display}]
            },
            "text": _narrative(lines[section.key]),
        }
        if members[section.key]:
            body["entry"] = [{"reference": url} for url in members[section.key]]
        else:
            body["emptyReason"] = copy.deepcopy(_EMPTY_REASON)
        sections.append(body)

    composition = {
        "resourceType": "Composition",
        "status": "final",
        "type": {
            "coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]
        },
        "subject": {"reference": full_urls[patient_key]},
        "date": now_iso,
        "author": [{"reference": full_urls[author_key]}],
        "title": "International Patient Summary",
        "section": sections,
    }
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{bundle_id}"},
        "type": "document",
        "timestamp": now_iso,
        "entry": [
            # "#" never occurs in a Type/id name, so this cannot collide with a resource.
            {"fullUrl": full_url("#composition"), "resource": composition},
            *entries,
        ],
    }
