"""Patient-facing ledger views: who saw my data (and its proof), and shredding a record."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of as _caller
from careledger.health.access_proof import build_access_proof
from careledger.health.service import HealthRecords
from careledger.jsonio import dumps

router = APIRouter(prefix="/v1", tags=["patients"])
ID = r"^[A-Za-z0-9\-.]{1,64}$"


@router.get("/patients/{patient}/access-log", summary="Who accessed a patient's data")
def access_log(
    request: Request, claims: MemberDep, patient: Annotated[str, Path(pattern=ID)]
) -> Response:
    records: HealthRecords = request.app.state.health
    caller = _caller(claims)
    entries = records.access_log(caller, patient)
    keys = records.key_history(caller, patient)
    body = {"patient": patient, "accesses": entries, "key_events": keys}
    return Response(dumps(body), media_type="application/json")


@router.get(
    "/patients/{patient}/access-log/proof",
    summary="Who accessed a patient's data, as a file that verifies offline",
)
def access_log_proof(
    request: Request, claims: MemberDep, patient: Annotated[str, Path(pattern=ID)]
) -> Response:
    """Every access event with its transaction, receipt and inclusion proof, and a checkpoint
    signed by the node (cosigned in a cluster): check it with ``careledger verify-access`` or
    /static/verify-access.html. The same readers as the access log."""
    records: HealthRecords = request.app.state.health
    proof = build_access_proof(records, _caller(claims), patient)
    return Response(
        dumps(proof),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="access-proof-{patient}.json"'},
    )


@router.post("/records/{record_id}/shred", summary="Shred a record (patient with a node-held key)")
def shred(
    request: Request, claims: MemberDep, record_id: Annotated[str, Path(pattern=ID)]
) -> Response:
    records: HealthRecords = request.app.state.health
    receipt = records.shred(_caller(claims), record_id)
    return Response(dumps({"record": record_id, "receipt": receipt}), media_type="application/json")
