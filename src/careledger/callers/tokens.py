"""Bearer tokens for members: EdDSA-signed JWTs issued after a signed challenge.

A member proves it holds its key by signing ``careledger-auth:<chain>:<challenge>``; the node
answers with a short-lived JWT signed by the node key. Later interfaces accept the token instead
of a signature on every read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from careledger.callers.scopes import Scope, default_scopes, parse_scopes
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.base import Signer
from careledger.core.keys import KeyPair, b64url_encode, decode_public_key, decode_signature
from careledger.core.keys import verify_signature as ed25519_verify
from careledger.entropy import SYSTEM_RANDOM, Random
from careledger.errors import Unauthorized

CHALLENGE_TTL_SECONDS = 120
MAX_OPEN_CHALLENGES = 10_000
MAX_CHALLENGES_PER_CLIENT = 16
MAX_REVOKED_TOKENS = 100_000
MAX_VERIFIED_TOKENS = 10_000  # tokens remembered as verified (about 2 KiB each)


def scope_within(wanted: Scope, allowed: Scope) -> bool:
    """Whether ``wanted`` asks for no more than ``allowed`` grants. A ``patient/`` scope is
    within a ``user/`` one (it narrows it to one patient: the launch's)."""
    narrower = (wanted.context, allowed.context) == ("patient", "user")
    return (
        (wanted.context == allowed.context or narrower)
        and allowed.resource_type in ("*", wanted.resource_type)
        and wanted.letters <= allowed.letters
        and (not allowed.query or allowed.query == wanted.query)
    )


def challenge_message(chain: str, challenge: str) -> bytes:
    return f"careledger-auth:{chain}:{challenge}".encode()


@dataclass(frozen=True)
class TokenClaims:
    member: str
    org: str
    roles: tuple[str, ...]
    public_key: str
    expires: int
    scopes: tuple[Scope, ...]
    raw: dict[str, Any]
    app: str | None = None  # the SMART client the token was issued to
    patient: str | None = None  # the patient a SMART launch is about


class TokenIssuer:
    def __init__(
        self,
        *,
        chain: str,
        node_name: str,
        node_key: KeyPair,
        ttl_seconds: int,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self.chain = chain
        self._clock = clock  # issue times, expiries, challenges' lifetimes
        self._random = random  # challenges and token ids
        self.node_name = node_name
        self.ttl = ttl_seconds
        self._private = Ed25519PrivateKey.from_private_bytes(node_key.seed)
        self._public: Ed25519PublicKey = self._private.public_key()
        self._challenges: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._by_client: dict[str, OrderedDict[str, None]] = {}
        self._revoked: dict[str, float] = {}
        self._revoked_grants: dict[str, float] = {}
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()
        # called with (jti, expiry) for each revocation, to keep it across restarts
        self.on_revoke: Callable[[str, int], None] | None = None
        self._lock = threading.Lock()

    def new_challenge(self, client: str = "") -> tuple[str, int]:
        """A fresh challenge. One client address holds at most a few open at once (its oldest
        is dropped), and when the node holds its maximum the oldest anyone holds is dropped, so
        a flood of anonymous challenges can delay its sender but lock nobody else out."""
        now = self._clock.time()
        with self._lock:
            mine = self._by_client.setdefault(client, OrderedDict())
            while len(mine) >= MAX_CHALLENGES_PER_CLIENT:
                oldest, _ = mine.popitem(last=False)
                self._challenges.pop(oldest, None)
            while len(self._challenges) >= MAX_OPEN_CHALLENGES:
                oldest, (_, owner) = self._challenges.popitem(last=False)
                self._by_client.get(owner, OrderedDict()).pop(oldest, None)
            challenge = b64url_encode(self._random.token_bytes(24))
            self._challenges[challenge] = (now + CHALLENGE_TTL_SECONDS, client)
            mine[challenge] = None
            self._forget_idle_clients()
        return challenge, CHALLENGE_TTL_SECONDS

    def _forget_idle_clients(self) -> None:
        if len(self._by_client) > 2 * MAX_OPEN_CHALLENGES:
            self._by_client = {c: m for c, m in self._by_client.items() if m}

    def revoke(self, token: str) -> None:
        """Refuse ``token`` from now on (sign-out), until it would have expired anyway."""
        try:
            claims = self.verify(token).raw
        except Unauthorized:
            return  # expired, foreign or already revoked: nothing left to refuse
        with self._lock:
            if len(self._revoked) >= MAX_REVOKED_TOKENS:
                now = self._clock.time()
                self._revoked = {j: e for j, e in self._revoked.items() if e > now}
            self._revoked[str(claims.get("jti", ""))] = float(claims["exp"])
        if self.on_revoke is not None:
            self.on_revoke(str(claims.get("jti", "")), int(claims["exp"]))

    def remember_revoked(self, revoked: dict[str, int]) -> None:
        """Revocations kept from before a restart."""
        with self._lock:
            self._revoked.update({j: float(e) for j, e in revoked.items()})

    def revoke_grant(self, grant: str, until: float) -> None:
        """Refuse every token issued from a SMART grant (a revoked or leaked refresh token)."""
        with self._lock:
            if len(self._revoked_grants) >= MAX_REVOKED_TOKENS:
                now = self._clock.time()
                self._revoked_grants = {g: e for g, e in self._revoked_grants.items() if e > now}
            self._revoked_grants[grant] = until

    def redeem(self, challenge: str, public_key: str, signature: str) -> None:
        """Consume a challenge signed by ``public_key``; any failure is Unauthorized."""
        with self._lock:
            entry = self._challenges.pop(challenge, None)
            if entry is not None:
                self._by_client.get(entry[1], OrderedDict()).pop(challenge, None)
        expiry = None if entry is None else entry[0]
        if expiry is None or expiry < self._clock.time():
            raise Unauthorized("unknown or expired challenge", code="BAD_CHALLENGE")
        try:
            key, sig = decode_public_key(public_key), decode_signature(signature)
        except Exception:
            raise Unauthorized("malformed key or signature", code="BAD_CHALLENGE") from None
        if not ed25519_verify(key, challenge_message(self.chain, challenge), sig):
            raise Unauthorized("the challenge signature does not verify", code="BAD_CHALLENGE")

    def issue(
        self,
        signer: Signer,
        *,
        scope: str | None = None,
        now: int | None = None,
        client_id: str | None = None,
        patient: str | None = None,
        grant: str | None = None,
    ) -> tuple[str, int]:
        """A token for ``signer``; ``scope`` may narrow the role's default scopes, never widen.
        ``client_id`` and ``patient``: the SMART app it is issued to and its launch patient."""
        allowed = parse_scopes(default_scopes(signer.roles))
        if scope is not None:
            for wanted in parse_scopes(scope):
                if wanted.query and client_id is None:
                    raise Unauthorized(
                        "query-restricted scopes are for SMART apps (/auth/authorize)",
                        code="BAD_SCOPE",
                    )
                if not any(scope_within(wanted, a) for a in allowed):
                    raise Unauthorized(
                        "a requested scope exceeds the member's roles", code="BAD_SCOPE"
                    )
        granted = default_scopes(signer.roles) if scope is None else scope
        issued = int(self._clock.time()) if now is None else now
        claims = {
            "iss": self.node_name,
            "aud": self.chain,
            "sub": signer.member,
            "org": signer.org,
            "roles": sorted(signer.roles),
            "scope": granted,
            "key": signer.public_key,
            "iat": issued,
            "exp": issued + self.ttl,
            "jti": b64url_encode(self._random.token_bytes(12)),
        }
        if client_id is not None:
            claims["cid"] = client_id
        if patient is not None:
            claims["patient"] = patient
        if grant is not None:
            claims["gid"] = grant  # the SMART grant: revoking it revokes this token
        return jwt.encode(claims, self._private, algorithm="EdDSA"), self.ttl

    def issue_to_app(
        self, client_id: str, org: str, scope: str, *, now: int | None = None
    ) -> tuple[str, int]:
        """A token for a backend app (SMART Backend Services): it acts as itself, for ``org``."""
        issued = int(self._clock.time()) if now is None else now
        claims = {
            "iss": self.node_name,
            "aud": self.chain,
            "sub": client_id,
            "cid": client_id,
            "org": org,
            "roles": ["system"],
            "scope": scope,
            "key": "",
            "iat": issued,
            "exp": issued + self.ttl,
            "jti": b64url_encode(self._random.token_bytes(12)),
        }
        return jwt.encode(claims, self._private, algorithm="EdDSA"), self.ttl

    def verify(self, token: str) -> TokenClaims:
        """The token's claims, if this node issued it and it is neither expired nor revoked.

        A token is presented on every request, and its signature check is about a tenth of a
        FHIR read's CPU: a token verified once is remembered (bounded, by its exact text), and
        each later use checks only its expiry and the revocations."""
        known = self._verified.get(token)
        if known is not None:
            if self._clock.time() >= known.expires:  # as PyJWT: expired at exp
                raise Unauthorized("the token has expired", code="TOKEN_EXPIRED")
            self._check_revoked(known.raw)
            return known
        claims = self._decode(token)
        with self._lock:
            if len(self._verified) >= MAX_VERIFIED_TOKENS:
                self._verified.popitem(last=False)
            self._verified[token] = claims
        return claims

    def _check_revoked(self, claims: dict[str, Any]) -> None:
        if str(claims.get("jti", "")) in self._revoked:
            raise Unauthorized("the token was revoked (signed out)", code="TOKEN_REVOKED")
        if claims.get("gid") and str(claims["gid"]) in self._revoked_grants:
            raise Unauthorized("the app's access was revoked", code="TOKEN_REVOKED")

    def _decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=["EdDSA"],
                audience=self.chain,
                issuer=self.node_name,
                # exp and iat are judged below by the issuer's clock, as PyJWT would judge them
                options={
                    "require": ["exp", "iat", "sub", "aud", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
            expires, issued = int(claims["exp"]), int(claims["iat"])
            not_before = int(claims["nbf"]) if "nbf" in claims else None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise Unauthorized("the token is not valid for this node", code="BAD_TOKEN") from None
        now = self._clock.time()
        if expires <= now:
            raise Unauthorized("the token has expired", code="TOKEN_EXPIRED")
        if issued > now or (not_before is not None and not_before > now):
            raise Unauthorized("the token is not valid for this node", code="BAD_TOKEN")
        self._check_revoked(claims)
        return TokenClaims(
            member=str(claims["sub"]),
            org=str(claims.get("org", "")),
            roles=tuple(claims.get("roles", ())),
            public_key=str(claims.get("key", "")),
            expires=expires,
            scopes=parse_scopes(str(claims.get("scope", ""))),
            raw=claims,
            app=str(claims["cid"]) if claims.get("cid") else None,
            patient=str(claims["patient"]) if claims.get("patient") else None,
        )
