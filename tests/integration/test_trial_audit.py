"""`careledger trial audit`: a trial run on a real node, audited from its ledger alone."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import orjson
import pytest

from careledger.config import Settings
from careledger.keyfile import generate_keypair, read_key_file
from careledger.node import Node
from tests.support.nodes import demo_node, run_cli

pytestmark = pytest.mark.integration


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_audit_report_proves_registration_consents_lock_and_flags_switching(
    tmp_path: Path,
) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    keys = data / "keys"

    def key(member: str):
        return read_key_file(keys / f"{member}.key")[1]

    investigator = generate_keypair()
    node = Node(Settings.load(data))
    node.start()
    try:

        def run(signer, contract: str, method: str, args: dict) -> None:
            (receipt,) = node.execute([(contract, method, args)], keypair=signer)
            assert receipt["result"] == "accepted", (method, receipt)

        inv = {"id": "inv-x", "name": "Investigator", "roles": ["investigator"]}
        run(
            key("st-mary-admin"),
            "identity",
            "add_member",
            {**inv, "public_key": investigator.public_b64},
        )
        registration = {
            "study": "LIPID-1",
            "registry_id": "NCT99999999",
            "title": "Lipids",
            "protocol_hash": h("v1"),
            "sap_hash": h("sap"),
            "primary": ["LDL change"],
            "secondary": [],
            "eligibility": {"age": [18, 80]},
            "visits": [{"id": "baseline", "day": 0, "window": 3}],
            "sites": ["st-mary"],
        }
        run(key("trialco-admin"), "trials", "register", registration)
        run(investigator, "trials", "enrol", {"study": "LIPID-1", "participant": "patient-0001"})
        run(key("patient-0001"), "trials", "consent", {"study": "LIPID-1", "version": 1})
        for text in ("a", "b", "c"):
            capture = {"study": "LIPID-1", "participant": "patient-0001", "visit": "baseline"}
            run(investigator, "trials", "capture", {**capture, "hash": h(text)})
        run(key("trialco-admin"), "trials", "lock", {"study": "LIPID-1"})
        report = {"study": "LIPID-1", "primary": ["HDL change"], "secondary": []}
        run(key("trialco-admin"), "trials", "report", report)
    finally:
        node.stop()
    out = tmp_path / "audit.html"
    result = run_cli("trial", "audit", str(data), "LIPID-1", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    assert summary == {
        "study": "LIPID-1",
        "report": str(out),
        "registration_verified": True,
        "lock_matches": True,
        "outcome_switching": True,
    }
    html = out.read_text()
    assert "NCT99999999" in html and "Outcome switching" in html and "patient-0001" in html
    assert html.count("proof verified") == 1 and h("b") in html  # the consent, an anchor
    if shutil.which("chromium"):  # the PDF is the same page printed by headless Chromium
        pdf = tmp_path / "audit.pdf"
        printed = run_cli(
            "trial", "audit", str(data), "LIPID-1", "--out", str(out), "--pdf", str(pdf)
        )
        assert printed.returncode == 0, printed.stderr
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
    missing = run_cli("trial", "audit", str(data), "NOPE", "--out", str(out))
    assert missing.returncode == 2 and "UNKNOWN_STUDY" in missing.stderr
