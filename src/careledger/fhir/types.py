"""Which R4 resource types this node holds as a patient's records, and how the patient is found;
which it holds as an organisation's own records (about no patient); and the few it refuses. Pure.

A record belongs to exactly one patient, so that consent can guard it. The patient is found:

- in one single Reference element (:data:`PATIENT_ELEMENT`): R4's Patient compartment types
  whose ``patient`` search parameter (HL7's definition) is one, single Reference element;
- on paths of references (:data:`PATIENT_PATHS`): the relative ``Patient/{id}`` references on
  them, which must name one patient (two or more: ``MULTIPLE_PATIENTS``);
- through the records they refer to (:data:`RECORD_PATHS`): a ``Patient/{id}`` on them, or the
  patient of a record held here that the writer may see (one patient again);
- for a stored Bundle (document or collection): the one patient of every entry.

The tables are written out so a reader sees them; tests/unit/fhir/test_types.py derives them
again from the definitions and from the models validation uses, so they cannot drift. Consent is
held by the consent contract, not as a record; :data:`NOT_HELD` names what is refused, and why.
"""

from __future__ import annotations

from collections.abc import Mapping

from careledger.contracts.records import NOT_HELD_TYPES, ORG_RECORD_TYPES, ORG_RECORD_TYPES_V4

PATIENT_ELEMENT: Mapping[str, str] = {
    "AdverseEvent": "subject",  # R4's compartment names it by "subject" (no "patient" param)
    "AllergyIntolerance": "patient",
    "AppointmentResponse": "actor",
    "Basic": "subject",
    "BodyStructure": "patient",
    "CarePlan": "subject",
    "CareTeam": "subject",
    "ChargeItem": "subject",
    "Claim": "patient",
    "ClaimResponse": "patient",
    "ClinicalImpression": "subject",
    "Communication": "subject",
    "CommunicationRequest": "subject",
    "Composition": "subject",
    "Condition": "subject",
    "Coverage": "beneficiary",
    "CoverageEligibilityRequest": "patient",
    "CoverageEligibilityResponse": "patient",
    "DetectedIssue": "patient",
    "Device": "patient",
    "DeviceRequest": "subject",
    "DeviceUseStatement": "subject",
    "DiagnosticReport": "subject",
    "DocumentManifest": "subject",
    "DocumentReference": "subject",
    "Encounter": "subject",
    "EnrollmentRequest": "candidate",
    "EpisodeOfCare": "patient",
    "ExplanationOfBenefit": "patient",
    "FamilyMemberHistory": "patient",
    "Flag": "subject",
    "Goal": "subject",
    "GuidanceResponse": "subject",
    "ImagingStudy": "subject",
    "Immunization": "patient",
    "ImmunizationEvaluation": "patient",
    "ImmunizationRecommendation": "patient",
    "Invoice": "subject",
    "List": "subject",
    "MeasureReport": "subject",
    "Media": "subject",
    "MedicationAdministration": "subject",
    "MedicationDispense": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "MolecularSequence": "patient",
    "NutritionOrder": "patient",
    "Observation": "subject",
    "Procedure": "subject",
    "QuestionnaireResponse": "subject",
    "RelatedPerson": "patient",
    "RequestGroup": "subject",
    "ResearchSubject": "individual",
    "RiskAssessment": "subject",
    "ServiceRequest": "subject",
    "Specimen": "subject",
    "SupplyDelivery": "patient",
    "Task": "for",  # Task.for.where(resolve() is Patient): held when it is for a patient
    "VisionPrescription": "patient",
}

PATIENT_PATHS: Mapping[str, tuple[str, ...]] = {
    # R4's "patient" search parameter: <path>.where(resolve() is Patient)
    "Account": ("subject",),
    "Appointment": ("participant.actor",),
    "Contract": ("subject",),
    "Person": ("link.target",),
    "Provenance": ("target",),
    # no "patient" parameter: R4's Patient compartment names the parameter
    "Schedule": ("actor",),
    "SupplyRequest": ("deliverTo", "requester"),  # compartment: subject; a patient's own order
    # no search parameter at all in R4: the donor a product was collected from
    "BiologicallyDerivedProduct": ("collection.source",),
}
"""Types about a patient through a list or a path of references: the relative ``Patient/{id}``
references on these paths name the patient (exactly one, or ``MULTIPLE_PATIENTS``)."""

