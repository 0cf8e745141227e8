"""Registering and suspending apps through the API: the node submits the admin's transaction
(``apps.on_behalf``); a confidential app's secret is made here, shown once, and only its
SHA-256 reaches the ledger."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from careledger.callers.caller import Caller
from careledger.contracts.apps import NAMESPACE as APPS
from careledger.contracts.apps import app_of
from careledger.core.keys import b64url_encode
from careledger.entropy import SYSTEM_RANDOM, Random
from careledger.errors import NotFound, ValidationError
from careledger.node import Node

MAX_LISTED = 10_000
PUBLIC_FIELDS = (
    "client_id", "name", "org", "kind", "redirect_uris", "scopes", "jwks", "launch_uri",
    "status", "height", "time", "reason",
)  # fmt: skip
REGISTER_FIELDS = frozenset({"client_id", "name", "kind", "redirect_uris", "scopes", "jwks",
                             "launch_uri"})  # fmt: skip


def public_view(app: Mapping[str, Any]) -> dict[str, Any]:
    """An app as anyone may see it: never its secret's hash."""
    return {k: app[k] for k in PUBLIC_FIELDS if app.get(k) is not None}


class AppsService:
    def __init__(self, node: Node, *, random: Random = SYSTEM_RANDOM) -> None:
        self._random = random  # confidential apps' client secrets
        self.node = node

    def register(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(body) - REGISTER_FIELDS
        if unknown:
            raise ValidationError(f"unknown field {sorted(unknown)[0]!r}", code="BAD_ARGS")
        args = dict(body)
        secret = None
        if args.get("kind") == "confidential" and "jwks" not in args:
            secret = b64url_encode(self._random.token_bytes(32))
            args["secret_hash"] = hashlib.sha256(secret.encode()).hexdigest()
        self.node.act_for(APPS, caller.member, "register", args)
        answer: dict[str, Any] = {"app": self.get(str(args.get("client_id")))}
        if secret is not None:
            answer["client_secret"] = secret  # shown once; the ledger holds its hash only
        return answer

    def get(self, client_id: str) -> dict[str, Any]:
        app = app_of(self.node.ledger.state, client_id)
        if app is None:
            raise NotFound(f"no app {client_id!r}", code="UNKNOWN_APP")
        return public_view(app)

    def list(self, org: str | None = None) -> list[dict[str, Any]]:
        prefix = f"by-org/{org}/" if org else "app/"
        keys = self.node.ledger.store.state_keys(APPS, prefix, MAX_LISTED)
        found = (app_of(self.node.ledger.state, k.rsplit("/", 1)[1]) for k in keys)
        return [public_view(a) for a in found if a is not None]

    def change(
        self, caller: Caller, client_id: str, method: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """update, suspend or resume, as the caller (an admin of the app's organisation)."""
        self.get(client_id)
        self.node.act_for(APPS, caller.member, method, {**body, "client_id": client_id})
        return self.get(client_id)
