"""Monitoring workflows on a node: devices, bindings, rules, alerts, readings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from careledger.callers.caller import Caller
from careledger.contracts.monitoring import NAMESPACE as MONITORING
from careledger.contracts.monitoring import alert_of, binding_of, next_window
from careledger.errors import Forbidden, NotFound
from careledger.health.service import HealthRecords
from careledger.monitoring.ingest import Ack, Ingestor
from careledger.monitoring.readings import ReadingsService
from careledger.patient_signing import sign_as_patient


class MonitoringService:
    def __init__(self, records: HealthRecords, ingestor: Ingestor, readings: ReadingsService):
        self.records = records
        self.node = records.node
        self.ledger = records.ledger
        self.ingestor = ingestor
        self.readings = readings

    def arrived(self) -> float:
        """Now, on the ingestor's own monotonic source: a route stamps a batch's arrival
        before reading its body, and windows are timed on that same source (an injected one
        in tests)."""
        return self.ingestor.now()

    def accept(self, device: str, envelope: object, received: float | None = None) -> Ack:
        return self.ingestor.accept(device, envelope, received=received)

    def device(self, device_id: str) -> dict[str, Any]:
        device = self.ingestor.device_of(device_id)
        binding = binding_of(self.ledger.state, device_id)
        return {
            **device,
            "binding": None if binding is None else {k: binding[k] for k in ("status", "since")},
            "windows": next_window(self.ledger.state, device_id),
        }

    def act(self, caller: Caller, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
        return self.node.act_for(MONITORING, caller.member, method, args)

    def bind(self, caller: Caller, device: str, envelope: object | None) -> dict[str, Any]:
        self.ingestor.device_of(device)
        return sign_as_patient(
            self.records, caller, MONITORING, "bind", {"device": device}, envelope
        )

    def erase_readings(
        self, caller: Caller, patient: str, envelope: object | None
    ) -> dict[str, Any]:
        """The patient erases every reading held about them so far (signed by the patient)."""
        if not caller.is_patient(patient):
            raise Forbidden("a patient erases their own readings", code="NOT_AUTHORISED")
        args = {"patient": patient}
        return sign_as_patient(self.records, caller, MONITORING, "erase_readings", args, envelope)

    def unbind(
        self, caller: Caller, device: str, reason: str, envelope: object | None
    ) -> dict[str, Any]:
        args = {"device": device, "reason": reason}
        if "patient" in caller.roles:
            return sign_as_patient(self.records, caller, MONITORING, "unbind", args, envelope)
        return self.act(caller, "unbind", args)

    def alert(self, caller: Caller, alert_id: str) -> dict[str, Any]:
        alert = alert_of(self.ledger.state, alert_id)
        if alert is None:
            raise NotFound("no such alert", code="UNKNOWN_ALERT")
        care_team = bool(caller.roles & {"clinician", "nurse"}) and (alert["org"] == caller.org)
        if not caller.is_patient(alert["patient"]) and not care_team:
            raise Forbidden("the patient and the care team see an alert", code="NOT_AUTHORISED")
        return dict(alert)
