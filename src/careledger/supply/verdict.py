"""What a pharmacist should do with a pack, in words. Pure.

The LMS answer's ``verified`` says what the standard says it says: the identifiers match a pack
the manufacturer made. A recalled pack is "verified" (with ``additionalInfo: Recalled``), and a
screen that painted that green told a pharmacist to dispense a recalled medicine. The verdict is
the decision instead: one of "ok to dispense" or "do not dispense", why, in plain words, and what
to do. It never changes the LMS answer it sits beside.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
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

QUARANTINE = "Do not dispense. Put the pack aside (quarantine) and report it as suspect."


@dataclass(frozen=True)
class Verdict:
    dispense: bool
    reason: str
    action: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "dispense": self.dispense,
            "headline": "OK to dispense" if self.dispense else "Do not dispense",
            "reason": self.reason,
            "action": self.action,
        }


def day(time_ms: int | None) -> str:
    """A date a pharmacist reads ("3 Dec 2026"), from block time."""
    if time_ms is None:
        return "an unknown date"
    moment = datetime.fromtimestamp(time_ms / 1000, UTC)
    return f"{moment.day} {moment.strftime('%b %Y')}"


def dispense_verdict(
    unit: Mapping[str, Any] | None,
    data: Mapping[str, Any],
    *,
    time_ms: int,
    recall: Mapping[str, Any] | None = None,
    recalled_by: str | None = None,
    dispensed_ms: int | None = None,
) -> Verdict:
    """The decision for one verification: ``data`` is the LMS answer for ``unit`` (None:
    unknown); ``recall`` the ledger's recall entry that reached the unit, ``recalled_by`` the
    name of who recalled it, ``dispensed_ms`` when it was dispensed (block time)."""
    if unit is None:
        return Verdict(
            False,
            "No pack with this GTIN and serial number is on the ledger: it may be counterfeit.",
            QUARANTINE,
        )
    failure = data.get("verificationFailureReason")
    if isinstance(failure, str) and failure.startswith("No_match"):
        # identifiers first, as the LMS answer does: a mismatch says nothing about the pack
        return Verdict(
            False,
            "The lot number or expiry date on the pack does not match the pack with this serial"
            " number (or was not given: scan the code or enter all four).",
            QUARANTINE,
        )
    status = unit.get("status")
    if status == DISPENSED:
        where = unit.get("holder_location")
        place = f" at location {where}" if where else ""
        return Verdict(
            False,
            f"This pack was already dispensed on {day(dispensed_ms)}{place}.",
            "Do not dispense it again. A dispensed pack should never come back: put it aside and"
            " report it.",
        )
    if status in (DECOMMISSIONED, DESTROYED):
        return Verdict(
            False,
            f"This pack was taken out of circulation ({status}).",
            QUARANTINE,
        )
    flags = set(unit.get("flags", ()))
    if ILLEGITIMATE in flags:
        return Verdict(False, "This pack was determined illegitimate.", QUARANTINE)
    if RECALLED in flags:
        lots = ", ".join((recall or {}).get("lots", ())) or str(unit.get("lot", ""))
        who = recalled_by or (recall or {}).get("by") or "its manufacturer"
        when = day((recall or {}).get("time"))
        return Verdict(
            False,
            f"Recalled by {who} on {when}: lot {lots}.",
            "Do not dispense. Put the pack aside and return it as the recall notice says.",
        )
    if SUSPECT in flags:
        return Verdict(
            False,
            "This pack is quarantined: it is being investigated as suspect.",
            "Do not dispense. Keep it aside until the investigation closes.",
        )
    expiry = unit.get("expiry")
    if expiry and is_expired(str(expiry), time_ms):
        return Verdict(False, f"This pack expired ({expiry}).", "Do not dispense. Dispose of it.")
    if not data.get("verified"):
        return Verdict(False, "This pack could not be verified.", QUARANTINE)
    return Verdict(True, "Genuine, in circulation, not recalled, not expired.", "Dispense.")
