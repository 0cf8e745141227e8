"""Which R4 resource types this node holds as a patient's records, and the element that names
the patient; and which it holds as an organisation's own records (about no patient). Pure.

A record belongs to exactly one patient: the types held are those of R4's Patient compartment
whose ``patient`` search parameter (HL7's definition) is one, single Reference element. The
table is written out so a reader sees it; tests/unit/fhir/test_types.py derives it again from the
definitions and from the models validation uses, so the two cannot drift. Consent is held by the
consent contract, not as a record.
"""

from __future__ import annotations

from collections.abc import Mapping

from careledger.contracts.records import ORG_RECORD_TYPES

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

RECORD_TYPES: frozenset[str] = frozenset({"Patient", *PATIENT_ELEMENT})
"""Every type held as a patient's record (the Patient itself included)."""

ORG_TYPES: frozenset[str] = ORG_RECORD_TYPES
"""Types held as an organisation's own records, about no patient (ruleset r10's list)."""

CUSTODIAN_ONLY: frozenset[str] = frozenset({"Group"})
"""Organisation records only the custodian's own staff and apps read: a Group lists patients."""

HELD_TYPES: frozenset[str] = RECORD_TYPES | ORG_TYPES
"""Every type held as a record, a patient's or an organisation's."""
