"""FHIR R4 for the CareLedger API: validation (with OperationOutcome issues), the patient a
resource belongs to, and search (careledger.fhir.search)."""

from careledger.fhir.extract import patient_id, patient_reference, phi_strings
from careledger.fhir.outcome import FhirError, Issue, operation_outcome
from careledger.fhir.validate import (
    REQUIRED_BINDINGS,
    SUPPORTED_TYPES,
    ValueSet,
    find_issues,
    validate_resource,
)

__all__ = [
    "REQUIRED_BINDINGS",
    "SUPPORTED_TYPES",
    "FhirError",
    "Issue",
    "ValueSet",
    "find_issues",
    "operation_outcome",
    "patient_id",
    "patient_reference",
    "phi_strings",
    "validate_resource",
]
