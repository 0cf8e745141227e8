"""The patient's own proof (issue 19) over real HTTP: the patient downloads "who saw my data" as
a file, `careledger verify-access` checks it offline against the node's key and refuses a
changed byte; a clinician outside oversight is refused the file; and in Chromium the portal
offers the download and the browser checker says "verified", then refuses a tampered file."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from careledger.health.access_proof import verify_access_proof
from tests.support.nodes import Server, demo_node, login, run_cli, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("access-proof") / "node"
    demo_node(data, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def patient(server: Server) -> tuple[str, Path]:
    """A demo patient with records, read once by a clinician of the custodian."""
    key = sorted((server.data_dir / "keys" / "patients").glob("*.key"))[0]
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as clinician:
        read = clinician.get(f"/fhir/Observation?patient={key.stem}&_count=3")
        assert read.status_code == 200, read.text
    return key.stem, key


@pytest.fixture(scope="module")
def node_key(server: Server) -> str:
    return httpx.get(f"{server.url}/v1/checkpoint/keys").text.strip()


@pytest.fixture(scope="module")
def proof_file(
    server: Server, patient: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    pid, key = patient
    with login(server, key) as own:
        answer = own.get(f"/v1/patients/{pid}/access-log/proof")
        log = own.get(f"/v1/patients/{pid}/access-log").json()["accesses"]
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    disposition = answer.headers["content-disposition"]
    assert disposition == f'attachment; filename="access-proof-{pid}.json"'
    doc = answer.json()
    assert doc["patient"] == pid and doc["format"] == "careledger-access-proof"
    assert [a["tx"] for a in doc["accesses"]] == [e["tx"] for e in log]
    path = tmp_path_factory.mktemp("proof") / f"access-proof-{pid}.json"
    path.write_bytes(answer.content)
    return path


def tampered(original: Path, to: Path, change: Any) -> Path:
    doc = json.loads(original.read_text())
    change(doc)
    to.write_text(json.dumps(doc))
    return to


def test_the_patient_downloads_the_proof_and_the_cli_verifies_it(
    proof_file: Path, node_key: str, tmp_path: Path
) -> None:
    doc = json.loads(proof_file.read_text())
    checked = run_cli("verify-access", str(proof_file), "--node-key", node_key, "--json")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["ok"] is True and report["signers"] == ["st-mary-node"]
    assert len(report["accesses"]) == len(doc["accesses"]) > 0
    assert ("dr-ana-silva", "read") in {(a["accessor"], a["action"]) for a in report["accesses"]}
    words = run_cli("verify-access", str(proof_file), "--node-key", node_key)
    assert words.returncode == 0, words.stderr
    assert (
        f"verified: {len(doc['accesses'])} accesses, checkpoint of size {doc['tree_size']} "
        "signed by st-mary-node" in words.stdout
    )
    assert "dr-ana-silva (st-mary)" in words.stdout
    # without naming the node, or with more signatures than a lone node gives: not accepted
    for extra in ([], ["--node-key", node_key, "--min-signatures", "2"]):
        untrusted = run_cli("verify-access", str(proof_file), *extra)
        assert untrusted.returncode == 1 and "ACCESS_PROOF_UNTRUSTED" in untrusted.stderr

    def entry(doc: dict[str, Any]) -> None:
        doc["accesses"][-1]["entry"]["accessor"] = "dr-ben-okafor"

    def envelope(doc: dict[str, Any]) -> None:
        doc["accesses"][0]["envelope"]["body"]["args"]["purpose"] = "HRESCH"

    def path(doc: dict[str, Any]) -> None:
        doc["accesses"][0]["proof"]["path"][0] = "00" * 32

    for change in (entry, envelope, path):
        bad = tampered(proof_file, tmp_path / f"{change.__name__}.json", change)
        refused = run_cli("verify-access", str(bad), "--node-key", node_key)
        assert refused.returncode == 1 and "ACCESS_PROOF_MISMATCH" in refused.stderr, change
        assert "Traceback" not in refused.stderr


def test_unreadable_files_are_named(tmp_path: Path, node_key: str) -> None:
    (tmp_path / "not.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"resourceType": "Bundle"}')
    for name, code in (("missing.json", "BAD_FILE"), ("not.json", "BAD_JSON"),
                       ("other.json", "BAD_FILE")):  # fmt: skip
        answer = run_cli("verify-access", str(tmp_path / name), "--node-key", node_key)
        assert answer.returncode == 2 and f"error {code}" in answer.stderr, answer.stderr
        assert name in answer.stderr and "Traceback" not in answer.stderr


def test_only_the_patient_and_oversight_get_the_file(
    server: Server, patient: tuple[str, Path], node_key: str
) -> None:
    pid, _ = patient
    url = f"/v1/patients/{pid}/access-log/proof"
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as clinician:
        refused = clinician.get(url)
    assert refused.status_code == 403 and refused.json()["code"] == "NOT_AUTHORISED"
    assert httpx.get(f"{server.url}{url}").status_code == 401
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        audited = admin.get(url)
    assert audited.status_code == 200
    assert verify_access_proof(audited.json(), [node_key]).patient == pid


def test_the_portal_offers_the_proof_and_the_browser_checks_it(
    server: Server, browser: Browser, patient: tuple[str, Path], node_key: str, tmp_path: Path
) -> None:
    pid, key = patient
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    try:
        page.goto(f"{server.url}/signin?next=/me/access")
        page.get_by_label("Key file").set_input_files(str(key))
        page.get_by_role("button", name="Sign in").click()
        with page.expect_download() as downloading:
            page.get_by_role("link", name="Download a proof of this list").click()
        download = downloading.value
        assert download.suggested_filename == f"access-proof-{pid}.json"
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
        doc = json.loads(saved.read_text())
        assert verify_access_proof(doc, [node_key]).patient == pid
        page.get_by_role("link", name="Check a proof").click()
        page.wait_for_url("**/static/verify-access.html")
        expect(page.get_by_label("Node keys you trust")).to_have_value(node_key)
        verdict = page.get_by_test_id("verdict")

        def check(path: Path) -> None:
            page.get_by_label("Proof file").set_input_files(str(path))
            page.get_by_role("button", name="Check the proof").click()
            expect(verdict).not_to_have_text("checking…")

        check(saved)
        expect(verdict).to_have_text(re.compile(r"^Verified: \d+ access"))
        expect(page.get_by_test_id("verdict-detail")).to_contain_text("signed by st-mary-node")
        expect(page.get_by_test_id("proof-access")).to_have_count(len(doc["accesses"]))
        expect(page.get_by_test_id("proof-accesses")).to_contain_text("dr-ana-silva (st-mary)")

        def who(doc: dict[str, Any]) -> None:
            doc["accesses"][-1]["entry"]["accessor"] = "dr-ben-okafor"

        def receipt(doc: dict[str, Any]) -> None:
            doc["accesses"][0]["receipt"]["height"] += 1

        for change, why in ((who, "differs from the transaction in accessor"),
                            (receipt, "does not verify against the checkpoint")):  # fmt: skip
            check(tampered(saved, tmp_path / f"{change.__name__}.json", change))
            expect(verdict).to_have_text("NOT verified")
            detail = page.get_by_test_id("verdict-detail")
            expect(detail).to_contain_text("ACCESS_PROOF_MISMATCH")
            expect(detail).to_contain_text(why)
        # a key the user did not get from this node: nothing accepted
        page.get_by_label("Node keys you trust").fill("st-mary-node+00000000+AQ" + "A" * 42)
        check(saved)
        expect(verdict).to_have_text("NOT verified")
        expect(page.get_by_test_id("verdict-detail")).to_contain_text("ACCESS_PROOF_UNTRUSTED")
    finally:
        context.close()
