from __future__ import annotations

import pytest

from careledger.callers.scopes import (
    allows,
    default_scopes,
    parse_scope,
    parse_scopes,
    patient_only,
)
from careledger.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "read", "write"),
    [
        ("patient/*.read", True, False),
        ("user/Observation.write", False, True),
        ("user/*.*", True, True),
        ("patient/Observation.rs", True, False),
        ("user/Condition.cud", False, True),
        ("system/*.cruds", True, True),
    ],
)
def test_parse(text: str, read: bool, write: bool) -> None:
    scope = parse_scope(text)
    assert (scope.read, scope.write) == (read, write)


@pytest.mark.parametrize(
    "text",
    ["", "patient", "doctor/*.read", "user/observation.read", "user/*.fly", "user/*.read extra"],
)
def test_bad_scopes(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_scope(text)
    assert info.value.code == "BAD_SCOPE"


def test_allows_and_patient_only() -> None:
    scopes = parse_scopes("patient/Observation.read patient/Consent.write")
    assert allows(scopes, "Observation", "read")
    assert not allows(scopes, "Observation", "write")
    assert not allows(scopes, "Condition", "read")
    assert allows(scopes, "Consent", "write")
    assert patient_only(scopes)
    assert not patient_only(parse_scopes("user/*.read"))
    assert not patient_only(())


def test_default_scopes_by_role() -> None:
    assert default_scopes({"patient"}) == "patient/*.read patient/*.write"
    assert "user/*.write" in default_scopes({"clinician", "auditor"})
    # supply-chain roles get the drug-traceability API, and no FHIR (health record) scope
    assert default_scopes({"manufacturer"}) == "user/SupplyChain.read user/SupplyChain.write"
    assert "user/SupplyChain.write" in default_scopes({"pharmacist"})
    assert default_scopes({"courier"}) == ""
