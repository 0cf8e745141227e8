"""FHIR R4 for the CareLedger API: validation (with OperationOutcome issues) and extraction of
the fields that search and indexing need."""

from careledger.fhir.extract import codes, patient_id, patient_reference, phi_strings, search_dates
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
    "codes",
    "find_issues",
    "operation_outcome",
    "patient_id",
    "patient_reference",
    "phi_strings",
    "search_dates",
    "validate_resource",
]
