"""Validation of FHIR R4 resources (JSON, already parsed) for the FHIR API.

Four layers, every problem reported together as an :class:`~careledger.fhir.outcome.Issue` with a
FHIRPath-like expression (``Observation.status``, ``Patient.name[0].given[1]``):

1. the envelope: a JSON object, a known ``resourceType``, one of :data:`SUPPORTED_TYPES`, the
   type the route expects, a resource ``id`` of the FHIR ``id`` format (``[A-Za-z0-9\\-.]{1,64}``);
2. structure, by the ``fhir.resources`` R4B pydantic models (cardinality, datatypes, formats,
   choice types, unknown elements); their error locations are translated into FHIRPath;
3. what those models let through although FHIR JSON forbids it: JSON types of primitives
   (pydantic's lax mode turns ``"yes"`` into ``true`` and ``"3"`` into ``3``), base64Binary
   syntax, ``null`` outside primitive arrays, empty strings, objects and arrays (ele-1), keys
   that are pydantic field names rather than FHIR element names (``class_fhir``,
   ``birthDate__ext``), ``id`` longer than 64; and required primitive elements and choice
   elements ``[x]``, which the models check only once everything else in the object is valid;
4. the REQUIRED value-set bindings of the supported types and of common datatypes
   (:data:`REQUIRED_BINDINGS`), which the models do not check at all (they accept
   ``Observation.status = "bogus"``), on ``code`` elements and on ``CodeableConcept`` elements
   (at least one coding must come from the value set's code system with an allowed code); and
   of every other ``code`` element of every held type, by the codes its model lists (the
   models list a code element's value set, or cut it short with "+": those are in the table,
   and tests/unit/fhir/test_validate.py keeps it so).

R4 (4.0.1) JSON is checked with the R4B (4.3.0) models, as ``fhir.resources`` has no pure R4
package; R4B changed mostly other resources, and the HL7 R4 examples and the Synthea R4 bundles
pass. The 18 R4 types R4B dropped (MedicinalProduct*, Substance* but Substance, the evidence
syntheses) are checked against their R4 element tables (``data/r4-models.json``, derived from
fhirclient's R4 models by tests/unit/fhir/test_r4_only_models.py): elements, cardinality,
choices, JSON types, and their datatypes by the R4B models; their code elements are not bound.
Diagnostics name paths, FHIR types and allowed codes, never the offending values (PHI).
Nesting deeper than :data:`MAX_DEPTH` steps is refused before the recursive checks run.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase

from careledger.fhir.outcome import FhirError, Issue
from careledger.fhir.types import HELD_TYPES

SUPPORTED_TYPES: frozenset[str] = HELD_TYPES | {"Consent"}
"""Types the node accepts: a patient's or an organisation's records (careledger.fhir.types),
and Consent."""

# http://hl7.org/fhir/R4/datatypes.html#id — Resource.id (the library allows 255 characters).
ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True)
class ValueSet:
    """A required value set: its canonical URL, its codes, and (for CodeableConcept elements)
    the code system the codes must be drawn from."""

    url: str
    codes: tuple[str, ...]
    system: str | None = None


def _vs(name: str, codes: str, system: str | None = None) -> ValueSet:
    return ValueSet(f"http://hl7.org/fhir/ValueSet/{name}", tuple(codes.split()), system)


_THO = "http://terminology.hl7.org/CodeSystem/"

# ---- value sets (FHIR R4, v4.0.1); each comment is the spec page of the value set ----
# http://hl7.org/fhir/R4/valueset-administrative-gender.html
ADMINISTRATIVE_GENDER = _vs("administrative-gender", "male female other unknown")
# http://hl7.org/fhir/R4/valueset-link-type.html
LINK_TYPE = _vs("link-type", "replaced-by replaces refer seealso")
# http://hl7.org/fhir/R4/valueset-observation-status.html
OBSERVATION_STATUS = _vs(
    "observation-status",
    "registered preliminary final amended corrected cancelled entered-in-error unknown",
)
# http://hl7.org/fhir/R4/valueset-condition-clinical.html
CONDITION_CLINICAL = _vs(
    "condition-clinical",
    "active recurrence relapse inactive remission resolved",
    _THO + "condition-clinical",
)
# http://hl7.org/fhir/R4/valueset-condition-ver-status.html
CONDITION_VER_STATUS = _vs(
    "condition-ver-status",
    "unconfirmed provisional differential confirmed refuted entered-in-error",
    _THO + "condition-ver-status",
)
# http://hl7.org/fhir/R4/valueset-medicationrequest-status.html
MEDICATIONREQUEST_STATUS = _vs(
    "medicationrequest-status",
    "active on-hold cancelled completed entered-in-error stopped draft unknown",
)
# http://hl7.org/fhir/R4/valueset-medicationrequest-intent.html
MEDICATIONREQUEST_INTENT = _vs(
    "medicationrequest-intent",
    "proposal plan order original-order reflex-order filler-order instance-order option",
)
# http://hl7.org/fhir/R4/valueset-request-priority.html
REQUEST_PRIORITY = _vs("request-priority", "routine urgent asap stat")
# http://hl7.org/fhir/R4/valueset-medication-statement-status.html
MEDICATION_STATEMENT_STATUS = _vs(
    "medication-statement-status",
    "active completed entered-in-error intended stopped on-hold unknown not-taken",
)
# http://hl7.org/fhir/R4/valueset-allergyintolerance-clinical.html
ALLERGYINTOLERANCE_CLINICAL = _vs(
    "allergyintolerance-clinical", "active inactive resolved", _THO + "allergyintolerance-clinical"
)
# http://hl7.org/fhir/R4/valueset-allergyintolerance-verification.html
ALLERGYINTOLERANCE_VERIFICATION = _vs(
    "allergyintolerance-verification",
    "unconfirmed confirmed refuted entered-in-error",
    _THO + "allergyintolerance-verification",
)
# http://hl7.org/fhir/R4/valueset-allergy-intolerance-type.html
ALLERGY_INTOLERANCE_TYPE = _vs("allergy-intolerance-type", "allergy intolerance")
# http://hl7.org/fhir/R4/valueset-allergy-intolerance-category.html
ALLERGY_INTOLERANCE_CATEGORY = _vs(
    "allergy-intolerance-category", "food medication environment biologic"
)
# http://hl7.org/fhir/R4/valueset-allergy-intolerance-criticality.html
ALLERGY_INTOLERANCE_CRITICALITY = _vs(
    "allergy-intolerance-criticality", "low high unable-to-assess"
)
# http://hl7.org/fhir/R4/valueset-reaction-event-severity.html
REACTION_EVENT_SEVERITY = _vs("reaction-event-severity", "mild moderate severe")
# http://hl7.org/fhir/R4/valueset-immunization-status.html
IMMUNIZATION_STATUS = _vs("immunization-status", "completed entered-in-error not-done")
# http://hl7.org/fhir/R4/valueset-event-status.html
EVENT_STATUS = _vs(
    "event-status",
    "preparation in-progress not-done on-hold stopped completed entered-in-error unknown",
)
# http://hl7.org/fhir/R4/valueset-encounter-status.html
ENCOUNTER_STATUS = _vs(
    "encounter-status",
    "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown",
)
# http://hl7.org/fhir/R4/valueset-encounter-location-status.html
ENCOUNTER_LOCATION_STATUS = _vs("encounter-location-status", "planned active reserved completed")
# http://hl7.org/fhir/R4/valueset-diagnostic-report-status.html
DIAGNOSTIC_REPORT_STATUS = _vs(
    "diagnostic-report-status",
    "registered partial preliminary final amended corrected appended cancelled"
    " entered-in-error unknown",
)
# http://hl7.org/fhir/R4/valueset-document-reference-status.html
DOCUMENT_REFERENCE_STATUS = _vs("document-reference-status", "current superseded entered-in-error")
# http://hl7.org/fhir/R4/valueset-composition-status.html
COMPOSITION_STATUS = _vs("composition-status", "preliminary final amended entered-in-error")
# http://hl7.org/fhir/R4/valueset-document-relationship-type.html
DOCUMENT_RELATIONSHIP_TYPE = _vs("document-relationship-type", "replaces transforms signs appends")
# http://hl7.org/fhir/R4/valueset-request-status.html
REQUEST_STATUS = _vs(
    "request-status", "draft active on-hold revoked completed entered-in-error unknown"
)
# http://hl7.org/fhir/R4/valueset-care-plan-intent.html
CARE_PLAN_INTENT = _vs("care-plan-intent", "proposal plan order option")
# http://hl7.org/fhir/R4/valueset-care-plan-activity-kind.html
CARE_PLAN_ACTIVITY_KIND = _vs(
    "care-plan-activity-kind",
    "Appointment CommunicationRequest DeviceRequest MedicationRequest NutritionOrder Task"
    " ServiceRequest VisionPrescription",
)
# http://hl7.org/fhir/R4/valueset-care-plan-activity-status.html
CARE_PLAN_ACTIVITY_STATUS = _vs(
    "care-plan-activity-status",
    "not-started scheduled in-progress on-hold completed cancelled stopped unknown"
    " entered-in-error",
)
# http://hl7.org/fhir/R4/valueset-consent-state-codes.html
CONSENT_STATE = _vs(
    "consent-state-codes", "draft proposed active rejected inactive entered-in-error"
)
# http://hl7.org/fhir/R4/valueset-consent-provision-type.html
CONSENT_PROVISION_TYPE = _vs("consent-provision-type", "deny permit")
# http://hl7.org/fhir/R4/valueset-consent-data-meaning.html
CONSENT_DATA_MEANING = _vs("consent-data-meaning", "instance related dependents authoredby")

# datatypes
# http://hl7.org/fhir/R4/valueset-name-use.html
NAME_USE = _vs("name-use", "usual official temp nickname anonymous old maiden")
# http://hl7.org/fhir/R4/valueset-contact-point-system.html
CONTACT_POINT_SYSTEM = _vs("contact-point-system", "phone fax email pager url sms other")
# http://hl7.org/fhir/R4/valueset-contact-point-use.html
CONTACT_POINT_USE = _vs("contact-point-use", "home work temp old mobile")
# http://hl7.org/fhir/R4/valueset-address-use.html
ADDRESS_USE = _vs("address-use", "home work temp old billing")
# http://hl7.org/fhir/R4/valueset-address-type.html
ADDRESS_TYPE = _vs("address-type", "postal physical both")
# http://hl7.org/fhir/R4/valueset-identifier-use.html
IDENTIFIER_USE = _vs("identifier-use", "usual official temp secondary old")
# http://hl7.org/fhir/R4/valueset-quantity-comparator.html
QUANTITY_COMPARATOR = _vs("quantity-comparator", "< <= >= >")
# http://hl7.org/fhir/R4/valueset-narrative-status.html
NARRATIVE_STATUS = _vs("narrative-status", "generated extensions additional empty")
# http://hl7.org/fhir/R4/valueset-units-of-time.html
UNITS_OF_TIME = _vs("units-of-time", "s min h d wk mo a")
# http://hl7.org/fhir/R4/valueset-days-of-week.html
DAYS_OF_WEEK = _vs("days-of-week", "mon tue wed thu fri sat sun")
# http://hl7.org/fhir/R4/valueset-event-timing.html
EVENT_TIMING = _vs(
    "event-timing",
    "MORN MORN.early MORN.late NOON AFT AFT.early AFT.late EVE EVE.early EVE.late NIGHT PHS"
    " HS WAKE C CM CD CV AC ACM ACD ACV PC PCM PCD PCV",
)

# Element definition path -> required value set. Paths of datatypes start with the datatype
# (HumanName.use applies wherever a HumanName occurs, Quantity.comparator also to Age, Duration,
# ...). Elements with a required binding that are not listed here are not checked.
# http://hl7.org/fhir/R4/valueset-task-status.html
TASK_STATUS = _vs(
    "task-status",
    "draft requested received accepted rejected ready cancelled in-progress on-hold failed"
    " completed entered-in-error",
)
# http://hl7.org/fhir/R4/valueset-udi-entry-type.html
UDI_ENTRY_TYPE = _vs("udi-entry-type", "barcode rfid manual card self-reported unknown")
# http://hl7.org/fhir/R4/valueset-device-statement-status.html
DEVICE_STATEMENT_STATUS = _vs(
    "device-statement-status", "active completed entered-in-error intended stopped on-hold"
)
# http://hl7.org/fhir/R4/valueset-item-type.html ("question" is abstract: not a value)
ITEM_TYPE = _vs(
    "item-type",
    "group display boolean decimal integer date dateTime time string text url choice"
    " open-choice attachment reference quantity",
)

# http://hl7.org/fhir/R4/valueset-map-transform.html
MAP_TRANSFORM = _vs(
    "map-transform",
    "create copy truncate escape cast append translate reference dateOp uuid pointer evaluate cc"
    " c qty id cp",
)
# http://hl7.org/fhir/R4/valueset-supplyrequest-status.html
SUPPLYREQUEST_STATUS = _vs(
    "supplyrequest-status", "draft active suspended cancelled completed entered-in-error unknown"
)

REQUIRED_BINDINGS: Mapping[str, ValueSet] = {
    "StructureMap.group.rule.target.transform": MAP_TRANSFORM,
    "SupplyRequest.status": SUPPLYREQUEST_STATUS,
    "Patient.gender": ADMINISTRATIVE_GENDER,
    "Patient.contact.gender": ADMINISTRATIVE_GENDER,
    "Patient.link.type": LINK_TYPE,
    "Observation.status": OBSERVATION_STATUS,
    "DetectedIssue.status": OBSERVATION_STATUS,
    "RiskAssessment.status": OBSERVATION_STATUS,
    "DeviceUseStatement.status": DEVICE_STATEMENT_STATUS,
    "Device.udiCarrier.entryType": UDI_ENTRY_TYPE,
    "Questionnaire.item.type": ITEM_TYPE,
    "Task.status": TASK_STATUS,
    "Condition.clinicalStatus": CONDITION_CLINICAL,
    "Condition.verificationStatus": CONDITION_VER_STATUS,
    "MedicationRequest.status": MEDICATIONREQUEST_STATUS,
    "MedicationRequest.intent": MEDICATIONREQUEST_INTENT,
    "MedicationRequest.priority": REQUEST_PRIORITY,
    "MedicationStatement.status": MEDICATION_STATEMENT_STATUS,
    "AllergyIntolerance.clinicalStatus": ALLERGYINTOLERANCE_CLINICAL,
    "AllergyIntolerance.verificationStatus": ALLERGYINTOLERANCE_VERIFICATION,
    "AllergyIntolerance.type": ALLERGY_INTOLERANCE_TYPE,
    "AllergyIntolerance.category": ALLERGY_INTOLERANCE_CATEGORY,
    "AllergyIntolerance.criticality": ALLERGY_INTOLERANCE_CRITICALITY,
    "AllergyIntolerance.reaction.severity": REACTION_EVENT_SEVERITY,
    "Immunization.status": IMMUNIZATION_STATUS,
    "Procedure.status": EVENT_STATUS,
    "Encounter.status": ENCOUNTER_STATUS,
    "Encounter.statusHistory.status": ENCOUNTER_STATUS,
    "Encounter.location.status": ENCOUNTER_LOCATION_STATUS,
    "DiagnosticReport.status": DIAGNOSTIC_REPORT_STATUS,
    "DocumentReference.status": DOCUMENT_REFERENCE_STATUS,
    "DocumentReference.docStatus": COMPOSITION_STATUS,
    "DocumentReference.relatesTo.code": DOCUMENT_RELATIONSHIP_TYPE,
    "CarePlan.status": REQUEST_STATUS,
    "CarePlan.intent": CARE_PLAN_INTENT,
    "CarePlan.activity.detail.kind": CARE_PLAN_ACTIVITY_KIND,
    "CarePlan.activity.detail.status": CARE_PLAN_ACTIVITY_STATUS,
    "Consent.status": CONSENT_STATE,
    "Consent.provision.type": CONSENT_PROVISION_TYPE,
    "Consent.provision.data.meaning": CONSENT_DATA_MEANING,
    "HumanName.use": NAME_USE,
    "ContactPoint.system": CONTACT_POINT_SYSTEM,
    "ContactPoint.use": CONTACT_POINT_USE,
    "Address.use": ADDRESS_USE,
    "Address.type": ADDRESS_TYPE,
    "Identifier.use": IDENTIFIER_USE,
    "Quantity.comparator": QUANTITY_COMPARATOR,
    "Narrative.status": NARRATIVE_STATUS,
    "Timing.repeat.durationUnit": UNITS_OF_TIME,
    "Timing.repeat.periodUnit": UNITS_OF_TIME,
    "Timing.repeat.dayOfWeek": DAYS_OF_WEEK,
    "Timing.repeat.when": EVENT_TIMING,
}

# Recursive elements (contentReference in the R4 definitions).
_CONTENT_REFERENCES = {"Consent.provision.provision": "Consent.provision"}


# ---------------------------------------------------------------- public API


def find_issues(
    obj: object, *, expected_type: str | None = None, require_id: bool = False
) -> list[Issue]:
    """Every problem of ``obj`` as a FHIR R4 resource (empty when it is valid).

    ``expected_type`` is the type the route is for (``/fhir/Patient``); ``require_id`` demands a
    resource ``id`` (update), otherwise it is only checked when present.
    """
    if expected_type is not None and _resource_class(expected_type) is None and (
        expected_type not in _r4_only()["resources"]
    ):
        raise ValueError(f"expected_type {expected_type!r} is not a FHIR resource type")
    if not isinstance(obj, dict):
        return [_error("structure", "a FHIR resource must be a JSON object", ())]

    issues: list[Issue] = []
    rtype = obj.get("resourceType")
    cls: type[FHIRAbstractModel] | None = None
    if rtype is None:
        issues.append(_error("required", "resourceType is missing", ("resourceType",)))
    elif isinstance(rtype, str) and rtype in _r4_only()["resources"]:
        if rtype not in SUPPORTED_TYPES:  # pragma: no cover - every one is held
            issues.append(_error("not-supported", f"{rtype} is not supported", ("resourceType",)))
        if expected_type is not None and rtype != expected_type:
            issues.append(_error("invalid", f"resource type {rtype} does not match the expected"
                                 f" type {expected_type}", ("resourceType",)))  # fmt: skip
        if require_id and "id" not in obj:
            issues.append(_error("required", "the resource must have an id", (f"{rtype}.id",)))
        return issues + _r4_issues(obj, rtype)
    elif not isinstance(rtype, str) or (cls := _resource_class(rtype)) is None:
        issues.append(_error("not-supported", "unknown resource type", ("resourceType",)))
    else:
        if rtype not in SUPPORTED_TYPES:
            issues.append(
                _error(
                    "not-supported",
                    f"resource type {rtype} is not supported here; supported: "
                    + ", ".join(sorted(SUPPORTED_TYPES)),
                    ("resourceType",),
                )
            )
        if expected_type is not None and rtype != expected_type:
            issues.append(
                _error(
                    "invalid",
                    f"resource type {rtype} does not match the expected type {expected_type}",
                    ("resourceType",),
                )
            )
    if cls is None and expected_type is not None:
        cls = _resource_class(expected_type)  # still report what else is wrong with the body
    if cls is None:
        return issues

    root = cls.__name__
    body = obj if rtype == root else {k: v for k, v in obj.items() if k != "resourceType"}
    if require_id and "id" not in obj:
        issues.append(_error("required", "the resource must have an id", (f"{root}.id",)))

    walker = _Walker()
    walker.resource_body(body, cls, root, ())
    # the models often see the same problem (an id, a JSON type): one issue per expression
    seen: set[str] = set()
    for issue in walker.issues:
        if not seen.intersection(issue.expression):
            issues.append(issue)
            seen.update(issue.expression)
    if walker.too_deep:  # the models would recurse until Python gives up
        return issues
    for issue in _structure_issues(_without(body, walker.bad_resources), cls, root, walker.issues):
        if not seen.intersection(issue.expression):
            issues.append(issue)
    return issues


@cache
def _r4_only() -> dict[str, Any]:
    """The element tables of the R4 types the R4B models dropped (see the module docstring)."""
    import json
    from importlib import resources as package_files

    text = (
        package_files.files("careledger.fhir")
        .joinpath("data/r4-models.json")
        .read_text(encoding="utf-8")
    )
    data: dict[str, Any] = json.loads(text)
    data["resources"] = frozenset(data["resources"])
    return data


def _r4_issues(resource: Mapping[str, Any], rtype: str) -> list[Issue]:
    issues: list[Issue] = []
    rid = resource.get("id")
    if isinstance(rid, str) and not ID_RE.fullmatch(rid):
        issues.append(
            _error("value", "not a valid FHIR id ([A-Za-z0-9-.]{1,64})", (f"{rtype}.id",))
        )
    _r4_object(resource, rtype, rtype, 0, issues, is_resource=True)
    seen: set[str] = set()
    out = []
    for issue in issues:
        if not seen.intersection(issue.expression):
            out.append(issue)
            seen.update(issue.expression)
    return out


def _r4_object(
    node: Mapping[str, Any],
    cls: str,
    expr: str,
    depth: int,
    issues: list[Issue],
    *,
    is_resource: bool = False,
) -> None:
    """One object against an R4 element table (a resource or backbone element of a type R4B
    dropped); datatypes inside go to the R4B models, as everywhere else."""
    if depth > MAX_DEPTH:
        issues.append(_error("structure", f"nested more than {MAX_DEPTH} levels deep", (expr,)))
        return
    if not node:
        issues.append(_error("structure", "empty object: an element needs a value or children",
                             (expr,)))  # fmt: skip
        return
    rows = {row[0]: row for row in _r4_only()["classes"][cls]}
    choices: dict[str, list[str]] = {}
    required_choices: set[str] = set()
    for name, _, _, of_many, required in rows.values():
        if of_many is not None:
            choices.setdefault(of_many, []).append(name)
            if required:
                required_choices.add(of_many)
        elif required:
            ext = node.get("_" + name)
            if node.get(name) is None and not (isinstance(ext, dict) and ext.get("extension")):
                missing = _error("required", "required element is missing", (f"{expr}.{name}",))
                issues.append(missing)
    for prefix, names in choices.items():
        present = [n for n in names if node.get(n) is not None or node.get("_" + n)]
        if len(present) > 1:
            issues.append(_error("structure", "only one of " + ", ".join(present)
                                 + " may be present", (f"{expr}.{prefix}[x]",)))  # fmt: skip
        elif prefix in required_choices and not present:
            issues.append(_error("required", "one of " + ", ".join(names) + " is required",
                                 (f"{expr}.{prefix}[x]",)))  # fmt: skip
    for key, value in node.items():
        if is_resource and key == "resourceType":
            continue
        row = rows.get(key.removeprefix("_"))
        primitive_ext = key.startswith("_")
        if row is None or (primitive_ext and row[1] not in _JSON_TYPE_NAMES):
            issues.append(_error("structure", "unknown element", (f"{expr}.{_segment(key)}",)))
            continue
        name, kind, is_list = row[0], row[1], row[2]
        path = f"{expr}.{name}"
        if is_list != isinstance(value, list):
            want = "an array" if is_list else "a single value, not an array"
            issues.append(_error("structure", f"must be {want}", (path,)))
            continue
        items = list(enumerate(value)) if is_list else [(None, value)]
        if is_list and not items:
            issues.append(_error("structure", "empty array: omit the element instead", (path,)))
        for index, item in items:
            where = path if index is None else f"{path}[{index}]"
            if item is None:
                if not (is_list and (primitive_ext or kind in _JSON_TYPE_NAMES)):
                    issues.append(_error("structure", "null is not allowed here", (where,)))
                continue
            if primitive_ext:
                if not isinstance(item, dict):
                    issues.append(_error("structure", "must be a JSON object", (where,)))
                continue
            _r4_item(item, kind, where, depth, issues)


def _r4_item(item: object, kind: str, where: str, depth: int, issues: list[Issue]) -> None:
    if kind in _JSON_TYPE_NAMES:
        if item == "":
            issues.append(_error("value", "empty string: omit the element instead", (where,)))
        elif not _json_type_ok(kind, item):
            issues.append(_error("structure", f"must be {_JSON_TYPE_NAMES[kind]}", (where,)))
        return
    if not isinstance(item, dict):
        issues.append(_error("structure", "must be a JSON object", (where,)))
        return
    if kind == "resource":
        for issue in find_issues(item):
            issues.append(Issue(issue.severity, issue.code, issue.diagnostics,
                                tuple(f"{where}.{e}" for e in issue.expression)))  # fmt: skip
        return
    if kind.startswith("dt:"):
        model = get_fhir_model_class(kind[3:])
        walker = _Walker()
        walker._object(item, model, where, _datatype_paths(model), (where,) * (depth + 1))
        issues.extend(walker.issues)
        if not walker.too_deep:
            issues.extend(_structure_issues(item, model, where, walker.issues))
        return
    _r4_object(item, kind, where, depth + 1, issues)


def validate_resource(
    obj: object, *, expected_type: str | None = None, require_id: bool = False
) -> None:
    """Raise :class:`FhirError` (HTTP 400, code ``FHIR_INVALID``) listing every problem of
    ``obj`` as a FHIR R4 resource of a supported type; return None when it is valid."""
    issues = find_issues(obj, expected_type=expected_type, require_id=require_id)
    if issues:
        raise FhirError(issues)


# ---------------------------------------------------------------- models


@cache
def _resource_class(name: str) -> type[FHIRAbstractModel] | None:
    if not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", name) or name in ("Resource", "DomainResource"):
        return None
    try:
        cls = get_fhir_model_class(name)
    except ValueError:
        return None
    return cls if cls.__name__ == name and cls.has_resource_base() else None


_At = tuple[str | int, ...]  # a location in the JSON: keys and list indices
# Bound on the nesting of a resource (keys plus list indices on the way to an object); real
# resources stay far below, and the walk and the models both recurse.
MAX_DEPTH = 100


@dataclass(frozen=True)
class _Field:
    name: str  # the FHIR element name (JSON key without the leading "_" of primitive extensions)
    is_list: bool
    kind: str  # boolean | integer | decimal | string | model | resource | other
    model: type[FHIRAbstractModel] | None
    codes: tuple[str, ...] | None = None  # a code element's whole value set, from the model


_PRIMITIVE_KINDS: dict[object, str] = {
    bool: "boolean",
    int: "integer",
    decimal.Decimal: "decimal",
    str: "string",
    bytes: "base64",
    datetime.date: "string",
    datetime.datetime: "string",
    datetime.time: "string",
}
_JSON_TYPE_NAMES = {
    "boolean": "a JSON boolean (true or false)",
    "integer": "a JSON number without fraction",
    "decimal": "a JSON number",
    "string": "a JSON string",
    "base64": "a JSON string in base64 (RFC 4648)",
}
# base64Binary: the library decodes leniently (it drops characters outside the alphabet).
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")


def _unwrap(annotation: object) -> tuple[bool, object]:
    is_list = False
    tp = annotation
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return is_list, None
            tp = args[0]
        elif origin is list:
            is_list = True
            tp = typing.get_args(tp)[0]
        elif origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        else:
            return is_list, tp


@cache
def _fields(cls: type[FHIRAbstractModel]) -> dict[str, _Field]:
    out: dict[str, _Field] = {}
    for name, info in cls.model_fields.items():
        if name == "fhir_comments":
            continue
        alias = info.alias or name
        is_list, tp = _unwrap(info.annotation)
        model: type[FHIRAbstractModel] | None = None
        kind = _PRIMITIVE_KINDS.get(tp, "other")
        if isinstance(tp, type) and issubclass(tp, FhirBase):
            model = tp.get_model_klass()
            kind = "resource" if model.has_resource_base() else "model"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        listed = extra.get("enum_values")
        # a code element's codes as the model lists them; "+" marks a list it cut short, and
        # "etc." an open one (Expression.language: an extensible binding, not a required one)
        values = [str(c) for c in listed] if isinstance(listed, list) else []
        complete = kind == "string" and bool(values) and not {"+", "etc."} & set(values)
        codes = tuple(values) if complete else None
        out[alias] = _Field(alias.removeprefix("_"), is_list, kind, model, codes)
    return out


@cache
def _rules(
    cls: type[FHIRAbstractModel],
) -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, ...], bool]]]:
    """The JSON names of the required primitive elements of ``cls``, and its choice elements:
    prefix -> (JSON names, whether one of them is required)."""
    instance = cls.model_construct()
    fields = cls.model_fields
    alias = {name: info.alias or name for name, info in fields.items()}
    required = tuple(alias.get(name, name) for name, _ext in instance.get_required_fields())
    choices: dict[str, tuple[tuple[str, ...], bool]] = {}
    for prefix, names in instance.get_one_of_many_fields().items():
        extra = fields[names[0]].json_schema_extra
        mandatory = isinstance(extra, dict) and extra.get("one_of_many_required") is True
        choices[prefix] = (tuple(alias.get(n, n) for n in names), mandatory)
    return required, choices


def _is_datatype(cls: type) -> bool:
    """A complex datatype (HumanName, Quantity, Timing...): the main class of its module, not a
    resource. Backbone elements (PatientContact in patient.py) are not."""
    return (
        issubclass(cls, FHIRAbstractModel)
        and cls.__module__.rsplit(".", 1)[-1] == cls.__name__.lower()
        and not cls.has_resource_base()
    )


@cache
def _datatype_paths(cls: type[FHIRAbstractModel]) -> tuple[str, ...]:
    """Definition paths a datatype answers to: Age -> ("Age", "Quantity")."""
    return tuple(c.__name__ for c in cls.__mro__ if c is not FHIRAbstractModel and _is_datatype(c))


# ---------------------------------------------------------------- layers 1, 3, 4


def _error(code: str, diagnostics: str, expression: tuple[str, ...]) -> Issue:
    return Issue("error", code, diagnostics, expression)


_ELEMENT_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,63}")


def _segment(key: str) -> str:
    """A JSON key as a path segment; keys that cannot be element names are not echoed."""
    return key.removeprefix("_") if _ELEMENT_NAME.fullmatch(key) else "?"


class _Walker:
    """Walks the JSON alongside the R4B models: JSON types, nulls, empties, names, ids, bindings."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.bad_resources: list[_At] = []  # embedded resources of no known type
        self.too_deep = False

    def _add(self, code: str, diagnostics: str, expression: str) -> None:
        self.issues.append(_error(code, diagnostics, (expression,)))

    def resource_body(
        self, node: Mapping[str, Any], cls: type[FHIRAbstractModel], expr: str, at: _At
    ) -> None:
        rid = node.get("id")
        if isinstance(rid, str) and not ID_RE.fullmatch(rid):
            self._add("value", "not a valid FHIR id ([A-Za-z0-9-.]{1,64})", f"{expr}.id")
        self._object(node, cls, expr, (cls.__name__,), at, is_resource=True)

    def _embedded(self, node: Mapping[str, Any], expr: str, at: _At) -> None:
        rtype = node.get("resourceType")
        cls = _resource_class(rtype) if isinstance(rtype, str) else None
        if cls is None:
            what = "missing" if rtype is None else "unknown"
            self._add("structure", f"{what} resource type", f"{expr}.resourceType")
            self.bad_resources.append(at)
            return
        self.resource_body(node, cls, expr, at)

    def _object(
        self,
        node: Mapping[str, Any],
        cls: type[FHIRAbstractModel],
        expr: str,
        defs: tuple[str, ...],
        at: _At,
        *,
        is_resource: bool = False,
    ) -> None:
        if len(at) > MAX_DEPTH:
            if not self.too_deep:
                self._add("structure", f"nested more than {MAX_DEPTH} levels deep", expr)
            self.too_deep = True
            return
        if not node:
            self._add("structure", "empty object: an element needs a value or children", expr)
            return
        fields = _fields(cls)
        self._cardinality(node, cls, expr)
        for key, value in node.items():
            if is_resource and key == "resourceType":
                continue
            spec = fields.get(key)
            if spec is None:
                self._add("structure", "unknown element", f"{expr}.{_segment(key)}")
                continue
            path = f"{expr}.{spec.name}"
            binding = None
            if not key.startswith("_"):
                binding = next(
                    (b for d in defs if (b := REQUIRED_BINDINGS.get(f"{d}.{spec.name}"))), None
                )
                if binding is None and spec.codes is not None:  # any other code element
                    where = f"{defs[0]}.{spec.name}" if defs else path
                    binding = ValueSet(f"of {where} (R4)", spec.codes)
            if spec.is_list:
                if not isinstance(value, list):
                    continue  # the model reports it
                if not value:
                    self._add("structure", "empty array: omit the element instead", path)
                    continue
                primitive = spec.kind in _JSON_TYPE_NAMES or key.startswith("_")
                for i, item in enumerate(value):
                    if item is None and primitive:
                        continue  # positional placeholder of a primitive array
                    self._item(spec, item, f"{path}[{i}]", defs, binding, (*at, key, i))
            elif not isinstance(value, list):
                self._item(spec, value, path, defs, binding, (*at, key))

    def _cardinality(
        self, node: Mapping[str, Any], cls: type[FHIRAbstractModel], expr: str
    ) -> None:
        """Required primitive elements and choice elements [x], which the models only check
        after every other element of the object is valid (so not together with them)."""
        required, choices = _rules(cls)
        for name in required:  # a value, or an extension saying why there is none
            ext = node.get("_" + name)
            if node.get(name) is None and not (isinstance(ext, dict) and ext.get("extension")):
                self._add("required", "required element is missing", f"{expr}.{name}")
        for prefix, (names, mandatory) in choices.items():
            present = [n for n in names if node.get(n) is not None or node.get("_" + n)]
            if len(present) > 1:
                self._add(
                    "structure",
                    "only one of " + ", ".join(present) + " may be present",
                    f"{expr}.{prefix}[x]",
                )
            elif mandatory and not present:
                self._add(
                    "required",
                    "one of " + ", ".join(names) + " is required",
                    f"{expr}.{prefix}[x]",
                )

    def _item(
        self,
        spec: _Field,
        value: object,
        path: str,
        defs: tuple[str, ...],
        binding: ValueSet | None,
        at: _At,
    ) -> None:
        if value is None:
            self._add("structure", "null is not allowed here", path)
            return
        kind = spec.kind
        if kind in _JSON_TYPE_NAMES:
            if value == "":
                self._add("value", "empty string: omit the element instead", path)
                return
            if not _json_type_ok(kind, value):
                self._add("structure", f"must be {_JSON_TYPE_NAMES[kind]}", path)
                return
        elif kind == "resource":
            if isinstance(value, dict):
                self._embedded(value, path, at)
            return
        elif kind == "model" and spec.model is not None and isinstance(value, dict):
            model = spec.model
            if _is_datatype(model):
                child_defs = _datatype_paths(model)
            else:
                child_defs = tuple(
                    _CONTENT_REFERENCES.get(p, p) for p in (f"{d}.{spec.name}" for d in defs)
                )
            self._object(value, model, path, child_defs, at)
        if binding is not None:
            self._binding(value, path, binding)

    def _binding(self, value: object, path: str, vs: ValueSet) -> None:
        allowed = ", ".join(vs.codes)
        if isinstance(value, str):
            if value not in vs.codes:
                self._add(
                    "code-invalid",
                    f"code is not in the required value set {vs.url} (allowed: {allowed})",
                    path,
                )
            return
        if not isinstance(value, dict):
            return
        codings = value.get("coding")
        wrong_code_at: str | None = None
        if isinstance(codings, list):
            for i, coding in enumerate(codings):
                if not isinstance(coding, dict):
                    continue
                if vs.system is not None and coding.get("system") != vs.system:
                    continue
                if coding.get("code") in vs.codes:
                    return
                wrong_code_at = wrong_code_at or f"{path}.coding[{i}].code"
        system = f"system {vs.system}, " if vs.system else ""
        self._add(
            "code-invalid",
            f"no coding from the required value set {vs.url} ({system}allowed codes: {allowed})",
            wrong_code_at or path,
        )


