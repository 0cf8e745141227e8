"""Records the golden replay vectors of ruleset r11 (tests/vectors/chains): run once, when r11
was added, and never again (``python -m tests.support.record_chains DIR`` writes the files into
DIR, to be copied in by hand after review). A recorded file is never regenerated: replaying it
with later software must give the same header hashes."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import org_holding_key
from careledger.ledger.ports import LedgerStore
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain


def _blocks(store: LedgerStore) -> list[dict[str, Any]]:
    out = []
    for height in range(1, store.head_height() + 1):
        header = store.header(height)
        assert header is not None
        txs = store.block_txs(height)
        out.append({
            "codes": [orjson.loads(t.receipt).get("code") for t in txs],
            "envelopes": [orjson.loads(t.envelope) for t in txs],
            "header_hash": store.header_hash(height),
            "time": header.time,
        })  # fmt: skip
    return out


def _hash(n: int) -> str:
    return f"{n:064x}"


def r10_to_r11() -> dict[str, Any]:
    """A chain started on r10 that votes r11 in at height 5."""
    store = MemoryStore()
    chain = TestChain(store, ruleset="r10")

    def anchor(signer: str, **args: Any) -> dict[str, Any]:
        return chain.run(signer, "anchor", args, contract="records")

    steps = []
    steps.append(anchor("dr-a", record="cap-1", type="CapabilityStatement", hash=_hash(1),
                        version=1))  # fmt: skip
    proposal = chain.run("hosp-admin", "propose_ruleset", {"ruleset": "r11", "height": 5})
    steps.append(proposal)
    steps.append(chain.run("pharm-admin", "vote", {"proposal": proposal["tx_id"],
                                                   "approve": True}))  # fmt: skip
    steps.append(anchor("dr-a", record="sch-0", type="Schedule", hash=_hash(2), version=1))
    assert store.head_height() == 4
    steps.append(anchor("dr-a", record="cap-1", type="CapabilityStatement", hash=_hash(1),
                        version=1))  # fmt: skip
    steps.append(anchor("dr-a", record="sch-1", type="Schedule", hash=_hash(3), version=1))
    steps.append(anchor("dr-a", record="obs-1", type="Observation", hash=_hash(4), version=1))
    steps.append(anchor("dr-a", record="apt-1", type="Appointment", hash=_hash(5), version=1))
    steps.append(anchor("dr-a", record="prov-1", type="Provenance", patient="patient-1",
                        hash=_hash(6), version=1))  # fmt: skip
    steps.append(anchor("dr-a", record="sch-1", type="Schedule", patient="patient-1",
                        hash=_hash(7), version=2, prev_version=1))  # fmt: skip
    steps.append(anchor("pharm-admin", record="cap-1", type="CapabilityStatement",
                        hash=_hash(8), version=2, prev_version=1))  # fmt: skip
    steps.append(anchor("dr-a", record="mp-1", type="MedicinalProduct", hash=_hash(9),
                        version=1))  # fmt: skip
    steps.append(anchor("dr-a", record="mp-1", type="MedicinalProduct", hash=_hash(10),
                        version=2, prev_version=1))  # fmt: skip
    steps.append(chain.run("dr-a", "shred", {"record": "sch-1", "reason": "closed"},
                           contract="records"))  # fmt: skip
    steps.append(chain.run("hosp-admin", "shred", {"record": "sch-1", "reason": "closed"},
                           contract="records"))  # fmt: skip
    held = chain.ledger.state(RECORDS, org_holding_key("hosp", "CapabilityStatement"))
    assert held is not None
    attest = {"holdings": [{"type": "CapabilityStatement", "n": held["n"], "head": held["head"]}]}
    steps.append(chain.run("hosp-node", "attest_holdings", attest, contract="records"))
    stale = {"holdings": [{"type": "Schedule", "n": 1, "head": _hash(0)}]}
    steps.append(chain.run("hosp-node", "attest_holdings", stale, contract="records"))
    codes = [s.get("code") for s in steps]
    assert codes == ["NO_PATIENT", None, None, "NO_PATIENT", None, None, "NO_PATIENT",
                     "NO_PATIENT", None, "BAD_ARGS", "NOT_CUSTODIAN", None, None,
                     "NOT_AUTHORISED", None, None, "HOLDINGS_CHANGED"], codes  # fmt: skip
    return {
        "blocks": _blocks(store),
        "description": (
            "A chain started on r10 that votes r11 in at height 5: a CapabilityStatement and a"
            " Schedule without a patient are refused under r10 (NO_PATIENT); under r11 the"
            " CapabilityStatement and a practitioner's Schedule are anchored as the"
            " organisation's own, an Observation and an Appointment without a patient refused"
            " (NO_PATIENT), a Provenance anchored with its patient, the Schedule given a patient"
            " refused (BAD_ARGS), another organisation's update refused, a MedicinalProduct"
            " anchored and updated, the Schedule shredded by the custodian's admin (not a"
            " clinician), the organisation's CapabilityStatement holding attested and a stale"
            " Schedule holding refused"
        ),
        "genesis": _genesis(store),
        "genesis_hash": store.header_hash(0),
        "ruleset": "r10->r11",
    }


def _genesis(store: LedgerStore) -> dict[str, Any]:
    from tests.support.chain import genesis

    return genesis("r10")


def demo(ruleset: str) -> dict[str, Any]:
    """The demo chain of ``careledger init --demo`` started on ``ruleset``."""
    from careledger.nodedir import init_demo

    with tempfile.TemporaryDirectory() as tmp:
        ledger = init_demo(Path(tmp) / "node", ruleset=ruleset)
        store = ledger.store
        doc = json.loads((Path(tmp) / "node" / "genesis.json").read_text())
        out = {
            "blocks": _blocks(store),
            "description": f"The demo chain of `careledger init --demo` started on ruleset"
            f" {ruleset}.",
            "genesis": doc,
            "genesis_hash": store.header_hash(0),
            "ruleset": ruleset,
        }
        store.close()
    return out


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, doc in (("r10-to-r11-org-records.json", r10_to_r11()),
                      ("r11-demo.json", demo("r11"))):  # fmt: skip
        (target / name).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
