"""The web portal: server-rendered pages (Jinja2) with htmx, over the same services as the API.

Signing in never sends a private key anywhere: the browser signs the node's challenge with the
member's key (WebCrypto Ed25519) and hands the resulting short-lived token to the portal,
which keeps it in an HttpOnly, SameSite=Strict cookie. Pages then act as that member, through
the same services and authorisation as the API.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import get_member, get_node
from careledger.api.ledger_reads import OVERSIGHT_ROLES
from careledger.api.replies import caller_of as api_caller_of
from careledger.callers.caller import Caller
from careledger.callers.tokens import TokenClaims
from careledger.clock import Clock
from careledger.contracts.consent import (
    BREAK_GLASS_ROLES,
    awaiting_cosignature,
    break_glass_entries,
    consent_covers,
    every_consent,
    opened_for_custodian,
)
from careledger.contracts.identity import key_of, member_of, org_ids, org_of
from careledger.contracts.supply import location_of, recall_entries
from careledger.contracts.trials import enrolments_of, study_of
from careledger.errors import CareLedgerError, Forbidden, NotFound, ValidationError
from careledger.fhir.outcome import FhirError
from careledger.smart.apps_service import AppsService
from careledger.sqlite_threads import iso_ms
from careledger.supply.access import SUPPLY_READERS
from careledger.supply.identifiers import normalise_epc, parse_element_string
from careledger.supply.repository import EventQuery
from careledger.supply.supply_service import (
    SupplyService,
    check_lms_request,
    lms_request_from_link,
)
from careledger.web import fhir_view
from careledger.web.access_words import PURPOSES as PURPOSE_WORDS
from careledger.web.access_words import plain_entries

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["iso_ms"] = lambda ms: iso_ms(int(ms))[:19].replace("T", " ")
templates.env.filters["purpose_words"] = lambda code: PURPOSE_WORDS.get(code, code)
templates.env.filters["share_kind"] = lambda kind, words: words.get(kind, kind)
templates.env.filters["day_words"] = lambda ms: time.strftime(
    "%d %b %Y", time.gmtime(int(ms) / 1000)
)
COOKIE = "careledger_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_for(token: str) -> str:
    """The session's anti-forgery value: derived from the HttpOnly session token, which no
    page of another origin (another port of this host included) can read."""
    return hashlib.sha256(b"careledger-csrf\x00" + token.encode()).hexdigest()[:32]


def _origin(request: Request) -> str | None:
    origin = request.headers.get("origin")
    if origin is None:
        referer = urlsplit(request.headers.get("referer", ""))
        origin = f"{referer.scheme}://{referer.netloc}" if referer.netloc else None
    return origin


async def csrf_guard(request: Request) -> None:
    """Every state-changing portal request comes from the portal's own origin and, once signed
    in, carries the session's anti-forgery value (form field or X-CSRF-Token header)."""
    if request.method in SAFE_METHODS:
        return
    if _origin(request) != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise Forbidden("a request from another site was refused", code="CSRF")
    token = request.cookies.get(COOKIE)
    if request.url.path == "/session" or not token:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        sent = (form.get(CSRF_FIELD) or [None])[0]
    if not sent or not hmac.compare_digest(sent, csrf_for(token)):
        raise Forbidden("the form is stale or was not sent by the portal: reload it", code="CSRF")


router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])


