"""Organisations, members, roles and keys: who may sign what.

The genesis file names the founding organisations and their members. After that, an
organisation admin adds members and rotates or revokes keys in their own organisation, and new
organisations join only by a majority vote of the organisations' admins (one vote per
organisation). A revoked key signs nothing more: its later transactions are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from careledger.contracts.base import Args, Context, Contract, Signer, StateReader, tx_method
from careledger.core.block import Write
from careledger.core.keys import decode_public_key
from careledger.errors import Rejected, ValidationError

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


def org_key(org_id: str) -> str:
    return f"org/{org_id}"


def member_key(member_id: str) -> str:
    return f"member/{member_id}"


def key_key(public_key: str) -> str:
    return f"key/{public_key}"


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
    signer = resolve_signer(ctx.state.read, member["key"])
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


def run_on_behalf(contract: Contract, ctx: Context, args: Args, allowed: frozenset[str]) -> None:
    """``{actor, method, args}``: a node runs one of ``allowed`` as a member it authenticated
    (see :func:`act_for`); roles and ownership are judged as the member's."""
    args.only("actor", "method", "args")
    actor = act_for(ctx, args.string("actor", max_len=64))
    method = args.string("method", max_len=32)
    if method not in allowed:
        raise Rejected("BAD_ARGS", f"method must be one of {sorted(allowed)}")
    inner = args.raw.get("args")
    if not isinstance(inner, dict):
        raise Rejected("BAD_ARGS", "args must be an object")
    contract.call(actor, method, inner)


def require_sponsor(read: StateReader, signer: Signer) -> None:
    """A member with the sponsor role, or an admin of a sponsor organisation."""
    org = read(NAMESPACE, org_key(signer.org)) or {}
    if not (
        signer.has_role("sponsor") or (signer.has_role("admin") and org.get("kind") == "sponsor")
    ):
        raise Rejected("NOT_AUTHORISED", "only a sponsor may do this")


