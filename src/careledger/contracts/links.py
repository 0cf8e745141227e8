"""SMART Health Links and Cards a patient makes: the ledger holds that they exist, what they
reach and whether they still work, never what they carry.

A link (``create``) is the patient's (or a delegate's) signed statement: this custodian may
serve these types of my records, to whoever holds the link, until it expires or I revoke it.
Its URL, key, passcode and label stay with the serving node (the key and passcode only as what
cannot be turned back into them). Each opening is an ``audit.access`` on the ``link`` basis
(ruleset r9), checked here at its block: a revoked or expired link serves nothing from that
block on. The serving node disables a link whose passcode was guessed wrong too often.

A card (``issue_card``) is a SMART Health Card the custodian's node signed for the patient:
its revocation id (``rid``) and key id are here so the issuer's revocation list is read from
the ledger; the patient or the issuer revokes it (``revoke_card``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from careledger.contracts.base import Args, Context, Contract, tx_method
from careledger.contracts.consent import NAMESPACE as CONSENT
from careledger.contracts.consent import TYPE_OR_ALL, delegate_key
from careledger.contracts.identity import ID_PATTERN
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import holding_key, holding_of, require_patient
from careledger.errors import Rejected

NAMESPACE = "links"
FLAGS = re.compile(r"^L?P?U?$")
KID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # an RFC 7638 SHA-256 thumbprint, base64url
RID = re.compile(r"^[A-Za-z0-9_-]{1,24}$")  # SMART Health Cards: at most 24 characters
CARD_ID = re.compile(r"^[0-9a-f]{32}$")
LINK_ID = re.compile(r"^[0-9a-f]{64}$")  # the id of the transaction that created it
CARD_TYPES = frozenset({"Immunization", "Observation"})
MAX_ACTIVE_LINKS = 50
MAX_ACTIVE_CARDS = 20  # per patient and issuer
MAX_TYPES = 32
DISABLE_REASONS = frozenset({"passcode_attempts"})


def link_key(link_id: str) -> str:
    return f"link/{link_id}"


def link_index_key(patient: str, link_id: str) -> str:
    return f"by-patient/{patient}/link/{link_id}"


def card_key(card_id: str) -> str:
    return f"card/{card_id}"


def card_index_key(patient: str, card_id: str) -> str:
    return f"by-patient/{patient}/card/{card_id}"


def revoked_rid_key(org: str, kid: str, rid: str) -> str:
    """The issuer's revocation list, one key per revoked rid, readable by prefix."""
    return f"crl/{org}/{kid}/{rid}"


def crl_counter_key(org: str, kid: str) -> str:
    return f"crl-counter/{org}/{kid}"


def acting_for(ctx: Context, patient: str) -> bool:
    """The signer is the patient, or a delegate the patient named (in consent's state)."""
    if ctx.signer.member == patient and ctx.signer.has_role("patient"):
        return True
    return ctx.state.read(CONSENT, delegate_key(patient, ctx.signer.member)) is not None


def link_serves(
    link: Any, *, patient: str, custodian: str, time: int, types: set[str]
) -> str | None:
    """Why ``link`` cannot serve ``types`` of ``patient``'s records from ``custodian`` at
    ``time`` (a refusal code), or None when it can: the one rule the node and audit share."""
    if link is None or link["patient"] != patient:
        return "UNKNOWN_LINK"
    if link["status"] != "active":
        return "LINK_INACTIVE"
    if link["exp"] is not None and time >= link["exp"]:
        return "LINK_EXPIRED"
    if link["custodian"] != custodian:
        return "NOT_CUSTODIAN"
    if "*" not in link["types"] and not types <= set(link["types"]):
        return "NO_CONSENT"
    return None


