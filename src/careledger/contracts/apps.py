"""Apps that reach a node's FHIR API the SMART on FHIR way, registered on the ledger.

An organisation's admin registers an app, and every node then knows it: its client id, name,
redirect URIs, whether it is public, confidential or a backend service, the most it may ask
for (scopes), and the keys it signs with (a JWKS held inline: a node fetches nothing from the
internet). Suspending an app is one transaction, and from that block no node honours its
tokens. Access events name the app behind each access (see ``AuditV2``), so a patient reads
"Dr Silva, via Acme Charting".

State (namespace ``apps``):

* ``app/{client_id}`` -> the app (see ``register``)
* ``by-org/{org}/{client_id}`` -> ``{}`` (an organisation's apps)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from careledger.contracts.base import Args, Context, Contract, StateReader, tx_method
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import member_key
from careledger.errors import Rejected

NAMESPACE = "apps"
CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$")
KINDS = frozenset({"public", "confidential", "backend"})
SECRET_HASH = re.compile(r"^[0-9a-f]{64}$")
# SMART scopes an app may be allowed to ask for: resource scopes (v1 actions, or v2 letters
# in order, possibly restricted by a query on one resource type) and the launch, identity and
# refresh scopes. Kept here, not imported, so that this ruleset's rule never moves.
RESOURCE_SCOPE = re.compile(
    r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)"
    r"(?:\?([A-Za-z0-9_.:|%,-]{1,100}=[A-Za-z0-9_.:|%,-]{1,100}"
    r"(?:&[A-Za-z0-9_.:|%,-]{1,100}=[A-Za-z0-9_.:|%,-]{1,100})*))?$"
)
CONTEXT_SCOPES = frozenset({"launch", "launch/patient", "launch/encounter", "openid", "fhirUser",
                            "profile", "offline_access", "online_access"})  # fmt: skip


def scope_ok(word: str) -> bool:
    if word in CONTEXT_SCOPES:
        return True
    match = RESOURCE_SCOPE.match(word)
    if match is None or not match.group(3):
        return False
    _, resource_type, action, query = match.groups()
    return query is None or (action not in ("read", "write", "*") and resource_type != "*")


KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
MAX_REDIRECTS = 10
MAX_KEYS = 5
MAX_KEY_FIELD = 1100  # a 4096-bit RSA modulus is 683 base64url characters
ON_BEHALF_METHODS = frozenset({"register", "update", "suspend", "resume"})


def app_key(client_id: str) -> str:
    return f"app/{client_id}"


APP_PREFIX = "app/"
"""Where the registered apps are (``app_key``): the node lists them for CORS."""


def app_of(read: StateReader, client_id: str) -> Mapping[str, Any] | None:
    """The registered app, or None (the node's view: what a token's client id stands for)."""
    found: Mapping[str, Any] | None = read(NAMESPACE, app_key(client_id))
    return found


def _redirect(uri: str) -> str:
    """An absolute https URI, or http on loopback (RFC 8252 native apps), with no fragment."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises on a port that is no port (":99999", ":x")
    except ValueError:
        raise Rejected("BAD_ARGS", "a redirect URI is a URI (host and port)") from None
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not loopback):
        raise Rejected("BAD_ARGS", "a redirect URI is https, or http on this machine's loopback")
    if not parts.netloc or parts.fragment or len(uri) > 512:
        raise Rejected("BAD_ARGS", "a redirect URI is absolute, without a fragment, 512 chars")
    return uri