async def form_of(request: Request) -> dict[str, list[str]]:
    """A urlencoded form, or 400 BAD_FORM (never a 500 for bytes that are not UTF-8)."""
    try:
        return parse_qs((await request.body()).decode("utf-8"), max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise ValidationError("the form is not UTF-8 urlencoded text", code="BAD_FORM") from None


SUPPLY_ROLES = SUPPLY_READERS


def node_clock(request: Request) -> Clock:
    """The clock the node's services were given (``NodeServices``): pages judge time by it."""
    clock: Clock = request.app.state.services.clock
    return clock


def session(request: Request) -> TokenClaims | None:
    """The signed-in member, re-checked against the ledger (None: nobody, or a stale token)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    try:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
        return get_member(request, get_node(request), request.app.state.issuer, credentials)
    except CareLedgerError:
        return None


def caller_of(claims: TokenClaims | None) -> Caller | None:
    if claims is None:
        return None
    return api_caller_of(claims)


def page(request: Request, name: str, **context: Any) -> HTMLResponse:
    claims = session(request)
    token = request.cookies.get(COOKIE)
    csrf = csrf_for(token) if claims is not None and token else ""
    response = templates.TemplateResponse(
        request,
        name,
        {"me": claims, "chain": get_node(request).ledger.chain, "csrf": csrf, **context},
    )
    # No page of the portal is ever framed: a framed "Allow" or "Dispense" could be clicked
    # for the user by the page around it (clickjacking).
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    # a page's address (a searched name, a patient's id) is told to no other site, and a
    # signed-in page is kept in no cache
    response.headers["Referrer-Policy"] = "same-origin"
    if claims is not None:
        response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    return page(request, "home.html")


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    return FileResponse(HERE / "static" / "favicon.ico", media_type="image/x-icon")


ERROR_TITLES = {
    400: "That request could not be used",
    401: "Please sign in",
    403: "This page is not for you",
    404: "Nothing here",
    405: "Not allowed here",
    409: "That clashes with what is there",
    410: "Gone for good",
    413: "Too large",
    422: "The ledger refused it",
    429: "Too many requests: wait a moment",
}


def error_page(request: Request, status: int, code: str, message: str) -> Response:
    """An error as a portal page (a browser asked): signed out or expired sessions go to
    sign-in and come back; everything else is a page in the portal's style, never JSON."""
    claims = session(request)
    if status in (401, 403) and claims is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
    title = ERROR_TITLES.get(status, "Something went wrong")
    response = page(
        request,
        "error.html",
        title=title,
        message=message,
        code=code,
        status=status,
        path=request.url.path,
    )
    response.status_code = status
    return response


# -- sign in ------------------------------------------------------------------------------


@router.get("/signin", response_class=HTMLResponse)
def signin(request: Request) -> HTMLResponse:
    return page(request, "signin.html")


@router.post("/session")
async def start_session(request: Request) -> Response:
    """Keep a token the browser obtained by signing the challenge (HttpOnly: no script sees it)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValidationError("the body is JSON: {'token': ...}", code="UNSUPPORTED_MEDIA_TYPE")
    raw = await request.body()
    try:
        body = orjson.loads(raw) if 0 < len(raw) <= 8192 else None
    except orjson.JSONDecodeError:
        body = None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise ValidationError("the body is {'token': ...}", code="BAD_REQUEST")
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    claims = get_member(request, get_node(request), request.app.state.issuer, credentials)
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=max(60, claims.expires - int(node_clock(request).time())),
    )
    return response


@router.post("/signout")
def signout(request: Request) -> Response:
    """Signing out revokes the session's token at once, not only the cookie."""
    token = request.cookies.get(COOKIE)
    if token:
        request.app.state.issuer.revoke(token)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# -- pharmacist: verify a pack ------------------------------------------------------------


@router.get("/verify", response_class=HTMLResponse)
def verify_page(request: Request) -> HTMLResponse:
    return page(request, "verify.html")


@router.get("/verify/result", response_class=HTMLResponse)
async def verify_result(
    request: Request,
    link: Annotated[str, Query(max_length=1024)] = "",
    gtin: Annotated[str, Query(max_length=14)] = "",
    serial: Annotated[str, Query(max_length=20)] = "",
    lot: Annotated[str, Query(max_length=20)] = "",
    expiry: Annotated[str, Query(max_length=6)] = "",
) -> HTMLResponse:
    claims = session(request)
    service: SupplyService = request.app.state.supply
    try:
        code = link.strip()
        if code.startswith(("http://", "https://")):
            raw = lms_request_from_link(code, {})
        elif code:  # a scanned or typed GS1 element string: (01)…(21)…(10)…(17)…
            ais = parse_element_string(code)
            raw = {"gtin": ais.get("01", ""), "serialNumber": ais.get("21", "")}
            raw |= {
                k: ais[a] for k, a in (("lotNumber", "10"), ("expirationDate", "17")) if a in ais
            }
        else:
            raw = {"gtin": gtin.strip(), "serialNumber": serial.strip()}
            raw |= {
                k: v.strip()
                for k, v in (("lotNumber", lot), ("expirationDate", expiry))
                if v.strip()
            }
        lms = check_lms_request(raw)
        if not (lms.get("lotNumber") and lms.get("expirationDate")):
            raise ValidationError(
                "enter all four: GTIN, serial, lot and expiry, or scan the pack's 2D code",
                code="INCOMPLETE_IDENTIFIER",
            )
    except CareLedgerError as exc:
        return page(request, "verify_result.html", error=exc)
    answer = await run_in_threadpool(service.verify, caller_of(claims), lms, explain=True)
    journey: list[dict[str, Any]] = []
    caller = caller_of(claims)
    places: list[dict[str, str]] = []
    if caller is not None and caller.roles & SUPPLY_ROLES:
        epc = normalise_epc(f"https://id.gs1.org/01/{lms['gtin']}/21/{lms['serialNumber']}")
        journey = _journey(request.app.state.epcis, epc)
        places = _places(get_node(request), journey)
    can_dispense = bool(
        caller is not None
        and caller.roles & {"pharmacist", "admin"}
        and answer["verdict"]["dispense"]
    )
    return page(
        request,
        "verify_result.html",
        lms=lms,
        answer=answer,
        journey=journey,
        places=places,
        can_dispense=can_dispense,
    )


def _consented(request: Request, caller: Caller) -> list[str]:
    """Patients whose consent lets the caller read some of their records for treatment now,
    judged by the consent contract's own rule (start, end, purpose, types: not a copy)."""
    node = get_node(request)
    now = int(node_clock(request).time() * 1000)
    patients = set()
    for entry in every_consent(node.ledger.state, node.ledger.store.state_keys, 1_000_000):
        if not isinstance(entry, dict):
            continue
        if any(
            consent_covers(
                entry,
                member=caller.member,
                org=caller.org,
                action="read",
                resource_type=t,
                purpose="TREAT",
                time=now,
            )
            for t in entry.get("resource_types", ())
        ):
            patients.add(str(entry["patient"]))
    return sorted(patients)


def _journey(epcis: Any, epc: str) -> list[dict[str, Any]]:
    """The unit's events and those of every case and pallet it travelled in, oldest first."""
    known, frontier = {epc}, [epc]
    for _ in range(3):  # unit, case, pallet
        events, _ = epcis.query(EventQuery(any_epcs=frontier, limit=1000))
        parents = {
            normalise_epc(e["parentID"])
            for e in events
            if e.get("type") == "AggregationEvent" and isinstance(e.get("parentID"), str)
        }
        frontier = sorted(parents - known)
        known |= parents
        if not frontier:
            break
    events, _ = epcis.query(EventQuery(any_epcs=sorted(known), limit=1000))
    return sorted(events, key=lambda e: str(e.get("eventTime", "")))


def _places(node: Any, events: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Where the pack went, in order, named from the ledger's location registry."""
    out: list[dict[str, str]] = []
    for event in events:
        place = (event.get("bizLocation") or {}).get("id")
        if not isinstance(place, str):
            continue
        try:
            gln = normalise_epc(place).split("/414/")[1].split("/")[0]
        except (CareLedgerError, IndexError):
            continue
        if out and out[-1]["gln"] == gln:
            continue
        entry = location_of(node.ledger.state, gln) or {}
        out.append(
            {"gln": gln, "name": str(entry.get("name", gln)), "org": str(entry.get("org", ""))}
        )
    return out


@router.post("/verify/dispense", response_class=HTMLResponse)
async def dispense(request: Request) -> HTMLResponse:
    """A pharmacist records handing the pack to a patient (no patient data is recorded)."""
    caller = _supply_member(request)
    form = await form_of(request)
    gtin, serial = (form.get("gtin") or [""])[0], (form.get("serial") or [""])[0]
    service: SupplyService = request.app.state.supply
    try:
        unit = service.unit(caller, gtin, serial)
        await run_in_threadpool(
            service.act,
            caller,
            "dispense",
            {"gtin": unit["gtin"], "serial": serial, "location": unit["holder_location"]},
        )
    except CareLedgerError as exc:
        return page(request, "dispensed.html", error=exc)
    return page(request, "dispensed.html", gtin=unit["gtin"], serial=serial)


# -- ledger explorer ----------------------------------------------------------------------


EXPLORER_PAGE = 15
DIGITS = re.compile(r"^[0-9]{1,12}$")  # ASCII digits only: "²".isdigit() is True
TX_ID = re.compile(r"^[0-9a-f]{64}$")
MEMBER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _who_signed(ledger: Any, public_key: str) -> str:
    """The member id behind a key, as the ledger has it (revoked keys still say whose)."""
    entry = key_of(ledger.state, public_key)
    return str(entry["member"]) if entry else f"{public_key[:12]}…"


def _oversight(request: Request) -> bool:
    """Who signed what names patients by pseudonym: like /v1/members (ADR 0012), it is shown
    to nodes and organisations' admins and auditors, not to anyone passing by."""
    claims = session(request)
    return claims is not None and bool(OVERSIGHT_ROLES & set(claims.roles))


def _tx_summary(ledger: Any, envelope: bytes) -> dict[str, str]:
    body = orjson.loads(envelope).get("body", {})
    return {
        "contract": str(body.get("contract", "")),
        "method": str(body.get("method", "")),
        "signer": _who_signed(ledger, str(body.get("signer", ""))),
    }


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


@router.get("/explorer", response_class=HTMLResponse)
def explorer(
    request: Request,
    q: Annotated[str, Query(max_length=80)] = "",
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """The head, the checkpoint, blocks 15 at a time (``before``: older pages), the
    transactions per day, and a search box: a transaction id, a height, or a member's id."""
    node = get_node(request)
    ledger = node.ledger
    head = ledger.head
    wanted = q.strip()
    if wanted:
        if DIGITS.match(wanted) and 0 <= int(wanted) <= head.height:
            return RedirectResponse(f"/explorer/blocks/{int(wanted)}", status_code=303)
        if TX_ID.match(wanted) and ledger.store.find_tx(wanted) is not None:
            return RedirectResponse(f"/explorer/tx/{wanted}", status_code=303)
        known = MEMBER_ID.match(wanted) and member_of(ledger.state, wanted)
        if known and _oversight(request):
            return RedirectResponse(f"/explorer/members/{wanted}", status_code=303)
    top = min(head.height, (before or head.height + 1) - 1)
    blocks = []
    for height in range(top, max(-1, top - EXPLORER_PAGE), -1):
        header = ledger.store.header(height)
        if header is not None:
            blocks.append({"height": height, "hash": ledger.store.header_hash(height),
                           "header": header.to_json(), "when": _when(header.time)})  # fmt: skip
    note = ledger.checkpoint()
    if node.witness is not None:  # consortium: the newest checkpoint with the most cosigners
        for cosigners in range(8, 1, -1):
            try:
                note = node.witness.cosigned(cosigners)
                break
            except CareLedgerError:
                continue
    signers = [line.split()[1] for line in note.splitlines() if line.startswith("\u2014 ")]
    per_day: dict[str, int] = {}
    for height in range(max(1, head.height - 5000), head.height + 1):  # the recent history
        header = ledger.store.header(height)
        if header is not None:
            day = time.strftime("%Y-%m-%d", time.gmtime(header.time / 1000))
            per_day[day] = per_day.get(day, 0) + header.tx_count
    oldest = blocks[-1]["height"] if blocks else 0
    return page(
        request,
        "explorer.html",
        head=head.to_json(),
        head_hash=ledger.head_hash,
        blocks=blocks,
        older=oldest if oldest > 0 else None,
        newer=top < head.height,
        searched=wanted,
        checkpoint=note,
        signers=signers,
        chart_name="Transactions per day",
        chart_json=orjson.dumps([[d, n, "transactions"] for d, n in sorted(per_day.items())])
        .decode()
        .replace("<", "\\u003c"),
    )


@router.get("/explorer/members/{member_id}", response_class=HTMLResponse)
def member_page(request: Request, member_id: str) -> HTMLResponse:
    """A member as the ledger has it: the open part of identity (ADR 0004)."""
    if not _oversight(request):
        raise Forbidden("members are shown to nodes, admins and auditors", code="NOT_AUTHORISED")
    ledger = get_node(request).ledger
    member = member_of(ledger.state, member_id) if MEMBER_ID.match(member_id) else None
    if member is None:
        raise NotFound("no member with that id", code="UNKNOWN_MEMBER")
    org = org_of(ledger.state, member["org"]) or {}
    return page(request, "member.html", member=member, org=org)


@router.get("/explorer/blocks/{height}", response_class=HTMLResponse)
def block_page(request: Request, height: int) -> HTMLResponse:
    node = get_node(request)
    header = node.ledger.store.header(height)
    if header is None:
        raise NotFound(f"no block at height {height}", code="UNKNOWN_BLOCK")
    txs = node.ledger.store.block_txs(height)
    shown = _oversight(request)
    rows = [
        {"tx_id": t.tx_id, "leaf": t.leaf_index, "receipt": orjson.loads(t.receipt),
         **(_tx_summary(node.ledger, t.envelope) if shown else {})}
        for t in txs
    ]  # fmt: skip
    return page(
        request,
        "block.html",
        height=height,
        header=header.to_json(),
        when=_when(header.time),
        hash=node.ledger.store.header_hash(height),
        txs=rows,
    )


@router.get("/explorer/tx/{tx_id}", response_class=HTMLResponse)
def tx_page(request: Request, tx_id: str) -> HTMLResponse:
    node = get_node(request)
    if len(tx_id) != 64:
        raise NotFound("no such transaction", code="UNKNOWN_TX")
    proof = node.ledger.tx_proof(tx_id)
    found = node.ledger.store.find_tx(tx_id)
    summary = (
        _tx_summary(node.ledger, found[1].envelope)
        if found is not None and _oversight(request)
        else {}
    )
    header = node.ledger.store.header(found[0]) if found is not None else None
    return page(
        request,
        "tx.html",
        tx_id=tx_id,
        proof=proof,
        summary=summary,
        when=_when(header.time) if header is not None else "",
        proof_json=orjson.dumps(proof).decode().replace("<", "\\u003c"),
        vkey=node.ledger.verifier_key(),
    )


# -- patient: my records, who saw them, consents, export, erasure --------------------------


def _patient(request: Request) -> tuple[TokenClaims, Caller]:
    claims = session(request)
    if claims is None or "patient" not in claims.roles:
        raise Forbidden("sign in with a patient's key to see this page", code="NOT_AUTHORISED")
    caller = caller_of(claims)
    assert caller is not None
    return claims, caller


def _timeline(found: list[Any]) -> list[dict[str, Any]]:
    """Records as timeline rows, newest first (the patient's page and the clinician's)."""
    rows = [
        {
            "type": s.resource_type,
            "id": s.record_id,
            "when": fhir_view.when(s.resource),
            "title": fhir_view.title(s.resource),
            "custodian": s.custodian,
            "version": s.version,
            "anchor_tx": s.anchor_tx,
        }
        for s in found
    ]
    return sorted(rows, key=lambda r: r["when"], reverse=True)


@router.get("/me", response_class=HTMLResponse)
async def my_records(request: Request) -> HTMLResponse:
    claims, caller = _patient(request)
    records = request.app.state.health
    found, missing = await run_in_threadpool(
        records.everything_everywhere, caller, claims.member, purpose="PATRQT"
    )
    rows = _timeline(found)
    series: dict[str, list[tuple[str, float, str]]] = {}
    for s in found:
        q = fhir_view.quantity(s.resource)
        if s.resource_type == "Observation" and q is not None:
            series.setdefault(fhir_view.title(s.resource), []).append(
                (fhir_view.when(s.resource), *q)
            )
    chart_name, chart = max(series.items(), key=lambda kv: len(kv[1]), default=("", []))
    return page(
        request,
        "me.html",
        rows=rows,
        missing=missing,
        chart_name=chart_name,
        chart_json=orjson.dumps(sorted(chart)).decode().replace("<", "\\u003c"),
    )


@router.get("/me/access", response_class=HTMLResponse)
def my_access_log(request: Request) -> HTMLResponse:
    claims, caller = _patient(request)
    health = request.app.state.health
    entries = health.access_log(caller, claims.member)
    keys = list(reversed(health.key_history(caller, claims.member)))
    shown = plain_entries(list(reversed(entries)), get_node(request).ledger.state)
    return page(request, "access.html", entries=shown, key_events=keys)


@router.get("/me/access/proof")
async def my_access_proof(request: Request) -> Response:
    """The list above as a file that verifies offline (/static/verify-access.html)."""
    from careledger.health.access_proof import build_access_proof

    claims, caller = _patient(request)
    proof = await run_in_threadpool(
        build_access_proof, request.app.state.health, caller, claims.member
    )
    return Response(
        orjson.dumps(proof),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="access-proof-{claims.member}.json"',
            "Cache-Control": "no-store",
        },
    )


CONSENT_KINDS = (
    ("*", "Everything"),
    ("Observation", "Test results and measurements"),
    ("Condition", "Diagnoses"),
    ("MedicationRequest", "Prescriptions"),
    ("AllergyIntolerance", "Allergies"),
    ("Immunization", "Vaccinations"),
    ("Encounter", "Visits"),
    ("DiagnosticReport", "Reports"),
)
# What a patient may consent to on this page: fewer than the contract's purposes
# (contracts.consent.PURPOSES), which the architecture test holds these to. The others are not a
# consent a patient gives here: ETREAT is break-glass access, HPAYMT and HOPERAT a custodian's
# own purposes (no consent needed), PATRQT the patient's own reads, CLINTRCH the consent a trial
# records at enrolment (trials.consent_records), PUBHLTH reporting no page of the portal offers.
CONSENT_PURPOSES = ("TREAT", "CAREMGT", "HRESCH")


def _consents_page(
    request: Request, claims: TokenClaims, caller: Caller, problem: str = ""
) -> HTMLResponse:
    node = get_node(request)
    consents = request.app.state.health.consents(caller, claims.member)
    orgs = org_ids(node.ledger.state)
    names = {o: (org_of(node.ledger.state, o) or {}).get("name", o) for o in orgs}
    response = page(
        request,
        "consents.html",
        consents=consents,
        orgs=orgs,
        org_names=names,
        own_org=claims.org,
        kinds=CONSENT_KINDS,
        purposes=[(code, PURPOSE_WORDS[code]) for code in CONSENT_PURPOSES],
        problem=problem,
    )
    if problem:
        response.status_code = 400
    return response


@router.get("/me/consents", response_class=HTMLResponse)
def my_consents(request: Request) -> HTMLResponse:
    claims, caller = _patient(request)
    return _consents_page(request, claims, caller)


@router.post("/me/consents")
async def grant(request: Request) -> Response:
    """Nothing is assumed: who, which records, what for and how long are each chosen; an
    exact copy of an active consent is refused rather than granted twice."""
    claims, caller = _patient(request)
    form = await form_of(request)
    org = (form.get("org") or [""])[0]
    types = sorted({t for v in form.get("types") or [] for t in v.replace(" ", "").split(",") if t})
    purpose = (form.get("purpose") or [""])[0]
    days = (form.get("days") or [""])[0]
    orgs = org_ids(get_node(request).ledger.state)
    missing = [
        what
        for what, ok in (
            ("who may read", org in orgs),
            ("which records", bool(types)),
            ("what for", purpose in CONSENT_PURPOSES),
            ("for how long", days == "forever" or (DIGITS.match(days) and 0 < int(days) <= 3650)),
        )
        if not ok
    ]
    if missing:
        return _consents_page(request, claims, caller, f"Please choose {', '.join(missing)}.")
    args: dict[str, Any] = {
        "grantee": {"org": org},
        "actions": ["read"],
        "resource_types": ["*"] if "*" in types else types,
        "purposes": [purpose],
    }
    if days != "forever":
        args["end"] = int(node_clock(request).time() * 1000) + int(days) * 86_400_000
    health = request.app.state.health
    for existing in health.consents(caller, claims.member):
        same = (
            existing["status"] == "active"
            and existing["grantee"] == args["grantee"]
            and sorted(existing["resource_types"]) == sorted(args["resource_types"])
            and sorted(existing["purposes"]) == [purpose]
            and (existing["end"] is None) == ("end" not in args)
        )
        if same:
            return _consents_page(
                request, claims, caller, "You already gave this consent: it is in the table."
            )
    await run_in_threadpool(health.grant_consent, caller, claims.member, args)
    return RedirectResponse("/me/consents", status_code=303)


@router.post("/me/consents/{consent_id}/revoke")
async def revoke(request: Request, consent_id: str) -> Response:
    _, caller = _patient(request)
    await run_in_threadpool(request.app.state.health.revoke_consent, caller, consent_id)
    return RedirectResponse("/me/consents", status_code=303)


SHARE_KINDS = tuple(k for k in CONSENT_KINDS if k[0] != "*")
SHARE_DAYS = {"1": 1, "7": 7, "30": 30, "365": 365}
CARD_KINDS = {"immunizations": "vaccinations", "lab-results": "lab results"}


def _share_page(
    request: Request, claims: TokenClaims, caller: Caller, **shown: Any
) -> HTMLResponse:
    links = request.app.state.share_links.links(caller, claims.member)
    cards = request.app.state.health_cards.cards(caller, claims.member)
    response = page(request, "share.html", links=links, cards=cards, kinds=SHARE_KINDS,
                    kind_words=dict(SHARE_KINDS), card_kinds=CARD_KINDS, **shown)  # fmt: skip
    response.headers["Cache-Control"] = "no-store"  # a new link's key is on the page once
    if shown.get("problem"):
        response.status_code = 400
    return response


@router.get("/me/share", response_class=HTMLResponse)
def my_share(request: Request) -> HTMLResponse:
    claims, caller = _patient(request)
    return _share_page(request, claims, caller)


@router.post("/me/share", response_class=HTMLResponse)
async def make_link(request: Request) -> HTMLResponse:
    """A SMART Health Link: what it shares, whether it follows updates, a passcode, how long,
    a label; each chosen. The link (with its key) is shown once, here, with its QR code."""
    from careledger.api.routes.smart import origin_of
    from careledger.health.share_links import Selection

    claims, caller = _patient(request)
    form = await form_of(request)
    first = {k: (v or [""])[0].strip() for k, v in form.items()}
    types = sorted({t for t in form.get("types") or [] if t in dict(SHARE_KINDS)})
    summary = first.get("what") == "summary"
    days = first.get("days", "")
    missing = [what for what, ok in (
        ("what to share", summary or bool(types)),
        ("for how long", days in SHARE_DAYS),
    ) if not ok]  # fmt: skip
    if missing:
        return _share_page(request, claims, caller, problem=f"Please choose {', '.join(missing)}.")
    passcode = first.get("passcode") or None
    flags = ("L" if first.get("long_term") == "yes" else "") + ("P" if passcode else "")
    try:
        made = await run_in_threadpool(
            request.app.state.share_links.create, caller, claims.member,
            origin=origin_of(request), selection=Selection(() if summary else tuple(types),
                                                           summary),
            flags=flags, passcode=passcode,
            expires=int(node_clock(request).time()) + SHARE_DAYS[days] * 86_400,
            label=first.get("label") or None,
        )  # fmt: skip
    except ValidationError as exc:
        return _share_page(request, claims, caller, problem=exc.message)
    return _share_page(request, claims, caller, made=made)


@router.post("/me/share/{link_id}/revoke")
async def revoke_link(request: Request, link_id: str) -> Response:
    claims, caller = _patient(request)
    await run_in_threadpool(
        request.app.state.share_links.revoke, caller, claims.member, link_id
    )
    return RedirectResponse("/me/share", status_code=303)


@router.post("/me/cards", response_class=HTMLResponse)
async def make_card(request: Request) -> HTMLResponse:
    from careledger.api.routes.smart import origin_of

    claims, caller = _patient(request)
    kind = ((await form_of(request)).get("kind") or [""])[0]
    if kind not in CARD_KINDS:
        return _share_page(request, claims, caller, problem="Please choose a kind of card.")
    try:
        card = await run_in_threadpool(
            request.app.state.health_cards.issue, caller, claims.member, kind, origin_of(request)
        )
    except (ValidationError, NotFound) as exc:
        return _share_page(request, claims, caller, problem=exc.message)
    return _share_page(request, claims, caller, card=card,
                       card_file=orjson.dumps(card["file"]).decode())  # fmt: skip


@router.post("/me/cards/{card_id}/revoke")
async def revoke_card(request: Request, card_id: str) -> Response:
    claims, caller = _patient(request)
    await run_in_threadpool(
        request.app.state.health_cards.revoke, caller, claims.member, card_id
    )
    return RedirectResponse("/me/share", status_code=303)


@router.get("/me/export")
async def export(request: Request) -> Response:
    """Everything, as one FHIR Bundle to download (the patient's own copy)."""
    claims, caller = _patient(request)
    found, _ = await run_in_threadpool(
        request.app.state.health.everything_everywhere, caller, claims.member, purpose="PATRQT"
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{s.resource_type}/{s.record_id}", "resource": s.resource} for s in found
        ],
    }
    return Response(
        orjson.dumps(bundle),
        media_type="application/fhir+json",
        headers={"Content-Disposition": f'attachment; filename="{claims.member}-records.json"'},
    )


@router.post("/me/records/{record_id}/erase")
async def erase(request: Request, record_id: str) -> Response:
    _, caller = _patient(request)
    await run_in_threadpool(request.app.state.health.shred, caller, record_id)
    return RedirectResponse("/me", status_code=303)


# -- manufacturer: recalls ------------------------------------------------------------------


# -- research: invitations and e-consent -------------------------------------------------------


def _my_studies(request: Request, member: str) -> list[dict[str, Any]]:
    """The studies the patient is enrolled in, from ledger state."""
    ledger = get_node(request).ledger
    out = []
    enrolled = enrolments_of(ledger.state, ledger.store.state_keys, member, 10_000)
    for study_id, entry in enrolled.items():
        study = study_of(ledger.state, study_id)
        if study is None:
            continue
        out.append(
            {
                "id": study_id,
                "title": study["title"],
                "registry_id": study["registry_id"],
                "version": study["version"],
                "consented": entry["consented_version"],
                "status": entry["status"],
                "site": entry["site"],
                "locked": study["locked"] is not None,
            }
        )
    return out


@router.get("/me/research", response_class=HTMLResponse)
def my_research(request: Request) -> HTMLResponse:
    claims, caller = _patient(request)
    trials = request.app.state.trials
    held = request.app.state.health.custodial_key(claims.member) is not None
    return page(
        request,
        "research.html",
        invitations=trials.invitations(caller),
        studies=_my_studies(request, claims.member),
        held=held,
    )


@router.post("/me/research/invitations/{invitation}")
async def answer_invitation(request: Request, invitation: str) -> Response:
    _, caller = _patient(request)
    form = await form_of(request)
    answer = (form.get("answer") or [""])[0]
    await run_in_threadpool(request.app.state.trials.respond, caller, invitation, answer)
    return RedirectResponse("/me/research", status_code=303)


@router.post("/me/research/{study}/{method}")
async def research_step(request: Request, study: str, method: str) -> Response:
    """Consent or withdraw with the key this node holds for the patient (others sign in the
    browser: see consent.js)."""
    _, caller = _patient(request)
    if method not in {"consent", "withdraw"}:
        raise NotFound("no such step", code="NOT_FOUND")
    await run_in_threadpool(request.app.state.trials.participant, caller, method, study, None)
    return RedirectResponse("/me/research", status_code=303)


# -- remote monitoring and visits ------------------------------------------------------------

VITAL_NAMES = {
    "8867-4": ("Heart rate", "/min"),
    "59408-5": ("SpO2", "%"),
    "9279-1": ("Respiratory rate", "/min"),
    "8310-5": ("Temperature", "°C"),
    "2339-0": ("Glucose", "mg/dL"),
    "29463-7": ("Weight", "kg"),
    "85354-9": ("Systolic pressure", "mmHg"),
}


def _vitals_page(request: Request, caller: Caller, patient: str, template: str) -> HTMLResponse:
    series = request.app.state.monitoring.readings.series(caller, patient)
    charts: dict[str, dict[str, Any]] = {}
    for r in series["readings"]:
        name, unit = VITAL_NAMES[r["code"]]
        value = r["value"][0] if isinstance(r["value"], list) else r["value"]
        empty = {"name": name, "unit": unit, "points": [], "alerts": []}
        chart = charts.setdefault(r["code"], empty)
        chart["points"].append([r["time"], value])
    for alert in series["alerts"]:
        code = "85354-9" if alert.get("code") in {"8480-6", "8462-4"} else alert.get("code")
        if code in charts:
            charts[code]["alerts"].append([alert["at"], alert["value"]])
    data = orjson.dumps(list(charts.values())).decode().replace("<", "\\u003c")
    return page(
        request,
        template,
        patient=patient,
        charts=list(charts.values()),
        charts_json=data,
        alerts=list(reversed(series["alerts"])),
        count=len(series["readings"]),
    )


@router.get("/me/vitals", response_class=HTMLResponse)
async def my_vitals(request: Request) -> HTMLResponse:
    claims, caller = _patient(request)
    return await run_in_threadpool(_vitals_page, request, caller, claims.member, "vitals.html")


def _care_team(request: Request) -> Caller:
    caller = caller_of(session(request))
    if caller is None or not caller.roles & {"clinician", "nurse"}:
        raise Forbidden("sign in as a clinician or nurse", code="NOT_AUTHORISED")
    return caller


@router.get("/alerts", response_class=HTMLResponse)
def alert_inbox(request: Request) -> HTMLResponse:
    caller = _care_team(request)
    items = request.app.state.monitoring.readings.inbox(caller)
    return page(request, "alerts.html", alerts=items, names=VITAL_NAMES)


@router.post("/alerts/{alert_id}/ack")
async def acknowledge_alert(request: Request, alert_id: str) -> Response:
    caller = _care_team(request)
    args = {"alert": alert_id}
    await run_in_threadpool(request.app.state.monitoring.act, caller, "acknowledge", args)
    return RedirectResponse("/alerts", status_code=303)


@router.get("/alerts/patients/{patient}", response_class=HTMLResponse)
async def patient_vitals(request: Request, patient: str) -> HTMLResponse:
    caller = _care_team(request)
    return await run_in_threadpool(_vitals_page, request, caller, patient, "vitals.html")


@router.get("/visits", response_class=HTMLResponse)
def my_visits(request: Request) -> HTMLResponse:
    caller = caller_of(session(request))
    if caller is None:
        raise Forbidden("sign in to see your visits", code="NOT_AUTHORISED")
    visits = request.app.state.visits.mine(caller)
    held = "patient" in caller.roles and (
        request.app.state.health.custodial_key(caller.member) is not None
    )
    now = int(node_clock(request).time() * 1000)
    return page(request, "visits.html", visits=visits, held=held, now=now)


@router.post("/visits/{visit_id}/{step}", response_class=HTMLResponse)
async def visit_step(request: Request, visit_id: str, step: str) -> Response:
    caller = caller_of(session(request))
    if caller is None:
        raise Forbidden("sign in first", code="NOT_AUTHORISED")
    service = request.app.state.visits
    form = await form_of(request)
    if step == "consent":
        recording = (form.get("recording") or [""])[0] == "yes"
        await run_in_threadpool(service.consent, caller, visit_id, recording, None)
    elif step == "join":
        joined = await run_in_threadpool(service.join, caller, visit_id)
        return page(request, "joined.html", link=joined["link"], visit=visit_id)
    elif step in {"start", "cancel"}:
        await run_in_threadpool(service.step, caller, visit_id, step)
    elif step == "end":
        note = (form.get("note") or [""])[0]
        await run_in_threadpool(service.end, caller, visit_id, note)
    else:
        raise NotFound("no such step", code="NOT_FOUND")
    return RedirectResponse("/visits", status_code=303)


def _supply_member(request: Request) -> Caller:
    caller = caller_of(session(request))
    if caller is None or not caller.roles & SUPPLY_ROLES:
        raise Forbidden("sign in with a supply-chain member's key", code="NOT_AUTHORISED")
    return caller


@router.get("/recalls", response_class=HTMLResponse)
def recalls(request: Request) -> HTMLResponse:
    caller = _supply_member(request)
    node = get_node(request)
    service: SupplyService = request.app.state.supply
    items = []
    for entry in recall_entries(node.ledger.state, node.ledger.store.state_keys, 1000):
        items.append(service.recall(caller, entry["id"]))
    items.sort(key=lambda r: r["height"], reverse=True)
    return page(request, "recalls.html", recalls=items)


@router.post("/recalls")
async def start_recall(request: Request) -> Response:
    caller = _supply_member(request)
    form = await form_of(request)
    gtin = (form.get("gtin") or [""])[0].strip()
    lots = [x.strip() for x in (form.get("lots") or [""])[0].split(",") if x.strip()]
    reason = (form.get("reason") or [""])[0].strip()
    service: SupplyService = request.app.state.supply
    try:
        await run_in_threadpool(
            service.act, caller, "recall", {"gtin": gtin, "lots": lots, "reason": reason}
        )
    except CareLedgerError as exc:
        return page(request, "recalls.html", recalls=[], error=exc)
    return RedirectResponse("/recalls", status_code=303)


# -- clinician: a patient's merged history, break-glass -----------------------------------

CARE_ROLES = BREAK_GLASS_ROLES  # the clinician's page: who may break the glass


@router.get("/clinician", response_class=HTMLResponse)
async def clinician(
    request: Request,
    patient: Annotated[str, Query(max_length=64)] = "",
    emergency: Annotated[bool, Query()] = False,
    find: Annotated[str, Query(max_length=80)] = "",
) -> HTMLResponse:
    claims = session(request)
    caller = caller_of(claims)
    if caller is None or not caller.roles & CARE_ROLES:
        raise Forbidden("sign in with a clinician's or nurse's key", code="NOT_AUTHORISED")
    patient = patient.strip()
    waiting = _awaiting_cosignature(request, caller)
    if patient and member_of(get_node(request).ledger.state, patient) is None:
        return page(request, "clinician.html", patient=patient, unknown=True)
    if not patient:
        found = await run_in_threadpool(_find_patients, request, caller, find.strip())
        return page(
            request,
            "clinician.html",
            find=find.strip(),
            found=found,
            patient="",
            consented=_consented(request, caller),
            to_confirm=[w for w in waiting if w["member"] != caller.member],
            glass_on_ours=_glass_on_our_patients(request, caller),
        )
    purpose = "ETREAT" if emergency else "TREAT"
    records = request.app.state.health
    try:
        found, missing = await run_in_threadpool(
            records.everything_everywhere, caller, patient, purpose=purpose
        )
    except CareLedgerError as exc:
        mine = [w for w in waiting if w["member"] == caller.member and w["patient"] == patient]
        return page(
            request,
            "clinician.html",
            patient=patient,
            refused=exc,
            emergency=emergency,
            pending=mine[0] if mine else None,
        )
    rows = _timeline(found)
    apps: AppsService = request.app.state.services.apps
    launch_apps = [a for a in apps.list() if a.get("launch_uri")]
    return page(
        request,
        "clinician.html",
        patient=patient,
        rows=rows,
        missing=missing,
        emergency=emergency,
        launch_apps=[a for a in launch_apps if a["status"] == "active"],
    )


def _find_patients(request: Request, caller: Caller, text: str) -> list[dict[str, str]] | None:
    """Patients of the caller's organisation (and those who consented to it) by name, as a
    FHIR ``Patient?name=`` search: the blind index finds them, and only the patients shown
    are read (and logged). None when nothing was asked."""
    if not text:
        return None
    from datetime import UTC, datetime

    from careledger.fhir.search import parse_search
    from careledger.health.search import search_org

    try:
        request_ = parse_search("Patient", [("name", text), ("_count", "20")])
        now = datetime.fromtimestamp(node_clock(request).time(), UTC)
        result = search_org(request.app.state.health, caller, request_, purpose="TREAT",
                            base_url="", now=now)  # fmt: skip
    except FhirError:
        return []  # nothing searchable in it: nobody found
    shown = []
    for stored in result.page:
        names = stored.resource.get("name") or [{}]
        first = names[0]
        words = " ".join([*first.get("given", []), first.get("family", "")]).strip()
        shown.append({"id": stored.record_id, "name": words or first.get("text", "(no name)"),
                      "born": str(stored.resource.get("birthDate", ""))})  # fmt: skip
    return shown


def _break_glass_entries(request: Request) -> list[Mapping[str, Any]]:
    ledger = get_node(request).ledger
    return break_glass_entries(ledger.state, ledger.store.state_keys, 100_000)


def _awaiting_cosignature(request: Request, caller: Caller) -> list[Mapping[str, Any]]:
    """Break-glass requests by the caller's colleagues (or the caller) waiting for a co-signer."""
    return awaiting_cosignature(
        _break_glass_entries(request), org=caller.org, now=int(node_clock(request).time() * 1000)
    )


def _glass_on_our_patients(request: Request, caller: Caller) -> list[Mapping[str, Any]]:
    """Emergency accesses opened in the last 7 days to the caller's organisation's patients,
    by anyone (r2 names the custodian on every break-glass): its staff see them at once."""
    since = int(node_clock(request).time() * 1000) - 7 * 86_400_000
    return opened_for_custodian(_break_glass_entries(request), custodian=caller.org, since=since)


# -- keys made in the browser, registered by the patient's organisation ---------------------


@router.get("/keys/new", response_class=HTMLResponse)
def new_key(request: Request) -> HTMLResponse:
    """Make a key in this browser (WebCrypto Ed25519); the private half never leaves it."""
    return page(request, "newkey.html")


@router.get("/admin/patients", response_class=HTMLResponse)
def register_page(request: Request) -> HTMLResponse:
    _org_admin(request)
    return page(request, "register.html")


@router.post("/admin/patients", response_class=HTMLResponse)
async def register_patient(request: Request) -> HTMLResponse:
    """An administrator of this node's organisation registers a patient's own public key."""
    _org_admin(request)
    form = await form_of(request)
    public_key = (form.get("public_key") or [""])[0].strip()
    records = request.app.state.health
    try:
        pseudonym = await run_in_threadpool(records.register_patient, public_key or None)
    except CareLedgerError as exc:
        return page(request, "register.html", error=exc)
    return page(request, "register.html", registered=pseudonym)


def _org_admin(request: Request) -> Caller:
    caller = caller_of(session(request))
    node = get_node(request)
    if caller is None or "admin" not in caller.roles or caller.org != node.settings.org:
        raise Forbidden(
            "an administrator of this node's organisation registers patients", code="NOT_AUTHORISED"
        )
    return caller