class LinksV1(Contract):
    name = NAMESPACE

    @tx_method
    def create(self, ctx: Context, args: Args) -> None:
        args.only("patient", "custodian", "flags", "exp", "types")
        patient = (
            args.string("patient", pattern=ID_PATTERN) if args.has("patient") else ctx.signer.member
        )
        require_patient(ctx, patient)
        if not acting_for(ctx, patient):
            raise Rejected("NOT_AUTHORISED", "only the patient or the patient's delegate")
        custodian = args.string("custodian", pattern=ID_PATTERN)
        org = ctx.state.read(IDENTITY, f"org/{custodian}")
        if org is None or org["status"] != "active":
            raise Rejected("UNKNOWN_ORG", "no active organisation with that id")
        flags = args.string("flags", max_len=3) if args.has("flags") else ""
        if not FLAGS.match(flags) or ("P" in flags and "U" in flags):
            raise Rejected("BAD_ARGS", "flags: L, P and U in that order, never P with U")
        exp = args.optional_integer("exp")
        if exp is not None and exp <= ctx.time:
            raise Rejected("BAD_ARGS", "a link expires in the future")
        types = args.names("types", pattern=TYPE_OR_ALL, max_items=MAX_TYPES)
        if not types:
            raise Rejected("BAD_ARGS", "types: one or more resource types, or '*'")
        active = ctx.state.read(NAMESPACE, f"active/{patient}") or 0
        if active >= MAX_ACTIVE_LINKS:
            raise Rejected("TOO_MANY_LINKS", f"at most {MAX_ACTIVE_LINKS} active links")
        link = {
            "id": ctx.tx_id,
            "patient": patient,
            "custodian": custodian,
            "flags": flags,
            "exp": exp,
            "types": sorted(types),
            "status": "active",
            "created_by": ctx.signer.member,
            "created_at": ctx.height,
            "time": ctx.time,
        }
        ctx.state.put(link_key(ctx.tx_id), link)
        ctx.state.put(link_index_key(patient, ctx.tx_id), {"custodian": custodian})
        ctx.state.put(f"active/{patient}", active + 1)
        ctx.emit("links.created", {"link": ctx.tx_id, "patient": patient, "custodian": custodian})

    def _end(self, ctx: Context, link_id: str, status: str, allowed: Callable[[Any], bool]) -> None:
        link = ctx.state.get(link_key(link_id))
        if link is None:
            raise Rejected("UNKNOWN_LINK", "no such link")
        if not allowed(link):
            raise Rejected("NOT_AUTHORISED", "not this member's to end")
        if link["status"] != "active":
            raise Rejected("LINK_INACTIVE", f"the link is already {link['status']}")
        ctx.state.put(link_key(link_id), {**link, "status": status, "ended_at": ctx.height})
        patient = link["patient"]
        ctx.state.put(f"active/{patient}", max(0, (ctx.state.get(f"active/{patient}") or 1) - 1))
        ctx.emit(f"links.{status}", {"link": link_id, "patient": patient})

    @tx_method
    def revoke(self, ctx: Context, args: Args) -> None:
        """The patient (or a delegate) ends a link at once."""
        args.only("link")
        link_id = args.string("link", pattern=LINK_ID)
        self._end(ctx, link_id, "revoked", lambda link: acting_for(ctx, link["patient"]))

    @tx_method
    def disable(self, ctx: Context, args: Args) -> None:
        """The serving node ends a link whose passcode was guessed wrong too often."""
        args.only("link", "reason")
        link_id = args.string("link", pattern=LINK_ID)
        if args.string("reason", max_len=32) not in DISABLE_REASONS:
            raise Rejected("BAD_ARGS", f"reason must be one of {sorted(DISABLE_REASONS)}")
        self._end(
            ctx,
            link_id,
            "disabled",
            lambda link: ctx.signer.has_role("node") and ctx.signer.org == link["custodian"],
        )

    @tx_method
    def issue_card(self, ctx: Context, args: Args) -> None:
        """The custodian's node records a card it signed for a patient: id, key id, rid, types."""
        args.only("card", "patient", "kid", "rid", "types")
        if not ctx.signer.has_role("node"):
            raise Rejected("NOT_AUTHORISED", "cards are issued by the custodian's node")
        card_id = args.string("card", pattern=CARD_ID)
        patient = args.string("patient", pattern=ID_PATTERN)
        require_patient(ctx, patient)
        if ctx.state.get(card_key(card_id)) is not None:
            raise Rejected("CARD_EXISTS", "a card with that id exists")
        types = args.strings("types", allowed=CARD_TYPES, max_items=len(CARD_TYPES))
        if not types:
            raise Rejected("BAD_ARGS", "a card holds immunizations or lab results")
        for kind in types:  # an issuer vouches only for records it holds (its holdings, r8)
            held = ctx.state.read(RECORDS, holding_key(patient, ctx.signer.org, kind))
            if holding_of(held)[0] == 0:
                raise Rejected("NOT_CUSTODIAN", f"this organisation holds no {kind} of the patient")
        count_key = f"active-cards/{patient}/{ctx.signer.org}"
        active = int(ctx.state.get(count_key) or 0)
        if active >= MAX_ACTIVE_CARDS:
            raise Rejected("TOO_MANY_CARDS", f"at most {MAX_ACTIVE_CARDS} active cards")
        ctx.state.put(count_key, active + 1)
        card = {
            "id": card_id,
            "patient": patient,
            "issuer": ctx.signer.org,
            "kid": args.string("kid", pattern=KID),
            "rid": args.string("rid", pattern=RID),
            "types": sorted(set(types)),
            "status": "active",
            "height": ctx.height,
            "time": ctx.time,
        }
        ctx.state.put(card_key(card_id), card)
        ctx.state.put(card_index_key(patient, card_id), {"issuer": ctx.signer.org})
        ctx.emit("links.card_issued", {"card": card_id, "patient": patient})

    @tx_method
    def revoke_card(self, ctx: Context, args: Args) -> None:
        """The patient, or the issuer's admin or node, revokes a card: its rid joins the
        issuer's revocation list for its key, whose counter moves on."""
        args.only("card")
        card_id = args.string("card", pattern=CARD_ID)
        card = ctx.state.get(card_key(card_id))
        if card is None:
            raise Rejected("UNKNOWN_CARD", "no such card")
        issuer_side = ctx.signer.org == card["issuer"] and bool(
            ctx.signer.roles & {"admin", "node"}
        )
        if not (issuer_side or ctx.signer.member == card["patient"]):
            raise Rejected("NOT_AUTHORISED", "the patient or the issuer revokes a card")
        if card["status"] != "active":
            raise Rejected("CARD_REVOKED", "the card is already revoked")
        ctx.state.put(card_key(card_id), {**card, "status": "revoked", "revoked_at": ctx.height})
        count_key = f"active-cards/{card['patient']}/{card['issuer']}"
        ctx.state.put(count_key, max(0, int(ctx.state.get(count_key) or 1) - 1))
        ctx.state.put(
            revoked_rid_key(card["issuer"], card["kid"], card["rid"]), {"time": ctx.time}
        )
        counter = crl_counter_key(card["issuer"], card["kid"])
        ctx.state.put(counter, int(ctx.state.get(counter) or 0) + 1)
        ctx.emit("links.card_revoked", {"card": card_id, "patient": card["patient"]})

