"""Clinical trials: registration before enrolment, amendments, e-consent, data capture, lock.

A study is registered with its protocol and analysis-plan hashes and its structured endpoints,
visits and sites, so its block proves what was planned before anyone enrolled. An amendment
makes a new protocol version; a participant consented to an earlier version must re-consent
before any more data is captured. Participants consent and withdraw with their own keys. Case
report form entries live in the vault; the ledger anchors their hashes, refusing data without a
current consent, after withdrawal, outside the visit's window, or after the database lock. The
lock anchors the Merkle root (RFC 9162) of every captured hash; results reported afterwards are
checked against the registered primary endpoints (outcome switching is flagged).

State (namespace ``trials``):

* ``study/{id}`` -> the registration, ``version``, ``protocols`` (one per version), ``locked``
* ``participant/{study}/{member}`` -> ``{"status", "enrolled", "consented_version", ...}``
* ``data/{study}`` -> ``{"count", "frontier"}`` (the Merkle frontier of captured hashes)
* ``entry/{study}/{member}/{visit}/{n}`` -> one anchored CRF entry (and its vault record)
* ``visit/{study}/{member}/{visit}`` -> ``{"entries", "attested"}``: what payments rely on
* ``query/{id}`` -> a feasibility query (criteria, sites); ``answer/{id}/{site}`` -> its count
* ``privacy/{site}/{sponsor}`` -> ``{"spent", "limit", "queries"}``: epsilon in thousandths (r5)

Recruitment never identifies anyone: a site's node evaluates a query's criteria over its own
records. Up to r4 it answers in the clear with a count that is 0 or at least ``MIN_CELL``, or
with no count and the reason it was suppressed (see ``careledger.core.disclosure``). From r5 it
answers with a noisy count or "withheld", sealed for the sponsor and itself, and every query is
charged to a privacy budget per sponsor and site (``TrialsV2``, ``careledger.core.privacy``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from careledger.contracts.base import Args, Context, Contract, KeyLister, StateReader, tx_method
from careledger.contracts.identity import ID_PATTERN as ID
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import (
    member_key,
    node_key,
    org_key,
    require_sponsor,
)
from careledger.contracts.records import anchored_records
from careledger.core import merkle, privacy
from careledger.core.disclosure import MIN_CELL, SUPPRESSED
from careledger.core.eligibility import CriteriaError, parse_criteria
from careledger.core.sealed import well_formed
from careledger.errors import Rejected

NAMESPACE = "trials"
STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VISIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
HASH = re.compile(r"^[0-9a-f]{64}$")
DAY_MS = 86_400_000
MAX_ITEMS = 50
MAX_ENTRIES = 100  # CRF entries one capture anchors
MAX_BUDGET_MILLI = 1_000_000
CRF_TYPES = frozenset({"QuestionnaireResponse", "Observation"})
# Staff methods a node may run for a member it authenticated; a participant's consent and
# withdrawal are never among them: those are signed with the participant's own key.
ON_BEHALF_METHODS = frozenset(
    {"register", "amend", "lock", "report", "feasibility", "enrol", "capture", "attest"}
)


def study_key(study: str) -> str:
    return f"study/{study}"


def participant_key(study: str, member: str) -> str:
    return f"participant/{study}/{member}"


# -- views: what the node reads of this contract's state (pure; none is used by a ruleset) ----

PARTICIPANT_PREFIX = "participant/"
QUERY_PREFIX = "query/"


def query_key(query_id: str) -> str:
    return f"{QUERY_PREFIX}{query_id}"


def answer_key(query_id: str, site: str) -> str:
    return f"answer/{query_id}/{site}"


def study_of(read: StateReader, study: str) -> Mapping[str, Any] | None:
    """A registered study (protocols, version, lock, report), or None: what the node shows."""
    found: Mapping[str, Any] | None = read(NAMESPACE, study_key(study))
    return found


def participant_of(read: StateReader, study: str, member: str) -> Mapping[str, Any] | None:
    """A participant's enrolment and consent timeline in a study, or None."""
    found: Mapping[str, Any] | None = read(NAMESPACE, participant_key(study, member))
    return found


