"""Organisations, members, roles and keys: who may sign what.

The genesis file names the founding organisations and their members. After that, an
organisation admin adds members and rotates or revokes keys in their own organisation, and new
organisations join only by a majority vote of the organisations' admins (one vote per
organisation). A revoked key signs nothing more: its later transactions are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from careledger.contracts.base import Args, Context, Contract, Signer, StateReader, tx_method
from careledger.core.block import Write
from careledger.core.keys import decode_public_key
from careledger.errors import Rejected, ValidationError

if TYPE_CHECKING:
    from careledger.contracts.ruleset import Ruleset

NAMESPACE = "identity"
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ROLES = frozenset(
    {
        "admin",
        "auditor",
        "clinician",
        "device",
        "distributor",
        "investigator",
        "manufacturer",
        "node",
        "nurse",
        "patient",
        "pharmacist",
        "sponsor",
    }
)
ORG_KINDS = frozenset(
    {
        "hospital",
        "clinic",
        "pharmacy",
        "manufacturer",
        "distributor",
        "sponsor",
        "patients",
        "other",
    }
)
ACTIVE = "active"
REMOVED = "removed"
ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")


def node_key(org_id: str) -> str:
    """The node registry: where an organisation's node answers, and with which key."""
    return f"node/{org_id}"


def node_entry(
    org: str, member: str, public_key: str, endpoint: str, height: int
) -> dict[str, Any]:
    return {
        "org": org,
        "member": member,
        "public_key": public_key,
        "endpoint": endpoint,
        "status": ACTIVE,
        "height": height,
    }


REVOKED = "revoked"
RECOVERY = "recovery"


def org_key(org_id: str) -> str:
    return f"org/{org_id}"


def member_key(member_id: str) -> str:
    return f"member/{member_id}"


def key_key(public_key: str) -> str:
    return f"key/{public_key}"


ORGS_KEY = "orgs"
"""The sorted ids of the chain's organisations (removed ones leave it)."""


def org_ids(read: StateReader) -> list[str]:
    """The chain's organisations, by id: what the node lists, names and asks for peers."""
    return [str(o) for o in read(NAMESPACE, ORGS_KEY) or []]


def org_of(read: StateReader, org_id: str) -> Mapping[str, Any] | None:
    """An organisation (name, kind, status), or None: for the names the node shows."""
    found: Mapping[str, Any] | None = read(NAMESPACE, org_key(org_id))
    return found


MEMBER_PREFIX = "member/"
"""Where the members are (``member_key``): the node lists them."""


def member_of(read: StateReader, member_id: str) -> Mapping[str, Any] | None:
    """A member (org, roles, key, status), or None: whose key the node checks or shows."""
    found: Mapping[str, Any] | None = read(NAMESPACE, member_key(member_id))
    return found


def key_of(read: StateReader, public_key: str) -> Mapping[str, Any] | None:
    """A public key's registration (its member, its status), or None: who signed a transaction."""
    found: Mapping[str, Any] | None = read(NAMESPACE, key_key(public_key))
    return found


def node_of(read: StateReader, org_id: str) -> Mapping[str, Any] | None:
    """An organisation's entry in the node registry (endpoint, member, status), or None."""
    found: Mapping[str, Any] | None = read(NAMESPACE, node_key(org_id))
    return found


def resolve_signer(read: StateReader, public_key: str) -> Signer:
    """The member behind a key, or ``Rejected`` (UNKNOWN_SIGNER, KEY_REVOKED, ORG_REMOVED)."""
    entry = read(NAMESPACE, key_key(public_key))
    if entry is None:
        raise Rejected("UNKNOWN_SIGNER", "the signing key belongs to no member of this chain")
    if entry["status"] != ACTIVE:
        raise Rejected("KEY_REVOKED", "the signing key has been revoked")
    member = read(NAMESPACE, member_key(entry["member"]))
    org = read(NAMESPACE, org_key(member["org"]))
    if org is None or org["status"] != ACTIVE:
        raise Rejected("ORG_REMOVED", "the signer's organisation is not an active member")
    return Signer(public_key, member["id"], member["org"], frozenset(member["roles"]))


def resolve_node(read: StateReader, member_id: object) -> tuple[Signer, bytes]:
    """A node member of an active organisation, with its public key (Rejected otherwise).

    The one check behind every message a node signs for its peers: stream batches,
    cosignatures and alarms, federation requests.
    """
    member = read(NAMESPACE, member_key(member_id)) if isinstance(member_id, str) else None
    if member is None or "node" not in member["roles"]:
        raise Rejected("UNKNOWN_PEER", f"{member_id!r} is not a node of this chain")
    signer = resolve_signer(read, member["key"])
    return signer, decode_public_key(member["key"])


def signer_of_member(rules: Ruleset, read: StateReader, public_key: str) -> Signer:
    """r0's signer: the member behind the key, with every role the member was given."""
    return resolve_signer(read, public_key)


def org_kinds(org: Mapping[str, Any]) -> list[str]:
    """An organisation's kinds (r0 organisations have one ``kind``)."""
    kinds = org.get("kinds")
    return list(kinds) if isinstance(kinds, list) else [str(org["kind"])]


