"""Participant payments in credits (not money): deposits, study escrows, visit payments, transfers.

Credits enter only by a sponsor's deposit (recording money received off the ledger) and leave
only by a withdrawal; everything else moves them. So at every height the sum of all balances
equals deposits minus withdrawals (``total``), no balance is ever negative, and a visit is paid
at most once. A study's escrow is an account of its own, funded by its sponsor organisation;
its payment schedule says what each visit is worth.

State (namespace ``payments``):

* ``balance/{account}`` -> int (a member id, ``org:{id}`` or ``escrow:{study}``)
* ``accounts`` -> sorted list of accounts that ever held credits (for statements and checks)
* ``total`` -> int: credits in existence
* ``study/{study}`` -> ``{"sponsor", "schedule": {visit: credits}}``
* ``paid/{study}/{participant}/{visit}`` -> ``{"credits", "height", "by"}``
* ``data-use/{consent}`` -> a payment for a research grant of the patient's data

A visit is paid only once the ``trials`` contract holds the site's attestation of it (data
captured, consent current), so payment follows the trial's own record, not anyone's say-so.
"""

from __future__ import annotations

import re
from typing import Any

from careledger.contracts.base import Args, Context, Contract, tx_method
from careledger.contracts.consent import NAMESPACE as CONSENT
from careledger.contracts.consent import consent_key
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import member_key, require_sponsor
from careledger.contracts.trials import NAMESPACE as TRIALS
from careledger.errors import Rejected

NAMESPACE = "payments"
STUDY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VISIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
MAX_CREDITS = 10**12  # per operation and per balance: far from 2**53, so sums stay exact
RESEARCH_ROLES = frozenset({"sponsor", "researcher"})
RESEARCH_PURPOSES = frozenset({"HRESCH", "CLINTRCH"})
HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_VISITS = 100


def balance_key(account: str) -> str:
    return f"balance/{account}"


def org_account(org: str) -> str:
    return f"org:{org}"


def escrow_account(study: str) -> str:
    return f"escrow:{study}"


# A sponsor's or researcher's steps a node may run for the member it authenticated (API).
ON_BEHALF_METHODS = frozenset({"deposit", "open_study", "fund", "pay_data_use"})