RECORD_PATHS: Mapping[str, tuple[str, ...]] = {
    "Provenance": ("target",),
    "EnrollmentResponse": ("request",),
    "PaymentNotice": ("request", "response"),
    "PaymentReconciliation": ("detail.request", "detail.response"),
    "VerificationResult": ("target",),
    "Linkage": ("item.resource",),
    "DeviceMetric": ("source", "parent"),
    "Slot": ("schedule",),
    "MessageHeader": ("focus",),
    "Binary": ("securityContext",),
}
"""Types about a patient through the records they refer to: on these paths a ``Patient/{id}``
names the patient, and a reference to another record held here names that record's patient
(when the writer may see it: one it may not is as unknown as one that does not exist)."""

PATIENT_SEARCH: Mapping[str, str] = {
    "AdverseEvent": "subject",  # R4's compartment parameter (it has no "patient")
    "Schedule": "actor",
    "SupplyRequest": "subject",
}
"""The search parameter that names a type's patient, where it is not ``patient``."""

STORED_BUNDLE_TYPES: frozenset[str] = frozenset({"document", "collection"})
"""The Bundle types stored as a record (POST /fhir/Bundle); transaction and batch are
interactions (POST /fhir), and the other types are answers, never stored."""

RECORD_TYPES: frozenset[str] = frozenset(
    {"Patient", "Bundle", *PATIENT_ELEMENT, *PATIENT_PATHS, *RECORD_PATHS}
)
"""Every type held as a patient's record (the Patient itself included)."""

ORG_TYPES_R10: frozenset[str] = ORG_RECORD_TYPES
"""Types held as an organisation's own records under ruleset r10."""

ORG_TYPES: frozenset[str] = ORG_RECORD_TYPES_V4
"""Types held as an organisation's own records, about no patient (ruleset r11's list; r10
holds :data:`ORG_TYPES_R10` only)."""

EITHER_TYPES: frozenset[str] = ORG_TYPES & RECORD_TYPES
"""Types held as the patient's record when a patient is found, and otherwise (from r11) as the
organisation's own record: a Schedule of a practitioner, a Slot of it, a SupplyRequest for a
ward, a PaymentNotice between organisations, ..."""

ORG_ONLY_TYPES: frozenset[str] = ORG_TYPES - RECORD_TYPES
"""Types only ever held as an organisation's own records."""

_NOT_HELD_WHY: Mapping[str, tuple[str, str]] = {
    "Parameters": (
        "NOT_PERSISTED",
        "Parameters carries an operation's input or output; R4 never persists it",
    ),
    "OperationOutcome": (
        "NOT_PERSISTED",
        "OperationOutcome is an interaction's answer; R4 never persists it",
    ),
    "Subscription": (
        "UNSUPPORTED_TYPE",
        "this server delivers no notifications: a stored Subscription would never fire",
    ),
    "AuditEvent": (
        "LEDGER_AUDIT",
        "AuditEvent is this server's own audit trail, read from the ledger (IHE BALP);"
        " clients read and search it, never write it",
    ),
}

NOT_HELD: Mapping[str, tuple[str, str]] = {
    kind: _NOT_HELD_WHY[kind] for kind in sorted(NOT_HELD_TYPES)
}
"""R4 types refused (code, why): every other R4 type is held. The names are the records
contract's (``NOT_HELD_TYPES``, which r11 refuses to anchor), so the two never differ (a name
added there without its reason here fails at import)."""

CUSTODIAN_ONLY: frozenset[str] = frozenset({"Group"})
"""Organisation records only the custodian's own staff and apps read: a Group lists patients."""

HELD_TYPES: frozenset[str] = RECORD_TYPES | ORG_TYPES
"""Every type held as a record, a patient's or an organisation's."""


def patient_search(resource_type: str) -> str:
    """The search parameter naming the patient of a type held as a patient's record."""
    return PATIENT_SEARCH.get(resource_type, "patient")
