"""Importing the Synthea corpus: every patient loads completely, and no PHI lands on disk in clear."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.fhir.validate import SUPPORTED_TYPES
from careledger.keyfile import read_key_file
from careledger.nodedir import init_demo
from careledger.sdk import Client
from tests.support.nodes import demo_node, run_cli, serving
from tests.support.phi import distinctive_phi, files_containing

pytestmark = pytest.mark.integration
SYNTHEA = sorted(
    (Path(__file__).resolve().parents[2] / "src" / "careledger" / "demo_data" / "synthea").glob(
        "*.json"
    )
)


def supported_counts(bundle_file: Path) -> Counter[str]:
    bundle = json.loads(bundle_file.read_text())
    return Counter(
        e["resource"]["resourceType"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] in SUPPORTED_TYPES
    )


def all_phi() -> set[str]:
    return distinctive_phi(
        e["resource"] for p in SYNTHEA for e in json.loads(p.read_text())["entry"]
    )


def test_import_through_the_api_then_in_process(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as server:
        result = run_cli(
            "fhir", "import", str(data), *map(str, SYNTHEA), "--url", server.url, "--json"
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        expected = sum((supported_counts(p) for p in SYNTHEA), Counter())
        assert report["created"] == dict(expected)
        assert report["failed"] == []
        assert len(report["patients"]) == 3
        key = read_key_file(data / "keys" / "dr-ana-silva.key")[1]
        with Client(server.url, keypair=key) as c:
            token = c.login()
        with httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=60
        ) as http:
            for patient, source in zip(report["patients"], SYNTHEA, strict=True):
                everything = http.get(f"/fhir/Patient/{patient}/$everything").json()
                kinds = Counter(e["resource"]["resourceType"] for e in everything["entry"])
                assert kinds == supported_counts(source), source.name
                # References were rewritten to the node's ids.
                obs = next(
                    e["resource"]
                    for e in everything["entry"]
                    if e["resource"]["resourceType"] == "Observation"
                )
                assert obs["subject"]["reference"] == f"Patient/{patient}"
        # Importing the same files again creates nothing (each entry's source is remembered
        # in meta.source and found again by a conditional create).
        rerun = run_cli(
            "fhir", "import", str(data), *map(str, SYNTHEA), "--url", server.url, "--json"
        )
        assert rerun.returncode == 0, rerun.stderr
        repeated = json.loads(rerun.stdout)
        assert repeated["created"] == {} and repeated["existing"] == dict(expected)
        assert repeated["patients"] == report["patients"]
    # With the server stopped, the same command imports in-process: still nothing new.
    again = run_cli("fhir", "import", str(data), str(SYNTHEA[0]), "--json")
    assert again.returncode == 0, again.stderr
    offline = json.loads(again.stdout)
    assert offline["created"] == {} and offline["patients"] == report["patients"][:1]
    assert run_cli("verify", str(data)).returncode == 0
    needles = all_phi()
    assert len(needles) > 20
    offenders = files_containing(data, needles)
    assert offenders == []


def test_import_refuses_what_is_not_a_bundle(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceType": "Patient"}))
    result = run_cli("fhir", "import", str(data), str(bad))
    assert result.returncode == 2
    assert "NOT_A_BUNDLE" in result.stderr


def test_demo_has_records_and_consents(tmp_path: Path) -> None:
    data = tmp_path / "node"
    ledger = init_demo(data)
    consents = ledger.store.state_keys("consent", "consent/", 100)
    ledger.store.close()
    assert len(consents) == 2
    assert len(list((data / "keys" / "patients").glob("*.key"))) == 3
    members: Any = json.loads(run_cli("members", str(data), "--json", check=True).stdout)
    assert sum("patient" in m["roles"] for m in members) == 6  # 3 demo + 3 Synthea
