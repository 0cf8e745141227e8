"""DSCSA product verification in the shape of the GS1 Lightweight Messaging Standard.

A pharmacist (or a verification router) asks whether a pack with this GTIN, serial, lot and
expiry is genuine; the answer comes from the unit's state on the ledger. The response's
``data`` carries ``verified``, and when the identifiers do not match, a
``verificationFailureReason`` (No_match_GTIN_Serial, No_match_GTIN_Serial_Lot,
No_match_GTIN_Serial_Expiry, No_match_GTIN_Serial_Lot_Expiry, No_reason_provided); when they
match, ``additionalInfo`` reports Illegitimate, Recalled, Suspect or Expired.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from careledger.contracts.supply import (
    DECOMMISSIONED,
    DESTROYED,
    DISPENSED,
    ILLEGITIMATE,
    RECALLED,
    SUSPECT,
    is_expired,
)

OUT_OF_CIRCULATION = frozenset({DISPENSED, DECOMMISSIONED, DESTROYED})
# additionalInfo by severity, most severe first (Release 1.3 of the GS1 US guideline).
_INFO = ((ILLEGITIMATE, "Illegitimate"), (RECALLED, "Recalled"), (SUSPECT, "Suspect"))


def verify_unit(
    unit: Mapping[str, Any] | None,
    *,
    lot: str | None,
    expiry: str | None,
    time_ms: int,
) -> dict[str, Any]:
    """The LMS ``data`` object for one request, from the unit's ledger state (None: unknown)."""
    if unit is None:
        return {"verified": False, "verificationFailureReason": "No_match_GTIN_Serial"}
    # Verified only when all four match: a request without lot or expiry matches nothing more
    # than GTIN and serial, which a copied label carries too.
    lot_ok = lot is not None and lot == unit.get("lot")
    expiry_ok = expiry is not None and expiry == unit.get("expiry")
    if not (lot_ok or expiry_ok):
        return {"verified": False, "verificationFailureReason": "No_match_GTIN_Serial_Lot_Expiry"}
    if not lot_ok:
        return {"verified": False, "verificationFailureReason": "No_match_GTIN_Serial_Lot"}
    if not expiry_ok:
        return {"verified": False, "verificationFailureReason": "No_match_GTIN_Serial_Expiry"}
    flags = set(unit.get("flags", ()))
    if unit.get("status") in OUT_OF_CIRCULATION:
        # The identifiers once existed, but this pack must not be in circulation: it was
        # dispensed to a patient, decommissioned or destroyed (a copied serial, or a resale).
        return {"verified": False, "verificationFailureReason": "No_reason_provided"}
    data: dict[str, Any] = {"verified": ILLEGITIMATE not in flags}
    for flag, info in _INFO:
        if flag in flags:
            data["additionalInfo"] = info
            break
    else:
        if unit.get("expiry") and is_expired(str(unit["expiry"]), time_ms):
            data["additionalInfo"] = "Expired"
    return data
