"""Loading FHIR Bundles (Synthea's transaction Bundles among them) into a node.

Entries are created in Bundle order through a ``Sink`` (the node's service in-process, or its
FHIR API over HTTP); every ``urn:uuid:`` reference to an entry already created is rewritten to
that resource's id on the node, so a Patient's Observations point at it. Each resource keeps
where it came from in ``meta.source`` (its entry's fullUrl) and is created only if no resource
has that source yet (a conditional create), so importing the same files again creates nothing.
Organization, Practitioner and the other types about no patient are the importing
organisation's own records (ruleset r10, more from r11). Entries of types the node does not hold
(a Subscription, an OperationOutcome) are counted as skipped; references to them stay as they
were, so a patient's record keeps a dangling ``urn:uuid:``, and an organisation's own record
that names one is refused (NO_PATIENT_DATA: what it names is unknown) and counted as failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

from careledger.errors import CareLedgerError, ValidationError
from careledger.fhir.types import ORG_ONLY_TYPES, RECORD_PATHS
from careledger.fhir.validate import SUPPORTED_TYPES

# Consent is imported through the consent contract, not as a record.
IMPORTABLE = SUPPORTED_TYPES - {"Consent"}


class Sink(Protocol):
    def create(
        self, resource: dict[str, Any], if_none_exist: str | None = None
    ) -> tuple[str, bool]:
        """Create the resource on the node unless ``if_none_exist`` (a search) finds it;
        (its id, whether it was created)."""


@dataclass
class ImportReport:
    created: Counter[str] = field(default_factory=Counter)
    existing: Counter[str] = field(default_factory=Counter)  # found by an earlier import
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (entry fullUrl, error code)
    patients: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "created": dict(self.created),
            "existing": dict(self.existing),
            "skipped": dict(self.skipped),
            "failed": [{"entry": e, "code": c} for e, c in self.failed],
            "patients": self.patients,
        }


def entry_rank(resource_type: str) -> int:
    """The order entries are written in: Patients, the organisation's records, the rest, and
    last the types whose patient is that of the records they refer to (a Provenance of an
    Observation, a stored Bundle), so those are known when they are."""
    if resource_type == "Patient":
        return 0
    if resource_type in ORG_ONLY_TYPES:
        return 1
    return 3 if resource_type in RECORD_PATHS or resource_type == "Bundle" else 2


def rewrite_references(node: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: rewrite_references(v, ids) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in ids:
            out["reference"] = ids[ref]
        return out
    if isinstance(node, list):
        return [rewrite_references(v, ids) for v in node]
    return node


def _condition(body: dict[str, Any], full_url: str) -> str | None:
    """Where the entry came from (``meta.source``: its fullUrl, unless it names one) and the
    search that finds it again, so that importing the same files twice creates nothing new."""
    meta = dict(body.get("meta") or {})
    source = meta.get("source")
    if not isinstance(source, str):
        if not full_url.startswith(("urn:uuid:", "http://", "https://")):
            return None
        source = full_url
        meta["source"] = source
        body["meta"] = meta
    condition = urlencode({"_source": source})
    subject = body.get("subject") or body.get("patient")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if (
        body.get("resourceType") != "Patient"
        and isinstance(ref, str)
        and ref.startswith("Patient/")
    ):
        condition += "&" + urlencode({"patient": ref})
    return condition


def bundle_entries(bundle: object) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValidationError("not a FHIR Bundle", code="NOT_A_BUNDLE")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise ValidationError("Bundle.entry must be a list", code="NOT_A_BUNDLE")
    out = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise ValidationError(f"Bundle.entry[{index}] has no resource", code="NOT_A_BUNDLE")
        out.append((str(entry.get("fullUrl") or f"entry[{index}]"), resource))
    return out


def import_bundles(
    bundles: Iterable[object],
    sink: Sink,
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    report = ImportReport()
    for bundle in bundles:
        ids: dict[str, str] = {}
        entries = bundle_entries(bundle)
        # Patients first, then the organisation's own records, so every other entry can point
        # at its patient's, its Organization's and its Practitioner's new ids.
        ordered = sorted(entries, key=lambda e: entry_rank(str(e[1].get("resourceType"))))
        for full_url, resource in ordered:
            kind = str(resource.get("resourceType"))
            if kind not in IMPORTABLE:
                report.skipped[kind] += 1
            else:
                body = rewrite_references(resource, ids)
                body.pop("id", None)
                condition = _condition(body, full_url)
                try:
                    new_id, made = sink.create(body, condition)
                except CareLedgerError as exc:
                    if exc.code == "UNSUPPORTED_TYPE":  # not held under the chain's ruleset
                        report.skipped[kind] += 1
                    else:
                        report.failed.append((full_url, exc.code))
                else:
                    ids[full_url] = f"{kind}/{new_id}"
                    (report.created if made else report.existing)[kind] += 1
                    if kind == "Patient":
                        report.patients.append(new_id)
            if progress is not None:
                progress(1)
    return report
