"""FHIR patch (RFC 6902): a patch cannot make a resource grow without bound, nor change its type
or id; errors name the operation, never a value."""

from __future__ import annotations

import base64

import orjson
import pytest

from careledger.fhir.outcome import FhirError
from careledger.fhir.patch import MAX_OPERATIONS, apply_patch, operations_in_binary

NOTE = {"resourceType": "Observation", "id": "o1", "status": "final",
        "note": [{"text": "x" * 1000}]}  # fmt: skip


def test_a_doubling_patch_is_stopped_before_it_fills_memory() -> None:
    doubling = [{"op": "copy", "from": "/note", "path": "/note/-"}] * 40
    with pytest.raises(FhirError) as refused:
        apply_patch(dict(NOTE), doubling, "Observation", "o1")
    assert refused.value.code == "REQUEST_TOO_LARGE" and refused.value.http_status == 413
    # stopped at the operation that crossed 4 MiB (about 12 doublings of 1 kB), not the 40th
    assert "operation 12 " in refused.value.issues[0].diagnostics


def test_too_many_operations_are_refused_unapplied() -> None:
    many = [{"op": "test", "path": "/status", "value": "final"}] * (MAX_OPERATIONS + 1)
    with pytest.raises(FhirError) as refused:
        apply_patch(dict(NOTE), many, "Observation", "o1")
    assert refused.value.code == "REQUEST_TOO_LARGE"


def test_type_and_id_stay_and_failures_name_the_operation_only() -> None:
    with pytest.raises(FhirError):
        apply_patch(dict(NOTE), [{"op": "replace", "path": "/id", "value": "o2"}],
                    "Observation", "o1")  # fmt: skip
    with pytest.raises(FhirError) as failed:
        apply_patch(dict(NOTE), [{"op": "test", "path": "/status", "value": "secret-41"}],
                    "Observation", "o1")  # fmt: skip
    assert failed.value.code == "PATCH_FAILED" and "secret-41" not in str(failed.value.issues)


def test_a_bundle_entry_carries_its_patch_in_a_binary() -> None:
    ops = [{"op": "replace", "path": "/status", "value": "amended"}]
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(orjson.dumps(ops)).decode()}  # fmt: skip
    assert operations_in_binary(binary, "Bundle.entry[0]") == ops
    for bad in ({**binary, "contentType": "text/plain"}, {**binary, "data": "***"},
                {**binary, "data": base64.b64encode(b"{").decode()}):  # fmt: skip
        with pytest.raises(FhirError):
            operations_in_binary(bad, "Bundle.entry[0]")