def _json_type_ok(kind: str, value: object) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "decimal":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "base64":
        if not isinstance(value, str):
            return False
        packed = _WHITESPACE.sub("", value)
        return len(packed) % 4 == 0 and _BASE64.fullmatch(packed) is not None
    return isinstance(value, str)


# ---------------------------------------------------------------- layer 2: the R4B models

_PATTERN_TYPES = {
    r"^[A-Za-z0-9\-.]+$": "id",
    r"^[^\s]+(\s[^\s]+)*$": "code",
    "[ \r\n\t\\S]+": "string",
}


# Stands in for an embedded resource of no known type, which the library cannot handle (it raises
# KeyError), so that the rest of the resource is still checked with unchanged list indices.
_PLACEHOLDER_RESOURCE = {"resourceType": "Parameters"}


def _without(body: Mapping[str, Any], bad: list[_At]) -> Mapping[str, Any]:
    if not bad:
        return body
    out: Any = copy.deepcopy(body)
    for at in bad:
        node = out
        for step in at[:-1]:
            node = node[step]
        node[at[-1]] = dict(_PLACEHOLDER_RESOURCE)
    return typing.cast(Mapping[str, Any], out)


def _structure_issues(
    body: Mapping[str, Any], cls: type[FHIRAbstractModel], root: str, known: list[Issue]
) -> list[Issue]:
    try:
        cls.model_validate(body)
    except pydantic.ValidationError as exc:
        issues = (_pydantic_issue(root, err) for err in exc.errors(include_url=False))
        return [issue for issue in issues if issue is not None]
    except Exception:  # the library trips over some invalid input (KeyError on an unknown
        # contained resourceType); the walker has then named the problem already
        if known:
            return []
        return [_error("structure", "the resource could not be parsed", (root,))]
    return []


