"""The one error tree of CareLedger.

    CareLedgerError
     ├── ValidationError      input is malformed (bad JSON, wrong types, bad encoding)
     ├── Rejected(code)       well-formed but refused by admission or a contract rule
     ├── VerificationError    a signature, proof, checkpoint or stored byte does not verify
     ├── NotFound             the thing asked for does not exist
     ├── Gone                 it existed and was erased (HTTP 410)
     ├── Forbidden            the caller is known but not allowed
     ├── Unauthorized         the caller is not authenticated
     ├── Conflict             the request contradicts current state (e.g. a stale nonce)
     ├── Pushback             the node is overloaded; try again later (HTTP 503)
     ├── RateLimited          one member writes faster than its budget (HTTP 429, Retry-After)
     └── StorageError         the store is unusable or inconsistent
          └── UnknownRuleset  the chain scheduled rules this node's software does not have

Every error carries a stable, upper-snake-case ``code`` that users can search for in the docs,
so HTTP, CLI and SDK report the same thing in the same words. Messages never carry PHI or
secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class CareLedgerError(Exception):
    code: str = "CARELEDGER_ERROR"
    http_status: int = 500

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ValidationError(CareLedgerError):
    code = "INVALID"
    http_status = 400


# HTTP status of the rejection codes that admission raises; contract rejections default to 422.
REJECTION_STATUS = {
    "TX_TOO_LARGE": 413,
    "WRONG_CHAIN": 400,
    "BAD_SIGNATURE": 401,
    "UNKNOWN_SIGNER": 403,
    "KEY_REVOKED": 403,
    "ORG_REMOVED": 403,
    "NOT_AUTHORISED": 403,
    "UNKNOWN_CONTRACT": 400,
    "UNKNOWN_METHOD": 400,
    "BAD_ARGS": 400,
}


class Rejected(CareLedgerError):
    """Refused by a rule. ``code`` is always given explicitly: it is the stable rejection code."""

    code = "REJECTED"
    http_status = 422

    def __init__(
        self, code: str, message: str = "", *, detail: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message or code, code=code)
        self.http_status = REJECTION_STATUS.get(code, 422)
        # Identifiers (never PHI) that say what was refused, e.g. which unit or event: a receipt
        # keeps only the code, so a dry run (``explain``) recovers these for alerts and errors.
        self.detail: dict[str, Any] = dict(detail or {})


class VerificationError(CareLedgerError):
    code = "VERIFICATION_FAILED"
    http_status = 422


class NotFound(CareLedgerError):
    code = "NOT_FOUND"
    http_status = 404


class Gone(CareLedgerError):
    """It existed and was erased (crypto-shredded): its proofs remain, its content does not."""

    code = "GONE"
    http_status = 410


class Forbidden(CareLedgerError):
    code = "FORBIDDEN"
    http_status = 403


class Unauthorized(CareLedgerError):
    code = "UNAUTHORIZED"
    http_status = 401


class Conflict(CareLedgerError):
    code = "CONFLICT"
    http_status = 409


class Pushback(CareLedgerError):
    code = "OVERLOADED"
    http_status = 503


class RateLimited(CareLedgerError):
    code = "RATE_LIMITED"
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageError(CareLedgerError):
    code = "STORAGE_ERROR"
    http_status = 500


class UnknownRuleset(StorageError):
    """The chain runs (or has scheduled) a ruleset this software does not know: the node stops
    at its activation height rather than execute blocks under the wrong rules."""

    code = "UNKNOWN_RULESET"
    http_status = 503


class BatchRefused(CareLedgerError):
    """Admission refused one or more envelopes of a request, so none of them was ordered.

    ``errors`` lists ``{"index", "code", "status", "detail"}`` per refused envelope. A request of
    one envelope takes that envelope's code and status.
    """

    code = "BATCH_REFUSED"
    http_status = 400

    def __init__(self, errors: list[dict[str, object]], *, total: int, count: int) -> None:
        first = errors[0]
        if count == 1:
            super().__init__(str(first["detail"]), code=str(first["code"]))
            self.http_status = int(str(first["status"]))
        else:
            super().__init__(f"{total} of {count} envelopes refused; none was ordered")
            statuses = {int(str(e["status"])) for e in errors}
            self.http_status = statuses.pop() if len(statuses) == 1 else 400
        self.errors = errors
        self.total = total
