"""A small chain for tests: deterministic keys, a genesis, and helpers to sign and commit."""

from __future__ import annotations

import copy
import hashlib
import itertools
from typing import Any

from careledger.contracts.registry import Registry
from careledger.core.keys import KeyPair
from careledger.core.tx import make_body, sign_body
from careledger.ledger.admission import admit_all
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import Executed
from careledger.ledger.ports import LedgerStore

CHAIN = "test.chain"
GENESIS_TIME = 1_700_000_000_000

MEMBERS = [
    ("hosp-admin", "hosp", ["admin"]),
    ("hosp-node", "hosp", ["node"]),
    ("dr-a", "hosp", ["clinician"]),
    ("pharm-admin", "pharm", ["admin"]),
    ("maker-admin", "maker", ["admin", "manufacturer"]),
    ("patient-1", "hosp", ["patient"]),
]
ORGS = [
    {"id": "hosp", "name": "Hospital", "kind": "hospital"},
    {"id": "pharm", "name": "Pharmacy", "kind": "pharmacy", "served_by": "hosp"},
    {"id": "maker", "name": "Maker", "kind": "manufacturer", "served_by": "hosp"},
]


def key(name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(name.encode()).digest())


def genesis(ruleset: str | None = None) -> dict[str, Any]:
    """The test genesis; with ``ruleset`` it names the chain's first ruleset (else r0)."""
    return {
        **({"ruleset": ruleset} if ruleset is not None else {}),
        "chain": CHAIN,
        "time": GENESIS_TIME,
        "orgs": copy.deepcopy(ORGS),
        "members": [
            {"id": m, "name": m.title(), "org": o, "roles": r, "public_key": key(m).public_b64}
            for m, o, r in MEMBERS
        ],
    }


class TestChain:
    """Signs envelopes as named members and commits them block by block."""

    __test__ = False

    def __init__(
        self,
        store: LedgerStore,
        *,
        ruleset: str | None = None,
        registry: Registry | None = None,
        genesis_doc: dict[str, Any] | None = None,
    ) -> None:
        Ledger.create(store, genesis_doc or genesis(ruleset), registry)
        self.store = store
        self.ledger = Ledger(
            store, node_name="hosp-node", node_key=key("hosp-node"), registry=registry
        )
        self._nonces = itertools.count(1)
        self.time = GENESIS_TIME

    def envelope(
        self,
        signer: str | KeyPair,
        method: str,
        args: dict[str, Any],
        *,
        contract: str = "identity",
        nonce: int | None = None,
        chain: str = CHAIN,
    ) -> dict[str, Any]:
        keypair = key(signer) if isinstance(signer, str) else signer
        body = make_body(
            chain=chain,
            contract=contract,
            method=method,
            args=args,
            signer=keypair.public_b64,
            nonce=nonce if nonce is not None else next(self._nonces),
            created="2026-11-24T00:00:00Z",
        )
        return sign_body(body, keypair)

    def commit(self, *envelopes: dict[str, Any]) -> Executed:
        txs = admit_all(self.ledger, list(envelopes), [None] * len(envelopes))
        self.time += 1000
        executed = self.ledger.commit(txs, self.time)
        assert executed is not None
        return executed

    def run(
        self, signer: str | KeyPair, method: str, args: dict[str, Any], **kw: Any
    ) -> dict[str, Any]:
        """Commit one transaction; return its receipt."""
        env = self.envelope(signer, method, args, **kw)
        executed = self.commit(env)
        ((tx_id, receipt),) = executed.receipts.items()
        return {"tx_id": tx_id, **receipt}
