"""Build EPCIS 2.0 JSON events and documents (for the demo data and the benchmark).

Only the fields a DSCSA flow needs; every builder's output passes the capture validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from careledger.supply.identifiers import SGLN, SGTIN, SSCC, to_epc_urn

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/epcis-context.jsonld"


def sgtin_urn(gtin: str, serial: str, prefix_len: int) -> str:
    return to_epc_urn(SGTIN(gtin, serial), prefix_len)


def sscc_urn(sscc: str, prefix_len: int) -> str:
    return to_epc_urn(SSCC(sscc), prefix_len)


def sgln_urn(gln: str, prefix_len: int) -> str:
    return to_epc_urn(SGLN(gln), prefix_len)


def object_event(
    *,
    time: str,
    biz_step: str,
    action: str,
    epcs: Sequence[str],
    location: str | None = None,
    destination: str | None = None,
    lot: str | None = None,
    expiry_iso: str | None = None,
    disposition: str | None = None,
) -> dict[str, Any]:
    """``location`` and ``destination`` are SGLN URNs; ``expiry_iso`` is YYYY-MM-DD."""
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": time,
        "eventTimeZoneOffset": "+00:00",
        "epcList": list(epcs),
        "action": action,
        "bizStep": biz_step,
    }
    if disposition is not None:
        event["disposition"] = disposition
    if location is not None:
        event["bizLocation"] = {"id": location}
    if destination is not None:
        event["destinationList"] = [{"type": "location", "destination": destination}]
    if lot is not None or expiry_iso is not None:
        event["ilmd"] = {
            k: v
            for k, v in (("cbvmda:lotNumber", lot), ("cbvmda:itemExpirationDate", expiry_iso))
            if v is not None
        }
    return event


def aggregation_event(
    *, time: str, parent: str, children: Sequence[str], location: str, pack: bool = True
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "AggregationEvent",
        "eventTime": time,
        "eventTimeZoneOffset": "+00:00",
        "parentID": parent,
        "action": "ADD" if pack else "DELETE",
        "bizStep": "packing" if pack else "unpacking",
        "bizLocation": {"id": location},
    }
    if children:
        event["childEPCs"] = list(children)
    return event


def document(events: Sequence[dict[str, Any]], created: str) -> dict[str, Any]:
    return {
        "@context": [EPCIS_CONTEXT],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": created,
        "epcisBody": {"eventList": list(events)},
    }