def participants_of(
    read: StateReader, keys: KeyLister, study: str, limit: int
) -> list[tuple[str, Mapping[str, Any]]]:
    """A study's participants (member, enrolment), in key order: for its audit report."""
    prefix = f"{PARTICIPANT_PREFIX}{study}/"
    out = []
    for key in keys(NAMESPACE, prefix, limit):
        record = read(NAMESPACE, key)
        if record is not None:
            out.append((key[len(prefix) :], record))
    return out


def enrolments_of(read: StateReader, keys: KeyLister, member: str, limit: int) -> dict[str, Any]:
    """study id -> a member's enrolment, among the first ``limit`` participants of any study:
    the studies a patient takes part in."""
    out: dict[str, Any] = {}
    for key in keys(NAMESPACE, PARTICIPANT_PREFIX, limit):
        study, who = key.split("/")[1:3]
        if who != member:
            continue
        record = read(NAMESPACE, key)
        if record is not None:
            out[study] = record
    return out


def data_entries(
    read: StateReader, keys: KeyLister, study: str, limit: int
) -> list[dict[str, Any]]:
    """A study's anchored CRF entries, each with its ``participant`` and ``visit``, in key
    order: what its audit report recomputes the lock root from."""
    out = []
    for key in keys(NAMESPACE, f"entry/{study}/", limit):
        _, _, member, visit, _ = key.split("/")
        out.append({**read(NAMESPACE, key), "participant": member, "visit": visit})
    return out


def query_of(read: StateReader, query_id: str) -> Mapping[str, Any] | None:
    """A feasibility query (sponsor, criteria, sites), or None: what a site evaluates."""
    found: Mapping[str, Any] | None = read(NAMESPACE, query_key(query_id))
    return found


def answer_of(read: StateReader, query_id: str, site: str) -> Mapping[str, Any] | None:
    """A site's answer to a feasibility query (a count or a sealed one), or None: not yet."""
    found: Mapping[str, Any] | None = read(NAMESPACE, answer_key(query_id, site))
    return found


def unanswered_queries(read: StateReader, keys: KeyLister, site: str, limit: int) -> list[str]:
    """Ids of the queries addressed to ``site`` it has not answered, among the first ``limit``
    queries: what a node answers after a restart."""
    out = []
    for key in keys(NAMESPACE, QUERY_PREFIX, limit):
        query = read(NAMESPACE, key)
        if query is None or site not in query["sites"]:
            continue
        if answer_of(read, str(query["id"]), site) is None:
            out.append(str(query["id"]))
    return out


def _endpoints(raw: object, what: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(e, str) and 0 < len(e) <= 256 for e in raw):
        raise Rejected("BAD_ARGS", f"{what} endpoints are a list of short texts")
    if len(raw) > MAX_ITEMS or len(set(raw)) != len(raw):
        raise Rejected("BAD_ARGS", f"{what} endpoints: at most {MAX_ITEMS}, no repeats")
    return list(raw)


