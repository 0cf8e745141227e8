"""Field extraction from FHIR R4 resources (parsed JSON): the patient a resource belongs to,
and the strings that are PHI (for tests that search files and logs for them).

Pure functions over the JSON (no models, no I/O); they expect a resource that passed
:func:`careledger.fhir.validate.validate_resource` and are total on anything else (they never
raise on odd shapes, they just find less).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from careledger.fhir.types import EITHER_TYPES, PATIENT_ELEMENT, PATIENT_PATHS, RECORD_PATHS

_ID = r"[A-Za-z0-9\-.]{1,64}"
_RELATIVE_PATIENT = re.compile(rf"Patient/({_ID})(?:/_history/{_ID})?")
_ANY_PATIENT = re.compile(rf"(?:.*/)?Patient/{_ID}(?:/_history/{_ID})?")

# Elements that point at the patient, for types the table of careledger.fhir.types does not
# name (Consent, held by its contract), in order of preference (subject:
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
    kind = resource.get("resourceType")
    if kind == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) and re.fullmatch(_ID, rid) else None
    named = PATIENT_ELEMENT.get(kind) if isinstance(kind, str) else None
    for element in (named,) if named is not None else PATIENT_ELEMENTS:
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
    reference (``/_history/{v}`` allowed) in subject, patient or beneficiary, or, for the types
    found on paths (:data:`~careledger.fhir.types.PATIENT_PATHS`,
    :data:`~careledger.fhir.types.RECORD_PATHS`), the one patient their ``Patient/{id}``
    references name (None when they name none or several: see :func:`path_patients`). None for
    everything else, in particular ``urn:uuid:`` references between entries of a Bundle
    (Synthea writes those): they name a Bundle entry, not a server id, and can only be resolved
    by the code that holds the Bundle (see :func:`patient_reference`); absolute URLs are None
    too, since they may name another server.
    """
    kind = resource.get("resourceType")
    if kind == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and re.fullmatch(_ID, rid) else None
    if kind in PATIENT_PATHS or kind in RECORD_PATHS:
        found = path_patients(resource)
        return next(iter(found)) if len(found) == 1 else None
    ref = patient_reference(resource)
    if ref is None:
        return None
    match = _RELATIVE_PATIENT.fullmatch(ref)
    return match.group(1) if match else None


def references_at(resource: Mapping[str, Any], path: str) -> list[Mapping[str, Any]]:
    """The Reference objects at a dotted element path (``participant.actor``), through lists."""
    nodes: list[Any] = [resource]
    for step in path.split("."):
        found: list[Any] = []
        for node in nodes:
            value = node.get(step) if isinstance(node, dict) else None
            found.extend(value if isinstance(value, list) else [value])
        nodes = [n for n in found if isinstance(n, dict)]
    return nodes


def _patient_paths(kind: object) -> tuple[str, ...]:
    if not isinstance(kind, str):
        return ()
    return (*PATIENT_PATHS.get(kind, ()), *RECORD_PATHS.get(kind, ()))


_ON_PATH = re.compile(
    rf"(?:https?://[^\s]+/)?(?P<type>[A-Z][A-Za-z]{{1,63}})/(?P<id>{_ID})(?:/_history/{_ID})?"
)


def path_patients(resource: Mapping[str, Any]) -> set[str]:
    """The ids of the patients the references on a type's patient paths name: every one that
    reads ``Patient/{id}``, relative or absolute (this server's base URL has many spellings
    behind proxies, and a record naming a second person must not pass for one patient's),
    whatever its ``type`` says (a ``type`` that contradicts it is refused:
    :func:`path_reference_problem`)."""
    out: set[str] = set()
    for path in _patient_paths(resource.get("resourceType")):
        for ref in references_at(resource, path):
            target = ref.get("reference")
            match = _ON_PATH.fullmatch(target) if isinstance(target, str) else None
            if match is not None and match.group("type") == "Patient":
                out.add(match.group("id"))
    return out


def path_reference_problem(resource: Mapping[str, Any]) -> str | None:
    """Why a reference on a type's patient paths cannot be checked, or None: a ``type`` that
    contradicts the reference (``Patient/x`` typed as a Practitioner), a Patient (or a
    reference of no declared type) by identifier alone, and any reference by identifier alone
    on the paths of a type that is the organisation's own when it names no patient (which
    patient, if any, it names cannot be known)."""
    kind = resource.get("resourceType")
    for path in _patient_paths(kind):
        for ref in references_at(resource, path):
            target, declared = ref.get("reference"), ref.get("type")
            match = _ON_PATH.fullmatch(target) if isinstance(target, str) else None
            if match is not None and declared is not None and declared != match.group("type"):
                return f"{kind}.{path}: its type contradicts the reference"
            by_identifier = target is None and ref.get("identifier") is not None
            if by_identifier and (kind in EITHER_TYPES or declared in (None, "Patient")):
                return (
                    f"{kind}.{path}: a reference by identifier alone (whose it is cannot be"
                    " checked): reference the record on this ledger"
                )
    return None


_RELATIVE_RECORD = re.compile(
    rf"(?:https?://[^\s]+/)?([A-Z][A-Za-z]{{1,63}})/({_ID})(?:/_history/{_ID})?"
)


def referenced_records(resource: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(type, id) of the records other than Patients named by references (relative, or
    absolute: those of another server are unknown here) on the paths through which a type of
    :data:`~careledger.fhir.types.RECORD_PATHS` finds its patient (contained ``#id`` and
    ``urn:uuid:`` references are not records here)."""
    kind = resource.get("resourceType")
    out: set[tuple[str, str]] = set()
    for path in RECORD_PATHS.get(kind, ()) if isinstance(kind, str) else ():
        for ref in references_at(resource, path):
            target = ref.get("reference")
            match = _RELATIVE_RECORD.fullmatch(target) if isinstance(target, str) else None
            if match is not None and match.group(1) != "Patient":
                out.add((match.group(1), match.group(2)))
    return out


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


def group_patients(group: Mapping[str, Any], at_ms: int | None = None) -> list[str]:
    """The ledger ids of the patients a Group lists as members at ``at_ms`` (ms since the
    epoch; None: whatever their period): each ``member`` whose ``entity`` is a relative
    ``Patient/{id}``, not ``inactive`` (R4: "a member is no longer in the group") and, at
    ``at_ms``, within its ``period`` (begun, not ended), sorted, once each. The one reading of a
    Group's patients, for the node that exports them and the recipient who checks that export
    alike (both at the export's block time)."""
    from careledger.fhir.search import parse_date

    found: set[str] = set()
    members = group.get("member")
    for member in members if isinstance(members, list) else ():
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        period = member.get("period")
        if at_ms is not None and isinstance(period, dict):
            at = at_ms * 1000
            start = parse_date(str(period["start"])) if "start" in period else None
            end = parse_date(str(period["end"])) if "end" in period else None
            if (start is not None and start[0] > at) or (end is not None and end[1] <= at):
                continue
        entity = member.get("entity")
        ref = entity.get("reference") if isinstance(entity, dict) else None
        match = _RELATIVE_PATIENT.fullmatch(ref) if isinstance(ref, str) else None
        if match is not None:
            found.add(match.group(1))
    return sorted(found)
