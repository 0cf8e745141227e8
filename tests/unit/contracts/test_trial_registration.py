"""A real ClinicalTrials.gov study and its FHIR ResearchStudy, registered on the ledger."""

from __future__ import annotations

import orjson

from careledger.core.canonical import canonical_bytes, sha256_hex
from careledger.storage.memory import MemoryStore
from careledger.trials.registration import from_ctgov, from_research_study
from tests.support.chain import TestChain, key
from tests.support.vectors import load_json

VISITS = [{"id": "baseline", "day": 0, "window": 7}, {"id": "month-6", "day": 182, "window": 14}]


def chain_with_sponsor() -> TestChain:
    chain = TestChain(MemoryStore())
    args = {"id": "sp", "name": "sp", "roles": ["sponsor"], "public_key": key("sp").public_b64}
    assert chain.run("hosp-admin", "add_member", args)["result"] == "accepted"
    return chain


def test_the_pallas_trial_registers_from_its_clinicaltrials_gov_record() -> None:
    record = load_json("clinical-trial-matching-service", "NCT02513394.json")
    args = from_ctgov(record, study="PALLAS", visits=VISITS, sites=["hosp"])
    assert args["registry_id"] == "NCT02513394"
    assert args["primary"] == ["Invasive Disease Free Survival (iDFS)"]
    assert len(args["secondary"]) == 4 and args["eligibility"]["age"][0] == 18
    assert args["protocol_hash"] == sha256_hex(canonical_bytes(record))
    chain = chain_with_sponsor()
    receipt = chain.run("sp", "register", args, contract="trials")
    assert receipt["result"] == "accepted", receipt
    stored = orjson.loads(chain.store.get_state("trials", "study/PALLAS") or b"{}")
    assert stored["protocols"][0]["hash"] == args["protocol_hash"]


def test_the_same_trial_as_a_fhir_research_study() -> None:
    resource = load_json("clinical-trial-matching-service", "complete_study.json")
    args = from_research_study(resource, study="PALLAS-FHIR", visits=VISITS, sites=["hosp"])
    assert args["registry_id"] == "NCT02513394" and args["primary"]
    chain = chain_with_sponsor()
    assert chain.run("sp", "register", args, contract="trials")["result"] == "accepted"