class TrialsV1(Contract):
    name = NAMESPACE
    ON_BEHALF = ON_BEHALF_METHODS

    @staticmethod
    def _sponsor(ctx: Context) -> None:
        require_sponsor(ctx.state.read, ctx.signer)

    @staticmethod
    def _study(ctx: Context, study: str, *, owner: bool = False) -> dict[str, Any]:
        entry = ctx.state.get(study_key(study))
        if entry is None:
            raise Rejected("UNKNOWN_STUDY", f"no study {study!r}")
        if owner and entry["sponsor"] != ctx.signer.org:
            raise Rejected("NOT_AUTHORISED", f"study {study} belongs to another sponsor")
        return dict(entry)

    # -- registration and amendments ------------------------------------------------------

    @tx_method
    def register(self, ctx: Context, args: Args) -> None:
        args.only(
            "study",
            "registry_id",
            "title",
            "protocol_hash",
            "sap_hash",
            "primary",
            "secondary",
            "eligibility",
            "visits",
            "sites",
        )
        study = args.string("study", pattern=STUDY_ID)
        self._sponsor(ctx)
        if ctx.state.get(study_key(study)) is not None:
            raise Rejected("STUDY_EXISTS", f"study {study} is registered")
        visits_raw = args.raw.get("visits")
        if not isinstance(visits_raw, list) or not 0 < len(visits_raw) <= MAX_ITEMS:
            raise Rejected("BAD_ARGS", f"visits: 1..{MAX_ITEMS} of {{id, day, window}}")
        visits: dict[str, dict[str, int]] = {}
        for item in visits_raw:
            visit = ctx.args(item if isinstance(item, dict) else {})
            visit.only("id", "day", "window")
            vid = visit.string("id", pattern=VISIT_ID)
            if vid in visits:
                raise Rejected("BAD_ARGS", f"visit {vid} given twice")
            visits[vid] = {
                "day": visit.integer("day", maximum=3650),
                "window": visit.integer("window", maximum=365),
            }
        sites = args.raw.get("sites")
        if not isinstance(sites, list) or not sites or not all(isinstance(s, str) for s in sites):
            raise Rejected("BAD_ARGS", "sites lists the organisations that enrol")
        for site in sites:
            org = ctx.state.read(IDENTITY, org_key(site))
            if org is None or org.get("status") != "active":
                raise Rejected("UNKNOWN_ORG", f"no active organisation {site!r}")
        eligibility = args.raw.get("eligibility")
        if not isinstance(eligibility, dict):
            raise Rejected("BAD_ARGS", "eligibility is an object of structured criteria")
        protocol = args.string("protocol_hash", pattern=HASH)
        entry = {
            "id": study,
            "sponsor": ctx.signer.org,
            "registry_id": args.string("registry_id", max_len=64),
            "title": args.string("title", max_len=512),
            "sap_hash": args.string("sap_hash", pattern=HASH),
            "primary": _endpoints(args.raw.get("primary"), "primary"),
            "secondary": _endpoints(args.raw.get("secondary"), "secondary"),
            "eligibility": eligibility,
            "visits": visits,
            "sites": sorted(set(sites)),
            "version": 1,
            "protocols": [{"version": 1, "hash": protocol, "height": ctx.height, "reason": ""}],
            "registered": {"height": ctx.height, "time": ctx.time, "tx": ctx.tx_id},
            "locked": None,
        }
        ctx.state.put(study_key(study), entry)
        ctx.state.put(f"data/{study}", {"count": 0, "frontier": []})
        ctx.emit("trials.registered", {"study": study, "sponsor": ctx.signer.org})

    @tx_method
    def amend(self, ctx: Context, args: Args) -> None:
        args.only("study", "protocol_hash", "reason")
        self._sponsor(ctx)
        entry = self._study(ctx, args.string("study", pattern=STUDY_ID), owner=True)
        if entry["locked"] is not None:
            raise Rejected("LOCKED", "the database is locked")
        version = entry["version"] + 1
        protocol = {
            "version": version,
            "hash": args.string("protocol_hash", pattern=HASH),
            "height": ctx.height,
            "reason": args.string("reason", max_len=512),
        }
        entry.update(version=version, protocols=[*entry["protocols"], protocol])
        ctx.state.put(study_key(entry["id"]), entry)
        ctx.emit("trials.amended", {"study": entry["id"], "version": version})

    # -- participants ---------------------------------------------------------------------

    @tx_method
    def enrol(self, ctx: Context, args: Args) -> None:
        """An investigator at a site enrols a participant (who then consents with their key)."""
        args.only("study", "participant")
        entry = self._study(ctx, args.string("study", pattern=STUDY_ID))
        participant = args.string("participant", max_len=64)
        if not ctx.signer.has_role("investigator") or ctx.signer.org not in entry["sites"]:
            raise Rejected("NOT_AUTHORISED", "an investigator at one of the study's sites enrols")
        if entry["locked"] is not None:
            raise Rejected("LOCKED", "the database is locked")
        member = ctx.state.read(IDENTITY, member_key(participant))
        if member is None or "patient" not in member["roles"]:
            raise Rejected("UNKNOWN_MEMBER", f"{participant!r} is not a patient member")
        key = participant_key(entry["id"], participant)
        if ctx.state.get(key) is not None:
            raise Rejected("ALREADY_ENROLLED", f"{participant} is enrolled")
        ctx.state.put(
            key,
            {
                "status": "enrolled",
                "site": ctx.signer.org,
                "enrolled": ctx.time,
                "consented_version": None,
                "consents": [],
            },
        )
        ctx.emit("trials.enrolled", {"study": entry["id"], "site": ctx.signer.org})

    def _own_record(self, ctx: Context, study: str) -> tuple[dict[str, Any], dict[str, Any]]:
        entry = self._study(ctx, study)
        record = ctx.state.get(participant_key(study, ctx.signer.member))
        if record is None:
            raise Rejected("NOT_ENROLLED", "you are not enrolled in this study")
        return entry, dict(record)

    @tx_method
    def consent(self, ctx: Context, args: Args) -> None:
        """The participant, with their own key, consents to a protocol version (the current)."""
        args.only("study", "version")
        entry, record = self._own_record(ctx, args.string("study", pattern=STUDY_ID))
        version = args.integer("version", minimum=1)
        if version != entry["version"]:
            raise Rejected("STALE_VERSION", f"the current protocol is version {entry['version']}")
        if record["status"] == "withdrawn":
            raise Rejected("WITHDRAWN", "a withdrawn participant re-enrols first")
        record["consented_version"] = version
        consent = {"version": version, "time": ctx.time, "tx": ctx.tx_id}
        record["consents"] = [*record["consents"], consent]
        ctx.state.put(participant_key(entry["id"], ctx.signer.member), record)
        ctx.emit(
            "trials.consented",
            {"study": entry["id"], "participant": ctx.signer.member, "version": version},
        )

    @tx_method
    def withdraw(self, ctx: Context, args: Args) -> None:
        """The participant leaves, at any time; no data is captured for them afterwards."""
        args.only("study")
        entry, record = self._own_record(ctx, args.string("study", pattern=STUDY_ID))
        record.update(status="withdrawn", withdrawn=ctx.time)
        ctx.state.put(participant_key(entry["id"], ctx.signer.member), record)
        ctx.emit("trials.withdrawn", {"study": entry["id"], "participant": ctx.signer.member})

    # -- data -----------------------------------------------------------------------------

    @staticmethod
    def _entries(ctx: Context, args: Args, participant: str) -> list[dict[str, Any]]:
        """The hashes to anchor: one bare ``hash``, or vault ``entries`` bound to their records.

        A vault entry must be the version the records contract anchored, with the same
        (salted) hash, of a CRF type, and about this participant: the trial's anchor and the
        patient's record are then one and the same content.
        """
        if args.has("hash"):
            return [{"hash": args.string("hash", pattern=HASH)}]
        entries = anchored_records(
            ctx,
            args.raw.get("entries"),
            patient=participant,
            types=CRF_TYPES,
            max_items=MAX_ENTRIES,
            what="CRF entries",
        )
        return [{k: e[k] for k in ("hash", "record", "version")} for e in entries]

    def _current(self, ctx: Context, entry: dict[str, Any], participant: str) -> dict[str, Any]:
        """A participant's record, refusing if no data may be taken for them now."""
        if not ctx.signer.has_role("investigator") or ctx.signer.org not in entry["sites"]:
            raise Rejected("NOT_AUTHORISED", "an investigator at one of the study's sites")
        if entry["locked"] is not None:
            raise Rejected("LOCKED", "the database is locked: no more data")
        record = ctx.state.get(participant_key(entry["id"], participant))
        if record is None:
            raise Rejected("NOT_ENROLLED", f"{participant} is not enrolled")
        if record["status"] == "withdrawn":
            raise Rejected("WITHDRAWN", f"{participant} withdrew")
        if record["consented_version"] is None:
            raise Rejected("NO_CONSENT", f"{participant} has not consented")
        if record["consented_version"] != entry["version"]:
            raise Rejected(
                "RECONSENT_REQUIRED", f"the protocol is at version {entry['version']}: re-consent"
            )
        return dict(record)

    @tx_method
    def capture(self, ctx: Context, args: Args) -> None:
        """Anchor CRF entries' content hashes (the entries themselves are in the site's vault)."""
        args.only("study", "participant", "visit", "hash", "entries")
        entry = self._study(ctx, args.string("study", pattern=STUDY_ID))
        participant = args.string("participant", max_len=64)
        visit_id = args.string("visit", pattern=VISIT_ID)
        record = self._current(ctx, entry, participant)
        visit = entry["visits"].get(visit_id)
        if visit is None:
            raise Rejected("UNKNOWN_VISIT", f"no visit {visit_id!r} in the schedule")
        day = (ctx.time - record["enrolled"]) // DAY_MS
        if abs(day - visit["day"]) > visit["window"]:
            raise Rejected("OUTSIDE_WINDOW", f"visit {visit_id} is due on day {visit['day']}")
        if ctx.signer.org != record["site"]:
            raise Rejected("NOT_AUTHORISED", "the participant's own site captures their data")
        entries = self._entries(ctx, args, participant)
        study = entry["id"]
        data = dict(ctx.state.get(f"data/{study}"))
        frontier = [bytes.fromhex(h) for h in data["frontier"]]
        leaves = [merkle.leaf_hash(bytes.fromhex(e["hash"])) for e in entries]
        frontier, _ = merkle.append_leaf_hashes(frontier, data["count"], leaves)
        first = data["count"]
        ctx.state.put(
            f"data/{study}",
            {"count": first + len(entries), "frontier": [h.hex() for h in frontier]},
        )
        for n, item in enumerate(entries, start=first):
            ctx.state.put(
                f"entry/{study}/{participant}/{visit_id}/{n}",
                {**item, "index": n, "height": ctx.height, "by": ctx.signer.member},
            )
        vkey = f"visit/{study}/{participant}/{visit_id}"
        done = ctx.state.get(vkey) or {"entries": 0, "attested": None}
        ctx.state.put(vkey, {**done, "entries": done["entries"] + len(entries)})
        ctx.emit(
            "trials.captured",
            {"study": study, "visit": visit_id, "index": first, "count": len(entries)},
        )

    @tx_method
    def attest(self, ctx: Context, args: Args) -> None:
        """The site attests a completed visit whose data is captured; payment relies on it."""
        args.only("study", "participant", "visit")
        entry = self._study(ctx, args.string("study", pattern=STUDY_ID))
        participant = args.string("participant", max_len=64)
        visit_id = args.string("visit", pattern=VISIT_ID)
        record = self._current(ctx, entry, participant)
        if ctx.signer.org != record["site"]:
            raise Rejected("NOT_AUTHORISED", "the participant's own site attests their visits")
        vkey = f"visit/{entry['id']}/{participant}/{visit_id}"
        done = ctx.state.get(vkey)
        if done is None or done["entries"] == 0:
            raise Rejected("NO_DATA", f"visit {visit_id} has no captured data")
        if done["attested"] is not None:
            raise Rejected("ALREADY_ATTESTED", f"visit {visit_id} is attested")
        ctx.state.put(vkey, {**done, "attested": {"height": ctx.height, "by": ctx.signer.member}})
        ctx.emit(
            "trials.visit_attested",
            {"study": entry["id"], "participant": participant, "visit": visit_id},
        )

    @tx_method
    def on_behalf(self, ctx: Context, args: Args) -> None:
        """A node runs a staff method for a member it authenticated (API workflows)."""
        ctx.rules.run_on_behalf(self, ctx, args, self.ON_BEHALF)

    @tx_method
    def lock(self, ctx: Context, args: Args) -> None:
        """The sponsor locks the database: the root of every captured hash is anchored."""
        args.only("study")
        self._sponsor(ctx)
        entry = self._study(ctx, args.string("study", pattern=STUDY_ID), owner=True)
        if entry["locked"] is not None:
            raise Rejected("LOCKED", "already locked")
        data = ctx.state.get(f"data/{entry['id']}")
        frontier = [bytes.fromhex(h) for h in data["frontier"]]
        root = merkle.root_from_frontier(frontier).hex()
        entry["locked"] = {
            "height": ctx.height,
            "time": ctx.time,
            "root": root,
            "count": data["count"],
        }
        ctx.state.put(study_key(entry["id"]), entry)
        ctx.emit("trials.locked", {"study": entry["id"], "root": root, "count": data["count"]})

    @tx_method
    def report(self, ctx: Context, args: Args) -> None:
        """Results as reported, checked against the registered endpoints (outcome switching)."""
        args.only("study", "primary", "secondary")
        self._sponsor(ctx)
        entry = self._study(ctx, args.string("study", pattern=STUDY_ID), owner=True)
        if entry["locked"] is None:
            raise Rejected("NOT_LOCKED", "results come after the database lock")
        primary = _endpoints(args.raw.get("primary"), "primary")
        secondary = _endpoints(args.raw.get("secondary"), "secondary")
        missing = [e for e in entry["primary"] if e not in primary]
        added = [e for e in primary if e not in entry["primary"]]
        switched = bool(missing or added)
        entry["report"] = {
            "primary": primary,
            "secondary": secondary,
            "outcome_switching": switched,
            "missing_primary": missing,
            "new_primary": added,
            "height": ctx.height,
        }
        ctx.state.put(study_key(entry["id"]), entry)
        event = {"study": entry["id"], "missing": missing, "added": added}
        ctx.emit("trials.outcome_switching" if switched else "trials.reported", event)

    # -- recruitment (feasibility counts; never identities) ------------------------------

    def _query(self, ctx: Context, args: Args) -> dict[str, Any]:
        """A checked feasibility query, as recorded (shared by every version)."""
        args.only("study", "criteria", "sites", "invite")
        self._sponsor(ctx)
        study = args.string("study", pattern=STUDY_ID) if args.has("study") else None
        entry = self._study(ctx, study, owner=True) if study is not None else None
        criteria = args.raw.get("criteria")
        if criteria is None and entry is not None:
            criteria = entry["eligibility"]
        if not isinstance(criteria, dict):
            raise Rejected("BAD_ARGS", "criteria are an object (or name a registered study)")
        try:
            parse_criteria(criteria)
        except CriteriaError as exc:
            raise Rejected(exc.code, exc.message) from None
        sites = args.raw.get("sites")
        if sites is None and entry is not None:
            sites = entry["sites"]
        if not isinstance(sites, list) or not 0 < len(sites) <= MAX_ITEMS:
            raise Rejected("BAD_ARGS", f"sites lists 1..{MAX_ITEMS} organisations")
        for site in sites:
            org = ctx.state.read(IDENTITY, org_key(site)) if isinstance(site, str) else None
            if org is None or org.get("status") != "active":
                raise Rejected("UNKNOWN_ORG", f"no active organisation {site!r}")
        invite = args.raw.get("invite", False)
        if not isinstance(invite, bool) or (invite and entry is None):
            raise Rejected("BAD_ARGS", "invite (true/false) needs a registered study")
        if invite and entry is not None and criteria != entry["eligibility"]:
            # invitations are for the registered study's own eligibility, never for criteria
            # a sponsor could vary to learn, from who is contacted, who matches what
            raise Rejected("BAD_ARGS", "invitations use the study's registered eligibility")
        return {
            "id": ctx.tx_id,
            "sponsor": ctx.signer.org,
            "study": study,
            "criteria": criteria,
            "sites": sorted(set(sites)),
            "invite": invite,
            "time": ctx.time,
            "height": ctx.height,
        }

    @tx_method
    def feasibility(self, ctx: Context, args: Args) -> None:
        """A sponsor asks the sites how many of their patients meet criteria (counts only).

        With ``study``, the registered eligibility is used unless ``criteria`` narrow it, and
        ``invite`` asks sites to invite matching patients who opted in to research contact.
        """
        query = self._query(ctx, args)
        ctx.state.put(f"query/{ctx.tx_id}", query)
        ctx.emit(
            "trials.feasibility",
            {"query": ctx.tx_id, "sites": query["sites"], "sponsor": ctx.signer.org},
        )

    @staticmethod
    def _to_answer(ctx: Context, args: Args) -> tuple[str, dict[str, Any], str, str]:
        """(query id, query, answering site, answer key) once the signer may answer."""
        query_id = args.string("query", pattern=HASH)
        query = ctx.state.get(f"query/{query_id}")
        if query is None:
            raise Rejected("UNKNOWN_QUERY", "no such feasibility query")
        site = ctx.signer.org
        if not ctx.signer.has_role("node") or site not in query["sites"]:
            raise Rejected("NOT_AUTHORISED", "a node of one of the query's sites answers")
        key = f"answer/{query_id}/{site}"
        if ctx.state.get(key) is not None:
            raise Rejected("ALREADY_ANSWERED", f"{site} answered this query")
        return query_id, dict(query), site, key

    @tx_method
    def answer(self, ctx: Context, args: Args) -> None:
        """A site's node answers a query: a count of 0 or >= MIN_CELL, or suppressed."""
        args.only("query", "count", "reason")
        query_id, _, site, key = self._to_answer(ctx, args)
        count = args.raw.get("count")
        reason = args.raw.get("reason")
        if count is None:
            if reason not in SUPPRESSED:
                raise Rejected("BAD_ARGS", f"a withheld count says why: {sorted(SUPPRESSED)}")
        elif type(count) is not int or reason is not None or count < 0:
            raise Rejected("BAD_ARGS", "count is a whole number, given without a reason")
        elif 0 < count < MIN_CELL:
            raise Rejected("SMALL_CELL", f"counts below {MIN_CELL} are never released")
        answer = {"count": count, "reason": reason, "height": ctx.height}
        ctx.state.put(key, answer)
        ctx.emit("trials.answered", {"query": query_id, "site": site, "count": count})