def _jwks(raw: Any) -> dict[str, Any]:
    """Public keys only: a private part in a registered key would publish it to every node."""
    if not isinstance(raw, dict) or not isinstance(raw.get("keys"), list):
        raise Rejected("BAD_ARGS", "jwks is {'keys': [...]}")
    keys = raw["keys"]
    if not 1 <= len(keys) <= MAX_KEYS:
        raise Rejected("BAD_ARGS", f"jwks holds 1 to {MAX_KEYS} keys")
    kept = []
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in KEY_TYPES:
            raise Rejected("BAD_ARGS", f"a key's kty is one of {sorted(KEY_TYPES)}")
        if any(private in key for private in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise Rejected("BAD_ARGS", "a registered key is public: it carries no private part")
        if not isinstance(key.get("kid"), str) or not 1 <= len(key["kid"]) <= 128:
            raise Rejected("BAD_ARGS", "every key has a kid")
        for field, value in key.items():
            listed = value if isinstance(value, list) and len(value) <= 8 else [value]
            if not all(isinstance(v, str) and len(v) <= MAX_KEY_FIELD for v in listed):
                raise Rejected("BAD_ARGS", f"key field {field!r} is a short string (or list)")
        kept.append(dict(key))
    kids = [k["kid"] for k in kept]
    if len(set(kids)) != len(kids):
        raise Rejected("BAD_ARGS", "kids are unique")
    return {"keys": kept}


class AppsV1(Contract):
    name = NAMESPACE

    @tx_method
    def on_behalf(self, ctx: Context, args: Args) -> None:
        """A node registers or suspends an app for the admin it authenticated."""
        ctx.rules.run_on_behalf(self, ctx, args, ON_BEHALF_METHODS)

    @staticmethod
    def _admin(ctx: Context) -> None:
        if not ctx.signer.has_role("admin"):
            raise Rejected("NOT_AUTHORISED", "an organisation's admin registers its apps")

    @staticmethod
    def _own(ctx: Context, client_id: str) -> dict[str, Any]:
        AppsV1._admin(ctx)
        app = ctx.state.get(app_key(client_id))
        if app is None:
            raise Rejected("UNKNOWN_APP", f"no app {client_id!r}")
        if app["org"] != ctx.signer.org:
            raise Rejected("NOT_AUTHORISED", "an app is managed by the organisation that has it")
        return dict(app)

    @staticmethod
    def _details(args: Args, kind: str, current: Mapping[str, Any]) -> dict[str, Any]:
        """Name, redirect URIs, scopes, keys and launch URI, checked together for ``kind``."""
        name = args.string("name", max_len=100) if args.has("name") else current.get("name")
        if not isinstance(name, str) or not name.strip() or not name.isprintable():
            raise Rejected("BAD_ARGS", "name is printable text, 1-100 characters")
        redirects = current.get("redirect_uris", [])
        if args.has("redirect_uris"):
            raw = args.raw["redirect_uris"]
            if not isinstance(raw, list) or len(raw) > MAX_REDIRECTS:
                raise Rejected("BAD_ARGS", f"redirect_uris is a list of up to {MAX_REDIRECTS}")
            redirects = [_redirect(u) for u in raw if isinstance(u, str)]
            if len(redirects) != len(raw) or len(set(redirects)) != len(redirects):
                raise Rejected("BAD_ARGS", "redirect_uris are distinct strings")
        scopes = args.string("scopes", max_len=4000) if args.has("scopes") else current["scopes"]
        words = scopes.split()
        bad = [w for w in words if not scope_ok(w)]
        if not words or bad:
            raise Rejected("BAD_ARGS", f"scopes are SMART scopes (not {bad[:1]})")
        jwks = _jwks(args.raw["jwks"]) if args.has("jwks") else current.get("jwks")
        secret = (
            args.string("secret_hash", pattern=SECRET_HASH)
            if args.has("secret_hash")
            else current.get("secret_hash")
        )
        launch_uri = (
            _redirect(args.string("launch_uri", max_len=512))
            if args.has("launch_uri")
            else current.get("launch_uri")
        )
        if kind == "backend":
            if jwks is None or redirects or launch_uri or secret:
                raise Rejected("BAD_ARGS", "a backend app has a jwks and no redirect or secret")
            if any(not w.startswith("system/") for w in words):
                raise Rejected("BAD_ARGS", "a backend app asks for system/ scopes only")
        else:
            if not redirects:
                raise Rejected("BAD_ARGS", "an app that users launch has a redirect URI")
            if any(w.startswith("system/") for w in words):
                raise Rejected("BAD_ARGS", "system/ scopes are for backend apps")
        if kind == "public" and (jwks is not None or secret is not None):
            raise Rejected("BAD_ARGS", "a public app has no secret and no keys")
        if kind == "confidential" and (jwks is None) == (secret is None):
            raise Rejected("BAD_ARGS", "a confidential app has a jwks or a secret_hash, one")
        return {
            "name": name.strip(),
            "redirect_uris": redirects,
            "scopes": " ".join(dict.fromkeys(words)),
            "jwks": jwks,
            "secret_hash": secret,
            "launch_uri": launch_uri,
        }

    @tx_method
    def register(self, ctx: Context, args: Args) -> None:
        args.only(
            "client_id",
            "name",
            "kind",
            "redirect_uris",
            "scopes",
            "jwks",
            "secret_hash",
            "launch_uri",
        )
        self._admin(ctx)
        client_id = args.string("client_id", pattern=CLIENT_ID)
        kind = args.string("kind")
        if kind not in KINDS:
            raise Rejected("BAD_ARGS", f"kind is one of {sorted(KINDS)}")
        if not args.has("scopes") or not args.has("name"):
            raise Rejected("BAD_ARGS", "an app has a name and the scopes it may ask for")
        if ctx.state.get(app_key(client_id)) is not None:
            raise Rejected("APP_EXISTS", f"client id {client_id!r} is taken")
        if ctx.state.read(IDENTITY, member_key(client_id)) is not None:
            raise Rejected("APP_EXISTS", "a client id is not a member's id")
        app = {
            "client_id": client_id,
            "org": ctx.signer.org,
            "kind": kind,
            **self._details(args, kind, {}),
            "status": "active",
            "registered_by": ctx.signer.member,
            "height": ctx.height,
            "time": ctx.time,
        }
        ctx.state.put(app_key(client_id), app)
        ctx.state.put(f"by-org/{ctx.signer.org}/{client_id}", {})
        ctx.emit("apps.registered", {"client_id": client_id, "org": ctx.signer.org, "kind": kind})

    @tx_method
    def update(self, ctx: Context, args: Args) -> None:
        """New redirect URIs, scopes or keys (key rotation); the kind and the id stay."""
        args.only(
            "client_id", "name", "redirect_uris", "scopes", "jwks", "secret_hash", "launch_uri"
        )
        client_id = args.string("client_id", pattern=CLIENT_ID)
        app = self._own(ctx, client_id)
        app.update(self._details(args, app["kind"], app))
        app["updated"] = ctx.height
        ctx.state.put(app_key(client_id), app)
        ctx.emit("apps.updated", {"client_id": client_id, "org": app["org"]})

    @tx_method
    def suspend(self, ctx: Context, args: Args) -> None:
        """From this block no node honours the app's tokens or issues it new ones."""
        args.only("client_id", "reason")
        client_id = args.string("client_id", pattern=CLIENT_ID)
        reason = args.string("reason", max_len=200) if args.has("reason") else ""
        app = self._own(ctx, client_id)
        if app["status"] == "suspended":
            raise Rejected("APP_SUSPENDED", "the app is already suspended")
        app.update(status="suspended", suspended={"height": ctx.height, "time": ctx.time})
        app["reason"] = reason
        ctx.state.put(app_key(client_id), app)
        ctx.emit("apps.suspended", {"client_id": client_id, "org": app["org"]})

    @tx_method
    def resume(self, ctx: Context, args: Args) -> None:
        args.only("client_id")
        client_id = args.string("client_id", pattern=CLIENT_ID)
        app = self._own(ctx, client_id)
        if app["status"] != "suspended":
            raise Rejected("BAD_ARGS", "the app is not suspended")
        app.update(status="active", resumed={"height": ctx.height, "time": ctx.time})
        ctx.state.put(app_key(client_id), app)
        ctx.emit("apps.resumed", {"client_id": client_id, "org": app["org"]})
