"""Bundles imported in-process: the records service as an importer's ``Sink``.

It sits above both the records service and FHIR search, since a conditional create searches
before it writes.
"""

from __future__ import annotations

from typing import Any

from careledger.callers.caller import Caller
from careledger.fhir.extract import patient_id
from careledger.fhir.validate import validate_resource
from careledger.health.search import existing
from careledger.health.service import HealthRecords


class ServiceSink:
    """Creates resources in-process, as ``caller`` (for ``init --demo`` and tests)."""

    def __init__(self, records: HealthRecords, caller: Caller) -> None:
        self.records = records
        self.caller = caller

    def create(
        self, resource: dict[str, Any], if_none_exist: str | None = None
    ) -> tuple[str, bool]:
        kind = str(resource.get("resourceType"))
        validate_resource(resource, expected_type=kind)
        if if_none_exist is not None:
            found = existing(self.records, self.caller, kind, if_none_exist, purpose="TREAT")
            if found:
                return found[0].record_id, False
        return self.records.create(self.caller, resource, patient_of=patient_id).record_id, True