# -- r5: counts under differential privacy, sealed for the sponsor and the site -----------------


def privacy_prefix(site: str) -> str:
    return f"privacy/{site}/"


def privacy_key(site: str, sponsor: str) -> str:
    return privacy_prefix(site) + sponsor


def budget_sponsors(keys: KeyLister, site: str, limit: int) -> list[str]:
    """The sponsors with a privacy budget at ``site`` (r5): what its admins review."""
    prefix = privacy_prefix(site)
    return [k[len(prefix) :] for k in keys(NAMESPACE, prefix, limit)]


def privacy_budget(read: StateReader, site: str, sponsor: str) -> dict[str, int]:
    """What ``sponsor`` has spent of its epsilon budget at ``site``, in thousandths (r5)."""
    entry = read(NAMESPACE, privacy_key(site, sponsor))
    if entry is None:
        return {"spent": 0, "limit": privacy.DEFAULT_BUDGET_MILLI, "queries": 0}
    return {k: int(entry[k]) for k in ("spent", "limit", "queries")}


def _readers(read: StateReader, org: str) -> set[str]:
    """An organisation and the one whose node serves it: whose nodes may read for it."""
    entry = read(IDENTITY, org_key(org)) or {}
    served = entry.get("served_by")
    return {org, served} if isinstance(served, str) else {org}


