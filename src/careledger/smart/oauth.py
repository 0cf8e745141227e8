"""The SMART App Launch 2.2 and Backend Services authorization server of a node.

Apps come from the ledger (``apps`` contract): only a registered, active app gets a code or a
token, only to a redirect URI registered for it, and only for scopes within what it registered
and what the user's roles allow. A user approves (or narrows) what an app asks for in the
portal, signed in with their own member key; the app then holds a token carrying its client id,
and every access it makes names it on the ledger. Scopes stay an upper bound: the ledger's
consent decides each access.

OAuth errors have their own shape (RFC 6749 section 5.2): ``{"error", "error_description"}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import jwt

from careledger.callers.scopes import CONTEXT_SCOPES, default_scopes, parse_scope, parse_scopes
from careledger.callers.tokens import TokenIssuer, scope_within
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.apps import app_of
from careledger.contracts.base import Signer
from careledger.contracts.identity import member_of
from careledger.core.keys import b64url_encode
from careledger.errors import CareLedgerError, Unauthorized, ValidationError
from careledger.ledger.engine import Ledger
from careledger.smart.grants import Grant, GrantStore, PendingCode, ReusedCode, ReusedToken
from careledger.smart.oidc import OidcKey

CODE_TTL = 60
LAUNCH_TTL = 300
OFFLINE_SECONDS = 30 * 24 * 3600
ONLINE_SECONDS = 12 * 3600
MAX_ASSERTION_LIFETIME = 300
CLOCK_SKEW = 30
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384", "EdDSA")
PKCE_VERIFIER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class OAuthError(Exception):
    """An OAuth error: ``redirect`` when it may go back to the app's redirect URI (the client
    and the redirect URI were verified), else it is shown to the user."""

    def __init__(self, error: str, description: str, status: int = 400, redirect: bool = True):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.redirect = redirect
        self.redirect_uri = ""  # set once verified: where the error may be sent
        self.state = ""

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(frozen=True)
class AuthorizeRequest:
    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    state: str
    code_challenge: str
    aud: str
    launch: str | None
    nonce: str | None
    app: Mapping[str, Any] = field(compare=False)


def _pkce_ok(verifier: str, challenge: str) -> bool:
    """RFC 7636 S256: 43-128 unreserved characters, hashed to the challenge."""
    if not 43 <= len(verifier) <= 128 or set(verifier) - PKCE_VERIFIER:
        return False
    digest = b64url_encode(hashlib.sha256(verifier.encode()).digest())
    return hmac.compare_digest(digest, challenge)


def _one(form: Mapping[str, list[str]], name: str, required: bool = True) -> str | None:
    """A parameter given once (RFC 6749 3.1: parameters must not be repeated)."""
    values = form.get(name) or []
    if len(values) > 1:
        raise OAuthError("invalid_request", f"{name} is given more than once")
    if not values or values[0] == "":
        if required:
            raise OAuthError("invalid_request", f"{name} is required")
        return None
    return values[0]


class AuthorizationServer:
    def __init__(
        self,
        ledger: Ledger,
        issuer: TokenIssuer,
        grants: GrantStore,
        oidc: OidcKey,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock  # codes', launches' and refresh tokens' lifetimes
        self.ledger = ledger
        self.issuer = issuer
        self.grants = grants
        self.oidc = oidc  # codes and launches live in ``grants``: a restart keeps them
        now = int(self._clock.time())
        for family, until in grants.revoked_families(now).items():
            issuer.revoke_grant(family, until)
        issuer.remember_revoked(grants.revoked_tokens(now))
        issuer.on_revoke = grants.revoke_token

    # -- apps ----------------------------------------------------------------------------

    def app(self, client_id: str | None) -> Mapping[str, Any] | None:
        """The registered, active app with this client id."""
        if not client_id or len(client_id) > 64:
            return None
        found = app_of(self.ledger.state, client_id)
        return found if found is not None and found["status"] == "active" else None

    # -- authorize -----------------------------------------------------------------------

    def check_authorize(self, form: Mapping[str, list[str]], fhir_base: str) -> AuthorizeRequest:
        """An authorization request, checked. Errors before the client and redirect URI are
        known are shown to the user (never redirected to an unverified URI)."""
        try:
            client_id = _one(form, "client_id") or ""
            redirect_uri = _one(form, "redirect_uri") or ""
        except OAuthError as exc:
            raise OAuthError(exc.error, exc.description, redirect=False) from None
        app = self.app(client_id)
        if app is None or app["kind"] == "backend":
            raise OAuthError(
                "unauthorized_client", "no such app, or it is suspended", redirect=False
            )
        if redirect_uri not in app["redirect_uris"]:
            raise OAuthError(
                "invalid_request", "the redirect_uri is not registered for this app", redirect=False
            )
        try:
            return self._check_rest(form, fhir_base, app, client_id, redirect_uri)
        except OAuthError as exc:
            exc.redirect_uri = redirect_uri
            exc.state = (form.get("state") or [""])[0][:512]
            raise

    def _check_rest(
        self,
        form: Mapping[str, list[str]],
        fhir_base: str,
        app: Mapping[str, Any],
        client_id: str,
        redirect_uri: str,
    ) -> AuthorizeRequest:
        if _one(form, "response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type is code")
        if _one(form, "code_challenge_method") != "S256":
            raise OAuthError("invalid_request", "PKCE is required: code_challenge_method S256")
        challenge = _one(form, "code_challenge") or ""
        if len(challenge) != 43:
            raise OAuthError("invalid_request", "code_challenge is a base64url SHA-256")
        aud = _one(form, "aud") or ""
        if aud.rstrip("/") != fhir_base:
            raise OAuthError("invalid_request", f"aud is this server's FHIR base: {fhir_base}")
        words = tuple(dict.fromkeys((_one(form, "scope") or "").split()))
        for word in words:
            if word not in CONTEXT_SCOPES:
                try:
                    parse_scope(word)
                except ValidationError:
                    raise OAuthError("invalid_scope", f"not a SMART scope: {word[:80]}") from None
        return AuthorizeRequest(
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=words,
            state=_one(form, "state", required=False) or "",
            code_challenge=challenge,
            aud=aud,
            launch=_one(form, "launch", required=False),
            nonce=_one(form, "nonce", required=False),
            app=app,
        )

    def offered(self, request: AuthorizeRequest, signer: Signer) -> list[str]:
        """What of the request the user may grant: within the app's registration and the
        user's roles; the rest is dropped (RFC 6749 3.3 lets a server grant less)."""
        registered = request.app["scopes"].split()
        registered_resources = parse_scopes(" ".join(registered))
        allowed = parse_scopes(default_scopes(signer.roles))
        offered = []
        for word in request.scope:
            if word in CONTEXT_SCOPES:
                if word in registered:
                    offered.append(word)
                continue
            wanted = parse_scope(word)
            if any(scope_within(wanted, r) for r in registered_resources) and any(
                scope_within(wanted, a) for a in allowed
            ):
                offered.append(word)
        return offered

    def launch_patient(self, request: AuthorizeRequest, signer: Signer) -> str | None:
        """The patient an EHR launch was started for (None for a standalone launch)."""
        if request.launch is None:
            return None
        launch = self.grants.launch(request.launch, int(self._clock.time()))
        if (
            launch is None
            or launch.member != signer.member
            or launch.client_id != request.client_id
        ):
            raise OAuthError("invalid_request", "the launch is unknown, expired or another's")
        return launch.patient

    def create_launch(self, signer: Signer, client_id: str, patient: str | None) -> str:
        """An EHR launch: the portal opens an app about a patient; the app gets ``launch``."""
        if self.app(client_id) is None:
            raise ValidationError("no such app, or it is suspended", code="UNKNOWN_APP")
        now = int(self._clock.time())
        return self.grants.create_launch(signer.member, client_id, patient, now + LAUNCH_TTL, now)

    def approve(
        self, request: AuthorizeRequest, signer: Signer, granted: list[str], patient: str | None
    ) -> str:
        """A one-time code for what the user approved (``granted`` within ``offered``)."""
        offered = self.offered(request, signer)
        if set(granted) - set(offered):
            raise OAuthError("invalid_scope", "a granted scope was not offered")
        launch_patient = self.launch_patient(request, signer)
        if launch_patient is not None:
            patient = launch_patient
        elif "patient" in signer.roles and signer.roles <= {"patient"}:
            patient = signer.member
        resources = parse_scopes(" ".join(granted))
        wants_patient = any(s.context == "patient" for s in resources) or (
            "launch/patient" in granted
        )
        if wants_patient and patient is None:
            raise OAuthError("invalid_request", "patient/ scopes need a patient: choose one")
        now = int(self._clock.time())
        pending = PendingCode(
            client_id=request.client_id,
            redirect_uri=request.redirect_uri,
            code_challenge=request.code_challenge,
            member=signer.member,
            public_key=signer.public_key,
            scope=" ".join(granted),
            patient=patient,
            aud=request.aud,
            nonce=request.nonce,
            expires=now + CODE_TTL,
        )
        return self.grants.issue_code(pending, now)

    # -- token ---------------------------------------------------------------------------

    def authenticate(
        self, form: Mapping[str, list[str]], authorization: str | None, token_url: str
    ) -> Mapping[str, Any]:
        """The app making a token, introspection or revocation request (RFC 6749 2.3, RFC
        7523 private_key_jwt, or a public app's bare client_id)."""
        if authorization and authorization.lower().startswith("basic "):
            try:
                pair = base64.b64decode(authorization[6:], validate=True).decode()
                client_id, secret = (unquote_plus(p) for p in pair.split(":", 1))
            except (ValueError, UnicodeDecodeError):
                raise OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            return self._by_secret(client_id, secret, form)
        assertion = _one(form, "client_assertion", required=False)
        if assertion is not None:
            if _one(form, "client_assertion_type") != ASSERTION_TYPE:
                raise OAuthError(
                    "invalid_client", f"client_assertion_type is {ASSERTION_TYPE}", 401
                )
            return self._by_assertion(assertion, _one(form, "client_id", required=False), token_url)
        named = _one(form, "client_id", required=False)
        given = _one(form, "client_secret", required=False)
        if given is not None and named is not None:
            return self._by_secret(named, given, form)
        app = self.app(named)
        if app is None:
            raise OAuthError("invalid_client", "unknown or suspended client", 401)
        if app["kind"] != "public":
            raise OAuthError("invalid_client", "this app authenticates (secret or JWT)", 401)
        return app

    def _by_secret(
        self, client_id: str, secret: str, form: Mapping[str, list[str]]
    ) -> Mapping[str, Any]:
        app = self.app(client_id)
        named = _one(form, "client_id", required=False)
        if app is None or app.get("secret_hash") is None or named not in (None, client_id):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if not hmac.compare_digest(digest, str(app["secret_hash"])):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        return app

    def _by_assertion(
        self, assertion: str, client_id: str | None, token_url: str
    ) -> Mapping[str, Any]:
        """private_key_jwt: signed by a key the app registered on the ledger, for this token
        endpoint, short-lived, and never seen before."""

        def refuse(why: str) -> OAuthError:
            return OAuthError("invalid_client", f"client assertion refused: {why}", 401)

        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise refuse("not a JWT") from None
        client_id = client_id or str(unverified.get("iss", ""))
        app = self.app(client_id)
        if app is None or not app.get("jwks"):
            raise refuse("unknown or suspended client, or one without keys")
        alg = header.get("alg")
        if alg not in ASSERTION_ALGS:
            raise refuse(f"alg is one of {', '.join(ASSERTION_ALGS)}")
        keys = [k for k in app["jwks"]["keys"] if k.get("kid") == header.get("kid")]
        if len(keys) != 1:
            raise refuse("no registered key has this kid")
        try:
            key = jwt.PyJWK(dict(keys[0]), algorithm=alg)
            claims = jwt.decode(
                assertion,
                key.key,
                algorithms=[alg],
                audience=token_url,
                issuer=client_id,
                # exp, iat and nbf are judged below by this server's clock, as PyJWT would
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
            times = {c: claims[c] for c in ("exp", "iat", "nbf") if c in claims}
            if any(type(t) not in (int, float) for t in times.values()):
                raise ValueError("exp, iat and nbf are numbers (NumericDate)")
            expires = int(times.pop("exp"))
            later = [int(t) for t in times.values()]
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError) as exc:
            raise refuse(str(exc)[:120]) from None
        now = int(self._clock.time())
        if expires <= now - CLOCK_SKEW:
            raise refuse("the assertion has expired")
        if any(moment > now + CLOCK_SKEW for moment in later):
            raise refuse("the assertion is not yet valid (iat or nbf)")
        if claims["sub"] != client_id:
            raise refuse("sub is the client id")
        if int(claims["exp"]) > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            raise refuse(f"an assertion lives at most {MAX_ASSERTION_LIFETIME} s")
        jti = str(claims["jti"])
        if not jti or len(jti) > 256:
            raise refuse("jti is a short unique string")
        if not self.grants.first_assertion(client_id, jti, int(claims["exp"]), now):
            raise refuse("this jti was used before (a replay)")
        return app

    def token(
        self,
        form: Mapping[str, list[str]],
        authorization: str | None,
        token_url: str,
        issuer_url: str,
    ) -> dict[str, Any]:
        grant_type = _one(form, "grant_type")
        app = self.authenticate(form, authorization, token_url)
        if grant_type == "authorization_code":
            return self._code_grant(form, app, issuer_url)
        if grant_type == "refresh_token":
            return self._refresh_grant(form, app)
        if grant_type == "client_credentials":
            return self._backend_grant(form, app)
        raise OAuthError(
            "unsupported_grant_type", "authorization_code, refresh_token or client_credentials"
        )

    def _code_grant(
        self, form: Mapping[str, list[str]], app: Mapping[str, Any], issuer_url: str
    ) -> dict[str, Any]:
        code = _one(form, "code") or ""
        # The code is spent by this very call, bound to the family about to be issued, so a
        # second use (now, concurrently, or after a restart) revokes whatever it gave.
        family = self.grants.new_family()
        try:
            pending = self.grants.redeem_code(code, family, int(self._clock.time()))
        except ReusedCode as reused:  # RFC 6749 4.1.2: revoke what the code gave
            self.issuer.revoke_grant(reused.family, reused.until)
            pending = None
        if pending is None:
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        if pending.client_id != app["client_id"]:
            raise OAuthError("invalid_grant", "the code is another client's")
        if _one(form, "redirect_uri") != pending.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization's")
        if not _pkce_ok(_one(form, "code_verifier") or "", pending.code_challenge):
            raise OAuthError("invalid_grant", "the code_verifier does not match (PKCE)")
        signer = self._signer(pending.public_key, pending.member)
        words = pending.scope.split()
        answer = self._user_tokens(app, signer, words, pending.patient, family)
        if "openid" in words:
            answer["id_token"] = self._id_token(signer, app, pending, issuer_url)
        return answer

    def _signer(self, public_key: str, member: str) -> Signer:
        try:
            signer = self.ledger.signer(public_key)
        except CareLedgerError:
            raise OAuthError("invalid_grant", "the user's key is no longer active") from None
        if signer.member != member:
            raise OAuthError("invalid_grant", "the user's key changed hands")
        return signer

    def _user_tokens(
        self,
        app: Mapping[str, Any],
        signer: Signer,
        words: list[str],
        patient: str | None,
        family: str,
        grant: Grant | None = None,
    ) -> dict[str, Any]:
        """An access token for ``words``; a refresh token when the grant has one (a refresh
        keeps the grant's own scope and expiry, even when this access token is narrower)."""
        scope = " ".join(words)
        try:
            access, ttl = self.issuer.issue(
                signer, scope=scope, client_id=app["client_id"], patient=patient, grant=family
            )
        except Unauthorized as exc:
            raise OAuthError("invalid_scope", exc.message) from None
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": scope,
        }
        if patient is not None:
            answer["patient"] = patient
            answer["need_patient_banner"] = True
        now = int(self._clock.time())
        if grant is None and ("offline_access" in words or "online_access" in words):
            lifetime = OFFLINE_SECONDS if "offline_access" in words else ONLINE_SECONDS
            grant = Grant(family, app["client_id"], signer.member, signer.public_key, scope,
                          patient, now + lifetime)  # fmt: skip
        if grant is not None:
            answer["refresh_token"] = self.grants.issue_refresh(grant, now)
        return answer

    def _id_token(
        self, signer: Signer, app: Mapping[str, Any], pending: PendingCode, issuer_url: str
    ) -> str:
        now = int(self._clock.time())
        kind = "Patient" if signer.roles <= {"patient"} else "Practitioner"
        claims: dict[str, Any] = {
            "iss": issuer_url,
            "sub": signer.member,
            "aud": app["client_id"],
            "iat": now,
            "exp": now + self.issuer.ttl,
            "fhirUser": f"{pending.aud.rstrip('/')}/{kind}/{signer.member}",
        }
        if pending.nonce:
            claims["nonce"] = pending.nonce
        return self.oidc.sign(claims)

    def _refresh_grant(
        self, form: Mapping[str, list[str]], app: Mapping[str, Any]
    ) -> dict[str, Any]:
        token = _one(form, "refresh_token") or ""
        now = int(self._clock.time())
        try:
            grant = self.grants.redeem_refresh(token, app["client_id"], now)
        except ReusedToken as reused:
            self.issuer.revoke_grant(str(reused), now + OFFLINE_SECONDS)
            raise OAuthError(
                "invalid_grant", "the refresh token was used before: revoked"
            ) from None
        if grant is None:
            raise OAuthError("invalid_grant", "the refresh token is unknown, expired or revoked")
        words = grant.scope.split()
        asked = _one(form, "scope", required=False)
        if asked is not None:  # RFC 6749 6: a narrower scope only
            narrower = asked.split()
            if set(narrower) - set(words):
                raise OAuthError("invalid_scope", "a refresh may narrow the scopes, never widen")
            words = narrower
        member = member_of(self.ledger.state, grant.member)
        if member is None or member.get("key") != grant.public_key:
            # a changed key (rotated, recovered after a theft) ends what the old one approved
            self._revoke_family(grant.family, grant.expires)
            raise OAuthError("invalid_grant", "the user's key changed since the approval")
        signer = self._signer(grant.public_key, grant.member)
        return self._user_tokens(app, signer, words, grant.patient, grant.family, grant)

    def _backend_grant(
        self, form: Mapping[str, list[str]], app: Mapping[str, Any]
    ) -> dict[str, Any]:
        if app["kind"] != "backend" or _one(form, "client_assertion", required=False) is None:
            raise OAuthError("unauthorized_client", "client_credentials is for backend apps")
        words = (_one(form, "scope") or "").split()
        registered = parse_scopes(app["scopes"])
        for word in words:
            try:
                wanted = parse_scope(word)
            except ValidationError:
                raise OAuthError("invalid_scope", f"not a SMART scope: {word[:80]}") from None
            if wanted.context != "system" or not any(scope_within(wanted, r) for r in registered):
                raise OAuthError("invalid_scope", f"{word} is beyond what the app registered")
        scope = " ".join(dict.fromkeys(words))
        access, ttl = self.issuer.issue_to_app(app["client_id"], app["org"], scope)
        return {"access_token": access, "token_type": "Bearer", "expires_in": ttl, "scope": scope}

    # -- introspection and revocation -----------------------------------------------------

    def introspect(self, token: str, current: Any) -> dict[str, Any]:
        """RFC 7662: ``current`` re-checks a token against the ledger (the API's own check)."""
        try:
            claims = current(self.issuer.verify(token))
        except CareLedgerError:
            return {"active": False}
        raw = claims.raw
        answer: dict[str, Any] = {
            "active": True,
            "scope": " ".join(
                w for w in str(raw.get("scope", "")).split()
                if w in CONTEXT_SCOPES or any(s == parse_scope(w) for s in claims.scopes)
            ),
            "client_id": raw.get("cid"),
            "sub": claims.member,
            "exp": claims.expires,
            "iat": raw.get("iat"),
            "iss": raw.get("iss"),
            "token_type": "Bearer",
        }  # fmt: skip
        if claims.patient is not None:
            answer["patient"] = claims.patient
        return {k: v for k, v in answer.items() if v is not None}

    def revoke(self, token: str, app: Mapping[str, Any]) -> None:
        """RFC 7009: a refresh token's whole grant, or one access token; unknown or another
        client's tokens are ignored (the answer is 200 either way)."""
        found = self.grants.family_of(token)
        if found is not None:
            family, client_id, expires = found
            if client_id == app["client_id"]:
                self._revoke_family(family, expires)
            return
        try:
            claims = self.issuer.verify(token)
        except CareLedgerError:
            return
        if claims.app == app["client_id"]:
            self.issuer.revoke(token)

    def revoke_users_grant(self, member: str, family: str) -> bool:
        """The user ends an app's access they approved (False: not theirs, or unknown)."""
        if self.grants.member_of_family(family) != member:
            return False
        self._revoke_family(family, int(self._clock.time()) + OFFLINE_SECONDS)
        return True

    def _revoke_family(self, family: str, until: int) -> None:
        self.grants.revoke_family(family, until)
        self.issuer.revoke_grant(family, until)
