"""What an EPCIS event does to unit state: the supply contract operation its bizStep stands for.

Pure. The capturing node derives one ``op`` per event and the ledger applies it in the same
transaction that anchors the event's hash (``supply.anchor_events``), so the repository's
events and the units' state never disagree. Only instance-level identifiers (SGTIN, SSCC)
carry state; class-level quantities, other EPC schemes and unmapped bizSteps become an
``observe`` op (the ledger checks where a known unit was seen) or nothing at all.

| bizStep (CBV 2.0)                 | action         | op            |
|-----------------------------------|----------------|---------------|
| commissioning                     | ADD            | commission    |
| packing (AggregationEvent)        | ADD            | aggregate     |
| unpacking (AggregationEvent)      | DELETE         | disaggregate  |
| shipping                          | OBSERVE        | ship          |
| receiving, accepting              | OBSERVE        | receive       |
| dispensing, retail_selling        | OBSERVE/DELETE | dispense      |
| decommissioning                   | DELETE         | decommission  |
| destroying                        | any            | destroy       |
| anything else with a location     | any            | observe       |
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from careledger.errors import ValidationError
from careledger.supply.cbv import vocabulary_word
from careledger.supply.identifiers import (
    SGLN,
    SGTIN,
    SSCC,
    EpcObject,
    parse_digital_link,
    parse_epc_urn,
)

_OBJECT_STEPS = {
    ("commissioning", "ADD"): "commission",
    ("shipping", "OBSERVE"): "ship",
    ("receiving", "OBSERVE"): "receive",
    ("accepting", "OBSERVE"): "receive",
    ("dispensing", "OBSERVE"): "dispense",
    ("dispensing", "DELETE"): "dispense",
    ("retail_selling", "OBSERVE"): "dispense",
    ("retail_selling", "DELETE"): "dispense",
    ("decommissioning", "DELETE"): "decommission",
}
# CBV dispositions that say why a unit was decommissioned, as the contract's reasons.
_DECOMMISSION_REASONS = {
    "damaged": "damaged",
    "stolen": "stolen",
    "expired": "expired",
    "recalled": "recalled",
    "returned": "returned",
    "destroyed": "other",
    "inactive": "other",
}


def parse_identifier(value: object) -> EpcObject | None:
    """An EPC URN or GS1 Digital Link as an object; None for anything else (other schemes)."""
    if not isinstance(value, str):
        return None
    try:
        if value[:4].lower() == "urn:":
            return parse_epc_urn(value)
        if value.startswith(("http://", "https://")):
            return parse_digital_link(value)
    except ValidationError:
        return None
    return None


def _ref(value: object) -> dict[str, str] | None:
    obj = parse_identifier(value)
    if isinstance(obj, SGTIN):
        return {"gtin": obj.gtin, "serial": obj.serial}
    if isinstance(obj, SSCC):
        return {"sscc": obj.sscc}
    return None


def _refs(values: object) -> list[dict[str, str]]:
    if not isinstance(values, list):
        return []
    return [r for r in (_ref(v) for v in values) if r is not None]


def _gln(value: object) -> str | None:
    obj = parse_identifier(value)
    return obj.gln if isinstance(obj, SGLN) else None


def location_gln(event: Mapping[str, Any]) -> str | None:
    """The GLN of the event's bizLocation (or, failing that, its readPoint)."""
    for field in ("bizLocation", "readPoint"):
        place = event.get(field)
        if isinstance(place, dict):
            gln = _gln(place.get("id"))
            if gln is not None:
                return gln
    return None


def destination_gln(event: Mapping[str, Any]) -> str | None:
    for entry in event.get("destinationList") or []:
        if isinstance(entry, dict) and vocabulary_word(entry.get("type")) == "location":
            gln = _gln(entry.get("destination"))
            if gln is not None:
                return gln
    return None


def _local_name(key: str) -> str:
    for sep in ("#", "/", ":"):
        if sep in key:
            key = key.rsplit(sep, 1)[1]
    return key


def _ilmd(event: Mapping[str, Any], name: str) -> str | None:
    ilmd = event.get("ilmd")
    if not isinstance(ilmd, dict):
        return None
    for key, value in ilmd.items():
        if _local_name(key) == name and isinstance(value, str):
            return value
    return None


def _yymmdd(value: str | None) -> str | None:
    """An ISO date (CBV master data) as AI 17's YYMMDD; other forms are left for the ledger."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value[:10]).strftime("%y%m%d")
    except ValueError:
        return value


def _commission_units(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The SGTINs, with lot and expiry from the Digital Link or else from the event's ILMD."""
    lot = _ilmd(event, "lotNumber")
    expiry = _yymmdd(_ilmd(event, "itemExpirationDate"))
    units = []
    for value in event.get("epcList") or []:
        obj = parse_identifier(value)
        if isinstance(obj, SGTIN):
            units.append(
                {
                    "gtin": obj.gtin,
                    "serial": obj.serial,
                    "lot": obj.lot or lot,
                    "expiry": obj.expiry or expiry,
                }
            )
    return units


def shipment_id(hash_id: str) -> str:
    """A shipment's ledger id: its shipping event's hash, so it is unique and recomputable."""
    return "epcis-" + hash_id.split(";", 1)[1][:40]


def supply_op(event: Mapping[str, Any], hash_id: str) -> dict[str, Any] | None:
    """The op for one validated EPCIS event, or None when it names no serialised unit."""
    kind = event.get("type")
    step = vocabulary_word(event.get("bizStep"))
    action = event.get("action")
    location = location_gln(event)
    if kind == "AggregationEvent":
        parent = _ref(event.get("parentID"))
        children = _refs(event.get("childEPCs"))
        if parent is not None and "sscc" in parent:
            if step == "packing" and action == "ADD" and children:
                return {"op": "aggregate", "parent": parent["sscc"], "children": children}
            if step == "unpacking" and action == "DELETE":
                return {"op": "disaggregate", "parent": parent["sscc"]}
        units = [*children, *([parent] if parent else [])]
        return {"op": "observe", "units": units, "location": location} if units else None
    if kind != "ObjectEvent":
        return None
    if step == "destroying":
        return {"op": "destroy", "units": _refs(event.get("epcList"))}
    op_name = _OBJECT_STEPS.get((step or "", str(action)))
    if op_name == "commission":
        units = _commission_units(event)
        return {"op": "commission", "units": units, "location": location} if units else None
    refs = _refs(event.get("epcList"))
    if not refs:
        return None
    if op_name == "ship":
        return {
            "op": "ship",
            "units": refs,
            "to_location": destination_gln(event),
            "shipment": shipment_id(hash_id),
        }
    if op_name in ("receive", "dispense"):
        return {"op": op_name, "units": refs, "location": location}
    if op_name == "decommission":
        disposition = vocabulary_word(event.get("disposition")) or ""
        reason = _DECOMMISSION_REASONS.get(disposition, "other")
        return {"op": "decommission", "units": refs, "reason": reason}
    return {"op": "observe", "units": refs, "location": location}
