"""Field extraction from FHIR R4 resources (parsed JSON) for search and indexing.

Pure functions over the JSON (no models, no I/O); they expect a resource that passed
:func:`careledger.fhir.validate.validate_resource` and are total on anything else (they never
raise on odd shapes, they just find less).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_PATIENT = re.compile(rf"Patient/({_ID})(?:/_history/{_ID})?")
_ANY_PATIENT = re.compile(rf"(?:.*/)?Patient/{_ID}(?:/_history/{_ID})?")
_DATE_LIKE = re.compile(r"[0-9]{4}(?:-.*)?")

# Elements that point at the patient a resource is about, in order of preference (subject:
# Observation, Condition, MedicationRequest/Statement, Procedure, Encounter, DiagnosticReport,
# DocumentReference, CarePlan; patient: AllergyIntolerance, Immunization, Consent (R4);
# beneficiary: Consent and Coverage in later releases).
PATIENT_ELEMENTS = ("subject", "patient", "beneficiary")


def patient_reference(resource: Mapping[str, Any]) -> str | None:
    """The reference to the patient ``resource`` is about, as written: ``Patient/{id}``,
    an absolute ``.../Patient/{id}`` URL, or a Bundle-local ``urn:uuid:...`` (whose target a
    caller holding the Bundle can resolve via ``entry.fullUrl``). A Patient gives
    ``Patient/{its id}``. None when there is no such element, or it refers to something that is
    not a Patient (Group, Device, Location, a contained ``#id``, a logical identifier only).
    """
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) and re.fullmatch(_ID, rid) else None
    for element in PATIENT_ELEMENTS:
        ref = resource.get(element)
        if ref is None:
            continue
        if not isinstance(ref, dict):
            return None
        target = ref.get("reference")
        declared = ref.get("type")
        if not isinstance(target, str) or (declared is not None and declared != "Patient"):
            return None
        if target.startswith("urn:uuid:") or _ANY_PATIENT.fullmatch(target):
            return target
        return None
    return None


def patient_id(resource: Mapping[str, Any]) -> str | None:
    """The logical id of the patient ``resource`` belongs to, on this server.

    A Patient gives its own ``id``; other resources the id of a RELATIVE ``Patient/{id}``
    reference (``/_history/{v}`` allowed) in subject, patient or beneficiary. None for everything
    else, in particular ``urn:uuid:`` references between entries of a Bundle (Synthea writes
    those): they name a Bundle entry, not a server id, and can only be resolved by the code that
    holds the Bundle (see :func:`patient_reference`); absolute URLs are None too, since they may
    name another server.
    """
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and re.fullmatch(_ID, rid) else None
    ref = patient_reference(resource)
    if ref is None:
        return None
    match = _RELATIVE_PATIENT.fullmatch(ref)
    return match.group(1) if match else None


# The clinically relevant dates per type, in order; "x[x]" is a choice element (its dateTime,
# instant, date or Period form), a Period gives its start then its end.
SEARCH_DATE_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "Patient": ("birthDate", "deceased[x]"),
    "Observation": ("effective[x]", "issued"),
    "Condition": ("onset[x]", "abatement[x]", "recordedDate"),
    "MedicationRequest": ("authoredOn",),
    "MedicationStatement": ("effective[x]", "dateAsserted"),
    "AllergyIntolerance": ("onset[x]", "recordedDate", "lastOccurrence"),
    "Immunization": ("occurrence[x]", "recorded"),
    "Procedure": ("performed[x]",),
    "Encounter": ("period",),
    "DiagnosticReport": ("effective[x]", "issued"),
    "DocumentReference": ("date", "context.period"),
    "CarePlan": ("period", "created"),
    "Consent": ("dateTime", "provision.period"),
}
_DEFAULT_DATE_ELEMENTS = (
    "effective[x]",
    "onset[x]",
    "occurrence[x]",
    "performed[x]",
    "authoredOn",
    "recordedDate",
    "period",
    "issued",
    "date",
    "birthDate",
)
_DATE_CHOICE_TYPES = ("DateTime", "Instant", "Date", "Period")


def search_dates(resource: Mapping[str, Any]) -> list[str]:
    """The clinically relevant dates of ``resource`` (see :data:`SEARCH_DATE_ELEMENTS`) as the
    FHIR strings they are written as (any precision, ``2013-04-02`` to
    ``2013-04-02T09:30:10+01:00``), without duplicates, in table order."""
    rtype = resource.get("resourceType")
    elements = (
        SEARCH_DATE_ELEMENTS.get(rtype, _DEFAULT_DATE_ELEMENTS)
        if isinstance(rtype, str)
        else _DEFAULT_DATE_ELEMENTS
    )
    out: list[str] = []
    for element in elements:
        for value in _element_values(resource, element):
            for date in _dates_of(value):
                if date not in out:
                    out.append(date)
    return out


def _element_values(resource: Mapping[str, Any], element: str) -> Iterator[object]:
    *parents, last = element.split(".")
    node: object = resource
    for parent in parents:
        node = node.get(parent) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return
    if last.endswith("[x]"):
        base = last[:-3]
        for suffix in _DATE_CHOICE_TYPES:
            if base + suffix in node:
                yield node[base + suffix]
    elif last in node:
        yield node[last]


def _dates_of(value: object) -> Iterator[str]:
    if isinstance(value, str) and _DATE_LIKE.fullmatch(value):
        yield value
    elif isinstance(value, dict):  # a Period
        for bound in ("start", "end"):
            date = value.get(bound)
            if isinstance(date, str) and _DATE_LIKE.fullmatch(date):
                yield date


# The element(s) holding the main code of each type (CodeableConcept or a list of them).
CODE_ELEMENTS: Mapping[str, tuple[str, ...]] = {
    "Patient": (),
    "Observation": ("code",),
    "Condition": ("code",),
    "MedicationRequest": ("medicationCodeableConcept",),
    "MedicationStatement": ("medicationCodeableConcept",),
    "AllergyIntolerance": ("code",),
    "Immunization": ("vaccineCode",),
    "Procedure": ("code",),
    "Encounter": ("type",),
    "DiagnosticReport": ("code",),
    "DocumentReference": ("type",),
    "CarePlan": ("category",),
    "Consent": ("scope", "category"),
}


def codes(resource: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """``(system, code)`` of every coding of the main code of ``resource`` (Observation.code,
    Immunization.vaccineCode, MedicationRequest.medicationCodeableConcept, Encounter.type...,
    see :data:`CODE_ELEMENTS`), without duplicates. A medication given as a reference to a
    contained Medication (``#id``) yields that Medication's code. ``system`` is None when the
    coding has none; codings without a code are skipped."""
    rtype = resource.get("resourceType")
    elements = CODE_ELEMENTS.get(rtype, ("code",)) if isinstance(rtype, str) else ("code",)
    concepts: list[object] = []
    for element in elements:
        value = resource.get(element)
        concepts.extend(value if isinstance(value, list) else [value])
    medication = resource.get("medicationReference")
    if "medicationCodeableConcept" in elements and isinstance(medication, dict):
        contained = _contained(resource, medication.get("reference"))
        if contained is not None and contained.get("resourceType") == "Medication":
            concepts.append(contained.get("code"))
    out: list[tuple[str | None, str]] = []
    for concept in concepts:
        codings = concept.get("coding") if isinstance(concept, dict) else None
        for coding in codings if isinstance(codings, list) else ():
            if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
                continue
            system = coding.get("system")
            pair = (system if isinstance(system, str) else None, coding["code"])
            if pair not in out:
                out.append(pair)
    return out


def _contained(resource: Mapping[str, Any], reference: object) -> Mapping[str, Any] | None:
    if not isinstance(reference, str) or not reference.startswith("#"):
        return None
    for item in resource.get("contained") or ():
        if isinstance(item, dict) and item.get("id") == reference[1:]:
            return item
    return None


# ---------------------------------------------------------------- PHI

PHI_MIN_LENGTH = 4
_NAME_KEYS = ("name", "valueHumanName")
_IDENTIFIER_KEYS = ("identifier", "valueIdentifier")
_TELECOM_KEYS = ("telecom", "valueContactPoint")
_ADDRESS_KEYS = ("address", "valueAddress")
_DATE_KEYS = ("birthDate", "deceasedDateTime")
_PHI_EXTENSIONS = frozenset({"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"})


def phi_strings(resource: Mapping[str, Any]) -> set[str]:
    """Strings of ``resource`` that identify a person, to prove they never reach the ledger.

    Everywhere in the resource (contained resources, Patient.contact, extensions included):
    every HumanName part (family, given, prefix, suffix, text), every Identifier value, every
    ContactPoint value, Address line, city, district, postalCode and text, birthDate and
    deceasedDateTime, the display of references to a Patient, and the mother's maiden name
    extension. Strings shorter than :data:`PHI_MIN_LENGTH` (4) characters are dropped, after
    stripping whitespace, to avoid false positives. The narrative (``text.div``) is not parsed,
    and resource ids are not included (a ledger may record ``Patient/{id}``).
    """
    found: set[str] = set()
    _collect(resource, found)
    return {s for s in found if len(s.strip()) >= PHI_MIN_LENGTH}


def _collect(node: object, out: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect(item, out)
        return
    if not isinstance(node, dict):
        return
    if node.get("url") in _PHI_EXTENSIONS:
        _add(out, node.get("valueString"))
    reference = node.get("reference")
    if isinstance(reference, str) and (
        _ANY_PATIENT.fullmatch(reference) or node.get("type") == "Patient"
    ):
        _add(out, node.get("display"))
    for key, value in node.items():
        if key in _NAME_KEYS:
            for name in _dicts(value):
                for part in ("family", "given", "prefix", "suffix", "text"):
                    _add(out, name.get(part))
        elif key in _IDENTIFIER_KEYS or key in _TELECOM_KEYS:
            for item in _dicts(value):
                _add(out, item.get("value"))
        elif key in _ADDRESS_KEYS:
            for address in _dicts(value):
                for part in ("line", "city", "district", "postalCode", "text"):
                    _add(out, address.get(part))
        elif key in _DATE_KEYS:
            _add(out, value)
        elif key in ("subject", "patient", "beneficiary") and isinstance(value, dict):
            _add(out, value.get("display"))
        _collect(value, out)


def _dicts(value: object) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def _add(out: set[str], value: object) -> None:
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            out.add(item)
