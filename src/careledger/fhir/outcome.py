"""FHIR R4 OperationOutcome: the problems of a request, and the error that carries them.

An :class:`Issue` is one ``OperationOutcome.issue``; :func:`operation_outcome` renders a list of
them as a valid R4 OperationOutcome; :class:`FhirError` is the :class:`ValidationError` the FHIR
layer raises, so HTTP, CLI and SDK report a stable ``code`` and the issues together.

Diagnostics never echo resource VALUES (they may be PHI): only element paths, FHIR types and the
allowed codes of a value set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from careledger.errors import ValidationError

# http://hl7.org/fhir/R4/valueset-issue-severity.html
ISSUE_SEVERITIES = frozenset({"fatal", "error", "warning", "information"})

# http://hl7.org/fhir/R4/valueset-issue-type.html
ISSUE_TYPES = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)


@dataclass(frozen=True)
class Issue:
    """One ``OperationOutcome.issue``.

    ``severity`` is from IssueSeverity, ``code`` from IssueType, ``expression`` holds FHIRPath-like
    locations such as ``Patient.name[0].given[1]`` (empty when the problem is the whole body).
    """

    severity: str
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.severity not in ISSUE_SEVERITIES:
            raise ValueError(f"unknown OperationOutcome issue severity {self.severity!r}")
        if self.code not in ISSUE_TYPES:
            raise ValueError(f"unknown OperationOutcome issue type {self.code!r}")
        if isinstance(self.expression, str):  # a lone string would iterate as characters
            raise TypeError("Issue.expression must be a tuple of strings, not a string")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"severity": self.severity, "code": self.code}
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = list(self.expression)
        return out


ALL_OK = Issue("information", "informational", "All OK")


def operation_outcome(issues: Iterable[Issue]) -> dict[str, object]:
    """A valid R4 OperationOutcome (JSON object) listing ``issues``.

    OperationOutcome.issue is 1..*, so an empty list gives the conventional single
    ``information``/``informational`` "All OK" issue.
    """
    rendered = [issue.to_json() for issue in issues] or [ALL_OK.to_json()]
    return {"resourceType": "OperationOutcome", "issue": rendered}


class FhirError(ValidationError):
    """A FHIR request that cannot be accepted, with every problem found as an :class:`Issue`.

    ``code`` is ``FHIR_INVALID`` unless given; ``http_status`` is 400 unless given (a route may
    set 404, 409, 422... for the same issues). The message is built from the issues only, so it
    carries no resource values either.
    """

    code = "FHIR_INVALID"
    http_status = 400

    def __init__(
        self,
        issues: Iterable[Issue],
        *,
        code: str | None = None,
        http_status: int | None = None,
        message: str = "",
    ) -> None:
        self.issues: tuple[Issue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("FhirError needs at least one issue")
        super().__init__(message or _summary(self.issues), code=code)
        if http_status is not None:
            self.http_status = http_status

    def operation_outcome(self) -> dict[str, object]:
        return operation_outcome(self.issues)


def _summary(issues: tuple[Issue, ...]) -> str:
    first = issues[0]
    where = f"{first.expression[0]}: " if first.expression else ""
    more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
    return f"invalid FHIR resource: {where}{first.diagnostics}{more}"