def genesis_writes(genesis: Mapping[str, Any]) -> list[Write]:
    """The identity state a genesis document creates at height 0 (ValidationError if unsound)."""
    writes: dict[str, Any] = {}
    try:
        orgs = genesis["orgs"]
        members = genesis["members"]
        if not isinstance(orgs, list) or not isinstance(members, list) or not orgs:
            raise ValidationError("genesis needs non-empty 'orgs' and a 'members' list")
        for org in orgs:
            args = Args(org)
            args.only("id", "name", "kind", "served_by")
            oid = args.string("id", pattern=ID_PATTERN)
            kind = args.string("kind")
            if kind not in ORG_KINDS:
                raise ValidationError(f"organisation {oid}: unknown kind {kind!r}")
            if org_key(oid) in writes:
                raise ValidationError(f"organisation {oid} appears twice")
            writes[org_key(oid)] = _org_record(oid, args.string("name"), kind)
            if args.has("served_by"):
                writes[org_key(oid)]["served_by"] = args.string("served_by", pattern=ID_PATTERN)
        for org in orgs:
            served = org.get("served_by")
            if served is not None and org_key(served) not in writes:
                raise ValidationError(f"organisation {org['id']}: no organisation {served!r}")
        for member in members:
            args = Args(member)
            args.only("id", "name", "org", "roles", "public_key")
            record = _new_member(
                writes.get,
                member_id=args.string("id", pattern=ID_PATTERN),
                name=args.string("name"),
                org=args.string("org", pattern=ID_PATTERN),
                roles=args.strings("roles", allowed=ROLES),
                public_key=args.string("public_key"),
                height=0,
            )
            writes.update(record)
    except (Rejected, ValidationError) as exc:
        raise ValidationError(f"genesis: {exc.message}", code="BAD_GENESIS") from None
    except (KeyError, TypeError) as exc:
        raise ValidationError(f"genesis: malformed ({exc})", code="BAD_GENESIS") from None
    if not any("admin" in v.get("roles", ()) for k, v in writes.items() if k.startswith("member/")):
        raise ValidationError("genesis: at least one admin member is needed", code="BAD_GENESIS")
    writes["orgs"] = sorted(v["id"] for k, v in writes.items() if k.startswith("org/"))
    return [(NAMESPACE, key, value) for key, value in writes.items()]


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

    @tx_method
    def add_member(self, ctx: Context, args: Args) -> None:
        """An admin adds staff; an admin or the organisation's node registers patients."""
        args.only("id", "name", "roles", "public_key")
        roles = args.strings("roles", allowed=ROLES)
        if "node" in roles:
            raise Rejected(
                "NOT_AUTHORISED", "node members come from genesis or an admission vote only"
            )
        if not (roles == ["patient"] and ctx.signer.has_role("node")):
            self._require_admin_of(ctx, ctx.signer.org)
        writes = _new_member(
            ctx.state.get,
            member_id=args.string("id", pattern=ID_PATTERN),
            name=args.string("name"),
            org=ctx.signer.org,
            roles=roles,
            public_key=args.string("public_key"),
            height=ctx.height,
        )
        for key, value in writes.items():
            ctx.state.put(key, value)
        ctx.emit("identity.member_added", {"member": args.raw["id"], "org": ctx.signer.org})

    @tx_method
    def set_roles(self, ctx: Context, args: Args) -> None:
        args.only("member", "roles")
        member = self._member(ctx, args.string("member", pattern=ID_PATTERN))
        self._require_admin_of(ctx, member["org"])
        roles = args.strings("roles", allowed=ROLES)
        if ("node" in roles) != ("node" in member["roles"]):
            raise Rejected(
                "NOT_AUTHORISED", "node members come from genesis or an admission vote only"
            )
        member["roles"] = roles
        ctx.state.put(member_key(member["id"]), member)
        ctx.emit("identity.roles_set", {"member": member["id"], "roles": member["roles"]})

    @tx_method
    def rotate_key(self, ctx: Context, args: Args) -> None:
        """The member itself or an admin of its organisation replaces the member's key."""
        args.only("member", "public_key")
        member = self._member(ctx, args.string("member", pattern=ID_PATTERN))
        if ctx.signer.member != member["id"]:
            self._require_admin_of(ctx, member["org"])
        new_key = args.string("public_key")
        try:
            decode_public_key(new_key)
        except ValidationError:
            raise Rejected("BAD_ARGS", "public_key must be a base64url Ed25519 key") from None
        if ctx.state.get(key_key(new_key)) is not None:
            raise Rejected("KEY_IN_USE", "that public key is already registered")
        self._revoke(ctx, member["key"])
        member["key"] = new_key
        ctx.state.put(member_key(member["id"]), member)
        ctx.state.put(
            key_key(new_key), {"member": member["id"], "status": ACTIVE, "since": ctx.height}
        )
        ctx.emit("identity.key_rotated", {"member": member["id"]})

    @tx_method
    def revoke_key(self, ctx: Context, args: Args) -> None:
        args.only("public_key")
        public_key = args.string("public_key")
        entry = ctx.state.get(key_key(public_key))
        if entry is None:
            raise Rejected("UNKNOWN_KEY", "no such key")
        member = self._member(ctx, entry["member"])
        if ctx.signer.member != member["id"]:
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
        proposal = {
            "id": ctx.tx_id,
            "kind": "remove_org",
            "org": {"id": org_id},
            "reason": args.string("reason", max_len=256),
            "proposer": ctx.signer.member,
            "yes": [],
            "no": [],
            "status": "open",
            "opened": ctx.height,
        }
        ctx.state.put(f"proposal/{ctx.tx_id}", proposal)
        ctx.emit("identity.proposal_opened", {"proposal": ctx.tx_id, "org": org_id})
        self._vote(ctx, proposal, approve=True)

    @tx_method
    def propose_org(self, ctx: Context, args: Args) -> None:
        """An admin proposes an organisation, its first admin and (optionally) its node.

        The proposer's organisation votes yes; a majority of organisations admits it.
        """
        args.only("org", "admin", "node")
        if not ctx.signer.has_role("admin"):
            raise Rejected("NOT_AUTHORISED", "only an organisation admin may propose")
        org, admin = args.mapping("org"), args.mapping("admin")
        org.only("id", "name", "kind")
        admin.only("id", "name", "public_key")
        org_id = org.string("id", pattern=ID_PATTERN)
        kind = org.string("kind")
        if kind not in ORG_KINDS:
            raise Rejected("BAD_ARGS", f"unknown organisation kind {kind!r}")
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
        proposal = {
            "id": ctx.tx_id,
            "kind": "admit_org",
            "org": {"id": org_id, "name": org.string("name"), "kind": kind},
            "admin": {"id": admin_id, "name": admin.string("name"), "public_key": admin_key},
            **({"node": node} if node is not None else {}),
            "proposer": ctx.signer.member,
            "yes": [],
            "no": [],
            "status": "open",
            "opened": ctx.height,
        }
        ctx.state.put(f"proposal/{ctx.tx_id}", proposal)
        ctx.emit("identity.proposal_opened", {"proposal": ctx.tx_id, "org": org_id})
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
        ctx.state.put(org_key(org["id"]), _org_record(org["id"], org["name"], org["kind"]))
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
