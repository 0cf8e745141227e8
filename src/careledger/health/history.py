"""FHIR type- and system-level history (``GET /fhir/{type}/_history``, ``GET /fhir/_history``):
every version of the records the caller may see, newest first, as of one ledger height.

Which records: an organisation's own records of the type (who may read them:
:meth:`HealthRecords.may_read_own`); a patient's records for a caller about one patient (the
patient, or an app launched for them); for the custodian's staff and apps, the records it holds
of every patient the caller has a basis for, found in the node's own vault (never by decrypting).
The versions are ordered from ledger metadata; only the page is decrypted, and only the page's
records are in the access events (one per patient, interaction ``history``), committed before
the page is answered. Erased records are left out (their content is gone).

Pages are stable: the first page fixes the ledger height (``_height`` in the links) and later
pages list the versions as they stood then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from careledger.callers.caller import Caller
from careledger.callers.scopes import restrictions
from careledger.errors import Forbidden
from careledger.fhir.outcome import FhirError, Issue
from careledger.fhir.types import EITHER_TYPES, HELD_TYPES, ORG_ONLY_TYPES
from careledger.health.service import HealthRecords, StoredResource

MAX_VERSIONS = 10_000  # versions one history lists before refusing (narrow it with _since)


@dataclass
class HistoryPage:
    page: list[StoredResource]
    total: int
    at: int
    refused: list[str] = field(default_factory=list)  # types held here the caller may not see


def _too_many(what: str) -> FhirError:
    return FhirError(
        [Issue("error", "too-costly", f"this history lists more than {MAX_VERSIONS:,} versions"
               f" of {what}: narrow it with _since, or read one record's history", ())],
        code="SEARCH_TOO_BROAD",
    )  # fmt: skip


def _records_of(
    records: HealthRecords, caller: Caller, kind: str, at: int, purpose: str
) -> dict[str, tuple[int, str]]:
    """record -> (version at ``at``, patient or "") of the type that the caller may see."""
    if restrictions(caller.scopes, kind, "search"):
        # a query-restricted scope reaches some records of the type only: a history of the
        # type would list the others' versions (instance history checks each version instead)
        raise Forbidden(
            f"the token's scope reaches {kind} only through a query restriction: search it",
            code="SCOPE",
        )
    if kind in ORG_ONLY_TYPES:
        records.may_read_own(caller, kind, records.org)
        return {r: (v, "") for r, v in records.own_records(kind, at).items()}
    own: dict[str, tuple[int, str]] = {}
    if kind in EITHER_TYPES:  # a Schedule is the organisation's own, or a patient's
        try:
            records.may_read_own(caller, kind, records.org)
            own = {r: (v, "") for r, v in records.own_records(kind, at).items()}
        except Forbidden:
            own = {}
    patient = caller.patient or (caller.member if "patient" in caller.roles else None)
    if patient is not None:  # a patient, or an app launched for one: theirs only
        if not records.may_search(caller, patient, kind, purpose=purpose):
            raise Forbidden("no basis lets you see these records", code="NO_CONSENT")
        return own | {r: (v, patient) for r, v in records.searchable(
            caller, patient, kind, purpose=purpose, as_of=at).items()}  # fmt: skip
    allowed: dict[str, bool] = {}
    out: dict[str, tuple[int, str]] = dict(own)
    held = records.vault.store.live_records({kind})
    if len(held) > MAX_VERSIONS:  # before a basis is checked for each of their patients
        raise _too_many(kind)
    for owner, record_id, _, _ in held:
        if not owner:
            continue
        if owner not in allowed:
            allowed[owner] = records.may_search(caller, owner, kind, purpose=purpose)
        current = records.current_at(record_id, at) if allowed[owner] else None
        if current is not None:
            out[record_id] = (current[1], owner)
    return out


def history(
    records: HealthRecords,
    caller: Caller,
    kinds: list[str] | None,
    *,
    since_ms: int | None,
    at: int | None,
    count: int,
    offset: int,
    purpose: str,
) -> HistoryPage:
    """One page of the history of ``kinds`` (one type, or None: every type held)."""
    height = at if at is not None else records.ledger.head.height
    versions: list[tuple[int, str, int, str, str]] = []  # (height, record, version, type, who)
    refused: list[str] = []
    for kind in kinds or sorted(HELD_TYPES):
        try:
            held = _records_of(records, caller, kind, height, purpose)
        except Forbidden:
            if kinds:  # the one type asked for: say so
                raise
            refused.append(kind)
            continue
        for record_id, (current, who) in held.items():
            for version in range(current, 0, -1):
                if since_ms is not None and records.version_time(record_id, version) < since_ms:
                    break  # older versions are older still
                written = records.version_height(record_id, version)
                versions.append((written, record_id, version, kind, who))
                if len(versions) > MAX_VERSIONS:
                    raise _too_many(kinds[0] if kinds else "every type")
    versions.sort(key=lambda v: (-v[0], v[1], -v[2]))
    chosen = versions[offset : offset + count]
    page = [records.open_version(record_id, version) for _, record_id, version, _, _ in chosen]
    # what the page shows; a page that shows none still counts them all (its total), and a
    # count says something of each: then every counted record is named
    named = chosen if chosen or not versions else versions
    seen: dict[str, dict[tuple[str, str], None]] = {}
    for _, record_id, _, kind, who in named:
        if who:
            seen.setdefault(who, {})[(record_id, kind)] = None
    disclosed = {who: list(pairs) for who, pairs in seen.items()}
    records.log_reads_many(caller, disclosed, purpose=purpose, interaction="history")
    return HistoryPage(page, len(versions), height, refused)