class PaymentsV1(Contract):
    name = NAMESPACE

    @tx_method
    def on_behalf(self, ctx: Context, args: Args) -> None:
        ctx.rules.run_on_behalf(self, ctx, args, ON_BEHALF_METHODS)

    # -- bookkeeping ---------------------------------------------------------------------

    @staticmethod
    def _balance(ctx: Context, account: str) -> int:
        return int(ctx.state.get(balance_key(account)) or 0)

    @staticmethod
    def _set(ctx: Context, account: str, value: int) -> None:
        if value < 0:
            raise Rejected("INSUFFICIENT_FUNDS", f"{account} would go below zero")
        if value > MAX_CREDITS:
            raise Rejected("BALANCE_LIMIT", f"{account} would exceed {MAX_CREDITS} credits")
        ctx.state.put(balance_key(account), value)
        accounts = list(ctx.state.get("accounts") or [])
        if account not in accounts:
            ctx.state.put("accounts", sorted([*accounts, account]))

    def _move(self, ctx: Context, source: str, target: str, credits: int) -> None:
        if source == target:
            raise Rejected("BAD_ARGS", "a transfer needs two different accounts")
        self._set(ctx, source, self._balance(ctx, source) - credits)
        self._set(ctx, target, self._balance(ctx, target) + credits)
        ctx.emit("payments.moved", {"from": source, "to": target, "credits": credits})

    @staticmethod
    def _credits(args: Args) -> int:
        return args.integer("credits", minimum=1, maximum=MAX_CREDITS)

    @staticmethod
    def _sponsor(ctx: Context) -> str:
        require_sponsor(ctx.state.read, ctx.signer)
        return ctx.signer.org

    @tx_method
    def deposit(self, ctx: Context, args: Args) -> None:
        """A sponsor records credits bought off the ledger: they enter its organisation account."""
        args.only("credits", "reference")
        credits = self._credits(args)
        reference = args.string("reference", max_len=128)
        org = self._sponsor(ctx)
        self._set(ctx, org_account(org), self._balance(ctx, org_account(org)) + credits)
        ctx.state.put("total", int(ctx.state.get("total") or 0) + credits)
        ctx.emit("payments.deposit", {"org": org, "credits": credits, "reference": reference})

    @tx_method
    def withdraw(self, ctx: Context, args: Args) -> None:
        """A member cashes credits out of the ledger (the payout happens off it)."""
        args.only("credits")
        credits = self._credits(args)
        account = ctx.signer.member
        self._set(ctx, account, self._balance(ctx, account) - credits)
        ctx.state.put("total", int(ctx.state.get("total") or 0) - credits)
        ctx.emit("payments.withdraw", {"account": account, "credits": credits})

    @tx_method
    def transfer(self, ctx: Context, args: Args) -> None:
        """A member sends credits to another member."""
        args.only("to", "credits")
        target = args.string("to", max_len=64)
        member = ctx.state.read(IDENTITY, member_key(target))
        if member is None:
            raise Rejected("UNKNOWN_MEMBER", f"no member {target!r}")
        self._move(ctx, ctx.signer.member, target, self._credits(args))

    # -- studies ----------------------------------------------------------------------------

    @tx_method
    def open_study(self, ctx: Context, args: Args) -> None:
        """A sponsor sets a study's visit payments (credits per completed visit)."""
        args.only("study", "schedule")
        study = args.string("study", pattern=STUDY_ID)
        org = self._sponsor(ctx)
        raw = args.raw.get("schedule")
        if not isinstance(raw, dict) or not 0 < len(raw) <= MAX_VISITS:
            raise Rejected("BAD_ARGS", f"schedule maps 1..{MAX_VISITS} visits to credits")
        schedule: dict[str, int] = {}
        for visit, credits in raw.items():
            if not isinstance(visit, str) or not VISIT_ID.match(visit):
                raise Rejected("BAD_ARGS", f"bad visit id {visit!r}")
            if type(credits) is not int or not 0 < credits <= MAX_CREDITS:
                raise Rejected("BAD_ARGS", f"visit {visit} must pay 1..{MAX_CREDITS} credits")
            schedule[visit] = credits
        existing = ctx.state.get(f"study/{study}")
        if existing is not None and existing["sponsor"] != org:
            raise Rejected("NOT_AUTHORISED", f"study {study} belongs to another sponsor")
        ctx.state.put(f"study/{study}", {"sponsor": org, "schedule": schedule})
        ctx.emit("payments.study", {"study": study, "sponsor": org, "visits": len(schedule)})

    def _study(self, ctx: Context, study: str) -> dict[str, Any]:
        entry = ctx.state.get(f"study/{study}")
        if entry is None:
            raise Rejected("UNKNOWN_STUDY", f"no study {study!r}")
        return dict(entry)

    @tx_method
    def fund(self, ctx: Context, args: Args) -> None:
        """The sponsor moves credits from its organisation account into the study escrow."""
        args.only("study", "credits")
        study = args.string("study", pattern=STUDY_ID)
        org = self._sponsor(ctx)
        if self._study(ctx, study)["sponsor"] != org:
            raise Rejected("NOT_AUTHORISED", f"study {study} belongs to another sponsor")
        self._move(ctx, org_account(org), escrow_account(study), self._credits(args))

    @tx_method
    def pay_visit(self, ctx: Context, args: Args) -> None:
        """Pay a participant for a visit the site attested on the trials contract, once.

        The attestation (data captured, consent current, the participant's own site) is the
        authority, so anyone may trigger the payment: the site's node does it right after the
        attestation, and a participant whose payment waited for funds may claim it later.
        """
        args.only("study", "participant", "visit")
        study = args.string("study", pattern=STUDY_ID)
        participant = args.string("participant", max_len=64)
        visit = args.string("visit", pattern=VISIT_ID)
        credits = self._study(ctx, study)["schedule"].get(visit)
        if credits is None:
            raise Rejected("UNKNOWN_VISIT", f"study {study} pays no visit {visit!r}")
        done = ctx.state.read(TRIALS, f"visit/{study}/{participant}/{visit}")
        if done is None or done.get("attested") is None:
            raise Rejected("NOT_ATTESTED", f"visit {visit} of {participant} is not attested")
        key = f"paid/{study}/{participant}/{visit}"
        if ctx.state.get(key) is not None:
            raise Rejected("ALREADY_PAID", f"visit {visit} of {participant} was paid")
        self._move(ctx, escrow_account(study), participant, credits)
        ctx.state.put(key, {"credits": credits, "height": ctx.height, "by": ctx.signer.member})

    @tx_method
    def pay_data_use(self, ctx: Context, args: Args) -> None:
        """A researcher pays a patient whose consent grants it use of their data, once.

        The consent must be the patient's, active, granted to the payer's organisation, and
        for research (HRESCH or CLINTRCH); the data itself is shared de-identified, off-ledger.
        """
        args.only("consent", "credits")
        consent_id = args.string("consent", pattern=HASH)
        credits = self._credits(args)
        if not ctx.signer.roles & RESEARCH_ROLES:
            raise Rejected("NOT_AUTHORISED", "a sponsor or researcher pays for data use")
        consent = ctx.state.read(CONSENT, consent_key(consent_id))
        if consent is None or consent["status"] != "active":
            raise Rejected("UNKNOWN_CONSENT", "no active consent with that id")
        if consent["grantee"].get("org") != ctx.signer.org:
            raise Rejected("NOT_AUTHORISED", "the consent is granted to another organisation")
        if not set(consent["purposes"]) & RESEARCH_PURPOSES:
            raise Rejected("NOT_RESEARCH", "the consent is not for research use")
        key = f"data-use/{consent_id}"
        if ctx.state.get(key) is not None:
            raise Rejected("ALREADY_PAID", "this grant was paid")
        org = org_account(ctx.signer.org)
        self._move(ctx, org, consent["patient"], credits)
        ctx.state.put(key, {"credits": credits, "height": ctx.height, "by": ctx.signer.member})
