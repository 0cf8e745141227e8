"""A `trials.register` call from a published study: a ClinicalTrials.gov (API v2) record or a
FHIR R4 ResearchStudy. Pure.

The protocol hash is the SHA-256 of the record's RFC 8785 bytes, so anyone holding the same
published record can check that the ledger registered exactly it. Endpoints come from the
record's primary and secondary outcome measures, eligibility from its structured fields.
Visits and sites are this consortium's and are given by the sponsor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from careledger.core.canonical import canonical_bytes, sha256_hex
from careledger.errors import ValidationError

_AGE = re.compile(r"^(\d+)\s+(Year|Years|Month|Months)$")
CTGOV = "http://clinicaltrials.gov"


def _years(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    match = _AGE.match(text.strip())
    if match is None:
        return None
    value = int(match.group(1))
    return value if match.group(2).startswith("Year") else value // 12


def from_ctgov(
    record: Mapping[str, Any],
    *,
    study: str,
    visits: Sequence[Mapping[str, Any]],
    sites: Sequence[str],
    sap_hash: str | None = None,
) -> dict[str, Any]:
    try:
        protocol = record["protocolSection"]
        ident = protocol["identificationModule"]
        outcomes = protocol.get("outcomesModule", {})
        eligibility = protocol.get("eligibilityModule", {})
    except (KeyError, TypeError):
        raise ValidationError("not a ClinicalTrials.gov API v2 study", code="BAD_STUDY") from None
    primary = [o["measure"][:256] for o in outcomes.get("primaryOutcomes", []) if "measure" in o]
    secondary = [
        o["measure"][:256] for o in outcomes.get("secondaryOutcomes", []) if "measure" in o
    ]
    if not primary:
        raise ValidationError("the study names no primary outcome", code="BAD_STUDY")
    low, high = _years(eligibility.get("minimumAge")), _years(eligibility.get("maximumAge"))
    criteria: dict[str, Any] = {
        "age": [low or 0, high or 150],
        "sex": eligibility.get("sex", "ALL"),
        "conditions": [
            {"text": c} for c in protocol.get("conditionsModule", {}).get("conditions", [])
        ],
    }
    return {
        "study": study,
        "registry_id": str(ident["nctId"]),
        "title": str(ident.get("officialTitle") or ident.get("briefTitle"))[:512],
        "protocol_hash": sha256_hex(canonical_bytes(dict(record))),
        "sap_hash": sap_hash or sha256_hex(canonical_bytes(outcomes)),
        "primary": list(dict.fromkeys(primary)),
        "secondary": list(dict.fromkeys(secondary))[:50],
        "eligibility": criteria,
        "visits": [dict(v) for v in visits],
        "sites": list(sites),
    }


def from_research_study(
    resource: Mapping[str, Any],
    *,
    study: str,
    visits: Sequence[Mapping[str, Any]],
    sites: Sequence[str],
    sap_hash: str | None = None,
) -> dict[str, Any]:
    """From a FHIR R4 ResearchStudy (lenient: contained resources are not validated)."""
    if resource.get("resourceType") != "ResearchStudy":
        raise ValidationError("not a ResearchStudy", code="BAD_STUDY")
    registry = next(
        (i.get("value") for i in resource.get("identifier", []) if i.get("system") == CTGOV),
        None,
    ) or resource.get("id")
    objectives = resource.get("objective") or []
    named = [o for o in objectives if isinstance(o, dict) and o.get("name")]
    primary = [
        str(o["name"])[:256]
        for o in named
        if "primary" in str((o.get("type") or {}).get("text", "")).lower()
    ]
    if not primary and named:  # no typed objective: the first one is the primary
        primary = [str(named[0]["name"])[:256]]
    if not primary:
        raise ValidationError("the study names no objective", code="BAD_STUDY")
    return {
        "study": study,
        "registry_id": str(registry),
        "title": str(resource.get("title", ""))[:512],
        "protocol_hash": sha256_hex(canonical_bytes(dict(resource))),
        "sap_hash": sap_hash or sha256_hex(canonical_bytes({"objective": objectives})),
        "primary": list(dict.fromkeys(primary)),
        "secondary": [],
        "eligibility": {
            "conditions": [c for c in resource.get("condition", []) if isinstance(c, dict)]
        },
        "visits": [dict(v) for v in visits],
        "sites": list(sites),
    }
