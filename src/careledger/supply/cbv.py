"""CBV 2.0 code lists, shared by EPCIS validation and event hashing."""

from __future__ import annotations

import re

# --------------------------------------------------------------------------------------------
# CBV 2.0 code lists. Source: GS1 Core Business Vocabulary (CBV) Standard, release 2.0 (2022),
# section 7.2 "Business step" and section 7.3 "Disposition" (the bare words; their Web URIs
# are https://ref.gs1.org/cbv/BizStep-{word} and https://ref.gs1.org/cbv/Disp-{word}).

CBV_BIZSTEPS: frozenset[str] = frozenset(
    {
        "accepting",
        "arriving",
        "assembling",
        "collecting",
        "commissioning",
        "consigning",
        "creating_class_instance",
        "cycle_counting",
        "decommissioning",
        "departing",
        "destroying",
        "disassembling",
        "dispensing",
        "encoding",
        "entering_exiting",
        "holding",
        "inspecting",
        "installing",
        "killing",
        "loading",
        "other",
        "packing",
        "picking",
        "receiving",
        "removing",
        "repackaging",
        "repairing",
        "replacing",
        "reserving",
        "retail_selling",
        "sampling",
        "sensor_reporting",
        "shipping",
        "staging_outbound",
        "stock_taking",
        "stocking",
        "storing",
        "transporting",
        "unloading",
        "unpacking",
        "void_shipping",
    }
)

CBV_DISPOSITIONS: frozenset[str] = frozenset(
    {
        "active",
        "available",
        "completeness_inferred",
        "completeness_verified",
        "conformant",
        "container_closed",
        "container_open",
        "damaged",
        "destroyed",
        "dispensed",
        "disposed",
        "encoded",
        "expired",
        "in_progress",
        "in_transit",
        "inactive",
        "mismatch_class",
        "mismatch_instance",
        "mismatch_quantity",
        "needs_replacement",
        "no_pedigree_match",
        "non_conformant",
        "non_sellable_other",
        "partially_dispensed",
        "recalled",
        "reserved",
        "retail_sold",
        "returned",
        "sellable_accessible",
        "sellable_not_accessible",
        "stolen",
        "unavailable",
        "unknown",
    }
)


# The three ways a CBV value is written: Web URI, EPCIS 1.x URN, and the JSON-LD compact form.
_CBV_VALUE = re.compile(
    r"^(?:https://ref\.gs1\.org/cbv/[A-Za-z]+-|urn:epcglobal:cbv:[a-z]+:|cbv:[A-Za-z]+-)(.+)$"
)


def vocabulary_word(value: object) -> str | None:
    """A CBV value in its bare form ("shipping"), whichever form it was written in.

    A value in no CBV form (a bare word, or a user vocabulary URI) is returned unchanged.
    """
    if not isinstance(value, str):
        return None
    match = _CBV_VALUE.match(value)
    return match.group(1) if match else value
