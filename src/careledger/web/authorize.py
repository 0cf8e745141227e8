"""The SMART authorize page: a user signed in to the portal with their own key sees which app
asks for what, narrows or approves it, and the app gets a one-time code at its registered
redirect URI. Errors before the app and its redirect URI are verified are shown here, never
sent to an unverified address (RFC 6749 4.1.2.1)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from careledger.api.deps import get_node
from careledger.api.routes.smart import origin_of
from careledger.callers.scopes import parse_scope, parse_scopes
from careledger.contracts.audit import CARE_ROLES
from careledger.contracts.base import Signer
from careledger.contracts.identity import org_of
from careledger.errors import CareLedgerError
from careledger.smart.oauth import AuthorizationServer, AuthorizeRequest, OAuthError
from careledger.web.access_words import when
from careledger.web.routes import csrf_guard, error_page, form_of, node_clock, page, session

router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])
MAX_QUERY = 8192
PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

CONTEXT_WORDS = {
    "openid": "Know who you are",
    "fhirUser": "Know who you are (your role and your FHIR record)",
    "profile": "Know who you are (your name)",
    "launch": "Know which patient is open in the portal",
    "launch/patient": "Know which patient this is about",
    "launch/encounter": "Know which visit this is about",
    "offline_access": "Stay connected after you sign out, until you or your organisation stop it",
    "online_access": "Stay connected while you are signed in",
}
ACTION_WORDS = (("c", "create"), ("r", "read"), ("u", "update"), ("d", "delete"), ("s", "search"))


def describe(scope: str) -> str:
    """A scope in plain words ("Read and search this patient's Observation (category=...)")."""
    if scope in CONTEXT_WORDS:
        return CONTEXT_WORDS[scope]
    parsed = parse_scope(scope)
    action = scope.split(".", 1)[1].split("?", 1)[0]
    if action in ("read", "write", "*"):
        verbs = {"read": ["read"], "write": ["write"], "*": ["read", "write"]}[action]
    else:
        verbs = [word for letter, word in ACTION_WORDS if letter in action]
    whose = {
        "patient": "this patient's",
        "user": "what you may see of",
        "system": "your organisation's",
    }[parsed.context]
    kind = "records of every kind" if parsed.resource_type == "*" else parsed.resource_type
    where = " where " + ", ".join(f"{k} is {v}" for k, v in parsed.query) if parsed.query else ""
    return f"{' and '.join(verbs).capitalize()} {whose} {kind}{where}"


def _fhir_base(request: Request) -> str:
    return origin_of(request) + "/fhir"


def _server(request: Request) -> AuthorizationServer:
    server: AuthorizationServer = request.app.state.smart
    return server


def _back_to_app(request_: AuthorizeRequest, **params: str) -> Response:
    """303 to the app's verified redirect URI with ``params`` (and its state)."""
    return _redirect(request_.redirect_uri, request_.state, **params)


def _redirect(uri: str, state: str, **params: str) -> Response:
    if state:
        params["state"] = state
    joiner = "&" if "?" in uri else "?"
    return RedirectResponse(f"{uri}{joiner}{urlencode(params)}", status_code=303)


def _checked(request: Request, query: str) -> AuthorizeRequest | Response:
    if len(query) > MAX_QUERY:
        return error_page(request, 400, "BAD_REQUEST", "The app's request is too long.")
    try:
        return _server(request).check_authorize(parse_qs(query), _fhir_base(request))
    except OAuthError as exc:
        if not exc.redirect or not exc.redirect_uri:
            return error_page(request, 400, exc.error.upper(), exc.description)
        return _redirect(
            exc.redirect_uri, exc.state, error=exc.error, error_description=exc.description
        )


def _signer(request: Request) -> Signer | None:
    claims = session(request)
    if claims is None:
        return None
    try:
        return get_node(request).ledger.signer(claims.public_key)
    except CareLedgerError:
        return None


def _render(
    request: Request,
    checked: AuthorizeRequest,
    signer: Signer,
    query: str,
    problem: str = "",
    patient: str = "",
) -> Response:
    server = _server(request)
    try:
        offered = server.offered(checked, signer)
        launch_patient = server.launch_patient(checked, signer)
    except OAuthError as exc:
        return _back_to_app(checked, error=exc.error, error_description=exc.description)
    resources = parse_scopes(" ".join(offered))
    is_patient = signer.roles <= {"patient"}
    needs_patient = not is_patient and (
        any(s.context == "patient" for s in resources) or "launch/patient" in offered
    )
    org = org_of(get_node(request).ledger.state, checked.app["org"]) or {}
    context: dict[str, Any] = {
        "app": checked.app,
        "org_name": org.get("name", checked.app["org"]),
        "offered": [{"scope": s, "words": describe(s)} for s in offered],
        "dropped": [s for s in checked.scope if s not in offered],
        "launch_patient": launch_patient,
        "needs_patient": needs_patient and launch_patient is None,
        "request_query": query,
        "problem": problem,
        "patient": patient,
    }
    return page(request, "authorize.html", **context)


