"""A trial's audit report: every claim with the proof a reviewer can re-check.

Built from a node's ledger alone: the registration's transaction and its inclusion proof
(verified here against the node's signed checkpoint), the protocol versions, each
participant's consent timeline (pseudonyms only), the data anchors and the lock root
recomputed from them, and the endpoint check of the reported results.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment

from careledger.contracts.trials import data_entries, participants_of, study_of
from careledger.core import merkle
from careledger.core.canonical import canonical_bytes
from careledger.errors import NotFound, ValidationError
from careledger.ledger.engine import Ledger

PROVED_CONSENTS = 1000  # consent transactions proved one by one; beyond, listed by id
LISTED_ANCHORS = 1000  # data anchors listed in the report (all of them make the root)


def _proof(ledger: Ledger, tx_id: str) -> dict[str, Any]:
    answer = ledger.tx_proof(tx_id)
    leaf = merkle.leaf_hash(canonical_bytes(answer["receipt"]))
    root = merkle.root_from_inclusion_proof(
        leaf,
        answer["leaf_index"],
        answer["proof"]["tree_size"],
        [bytes.fromhex(p) for p in answer["proof"]["path"]],
    )
    return {**answer, "verified": root.hex() == answer["proof"]["root"]}


def audit(ledger: Ledger, study: str) -> dict[str, Any]:
    entry = study_of(ledger.state, study)
    if entry is None:
        raise NotFound(f"no study {study!r} on this ledger", code="UNKNOWN_STUDY")
    participants = []
    proved = 0
    for member, record in participants_of(ledger.state, ledger.store.state_keys, study, 100_000):
        consents = []
        for consent in record["consents"]:
            tx = consent.get("tx")
            if tx and proved < PROVED_CONSENTS:
                proof = _proof(ledger, tx)
                consent = {
                    **consent,
                    "leaf_index": proof["leaf_index"],
                    "verified": proof["verified"],
                }
                proved += 1
            consents.append(consent)
        participants.append({"member": member, **record, "consents": consents})
    entries = data_entries(ledger.state, ledger.store.state_keys, study, 1_000_000)
    entries.sort(key=lambda e: e["index"])
    leaves = [merkle.leaf_hash(bytes.fromhex(e["hash"])) for e in entries]
    recomputed = merkle.root_from_leaf_hashes(leaves).hex() if leaves else None
    locked: Any = entry.get("locked")
    report = entry.get("report")
    return {
        "study": entry,
        "registration_proof": _proof(ledger, entry["registered"]["tx"]),
        "checkpoint": ledger.checkpoint(),
        "participants": participants,
        "entries": len(entries),
        "anchors": entries[:LISTED_ANCHORS],
        "recomputed_root": recomputed,
        "lock_matches": bool(locked)
        and locked["root"] == (recomputed or merkle.empty_root().hex()),
        "first_enrolment_after_registration": all(
            p["enrolled"] >= entry["registered"]["time"] for p in participants
        ),
        "report": report,
    }


def render(result: dict[str, Any]) -> str:
    template = resources.files("careledger.trials").joinpath("templates/audit.html")
    env = Environment(autoescape=True)
    return env.from_string(template.read_text(encoding="utf-8")).render(s=result["study"], a=result)


BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def to_pdf(html: Path, pdf: Path, *, timeout: float = 120.0) -> None:
    """Print the HTML report to PDF with a headless Chromium (Debian's, as the portal tests
    use): the same page a reviewer sees, with no second layout to keep in step."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        raise ValidationError(
            "no Chromium to print the PDF with (scripts/install-system-deps.sh installs it)",
            code="PDF_UNAVAILABLE",
        )
    with tempfile.TemporaryDirectory(prefix="careledger-pdf-") as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--no-pdf-header-footer",
                f"--print-to-pdf={pdf}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0 or not pdf.exists() or pdf.stat().st_size == 0:
        raise ValidationError("Chromium could not print the report", code="PDF_FAILED")