def answer_readers(
    read: StateReader, query: Mapping[str, Any], site: str, node_member: str
) -> dict[str, str]:
    """member -> Ed25519 key (base64url) of whom a site's answer is sealed for: the answering
    node, the sponsor's member who asked, and the node registered for the sponsor (or for the
    organisation serving it). The node's side of the rule ``TrialsV2.answer`` checks."""
    members = [node_member, str(query["asked_by"])]
    for org in sorted(_readers(read, query["sponsor"])):
        node = read(IDENTITY, node_key(org))
        if node is not None and node.get("status") == "active":
            members.append(str(node["member"]))
    out: dict[str, str] = {}
    for member_id in members:
        member = read(IDENTITY, member_key(member_id))
        # the member who asked is sealed for whatever their status now (the contract requires
        # it, and a query must stay answerable); a node only while active
        active = member is not None and member.get("status", "active") == "active"
        if member is not None and (active or member_id == query["asked_by"]):
            out[member_id] = str(member["key"])
    return out


class TrialsV2(TrialsV1):
    """r5: recruitment counts that reveal nothing about one person.

    Each query is charged ``EPSILON_MILLI`` to the sponsor's privacy budget at every site it
    names; a query a site's remaining budget cannot pay for is refused before anyone computes
    anything; a query cannot ask for invitations (a site invites on its own). A site answers with
    a noisy count or one uniform "withheld"
    (``careledger.core.privacy``), sealed for the answering node, the sponsor's member who asked
    and the sponsor's node (``careledger.core.sealing``): the ledger holds only ciphertext, and
    the budget, which anyone may audit.
    """

    version = 2
    EPSILON_MILLI = privacy.EPSILON_MILLI
    ON_BEHALF = ON_BEHALF_METHODS | {"set_privacy_budget"}

    @tx_method
    def feasibility(self, ctx: Context, args: Args) -> None:
        query = self._query(ctx, args)
        if query["invite"]:
            # invitations sent in answer to a sponsor's query would show, on the ledger,
            # whether its noisy count was released and how many opted-in patients matched
            raise Rejected(
                "INVITE_BY_SITE",
                "from r5 a site invites its opted-in patients itself, not on a sponsor's query",
            )
        sponsor = query["sponsor"]
        budgets = {site: privacy_budget(ctx.state.read, site, sponsor) for site in query["sites"]}
        for site, budget in budgets.items():
            if budget["spent"] + self.EPSILON_MILLI > budget["limit"]:
                raise Rejected(
                    "PRIVACY_BUDGET_SPENT",
                    f"{sponsor} has spent its privacy budget at {site} "
                    f"({budget['spent'] / 1000:g} of {budget['limit'] / 1000:g})",
                )
        for site, budget in budgets.items():
            spent = {
                "spent": budget["spent"] + self.EPSILON_MILLI,
                "limit": budget["limit"],
                "queries": budget["queries"] + 1,
            }
            ctx.state.put(privacy_key(site, sponsor), spent)
        query.update(asked_by=ctx.signer.member, epsilon_milli=self.EPSILON_MILLI)
        ctx.state.put(f"query/{ctx.tx_id}", query)
        ctx.emit(
            "trials.feasibility",
            {"query": ctx.tx_id, "sites": query["sites"], "sponsor": sponsor},
        )

    @tx_method
    def answer(self, ctx: Context, args: Args) -> None:
        """A site's node answers with its count sealed for the sponsor and itself (a query
        made before r5, which charged no budget, is still answered as it was then)."""
        asked = args.raw.get("query")
        query = ctx.state.get(f"query/{asked}") if isinstance(asked, str) else None
        if query is not None and "epsilon_milli" not in query:
            super().answer(ctx, args)
            return
        args.only("query", "sealed")
        query_id, query, site, key = self._to_answer(ctx, args)
        sealed = args.raw.get("sealed")
        if not well_formed(sealed) or not isinstance(sealed, dict):
            raise Rejected("BAD_ARGS", "sealed is {box, keys: {member: sealed key}}")
        allowed = _readers(ctx.state.read, site) | _readers(ctx.state.read, query["sponsor"])
        for member_id in sealed["keys"]:
            member = ctx.state.read(IDENTITY, member_key(member_id)) or {}
            is_node = "node" in member.get("roles", ())
            if member_id != query["asked_by"] and not (is_node and member["org"] in allowed):
                raise Rejected(
                    "NOT_A_RECIPIENT",
                    f"{member_id!r} may not read this answer: only the sponsor and the site",
                )
        if ctx.signer.member not in sealed["keys"] or query["asked_by"] not in sealed["keys"]:
            raise Rejected("BAD_ARGS", "an answer is sealed for its site and the sponsor who asked")
        ctx.state.put(key, {"sealed": sealed, "height": ctx.height})
        ctx.emit("trials.answered", {"query": query_id, "site": site})

    @tx_method
    def set_privacy_budget(self, ctx: Context, args: Args) -> None:
        """A site's admin sets what a sponsor may spend at the site (epsilon, in thousandths)."""
        args.only("sponsor", "limit_milli")
        if not ctx.signer.has_role("admin"):
            raise Rejected("NOT_AUTHORISED", "a site's admin sets its privacy budgets")
        sponsor = args.string("sponsor", pattern=ID)
        if ctx.state.read(IDENTITY, org_key(sponsor)) is None:
            raise Rejected("UNKNOWN_ORG", f"no organisation {sponsor!r}")
        limit = args.raw.get("limit_milli")
        if type(limit) is not int or not 0 <= limit <= MAX_BUDGET_MILLI:
            raise Rejected("BAD_ARGS", f"limit_milli is a whole number 0..{MAX_BUDGET_MILLI}")
        site = ctx.signer.org
        budget = privacy_budget(ctx.state.read, site, sponsor)
        ctx.state.put(privacy_key(site, sponsor), {**budget, "limit": limit})
        ctx.emit(
            "trials.privacy_budget",
            {"site": site, "sponsor": sponsor, "limit_milli": limit, "spent": budget["spent"]},
        )