def _pydantic_issue(root: str, err: Mapping[str, Any]) -> Issue | None:
    """The issue of one pydantic error; None for the checks the walker makes completely
    (required primitives and choice elements, which the models only check late)."""
    etype = str(err.get("type", ""))
    msg = str(err.get("msg", ""))
    loc = tuple(err.get("loc", ()))
    expr = root
    for part in loc:
        if isinstance(part, int):
            expr += f"[{part}]"
        elif part == "resource_type":
            expr += ".resourceType"
        elif part != "root":
            expr += "." + _segment(str(part))

    if etype == "model_field_validation.missing" or ("field value" in msg and "list" in msg):
        return None
    if etype == "missing":
        return _error("required", "required element is missing", (expr,))
    if etype == "extra_forbidden":
        return _error("structure", "unknown element", (expr,))
    if etype == "fhir-validation-wrong-resource-type":
        return _error("invalid", "wrong resource type", (expr,))
    if etype == "string_pattern_mismatch":
        ctx = err.get("ctx") or {}
        fhir_type = _PATTERN_TYPES.get(str(ctx.get("pattern", "")))
        if fhir_type is not None:
            return _error("value", f"not a valid FHIR {fhir_type}", (expr,))
    diagnostics = _safe_message(msg.removeprefix("Value error, "), err.get("input"), etype)
    code = "structure" if etype.endswith("_type") else "value"
    return _error(code, diagnostics, (expr,))


def _safe_message(msg: str, value: object, etype: str) -> str:
    """pydantic's message, unless it repeats (part of) the offending value."""
    for leaf in _leaves(value, limit=2000):
        if len(leaf) >= 3 and leaf in msg:
            return f"invalid value ({etype})"
    return msg or f"invalid value ({etype})"


def _leaves(value: object, *, limit: int) -> Iterable[str]:
    stack = [value]
    seen = 0
    while stack and seen < limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif item is not None:
            yield str(item)