@router.get("/auth/authorize")
def authorize(request: Request) -> Response:
    query = request.url.query
    found = _request_and_user(request, query)
    if isinstance(found, Response):
        return found
    return _render(request, *found, query)


def _request_and_user(request: Request, query: str) -> tuple[AuthorizeRequest, Signer] | Response:
    """The app's request, checked, and the signed-in user; else the answer to give instead
    (an error, or sign in first and come back to the same request)."""
    checked = _checked(request, query)
    if isinstance(checked, Response):
        return checked
    signer = _signer(request)
    if signer is None:
        target = f"/auth/authorize?{query}"
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
    return checked, signer


@router.get("/me/apps")
def my_apps(request: Request) -> Response:
    """The apps the signed-in member let in and that can still refresh (the SMART
    ``management_endpoint``): each can be stopped here at once."""
    signer = _signer(request)
    if signer is None:
        return RedirectResponse("/signin?next=%2Fme%2Fapps", status_code=303)
    server = _server(request)
    grants = server.grants.grants_of(signer.member, int(node_clock(request).time()))
    for grant in grants:
        app = server.app(grant["client_id"])
        grant["name"] = app["name"] if app is not None else grant["client_id"]
        grant["org"] = app["org"] if app is not None else ""
        grant["since_words"] = when(grant["since"] * 1000)
        grant["until_words"] = when(grant["until"] * 1000)
        grant["what"] = [describe(s) for s in grant["scope"].split()]
    return page(request, "apps.html", grants=grants)


@router.post("/me/apps/{grant}/revoke")
async def stop_app(request: Request, grant: str) -> Response:
    signer = _signer(request)
    if signer is None:
        return RedirectResponse("/signin?next=%2Fme%2Fapps", status_code=303)
    if not _server(request).revoke_users_grant(signer.member, grant[:64]):
        return error_page(request, 404, "UNKNOWN_GRANT", "There is no such app access of yours.")
    return RedirectResponse("/me/apps", status_code=303)


@router.post("/clinician/launch")
async def ehr_launch(request: Request) -> Response:
    """An EHR launch: a clinician with a patient open sends them to an app; the app gets
    ``iss`` and ``launch``, and its authorization then carries this patient as its context."""
    form = await form_of(request)
    signer = _signer(request)
    if signer is None or not signer.roles & CARE_ROLES:
        return error_page(request, 403, "NOT_AUTHORISED", "Only the care team opens apps here.")
    client_id = (form.get("client_id") or [""])[0]
    patient = (form.get("patient") or [""])[0].strip()
    app = _server(request).app(client_id)
    if app is None or not app.get("launch_uri") or not PATIENT_ID.match(patient):
        return error_page(request, 400, "BAD_LAUNCH", "That app cannot be opened from here.")
    launch = _server(request).create_launch(signer, client_id, patient)
    target = _redirect(str(app["launch_uri"]), "", iss=_fhir_base(request), launch=launch)
    return target


@router.post("/auth/authorize/decision")
async def decide(request: Request) -> Response:
    form = await form_of(request)
    query = (form.get("request") or [""])[0]
    found = _request_and_user(request, query)
    if isinstance(found, Response):
        return found
    checked, signer = found
    if (form.get("decision") or [""])[0] != "approve":
        return _back_to_app(checked, error="access_denied", error_description="the user said no")
    granted = list(dict.fromkeys(form.get("scope") or []))
    patient = (form.get("patient") or [""])[0].strip() or None
    # Only the id's form is checked: whether such a patient exists is not told (the app's
    # token then simply reaches nothing).
    if patient is not None and not PATIENT_ID.match(patient):
        return _render(request, checked, signer, query, "That is not a patient id.", patient)
    try:
        code = _server(request).approve(checked, signer, granted, patient)
    except OAuthError as exc:
        if exc.error == "invalid_request" and "patient" in exc.description:
            return _render(request, checked, signer, query, exc.description)
        return _back_to_app(checked, error=exc.error, error_description=exc.description)
    return _back_to_app(checked, code=code)
