"""Supply-chain workflows on a node: verification, recalls, suspect cases, inventory, alerts.

Reads come from committed ledger state (units, stock counters, recalls, cases); writes are
supply transactions the node signs for the member it authenticated (``supply.on_behalf``), so
ownership and roles are judged as that member's on the ledger, not by this service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from careledger.callers.caller import Caller
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.base import KeyLister, StateReader
from careledger.contracts.identity import org_of
from careledger.contracts.supply import (
    ILLEGITIMATE,
    IN_STOCK,
    NAMESPACE,
    SHIPPED,
    SUSPECT,
    first_location_of,
    location_of,
    lot_serials,
    prefix_owner,
    recall_of,
    shipment_of,
    stock_entries,
    suspect_cases,
    unit_view,
)
from careledger.errors import NotFound, ValidationError
from careledger.node import Node
from careledger.sqlite_threads import iso_ms
from careledger.supply.access import require_supply
from careledger.supply.alerts import Alert, AlertStore
from careledger.supply.identifiers import SGTIN, parse_digital_link, validate_gln, validate_gtin
from careledger.supply.verdict import Verdict, dispense_verdict
from careledger.supply.verification import OUT_OF_CIRCULATION, verify_unit
from careledger.supply.verification_log import VerificationLog

MAX_LISTED = 10_000  # state keys one listing walks (inventory, suspect cases, locations)
LMS_FIELDS = frozenset(
    {"gtin", "serialNumber", "lotNumber", "expirationDate", "corrUUID", "requestorGLN", "context"}
)


def lms_request_from_link(link: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """An LMS request from a GS1 Digital Link (``/01/{gtin}/21/{serial}?10=..&17=..``)."""
    obj = parse_digital_link(link)
    if not isinstance(obj, SGTIN):
        raise ValidationError(
            "verification needs a GTIN and serial number (AIs 01 and 21)", code="NOT_AN_SGTIN"
        )
    request: dict[str, Any] = {"gtin": obj.gtin, "serialNumber": obj.serial}
    if obj.lot is not None:
        request["lotNumber"] = obj.lot
    if obj.expiry is not None:
        request["expirationDate"] = obj.expiry
    return {**request, **{k: v for k, v in extra.items() if v is not None}}


def check_lms_request(raw: object) -> dict[str, Any]:
    """A validated LMS verification request (GTIN-14, serial, optional lot, expiry, GLN)."""
    if not isinstance(raw, dict):
        raise ValidationError("a verification request is a JSON object", code="BAD_REQUEST")
    unknown = set(raw) - LMS_FIELDS
    if unknown:
        raise ValidationError(f"unknown field {sorted(unknown)[0]!r}", code="BAD_REQUEST")
    for name in LMS_FIELDS:
        if name in raw and not isinstance(raw[name], str):
            raise ValidationError(f"{name} must be a string", code="BAD_REQUEST")
    if "gtin" not in raw or "serialNumber" not in raw:
        raise ValidationError("gtin and serialNumber are required", code="BAD_REQUEST")
    sgtin = SGTIN(raw["gtin"], raw["serialNumber"], raw.get("lotNumber"), raw.get("expirationDate"))
    request = {**raw, "gtin": sgtin.gtin, "serialNumber": sgtin.serial}
    if "requestorGLN" in raw:
        request["requestorGLN"] = validate_gln(raw["requestorGLN"])
    if len(raw.get("corrUUID", "")) > 64:
        raise ValidationError("corrUUID is at most 64 characters", code="BAD_REQUEST")
    return request


class SupplyService:
    def __init__(
        self,
        node: Node,
        alerts: AlertStore,
        verifications: VerificationLog,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.node = node
        self._clock = clock  # verification times, and overdue notifications
        self.alerts = alerts
        self.verifications = verifications
        self._responders: dict[str, str] = {}

    # -- reads of ledger state ---------------------------------------------------------------

    @property
    def _read(self) -> StateReader:
        return self.node.ledger.state

    @property
    def _keys(self) -> KeyLister:
        return self.node.ledger.store.state_keys

    def brand_owner(self, gtin14: str) -> str | None:
        return prefix_owner(self._read, gtin14)

    @staticmethod
    def require_reader(caller: Caller, action: str = "read") -> None:
        require_supply(caller, action)

    def unit(self, caller: Caller, gtin: str, serial: str) -> dict[str, Any]:
        self.require_reader(caller)
        gtin14 = validate_gtin(gtin)
        unit = unit_view(self._read, gtin14, serial)
        if unit is None:
            raise NotFound("no unit with that GTIN and serial", code="UNKNOWN_SERIAL")
        return unit

    def inventory(
        self, caller: Caller, *, gtin: str | None, location: str | None
    ) -> dict[str, Any]:
        """Units in stock by GTIN and location, from the ledger's stock counters."""
        self.require_reader(caller)
        gtin14 = validate_gtin(gtin) if gtin else None
        gln = validate_gln(location) if location else None
        entries = stock_entries(self._read, self._keys, gtin14, MAX_LISTED)
        rows = [e for e in entries if gln is None or e["gln"] == gln]
        by_gtin: dict[str, int] = {}
        for row in rows:
            by_gtin[row["gtin"]] = by_gtin.get(row["gtin"], 0) + row["quantity"]
        return {
            "height": self.node.ledger.head.height,
            "locations": rows,
            "totals": [{"gtin": g, "quantity": q} for g, q in sorted(by_gtin.items())],
            "truncated": len(entries) >= MAX_LISTED,
        }

    def recall(self, caller: Caller, recall_id: str) -> dict[str, Any]:
        """The recall as issued, and who holds its still-open units now (by GLN)."""
        self.require_reader(caller)
        entry = recall_of(self._read, recall_id) if recall_id.isalnum() else None
        if entry is None:
            raise NotFound("no recall with that id", code="UNKNOWN_RECALL")
        current: dict[str, dict[str, Any]] = {}
        closed = 0
        for lot in entry["lots"]:
            for serial in lot_serials(self._read, entry["gtin"], lot):
                unit = unit_view(self._read, entry["gtin"], serial)
                assert unit is not None  # a lot lists the units commissioned in it
                gln, holder = unit["holder_location"], unit["owner"]
                flags = set(unit["flags"])
                if unit["status"] == SHIPPED:
                    shipment = shipment_of(self._read, unit["shipment"])
                    assert shipment is not None  # a shipped unit names its shipment
                    gln, holder = shipment["to_location"], shipment["to"]
                elif unit["status"] not in IN_STOCK or flags & {SUSPECT, ILLEGITIMATE}:
                    closed += 1  # destroyed, decommissioned, dispensed or quarantined
                    continue
                slot = current.setdefault(gln, {"org": holder, "quantity": 0})
                slot["quantity"] += 1
        return {
            **entry,
            "time": iso_ms(entry["time"]),
            "current_holders": dict(sorted(current.items())),
            "open_units": sum(h["quantity"] for h in current.values()),
            "closed_units": closed,
        }

    def suspects(self, caller: Caller, *, open_only: bool = False) -> list[dict[str, Any]]:
        """Suspect-product cases the caller's organisation runs, holds or owns the brand of."""
        self.require_reader(caller)
        now = self._clock.now_ms()
        cases = []
        for case in suspect_cases(self._read, self._keys, MAX_LISTED):
            unit = unit_view(self._read, case["gtin"], case["serial"]) or {}
            parties = {case.get("opened_by"), unit.get("owner"), self.brand_owner(case["gtin"])}
            if caller.org not in parties and "node" not in caller.roles:
                continue
            if open_only and case["stage"] == "closed":
                continue
            view = {**case, "opened_time": iso_ms(case["opened_time"])}
            determination = case.get("determination")
            if determination is not None:
                view["determination"] = {**determination, "time": iso_ms(determination["time"])}
                if "notify_by" in determination:
                    view["notify_by"] = iso_ms(determination["notify_by"])
                    view["overdue"] = (
                        case.get("notified") is None and now > determination["notify_by"]
                    )
            cases.append(view)
        return cases

    def list_alerts(
        self, caller: Caller, *, kinds: list[str], gtin: str | None, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        self.require_reader(caller)
        org = None if "node" in caller.roles else caller.org
        gtin14 = validate_gtin(gtin) if gtin else None
        return self.alerts.list(org=org, kinds=kinds, gtin=gtin14, after=after, limit=limit)

    # -- verification --------------------------------------------------------------------------

    def verify(
        self, requester: Caller | None, request: Mapping[str, Any], *, explain: bool = False
    ) -> dict[str, Any]:
        """Answer one LMS verification request from ledger state, log it, and alert if needed;
        with ``explain``, beside the standard answer, the ``verdict``: dispense or not, why in
        words, and what to do (supply.verdict)."""
        now = self._clock.now_ms()
        gtin14, serial = request["gtin"], request["serialNumber"]
        unit = unit_view(self._read, gtin14, serial)
        data = verify_unit(
            unit,
            lot=request.get("lotNumber"),
            expiry=request.get("expirationDate"),
            time_ms=now,
        )
        brand = self.brand_owner(gtin14)
        response: dict[str, Any] = {
            "verificationTimestamp": iso_ms(now),
            "data": data,
        }
        if "corrUUID" in request:
            response["corrUUID"] = request["corrUUID"]
        if explain:
            response["verdict"] = self._verdict(unit, data, now).as_dict()
        responder = self._responder_gln(brand)
        if responder is not None:
            response["responderGLN"] = responder
        seq = self.verifications.record(
            time=response["verificationTimestamp"],
            requester=requester.member if requester else "anonymous",
            requester_org=requester.org if requester else None,
            request=request,
            brand_owner=brand,
            response=response,
        )
        if requester is not None and unit is not None and unit["status"] in OUT_OF_CIRCULATION:
            # Only a signed-in requester raises it, at a GLN of their own: anonymous requests
            # are logged but cannot flood alerts or blame another organisation's site.
            alert = Alert(
                kind="verified_after_decommission",
                time=now,
                gtin=gtin14,
                serial=serial,
                location=self._own_gln(requester, request.get("requestorGLN")),
                org=requester.org if requester else None,
                brand_owner=brand,
                tx_id=f"verification-{seq}",
                detail={"status": unit["status"], "verification": seq},
            )
            self.alerts.add([alert])
        return response

    def _verdict(
        self, unit: Mapping[str, Any] | None, data: Mapping[str, Any], now: int
    ) -> Verdict:
        recall = recall_of(self._read, unit["recall"]) if unit and unit.get("recall") else None
        by = None
        if recall is not None:
            org = org_of(self._read, recall["by"]) or {}
            by = str(org.get("name") or recall["by"])
        dispensed = None
        if unit is not None and unit.get("dispensed_height") is not None:
            header = self.node.ledger.store.header(int(unit["dispensed_height"]))
            dispensed = header.time if header is not None else None
        return dispense_verdict(
            unit, data, time_ms=now, recall=recall, recalled_by=by, dispensed_ms=dispensed
        )

    def _own_gln(self, requester: Caller, gln: object) -> str | None:
        if not isinstance(gln, str):
            return None
        entry = location_of(self._read, gln)
        return gln if entry is not None and entry["org"] == requester.org else None

    def _responder_gln(self, brand: str | None) -> str | None:
        """A GLN of the brand owner (found once: a GLN never changes organisation)."""
        if brand is None:
            return None
        if brand not in self._responders:
            found = first_location_of(self._read, self._keys, brand, MAX_LISTED)
            if found is not None:
                self._responders[brand] = found
        return self._responders.get(brand)

    def list_verifications(
        self, caller: Caller, *, gtin: str | None, serial: str | None, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        self.require_reader(caller)
        org = None if "node" in caller.roles else caller.org
        gtin14 = validate_gtin(gtin) if gtin else None
        return self.verifications.list(
            org=org, gtin=gtin14, serial=serial, after=after, limit=limit
        )

    # -- writes ----------------------------------------------------------------------------------

    def act(self, caller: Caller, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Run one supply method as the caller; a refusal is raised with its reason."""
        self.require_reader(caller, "write")
        return self.node.act_for(NAMESPACE, caller.member, method, args)
