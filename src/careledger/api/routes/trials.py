"""Clinical trials API: studies, enrolment, e-consent, CRF capture, visits, recruitment."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of
from careledger.api.replies import json_object as _object
from careledger.api.replies import json_response as _json
from careledger.callers.caller import Caller, require_scope
from careledger.errors import ValidationError
from careledger.trials.service import TrialsService

router = APIRouter(prefix="/v1/trials", tags=["trials"])
StudyId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
VisitId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
MemberId = Annotated[str, Path(min_length=1, max_length=64)]
Hex64 = Annotated[str, Path(min_length=64, max_length=64, pattern=r"^[0-9a-f]+$")]
STUDY_TYPE = "ResearchStudy"  # the SMART resource type of the trials API


def _service(request: Request) -> TrialsService:
    service: TrialsService = request.app.state.trials
    return service


def _caller(claims: Any, action: str | None = None) -> Caller:
    caller = caller_of(claims)
    if action is not None:
        require_scope(caller, STUDY_TYPE, action, None)
    return caller


@router.post("", status_code=201, summary="Register a study (registration, ctgov or researchStudy)")
async def register(request: Request, claims: MemberDep, body: Annotated[Any, Body()]) -> Response:
    service = _service(request)
    done = await run_in_threadpool(
        service.register, _caller(claims, "write"), _object(body, "a registration")
    )
    return _json(done, 201)


@router.get("/{study}", summary="A study as registered on the ledger")
def study(request: Request, claims: MemberDep, study: StudyId) -> Response:
    _caller(claims, "read")
    return _json(_service(request).study(study))


@router.post("/{study}/participants", status_code=201, summary="Enrol a participant (investigator)")
async def enrol(
    request: Request, claims: MemberDep, study: StudyId, body: Annotated[Any, Body()]
) -> Response:
    participant = _object(body, "{participant}").get("participant")
    args = {"study": study, "participant": participant}
    receipt = await run_in_threadpool(
        _service(request).act, _caller(claims, "write"), "enrol", args
    )
    return _json({"receipt": receipt}, 201)


@router.post(
    "/{study}/me/{method}",
    summary="Consent to the current protocol version, or withdraw (the participant)",
)
async def participant(
    request: Request,
    claims: MemberDep,
    study: StudyId,
    method: Annotated[str, Path(pattern=r"^(consent|withdraw)$")],
    body: Annotated[Any, Body()] = None,
) -> Response:
    caller = _caller(claims)
    require_scope(caller, "Consent", "write", caller.member)
    envelope = _object(body or {}, "{envelope?}").get("envelope")
    receipt = await run_in_threadpool(
        _service(request).participant, caller, method, study, envelope
    )
    return _json({"receipt": receipt})


@router.post(
    "/{study}/participants/{participant}/visits/{visit}/data",
    status_code=201,
    summary="Capture CRF entries (QuestionnaireResponse or Observation) for a visit",
)
async def capture(
    request: Request,
    claims: MemberDep,
    study: StudyId,
    participant: MemberId,
    visit: VisitId,
    body: Annotated[Any, Body()],
) -> Response:
    resources = _object(body, "{resources: [...]}").get("resources")
    if not isinstance(resources, list):
        raise ValidationError("resources is a list of FHIR resources", code="BAD_CRF")
    done = await run_in_threadpool(
        _service(request).capture, _caller(claims, "write"), study, participant, visit, resources
    )
    return _json(done, 201)


@router.post(
    "/{study}/participants/{participant}/visits/{visit}/attest",
    summary="Attest a completed visit; the participant is paid from the study escrow",
)
async def attest(
    request: Request, claims: MemberDep, study: StudyId, participant: MemberId, visit: VisitId
) -> Response:
    done = await run_in_threadpool(
        _service(request).attest, _caller(claims, "write"), study, participant, visit
    )
    return _json(done)


@router.get("/{study}/interested", summary="The site's patients who answered an invitation yes")
def interested(request: Request, claims: MemberDep, study: StudyId) -> Response:
    return _json({"items": _service(request).interested(_caller(claims, "read"), study)})


@router.post(
    "/{study}/invitations",
    summary="Invite this site's opted-in patients who meet the study's eligibility (site staff)",
)
async def invite(request: Request, claims: MemberDep, study: StudyId) -> Response:
    responder = request.app.state.recruitment
    done = await run_in_threadpool(
        _service(request).invite, _caller(claims, "write"), study, responder
    )
    return _json(done)


@router.post("/{study}/{action}", summary="Amend, lock or report results (the sponsor)")
async def sponsor_step(
    request: Request,
    claims: MemberDep,
    study: StudyId,
    action: Annotated[str, Path(pattern=r"^(amend|lock|report)$")],
    body: Annotated[Any, Body()] = None,
) -> Response:
    args = {**_object(body or {}, "an object"), "study": study}
    service = _service(request)
    receipt = await run_in_threadpool(service.act, _caller(claims, "write"), action, args)
    return _json({"receipt": receipt, "study": service.study(study)})


feasibility_router = APIRouter(prefix="/v1/recruitment", tags=["trials"])


@feasibility_router.post(
    "/queries", status_code=202, summary="Ask the sites for eligible counts (the sponsor)"
)
async def ask(request: Request, claims: MemberDep, body: Annotated[Any, Body()]) -> Response:
    done = await run_in_threadpool(
        _service(request).feasibility, _caller(claims, "write"), _object(body, "a query")
    )
    return _json(done, 202)


@feasibility_router.get(
    "/queries/{query}", summary="A query's counts per site (noisy from r5; small ones withheld)"
)
def answers(request: Request, claims: MemberDep, query: Hex64) -> Response:
    return _json(_service(request).query(_caller(claims, "read"), query))


@feasibility_router.get(
    "/budget", summary="What each sponsor has spent of its privacy budget here (site admin)"
)
def budget(request: Request, claims: MemberDep) -> Response:
    return _json({"items": _service(request).budgets(_caller(claims, "read"))})


@feasibility_router.put(
    "/budget/{sponsor}", summary="Set a sponsor's privacy budget at this site (site admin)"
)
async def set_budget(
    request: Request,
    claims: MemberDep,
    sponsor: Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")],
    body: Annotated[Any, Body()],
) -> Response:
    epsilon = _object(body, "{epsilon}").get("epsilon")
    done = await run_in_threadpool(
        _service(request).set_budget, _caller(claims, "write"), sponsor, epsilon
    )
    return _json(done)


@feasibility_router.get("/invitations", summary="Study invitations (the patient's own)")
def invitations(request: Request, claims: MemberDep) -> Response:
    return _json({"items": _service(request).invitations(_caller(claims))})


@feasibility_router.post("/invitations/{invitation}", summary="Answer an invitation")
def respond(
    request: Request,
    claims: MemberDep,
    invitation: Annotated[str, Path(min_length=1, max_length=64)],
    body: Annotated[Any, Body()],
) -> Response:
    answer = _object(body, "{answer}").get("answer")
    if not isinstance(answer, str):
        raise ValidationError("answer is interested or declined", code="BAD_ANSWER")
    return _json(_service(request).respond(_caller(claims), invitation, answer))


payments_router = APIRouter(prefix="/v1/payments", tags=["trials"])


@payments_router.post(
    "/{method}",
    summary="Sponsor steps: deposit, open_study, fund, pay_data_use (a research grant of data)",
)
async def pay(
    request: Request,
    claims: MemberDep,
    method: Annotated[str, Path(pattern=r"^(deposit|open_study|fund|pay_data_use)$")],
    body: Annotated[Any, Body()],
) -> Response:
    args = _object(body, "the step's arguments")
    receipt = await run_in_threadpool(_service(request).pay, _caller(claims, "write"), method, args)
    return _json({"receipt": receipt, "balance": _service(request).balance(_caller(claims))})


@payments_router.get("/balance", summary="The caller's credit balance")
def balance(request: Request, claims: MemberDep) -> Response:
    return _json(_service(request).balance(_caller(claims)))