KEY_EVENTS = (
    "identity.key_rotated",
    "identity.key_revoked",
    "identity.recovery_set",
    "identity.recovery_approved",
    "identity.key_recovered",
)
"""Events that change who can sign as a member: a patient sees each of theirs in their log."""


def key_events_of(
    member: str, events: Iterable[tuple[int, str, Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """``member``'s key events from (height, type, data) triples, oldest first."""
    return [
        {"height": height, "event": kind.removeprefix("identity."), **data}
        for height, kind, data in events
        if kind in KEY_EVENTS and data.get("member") == member
    ]


def recovery_member(public_key: str) -> str:
    """The signer name of a patient's recovery key: not a member id, so it matches no member,
    patient or role check anywhere and can only call ``identity.recover``."""
    return f"{public_key}#recovery"


def signer_by_org_kind(rules: Ruleset, read: StateReader, public_key: str) -> Signer:
    """r2's signer: roles only as far as the organisation's kinds allow them; a patient's
    recovery key signs as a recovery signer with no role."""
    entry = read(NAMESPACE, key_key(public_key))
    if entry is not None and entry.get("status") == RECOVERY:
        member = read(NAMESPACE, member_key(entry["member"]))
        return Signer(public_key, recovery_member(public_key), member["org"], frozenset())
    signer = resolve_signer(read, public_key)
    org = read(NAMESPACE, org_key(signer.org))
    allowed = rules.allowed_roles(org_kinds(org))
    if signer.roles <= allowed:
        return signer
    return replace(signer, roles=signer.roles & allowed)


def act_for(ctx: Context, member_id: str) -> Context:
    """The context of a member a node acts for (API workflows signed by the node).

    Node members exist only by genesis or an admission vote. A node acts for its own
    organisation's members, and for members of organisations that run no node of their own
    (one shared node) that chose this node's organisation to serve them (``served_by``, set in
    genesis or by their admin); an organisation that registered its node is acted for by it
    alone.
    """
    if not ctx.signer.has_role("node"):
        raise Rejected("NOT_AUTHORISED", "only a node acts on behalf of a member")
    member = ctx.state.read(NAMESPACE, member_key(member_id))
    if member is None:
        raise Rejected("UNKNOWN_MEMBER", f"no member {member_id!r}")
    signer = ctx.rules.signer(ctx.state.read, member["key"])
    if signer.has_role("patient") and not signer.roles - {"patient"}:
        raise Rejected("NOT_AUTHORISED", "patients sign for themselves")
    if signer.org != ctx.signer.org:
        own = ctx.state.read(NAMESPACE, node_key(signer.org))
        if own is not None and own.get("status") == "active":
            raise Rejected("NOT_AUTHORISED", f"{signer.org} runs its own node: act through it")
        org = ctx.state.read(NAMESPACE, org_key(signer.org)) or {}
        if org.get("served_by") != ctx.signer.org:
            raise Rejected(
                "NOT_AUTHORISED",
                f"{signer.org} has not chosen {ctx.signer.org}'s node to act for it",
            )
    return replace(ctx, signer=signer)


def require_sponsor(read: StateReader, signer: Signer) -> None:
    """A member with the sponsor role, or an admin of a sponsor organisation."""
    org = read(NAMESPACE, org_key(signer.org)) or {}
    if not (
        signer.has_role("sponsor") or (signer.has_role("admin") and org.get("kind") == "sponsor")
    ):
        raise Rejected("NOT_AUTHORISED", "only a sponsor may do this")


def genesis_writes(genesis: Mapping[str, Any], rules: Ruleset) -> list[Write]:
    """The identity state a genesis document creates at height 0 (ValidationError if unsound)."""
    identity = rules.contracts[NAMESPACE]
    assert isinstance(identity, IdentityV1)
    return identity.genesis_writes(genesis, rules)


def _org_record(org_id: str, name: str, kind: str) -> dict[str, Any]:
    return {"id": org_id, "name": name, "kind": kind, "status": ACTIVE}


def _new_member(
    get: Any,
    *,
    member_id: str,
    name: str,
    org: str,
    roles: list[str],
    public_key: str,
    height: int,
) -> dict[str, Any]:
    """Writes creating a member and its key; Rejected on clashes or bad keys."""
    try:
        decode_public_key(public_key)
    except ValidationError:
        raise Rejected("BAD_ARGS", "public_key must be a base64url Ed25519 key") from None
    if get(org_key(org)) is None:
        raise Rejected("UNKNOWN_ORG", f"no organisation {org!r}")
    if get(member_key(member_id)) is not None:
        raise Rejected("MEMBER_EXISTS", f"member {member_id!r} already exists")
    if get(key_key(public_key)) is not None:
        raise Rejected("KEY_IN_USE", "that public key is already registered")
    return {
        member_key(member_id): {
            "id": member_id,
            "name": name,
            "org": org,
            "roles": roles,
            "key": public_key,
            "status": ACTIVE,
        },
        key_key(public_key): {"member": member_id, "status": ACTIVE, "since": height},
    }


class IdentityV1(Contract):
    name = "identity"

    def genesis_writes(self, genesis: Mapping[str, Any], rules: Ruleset) -> list[Write]:
        """The identity state a genesis document creates at height 0 (ValidationError if not)."""
        writes: dict[str, Any] = {}
        try:
            orgs = genesis["orgs"]
            members = genesis["members"]
            if not isinstance(orgs, list) or not isinstance(members, list) or not orgs:
                raise ValidationError("genesis needs non-empty 'orgs' and a 'members' list")
            for org in orgs:
                args = rules.args(org)
                record = self._genesis_org(args, rules)
                oid = record["id"]
                if org_key(oid) in writes:
                    raise ValidationError(f"organisation {oid} appears twice")
                writes[org_key(oid)] = record
                if args.has("served_by"):
                    writes[org_key(oid)]["served_by"] = args.string("served_by", pattern=ID_PATTERN)
            for org in orgs:
                served = org.get("served_by")
                if served is not None and org_key(served) not in writes:
                    raise ValidationError(f"organisation {org['id']}: no organisation {served!r}")
            for member in members:
                args = rules.args(member)
                args.only("id", "name", "org", "roles", "public_key")
                org_id = args.string("org", pattern=ID_PATTERN)
                roles = args.strings("roles", allowed=rules.roles)
                if org_key(org_id) in writes:
                    self._check_roles(rules, writes[org_key(org_id)], roles)
                record = _new_member(
                    writes.get,
                    member_id=args.string("id", pattern=ID_PATTERN),
                    name=args.string("name"),
                    org=org_id,
                    roles=roles,
                    public_key=args.string("public_key"),
                    height=0,
                )
                writes.update(record)
        except (Rejected, ValidationError) as exc:
            raise ValidationError(f"genesis: {exc.message}", code="BAD_GENESIS") from None
        except (KeyError, TypeError) as exc:
            raise ValidationError(f"genesis: malformed ({exc})", code="BAD_GENESIS") from None
        if not any(
            "admin" in v.get("roles", ()) for k, v in writes.items() if k.startswith("member/")
        ):
            raise ValidationError(
                "genesis: at least one admin member is needed", code="BAD_GENESIS"
            )
        writes["orgs"] = sorted(v["id"] for k, v in writes.items() if k.startswith("org/"))
        return [(NAMESPACE, key, value) for key, value in writes.items()]

    @staticmethod
    def _genesis_org(args: Args, rules: Ruleset) -> dict[str, Any]:
        args.only("id", "name", "kind", "served_by")
        oid = args.string("id", pattern=ID_PATTERN)
        kind = args.string("kind")
        if kind not in rules.org_kinds:
            raise ValidationError(f"organisation {oid}: unknown kind {kind!r}")
        return _org_record(oid, args.string("name"), kind)

    @staticmethod
    def _check_roles(rules: Ruleset, org: Mapping[str, Any], roles: list[str]) -> None:
        """r0 lets any organisation's members hold any role."""

    @staticmethod
    def _require_admin_of(ctx: Context, org: str) -> None:
        if not ctx.signer.has_role("admin") or ctx.signer.org != org:
            raise Rejected("NOT_AUTHORISED", f"only an admin of {org} may do this")

    @staticmethod
    def _member(ctx: Context, member_id: str) -> dict[str, Any]:
        member = ctx.state.get(member_key(member_id))
        if member is None:
            raise Rejected("UNKNOWN_MEMBER", f"no member {member_id!r}")
        return dict(member)

    # Hooks later versions replace; in r0 and r1 they change nothing.
    ADD_MEMBER_ARGS: ClassVar[tuple[str, ...]] = ("id", "name", "roles", "public_key")
    ROTATE_KEY_ARGS: ClassVar[tuple[str, ...]] = ("member", "public_key")

    @staticmethod
    def _org(ctx: Context, org_id: str) -> dict[str, Any]:
        org: dict[str, Any] = ctx.state.get(org_key(org_id))
        return org

    @staticmethod
    def _patient_only(ctx: Context, member: Mapping[str, Any]) -> bool:
        """True when only the member itself may change this member's key (r0: nobody)."""
        return False

    @staticmethod
    def _protect_roles(member: Mapping[str, Any] | None, roles: list[str]) -> None:
        """Refuse a role change the rules forbid outright (r0: none)."""

    @staticmethod
    def _custodial(args: Args, roles: list[str] | None, patient: bool) -> bool | None:
        """Whether a (new) patient key is held by a node (r0 records nothing)."""
        return None

    @tx_method
    def add_member(self, ctx: Context, args: Args) -> None:
        """An admin adds staff; an admin or the organisation's node registers patients."""
        args.only(*self.ADD_MEMBER_ARGS)
        roles = args.strings("roles", allowed=ctx.rules.roles)
        if "node" in roles:
            raise Rejected(
                "NOT_AUTHORISED", "node members come from genesis or an admission vote only"
            )
        if not (roles == ["patient"] and ctx.signer.has_role("node")):
            self._require_admin_of(ctx, ctx.signer.org)
        self._check_roles(ctx.rules, self._org(ctx, ctx.signer.org), roles)
        custodial = self._custodial(args, roles, roles == ["patient"])
        writes = _new_member(
            ctx.state.get,
            member_id=args.string("id", pattern=ID_PATTERN),
            name=args.string("name"),
            org=ctx.signer.org,
            roles=roles,
            public_key=args.string("public_key"),
            height=ctx.height,
        )
        if custodial is not None:
            writes[member_key(args.raw["id"])]["custodial"] = custodial
        for key, value in writes.items():
            ctx.state.put(key, value)
        ctx.emit("identity.member_added", {"member": args.raw["id"], "org": ctx.signer.org})

    @tx_method
    def set_roles(self, ctx: Context, args: Args) -> None:
        args.only("member", "roles")
        member = self._member(ctx, args.string("member", pattern=ID_PATTERN))
        self._require_admin_of(ctx, member["org"])
        roles = args.strings("roles", allowed=ctx.rules.roles)
        self._protect_roles(member, roles)
        if ("node" in roles) != ("node" in member["roles"]):
            raise Rejected(
                "NOT_AUTHORISED", "node members come from genesis or an admission vote only"
            )
        self._check_roles(ctx.rules, self._org(ctx, member["org"]), roles)
        member["roles"] = roles
        ctx.state.put(member_key(member["id"]), member)
        ctx.emit("identity.roles_set", {"member": member["id"], "roles": member["roles"]})

    def _replace_key(
        self, ctx: Context, member: dict[str, Any], new_key: str, *, custodial: bool | None
    ) -> None:
        try:
            decode_public_key(new_key)
        except ValidationError:
            raise Rejected("BAD_ARGS", "public_key must be a base64url Ed25519 key") from None
        if ctx.state.get(key_key(new_key)) is not None:
            raise Rejected("KEY_IN_USE", "that public key is already registered")
        self._revoke(ctx, member["key"])
        member["key"] = new_key
        if custodial is not None:
            member["custodial"] = custodial
        ctx.state.put(member_key(member["id"]), member)
        ctx.state.put(
            key_key(new_key), {"member": member["id"], "status": ACTIVE, "since": ctx.height}
        )

    @tx_method
    def rotate_key(self, ctx: Context, args: Args) -> None:
        """The member itself or an admin of its organisation replaces the member's key."""
        args.only(*self.ROTATE_KEY_ARGS)
        member = self._member(ctx, args.string("member", pattern=ID_PATTERN))
        patient = self._patient_only(ctx, member)
        if not patient and ctx.signer.member != member["id"]:
            self._require_admin_of(ctx, member["org"])
        custodial = self._custodial(args, None, patient)
        self._replace_key(ctx, member, args.string("public_key"), custodial=custodial)
        ctx.emit("identity.key_rotated", {"member": member["id"]})

    @tx_method
    def revoke_key(self, ctx: Context, args: Args) -> None:
        args.only("public_key")
        public_key = args.string("public_key")
        entry = ctx.state.get(key_key(public_key))
        if entry is None:
            raise Rejected("UNKNOWN_KEY", "no such key")
        member = self._member(ctx, entry["member"])
        if not self._patient_only(ctx, member) and ctx.signer.member != member["id"]:
            self._require_admin_of(ctx, member["org"])
        if entry["status"] != ACTIVE:
            raise Rejected("KEY_REVOKED", "the key is already revoked")
        self._revoke(ctx, public_key)
        ctx.emit("identity.key_revoked", {"member": member["id"]})

    @staticmethod
    def _revoke(ctx: Context, public_key: str) -> None:
        entry = ctx.state.get(key_key(public_key))
        if entry is not None and entry["status"] == ACTIVE:
            ctx.state.put(key_key(public_key), {**entry, "status": REVOKED, "revoked": ctx.height})

    @tx_method
    def set_serving_node(self, ctx: Context, args: Args) -> None:
        """An organisation without a node of its own chooses whose node acts for its members
        in API workflows (``org``: that organisation; absent: none)."""
        args.only("org")
        own = ctx.signer.org
        self._require_admin_of(ctx, own)
        entry = dict(ctx.state.get(org_key(own)))
        if args.has("org"):
            serving = args.string("org", pattern=ID_PATTERN)
            target = ctx.state.get(org_key(serving))
            if target is None or target["status"] != ACTIVE:
                raise Rejected("UNKNOWN_ORG", f"no active organisation {serving!r}")
            entry["served_by"] = serving
        else:
            entry.pop("served_by", None)
        ctx.state.put(org_key(own), entry)
        ctx.emit("identity.serving_node", {"org": own, "served_by": entry.get("served_by")})

    @tx_method
    def register_node(self, ctx: Context, args: Args) -> None:
        """An organisation's admin says where its node answers (peers and federation use it)."""
        args.only("member", "endpoint")
        member = self._member(ctx, args.string("member", pattern=ID_PATTERN))
        self._require_admin_of(ctx, member["org"])
        if "node" not in member["roles"] or member.get("status", ACTIVE) != ACTIVE:
            raise Rejected("NOT_A_NODE", f"{member['id']} is not an active node member")
        endpoint = args.string("endpoint", pattern=ENDPOINT, max_len=256)
        entry = node_entry(member["org"], member["id"], member["key"], endpoint, ctx.height)
        ctx.state.put(node_key(member["org"]), entry)
        ctx.emit("identity.node_registered", {"org": member["org"], "member": member["id"]})

    @tx_method
    def propose_org_removal(self, ctx: Context, args: Args) -> None:
        """An admin proposes removing an organisation; the same majority of organisations decides.

        Once removed, every key of the organisation (its node's too) signs nothing more.
        """
        args.only("org", "reason")
        if not ctx.signer.has_role("admin"):
            raise Rejected("NOT_AUTHORISED", "only an organisation admin may propose")
        org_id = args.string("org", pattern=ID_PATTERN)
        org = ctx.state.get(org_key(org_id))
        if org is None or org["status"] != ACTIVE:
            raise Rejected("UNKNOWN_ORG", f"no active organisation {org_id!r}")
        fields = {"org": {"id": org_id}, "reason": args.string("reason", max_len=256)}
        self._open_proposal(ctx, "remove_org", fields, {"org": org_id})

    @tx_method
    def propose_org(self, ctx: Context, args: Args) -> None:
        """An admin proposes an organisation, its first admin and (optionally) its node.

        The proposer's organisation votes yes; a majority of organisations admits it.
        """
        args.only("org", "admin", "node")
        if not ctx.signer.has_role("admin"):
            raise Rejected("NOT_AUTHORISED", "only an organisation admin may propose")
        org, admin = args.mapping("org"), args.mapping("admin")
        proposed = self._proposed_org(ctx, org)
        admin.only("id", "name", "public_key")
        org_id = proposed["id"]
        if ctx.state.get(org_key(org_id)) is not None:
            raise Rejected("ORG_EXISTS", f"organisation {org_id!r} already exists")
        admin_id = admin.string("id", pattern=ID_PATTERN)
        admin_key = admin.string("public_key")
        try:
            decode_public_key(admin_key)
        except ValidationError:
            raise Rejected("BAD_ARGS", "admin.public_key must be a base64url Ed25519 key") from None
        if ctx.state.get(member_key(admin_id)) is not None:
            raise Rejected("MEMBER_EXISTS", f"member {admin_id!r} already exists")
        node: dict[str, str] | None = None
        if args.has("node"):
            spec = args.mapping("node")
            spec.only("id", "name", "public_key", "endpoint")
            node = {
                "id": spec.string("id", pattern=ID_PATTERN),
                "name": spec.string("name"),
                "public_key": spec.string("public_key"),
                "endpoint": spec.string("endpoint", pattern=ENDPOINT, max_len=256),
            }
            if node["id"] == admin_id or node["public_key"] == admin_key:
                raise Rejected("BAD_ARGS", "the node needs its own member id and key")
        fields = {
            "org": proposed,
            "admin": {"id": admin_id, "name": admin.string("name"), "public_key": admin_key},
            **({"node": node} if node is not None else {}),
        }
        self._open_proposal(ctx, "admit_org", fields, {"org": org_id})

    @staticmethod
    def _proposed_org(ctx: Context, org: Args) -> dict[str, Any]:
        """The organisation a proposal names, as its record will hold it."""
        org.only("id", "name", "kind")
        org_id = org.string("id", pattern=ID_PATTERN)
        kind = org.string("kind")
        if kind not in ctx.rules.org_kinds:
            raise Rejected("BAD_ARGS", f"unknown organisation kind {kind!r}")
        return {"id": org_id, "name": org.string("name"), "kind": kind}

    def _open_proposal(
        self,
        ctx: Context,
        kind: str,
        fields: Mapping[str, Any],
        announce: Mapping[str, Any],
    ) -> None:
        """Open a proposal (the proposer's organisation votes yes at once)."""
        proposal = {
            "id": ctx.tx_id,
            "kind": kind,
            **fields,
            "proposer": ctx.signer.member,
            "yes": [],
            "no": [],
            "status": "open",
            "opened": ctx.height,
        }
        ctx.state.put(f"proposal/{ctx.tx_id}", proposal)
        ctx.emit("identity.proposal_opened", {"proposal": ctx.tx_id, **announce})
        self._vote(ctx, proposal, approve=True)

    @tx_method
    def vote(self, ctx: Context, args: Args) -> None:
        args.only("proposal", "approve")
        if not ctx.signer.has_role("admin"):
            raise Rejected("NOT_AUTHORISED", "only an organisation admin may vote")
        proposal = ctx.state.get(f"proposal/{args.string('proposal', max_len=64)}")
        if proposal is None:
            raise Rejected("UNKNOWN_PROPOSAL", "no such proposal")
        if proposal["status"] != "open":
            raise Rejected("PROPOSAL_CLOSED", f"the proposal is {proposal['status']}")
        self._vote(ctx, dict(proposal), approve=args.boolean("approve"))

    def _vote(self, ctx: Context, proposal: dict[str, Any], *, approve: bool) -> None:
        org = ctx.signer.org
        if org in proposal["yes"] or org in proposal["no"]:
            raise Rejected("ALREADY_VOTED", f"{org} has already voted on this proposal")
        side = "yes" if approve else "no"
        proposal[side] = sorted([*proposal[side], org])
        members = set(ctx.state.get("orgs"))
        voters = len(members)
        yes = len(set(proposal["yes"]) & members)  # a removed organisation's votes lapse
        no = len(set(proposal["no"]) & members)
        if yes * 2 > voters:
            proposal["status"] = "accepted"
            self._admit(ctx, proposal)
        elif no * 2 >= voters:
            proposal["status"] = "rejected"
        proposal["closed" if proposal["status"] != "open" else "updated"] = ctx.height
        ctx.state.put(f"proposal/{proposal['id']}", proposal)
        ctx.emit("identity.vote", {"proposal": proposal["id"], "org": org, "approve": approve})

    @staticmethod
    def _admit(ctx: Context, proposal: Mapping[str, Any]) -> None:
        if proposal["kind"] == "remove_org":
            IdentityV1._remove(ctx, proposal)
            return
        org, admin = proposal["org"], proposal["admin"]
        if ctx.state.get(org_key(org["id"])) is not None:
            raise Rejected("ORG_EXISTS", f"organisation {org['id']!r} already exists")
        ctx.state.put(org_key(org["id"]), {**org, "status": ACTIVE})
        IdentityV1._put_member(ctx, admin, org["id"], ["admin"])
        node = proposal.get("node")
        if node is not None:
            IdentityV1._put_member(ctx, node, org["id"], ["node"])
            entry = node_entry(
                org["id"], node["id"], node["public_key"], node["endpoint"], ctx.height
            )
            ctx.state.put(node_key(org["id"]), entry)
        ctx.state.put("orgs", sorted([*ctx.state.get("orgs"), org["id"]]))
        ctx.emit("identity.org_admitted", {"org": org["id"], "proposal": proposal["id"]})

    @staticmethod
    def _put_member(ctx: Context, spec: Mapping[str, Any], org: str, roles: list[str]) -> None:
        """Write a member ({"id", "name", "public_key"}) of ``org`` and its key."""
        writes = _new_member(
            ctx.state.get,
            member_id=spec["id"],
            name=spec["name"],
            org=org,
            roles=roles,
            public_key=spec["public_key"],
            height=ctx.height,
        )
        for key, value in writes.items():
            ctx.state.put(key, value)

    @staticmethod
    def _remove(ctx: Context, proposal: Mapping[str, Any]) -> None:
        org_id = proposal["org"]["id"]
        org = ctx.state.get(org_key(org_id))
        if org is None or org["status"] != ACTIVE:
            raise Rejected("UNKNOWN_ORG", f"no active organisation {org_id!r}")
        ctx.state.put(org_key(org_id), {**org, "status": REMOVED, "removed": ctx.height})
        ctx.state.put("orgs", [o for o in ctx.state.get("orgs") if o != org_id])
        node = ctx.state.get(node_key(org_id))
        if node is not None:
            ctx.state.put(node_key(org_id), {**node, "status": REMOVED, "removed": ctx.height})
        ctx.emit("identity.org_removed", {"org": org_id, "proposal": proposal["id"]})


RULESET_NAME = re.compile(r"^[a-z][a-z0-9.-]{0,31}$")


class IdentityV2(IdentityV1):
    """r1: the organisations schedule the next ruleset by the same majority vote.

    A node cannot know whether its peers run software that knows the proposed ruleset, so any
    well-formed name is accepted; a node that lacks it stops at the activation height (and warns
    from the moment the schedule names it), it never executes blocks under rules it does not have.
    """

    version = 2

    @tx_method
    def propose_ruleset(self, ctx: Context, args: Args) -> None:
        args.only("ruleset", "height", "reason")
        if not ctx.signer.has_role("admin"):
            raise Rejected("NOT_AUTHORISED", "only an organisation admin may propose")
        name = args.string("ruleset", pattern=RULESET_NAME, max_len=32)
        height = args.integer("height", minimum=ctx.height + 1)
        last_height, last_name = _schedule(ctx)[-1]
        if height <= last_height or name == last_name:
            raise Rejected(
                "BAD_ARGS", f"a new ruleset must activate after {last_name} (height {last_height})"
            )
        fields = {
            "ruleset": {"name": name, "height": height},
            "reason": args.string("reason", max_len=256) if args.has("reason") else "",
        }
        self._open_proposal(ctx, "activate_ruleset", fields, {"ruleset": name})

    def _admit(self, ctx: Context, proposal: Mapping[str, Any]) -> None:  # type: ignore[override]
        if proposal["kind"] != "activate_ruleset":
            IdentityV1._admit(ctx, proposal)
            return
        wanted = proposal["ruleset"]
        scheduled = _schedule(ctx)
        if wanted["height"] <= max(ctx.height, scheduled[-1][0]):
            # Too late to activate at that height: the proposal lapses, nothing is scheduled.
            assert isinstance(proposal, dict)
            proposal["status"] = "lapsed"
            return
        entries = [{"height": h, "name": n} for h, n in scheduled]
        ctx.state.put("rulesets", [*entries, {"height": wanted["height"], "name": wanted["name"]}])
        ctx.emit(
            "identity.ruleset_scheduled",
            {"ruleset": wanted["name"], "height": wanted["height"], "proposal": proposal["id"]},
        )


def _schedule(ctx: Context) -> list[tuple[int, str]]:
    from careledger.contracts.ruleset import schedule

    return schedule(ctx.state.read)


ROLES_R2 = ROLES | {"researcher"}
_CARE = frozenset(
    {
        "admin",
        "auditor",
        "clinician",
        "nurse",
        "pharmacist",
        "investigator",
        "researcher",
        "device",
        "patient",
        "node",
    }
)
KIND_ROLES: Mapping[str, frozenset[str]] = {
    "hospital": _CARE,
    "clinic": _CARE,
    "pharmacy": frozenset({"admin", "auditor", "pharmacist", "node"}),
    "manufacturer": frozenset({"admin", "auditor", "manufacturer", "node"}),
    "distributor": frozenset({"admin", "auditor", "distributor", "node"}),
    "sponsor": frozenset({"admin", "auditor", "sponsor", "researcher", "node"}),
    "patients": frozenset({"admin", "patient", "node"}),
    "other": frozenset({"admin", "auditor", "node"}),
}
"""r2: which roles an organisation of each kind may give (clinical roles at care providers only)."""
MAX_GUARDIANS = 7


class IdentityV3(IdentityV2):
    """r2: roles follow the organisation's kinds; a patient's key is the patient's.

    An organisation has one or more kinds, set in genesis or by the admission vote; its admin
    can give only the roles its kinds allow (and the signer resolution of r2 drops any other role
    a member still holds). No admin can rotate, revoke or re-role a patient's key: the patient
    does, or the recovery path the patient set up (a recovery key, or k of n guardians the
    patient chose). A key a node holds for a patient is marked custodial; the patient moves to a
    key of their own in one signed step.
    """

    version = 3

    @staticmethod
    def _kinds(rules: Ruleset, args: Args) -> list[str]:
        if args.has("kinds"):
            kinds = args.strings("kinds", allowed=rules.org_kinds, max_items=8)
        else:
            kinds = [args.string("kind")]
        if not set(kinds) <= rules.org_kinds:
            raise Rejected("BAD_ARGS", f"unknown organisation kind in {kinds}")
        return kinds

    @staticmethod
    def _genesis_org(args: Args, rules: Ruleset) -> dict[str, Any]:
        args.only("id", "name", "kind", "kinds", "served_by")
        oid = args.string("id", pattern=ID_PATTERN)
        kinds = IdentityV3._kinds(rules, args)
        return {**_org_record(oid, args.string("name"), kinds[0]), "kinds": kinds}

    @staticmethod
    def _proposed_org(ctx: Context, org: Args) -> dict[str, Any]:
        org.only("id", "name", "kind", "kinds")
        org_id = org.string("id", pattern=ID_PATTERN)
        kinds = IdentityV3._kinds(ctx.rules, org)
        return {"id": org_id, "name": org.string("name"), "kind": kinds[0], "kinds": kinds}

    @staticmethod
    def _check_roles(rules: Ruleset, org: Mapping[str, Any], roles: list[str]) -> None:
        kinds = org_kinds(org)
        refused = sorted(set(roles) - rules.allowed_roles(kinds))
        if refused:
            raise Rejected(
                "ROLE_NOT_ALLOWED",
                f"an organisation of kind {'/'.join(kinds)} cannot give the roles {refused}",
            )
        if "patient" in roles and roles != ["patient"]:
            raise Rejected("ROLE_NOT_ALLOWED", "a patient member holds the patient role alone")

    ADD_MEMBER_ARGS = ("id", "name", "roles", "public_key", "custodial")
    ROTATE_KEY_ARGS = ("member", "public_key", "custodial")

    @staticmethod
    def _patient_only(ctx: Context, member: Mapping[str, Any]) -> bool:
        """True when ``member`` is a patient, after refusing anyone but the patient."""
        if "patient" not in member["roles"]:
            return False
        if ctx.signer.member != member["id"]:
            raise Rejected(
                "PATIENT_KEY",
                "a patient's key is changed only by the patient or the patient's recovery path",
            )
        return True

    @staticmethod
    def _protect_roles(member: Mapping[str, Any] | None, roles: list[str]) -> None:
        if member is not None and ("patient" in roles or "patient" in member["roles"]):
            raise Rejected("NOT_AUTHORISED", "a patient's roles are not an admin's to change")

    @staticmethod
    def _custodial(args: Args, roles: list[str] | None, patient: bool) -> bool | None:
        """A patient's key: held by a node (registered by one: default yes; rotated by the
        patient: default no). Anyone else's key is never custodial."""
        if args.has("custodial") and not patient:
            raise Rejected("BAD_ARGS", "only a patient's key can be custodial")
        if not patient:
            return None
        if args.has("custodial"):
            return args.boolean("custodial")
        return roles is not None  # registered for the patient: the node holds it

    @tx_method
    def set_recovery(self, ctx: Context, args: Args) -> None:
        """A patient sets how they get their key back if they lose it: ``guardians`` (members
        the patient trusts) with a ``threshold`` of them needed, and/or a ``recovery_key`` kept
        offline. Replacing the path revokes the previous recovery key."""
        args.only("guardians", "threshold", "recovery_key")
        member = self._member(ctx, ctx.signer.member) if ctx.signer.has_role("patient") else None
        if member is None or "patient" not in member["roles"]:
            raise Rejected("NOT_AUTHORISED", "only a patient sets a recovery path, for themselves")
        guardians: list[str] = []
        threshold = 0
        if args.has("guardians"):
            guardians = args.names("guardians", pattern=ID_PATTERN, max_items=MAX_GUARDIANS)
            threshold = args.integer("threshold", minimum=1, maximum=len(guardians))
            for guardian in guardians:
                found = ctx.state.get(member_key(guardian))
                if found is None or guardian == member["id"] or "patient" in found["roles"]:
                    raise Rejected("BAD_ARGS", f"{guardian!r} cannot be a guardian")
        elif args.has("threshold"):
            raise Rejected("BAD_ARGS", "a threshold needs guardians")
        old = ctx.state.get(f"recovery/{member['id']}") or {}
        if old.get("recovery_key"):
            self._revoke_recovery_key(ctx, old["recovery_key"])
        recovery_key = args.string("recovery_key") if args.has("recovery_key") else None
        if recovery_key is not None:
            try:
                decode_public_key(recovery_key)
            except ValidationError:
                raise Rejected("BAD_ARGS", "recovery_key must be a base64url Ed25519 key") from None
            if ctx.state.get(key_key(recovery_key)) is not None:
                raise Rejected("KEY_IN_USE", "that public key is already registered")
            ctx.state.put(
                key_key(recovery_key),
                {"member": member["id"], "status": RECOVERY, "since": ctx.height},
            )
        if not guardians and recovery_key is None:
            ctx.state.delete(f"recovery/{member['id']}")
        else:
            ctx.state.put(
                f"recovery/{member['id']}",
                {
                    "guardians": guardians,
                    "threshold": threshold,
                    "recovery_key": recovery_key,
                    "approvals": {},
                    "since": ctx.height,
                },
            )
        ctx.emit(
            "identity.recovery_set",
            {
                "member": member["id"],
                "guardians": guardians,
                "threshold": threshold,
                "recovery_key": recovery_key is not None,
            },
        )

    def _revoke_recovery_key(self, ctx: Context, public_key: str) -> None:
        entry = ctx.state.get(key_key(public_key))
        if entry is not None and entry["status"] == RECOVERY:
            ctx.state.put(key_key(public_key), {**entry, "status": REVOKED, "revoked": ctx.height})

    def _recovered(self, ctx: Context, member: dict[str, Any], new_key: str, how: str) -> None:
        self._replace_key(ctx, member, new_key, custodial=False)
        path = ctx.state.get(f"recovery/{member['id']}")
        if path is not None:
            ctx.state.put(f"recovery/{member['id']}", {**path, "approvals": {}})
        ctx.emit("identity.key_recovered", {"member": member["id"], "by": how})

    @tx_method
    def approve_recovery(self, ctx: Context, args: Args) -> None:
        """A guardian the patient chose approves a new key; the patient's threshold of
        approvals for the same key replaces the patient's key with it."""
        args.only("member", "public_key")
        member = self._member(ctx, args.string("member", pattern=ID_PATTERN))
        path = ctx.state.get(f"recovery/{member['id']}")
        if path is None or ctx.signer.member not in path["guardians"]:
            raise Rejected("NOT_AUTHORISED", "only a guardian the patient chose may approve")
        new_key = args.string("public_key")
        approvals = {k: v for k, v in path["approvals"].items() if k != ctx.signer.member}
        approvals[ctx.signer.member] = new_key
        ctx.emit(
            "identity.recovery_approved", {"member": member["id"], "guardian": ctx.signer.member}
        )
        if sum(1 for v in approvals.values() if v == new_key) >= path["threshold"]:
            self._recovered(ctx, member, new_key, "guardians")
            return
        ctx.state.put(f"recovery/{member['id']}", {**path, "approvals": approvals})

    @tx_method
    def recover(self, ctx: Context, args: Args) -> None:
        """Signed by the patient's recovery key: replace the patient's lost key."""
        args.only("public_key")
        entry = ctx.state.get(key_key(ctx.signer.public_key))
        if entry is None or entry["status"] != RECOVERY:
            raise Rejected("NOT_AUTHORISED", "only a patient's recovery key may recover")
        member = self._member(ctx, entry["member"])
        self._recovered(ctx, member, args.string("public_key"), "recovery_key")
