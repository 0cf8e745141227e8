"""FHIR patch with JSON Patch (RFC 6902), for the REST PATCH interaction and PATCH entries of
batch and transaction Bundles (whose patch travels as a Binary resource). Pure.

A failure names the operation, never a value (values are PHI).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer
import orjson

from careledger.fhir.outcome import FhirError, Issue

JSON_PATCH = "application/json-patch+json"
MAX_PATCH = 1024 * 1024
MAX_OPERATIONS = 1_000
MAX_RESULT = 4 * 1024 * 1024  # what a resource may be (the API's limit on a body)


def operations_of(value: object) -> list[dict[str, Any]]:
    """The operations of a JSON Patch document, or FhirError."""
    if not isinstance(value, list) or not all(isinstance(o, dict) for o in value):
        raise FhirError([Issue("error", "invalid", "a JSON Patch is a list of operations", ())])
    if len(value) > MAX_OPERATIONS:
        raise FhirError([Issue("error", "too-costly",
                               f"a patch has at most {MAX_OPERATIONS:,} operations", ())],
                        code="REQUEST_TOO_LARGE")  # fmt: skip
    return value


def operations_in_binary(binary: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """A Bundle entry's patch: a Binary whose ``contentType`` is JSON Patch and whose ``data``
    is the patch, base64 (R4 3.1.0.11.6: "the body of the PATCH is a Binary")."""
    if binary.get("resourceType") != "Binary" or binary.get("contentType") != JSON_PATCH:
        raise FhirError([Issue("error", "not-supported",
                               f"a PATCH entry's resource is a Binary of {JSON_PATCH}",
                               (f"{where}.resource",))])  # fmt: skip
    data = binary.get("data")
    try:
        raw = base64.b64decode(str(data), validate=True)
    except (binascii.Error, ValueError):
        raise FhirError([Issue("error", "invalid", "Binary.data is not base64",
                               (f"{where}.resource.data",))]) from None  # fmt: skip
    if len(raw) > MAX_PATCH:
        raise FhirError([Issue("error", "too-costly", "a patch may be at most 1 MiB", ())],
                        code="REQUEST_TOO_LARGE")  # fmt: skip
    try:
        return operations_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise FhirError([Issue("error", "invalid", "the patch is not JSON",
                               (f"{where}.resource.data",))]) from None  # fmt: skip


def apply_patch(
    resource: dict[str, Any], operations: list[dict[str, Any]], resource_type: str, record_id: str
) -> dict[str, Any]:
    """The patched resource, which must stay the same type and id; FhirError (422) naming the
    operation that cannot be applied."""
    for index, operation in enumerate(operations_of(operations)):
        try:
            resource = jsonpatch.apply_patch(resource, [operation])
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError):
            raise FhirError(
                [Issue("error", "processing", f"patch operation {index} cannot be applied", ())],
                code="PATCH_FAILED",
                http_status=422,
            ) from None
        if operation.get("op") in ("add", "copy", "replace", "move") and len(
            orjson.dumps(resource)
        ) > MAX_RESULT:  # "copy" doubles a value: a few operations could fill memory
            raise FhirError(
                [Issue("error", "too-costly", f"patch operation {index} makes the resource"
                       " larger than 4 MiB", ())],
                code="REQUEST_TOO_LARGE",
                http_status=413,
            )  # fmt: skip
    if not isinstance(resource, dict):
        raise FhirError([Issue("error", "invalid", "a patch must leave a resource", ())])
    if resource.get("resourceType") != resource_type or resource.get("id") != record_id:
        raise FhirError(
            [Issue("error", "invalid", "a patch may not change resourceType or id", ())],
            http_status=422,
        )
    return resource
