"""SMART on FHIR endpoints: discovery, the token endpoint (authorization code with PKCE,
refresh, client_credentials), introspection (RFC 7662), revocation (RFC 7009), the node's
OpenID Connect keys, and the app registry (``/v1/apps``).

The authorize page is the portal's (``web/authorize.py``): the user signs in there."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep, current_claims, get_node
from careledger.api.replies import caller_of, json_object, json_response
from careledger.errors import CareLedgerError
from careledger.jsonio import dumps
from careledger.smart.apps_service import AppsService
from careledger.smart.discovery import openid_configuration, smart_configuration
from careledger.smart.oauth import AuthorizationServer, OAuthError

router = APIRouter(tags=["smart"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM = 16_384
CLIENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$"


def origin_of(request: Request) -> str:
    """This node's public origin, as configured (``public_url``, else the address it serves
    on): never the request's Host header, which a client chooses. Assertion audiences, the
    authorize ``aud`` check and discovery use it."""
    configured: str = getattr(request.app.state, "public_origin", "")
    return configured or str(request.base_url).rstrip("/")


def _server(request: Request) -> AuthorizationServer:
    server: AuthorizationServer = request.app.state.smart
    return server


def _apps(request: Request) -> AppsService:
    apps: AppsService = request.app.state.services.apps
    return apps


def _oauth_json(body: dict[str, Any], status: int = 200) -> Response:
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="careledger"'
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _form(request: Request) -> dict[str, list[str]]:
    """The urlencoded body OAuth endpoints take (RFC 6749 3.2)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the body is application/x-www-form-urlencoded")
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise OAuthError("invalid_request", "the body is too large")
    try:
        return parse_qs(raw.decode("utf-8"), max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the body is not UTF-8 urlencoded text") from None


@router.get("/.well-known/smart-configuration", summary="SMART configuration")
@router.get("/fhir/.well-known/smart-configuration", summary="SMART configuration (FHIR base)")
def smart_config(request: Request) -> Response:
    return json_response(smart_configuration(origin_of(request)))


@router.get("/.well-known/openid-configuration", summary="OpenID Connect discovery")
def openid_config(request: Request) -> Response:
    return json_response(openid_configuration(origin_of(request)))


@router.get("/.well-known/jwks.json", summary="The node's public keys (id_token signatures)")
def jwks(request: Request) -> Response:
    return json_response(_server(request).oidc.public_jwks())


@router.post("/auth/token", summary="OAuth 2.0 token endpoint (SMART App Launch, Backend Services)")
async def token(request: Request) -> Response:
    try:
        form = await _form(request)
        origin = origin_of(request)
        answer = await run_in_threadpool(
            _server(request).token,
            form,
            request.headers.get("authorization"),
            f"{origin}/auth/token",
            origin,
        )
    except OAuthError as exc:
        return _oauth_json(exc.body(), exc.status)
    return _oauth_json(answer)


RESOURCE_SERVER_ROLES = frozenset({"node", "admin"})


@router.post("/auth/introspect", summary="Token introspection (RFC 7662)")
async def introspect(request: Request) -> Response:
    """For a confidential or backend app (its own tokens), or a resource server: a bearer
    token of a node or an admin (any token). Public apps and other callers are refused."""
    server = _server(request)
    node = get_node(request)
    try:
        form = await _form(request)
        authorization = request.headers.get("authorization") or ""
        only_client: str | None = None
        if authorization.lower().startswith("bearer "):
            bearer = server.issuer.verify(authorization[7:].strip())
            asker = await run_in_threadpool(current_claims, node, bearer)
            if asker.app is not None or not RESOURCE_SERVER_ROLES & set(asker.roles):
                raise OAuthError("invalid_client", "introspection is for resource servers", 401)
        else:
            app = await run_in_threadpool(
                server.authenticate, form, authorization or None, f"{origin_of(request)}/auth/token"
            )
            if app["kind"] == "public":
                raise OAuthError("invalid_client", "a public app cannot introspect", 401)
            only_client = str(app["client_id"])
        token_value = (form.get("token") or [""])[0]
    except OAuthError as exc:
        return _oauth_json(exc.body(), exc.status)
    except CareLedgerError:  # an invalid bearer: RFC 7662 section 2.3
        return _oauth_json({"error": "invalid_token", "error_description": "not authorised"}, 401)
    answer = await run_in_threadpool(
        server.introspect, token_value, lambda claims: current_claims(node, claims)
    )
    if only_client is not None and answer.get("client_id") != only_client:
        answer = {"active": False}  # an app learns nothing of others' tokens
    return _oauth_json(answer)


@router.post("/auth/revoke", summary="Token revocation (RFC 7009)")
async def revoke(request: Request) -> Response:
    server = _server(request)
    try:
        form = await _form(request)
        origin = origin_of(request)
        app = await run_in_threadpool(
            server.authenticate, form, request.headers.get("authorization"), f"{origin}/auth/token"
        )
        token_value = (form.get("token") or [""])[0]
        if not token_value:
            raise OAuthError("invalid_request", "token is required")
    except OAuthError as exc:
        return _oauth_json(exc.body(), exc.status)
    await run_in_threadpool(server.revoke, token_value, app)
    return Response(status_code=200, headers=NO_STORE)


# -- the app registry ----------------------------------------------------------------------


@router.get("/v1/apps", summary="Apps registered on the ledger (anyone signed in)", tags=["apps"])
def list_apps(request: Request, claims: MemberDep, org: str | None = None) -> Response:
    return json_response({"items": _apps(request).list(org)})


@router.post(
    "/v1/apps", status_code=201, summary="Register an app (an organisation's admin)", tags=["apps"]
)
async def register_app(
    request: Request, claims: MemberDep, body: Annotated[Any, Body()] = None
) -> Response:
    fields = json_object(body, "the app: {client_id, name, kind, redirect_uris, scopes, ...}")
    done = await run_in_threadpool(_apps(request).register, caller_of(claims), fields)
    return json_response(done, 201, headers=NO_STORE)


@router.get("/v1/apps/{client_id}", summary="One app", tags=["apps"])
def get_app(
    request: Request, claims: MemberDep, client_id: Annotated[str, Path(pattern=CLIENT_ID)]
) -> Response:
    return json_response(_apps(request).get(client_id))


@router.patch("/v1/apps/{client_id}", summary="Change an app's URIs, scopes or keys", tags=["apps"])
async def update_app(
    request: Request,
    claims: MemberDep,
    client_id: Annotated[str, Path(pattern=CLIENT_ID)],
    body: Annotated[Any, Body()] = None,
) -> Response:
    fields = json_object(body)
    done = await run_in_threadpool(
        _apps(request).change, caller_of(claims), client_id, "update", fields
    )
    return json_response(done)


@router.post("/v1/apps/{client_id}/{step}", summary="Suspend or resume an app", tags=["apps"])
async def suspend_or_resume(
    request: Request,
    claims: MemberDep,
    client_id: Annotated[str, Path(pattern=CLIENT_ID)],
    step: Annotated[str, Path(pattern=r"^(suspend|resume)$")],
    body: Annotated[Any, Body()] = None,
) -> Response:
    fields = json_object(body)
    done = await run_in_threadpool(
        _apps(request).change, caller_of(claims), client_id, step, fields
    )
    return json_response(done)
