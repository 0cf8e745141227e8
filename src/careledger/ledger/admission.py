"""Admission of a batch of envelopes: every one passes, or none is ordered."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from careledger.core.tx import Transaction
from careledger.errors import BatchRefused, CareLedgerError, Rejected
from careledger.ledger.engine import Ledger
from careledger.ledger.sigcheck import verify_signatures

MAX_REPORTED_ERRORS = 100


def _error(index: int, exc: CareLedgerError) -> dict[str, Any]:
    return {"index": index, "code": exc.code, "status": exc.http_status, "detail": exc.message}


def admit_all(
    ledger: Ledger,
    objs: Sequence[object],
    sizes: Sequence[int | None],
    *,
    pool: Executor | None = None,
    workers: int = 2,
) -> list[Transaction]:
    errors: list[dict[str, Any]] = []
    decoded: list[tuple[int, Transaction]] = []
    for index, (obj, size) in enumerate(zip(objs, sizes, strict=True)):
        try:
            decoded.append((index, ledger.decode(obj, size=size)))
        except CareLedgerError as exc:
            errors.append(_error(index, exc))
    checks = verify_signatures([tx for _, tx in decoded], pool, workers)
    return _admit(ledger, decoded, checks, errors, len(objs))


def admit_signed(
    ledger: Ledger, signed: Sequence[tuple[dict[str, Any], bytes]]
) -> list[Transaction]:
    """:func:`admit_all` for envelopes this process has just signed, as ``sign_envelope``
    returned them (envelope, canonical body), with the same checks and refusals but two:

    the body is not encoded again (its canonical bytes come with it), and the signature is not
    verified again: it was made here, in this call path, by a ``KeyPair`` (which refuses a
    public key that is not its seed's), over those very bytes. Never pass anything received
    from outside the process: that goes through :func:`admit_all`.
    """
    errors: list[dict[str, Any]] = []
    decoded: list[tuple[int, Transaction]] = []
    for index, (envelope, body) in enumerate(signed):
        try:
            decoded.append((index, ledger.decode(envelope, canonical_body=body)))
        except CareLedgerError as exc:
            errors.append(_error(index, exc))
    return _admit(ledger, decoded, [True] * len(decoded), errors, len(signed))


def _admit(
    ledger: Ledger,
    decoded: Sequence[tuple[int, Transaction]],
    checks: Sequence[bool],
    errors: list[dict[str, Any]],
    count: int,
) -> list[Transaction]:
    admitted: list[Transaction] = []
    for (index, tx), ok in zip(decoded, checks, strict=True):
        try:
            if not ok:
                raise Rejected("BAD_SIGNATURE", "the signature does not verify for body.signer")
            admitted.append(ledger.admit_decoded(tx, signature_checked=True))
        except CareLedgerError as exc:
            errors.append(_error(index, exc))
    if errors:
        ledger.release(admitted)
        errors.sort(key=lambda e: e["index"])
        raise BatchRefused(errors[:MAX_REPORTED_ERRORS], total=len(errors), count=count)
    return admitted
