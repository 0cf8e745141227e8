"""CareLedger: a permissioned, provable ledger for health data."""

from careledger.errors import (
    CareLedgerError,
    Conflict,
    Forbidden,
    NotFound,
    Pushback,
    Rejected,
    Unauthorized,
    ValidationError,
    VerificationError,
)

__version__ = "0.1.0"

__all__ = [
    "CareLedgerError",
    "Conflict",
    "Forbidden",
    "NotFound",
    "Pushback",
    "Rejected",
    "Unauthorized",
    "ValidationError",
    "VerificationError",
    "__version__",
]
