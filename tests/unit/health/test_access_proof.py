"""A patient's access log as a file that verifies offline (issue 19): every access event proven
in a signed checkpoint, its readable entry bound to its transaction, nothing accepted without
a trusted key, and any changed field refused."""

from __future__ import annotations

import base64
import copy
from types import SimpleNamespace
from typing import Any

import pytest

from careledger.cluster.witness import Witness
from careledger.core.checkpoint import add_signature, format_vkey, parse_note, sign_note
from careledger.errors import VerificationError
from careledger.health.access_proof import (
    access_proof_document,
    build_access_proof,
    verify_access_proof,
)
from careledger.health.bulk_export import proven_tx
from careledger.ledger.engine import Ledger
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, genesis, key

PATIENT = "patient-1"
HASH = "ab" * 32
MISMATCH = "ACCESS_PROOF_MISMATCH"
UNTRUSTED = "ACCESS_PROOF_UNTRUSTED"


def access(chain: TestChain, accessor: str, basis: dict[str, Any], **kw: Any) -> dict[str, Any]:
    args = {"patient": PATIENT, "accessor": accessor, "accessor_org": "hosp",
            "records": ["obs-1"], "action": "read", "purpose": "TREAT", "basis": basis, **kw}  # fmt: skip
    return chain.run("hosp-node", "access", args, contract="audit")


@pytest.fixture(scope="module")
def chain() -> TestChain:
    c = TestChain(MemoryStore(), ruleset="r9")
    anchored = c.run("dr-a", "anchor", {"record": "obs-1", "type": "Observation",
                     "patient": PATIENT, "hash": HASH, "version": 1}, contract="records")  # fmt: skip
    assert anchored["result"] == "accepted"
    assert access(c, "dr-a", {"kind": "custodian"})["result"] == "accepted"
    assert access(c, PATIENT, {"kind": "self"}, action="export")["result"] == "accepted"
    assert access(c, "dr-a", {"kind": "custodian"}, interaction="read")["result"] == "accepted"
    assert access(c, "dr-a", {"kind": "self"})["code"] == "NO_CONSENT"  # refused: no entry
    return c


def entries(chain: TestChain) -> list[dict[str, Any]]:
    keys = chain.store.state_keys("audit", f"access/{PATIENT}/", 1000)
    return [chain.ledger.state("audit", k) for k in keys]


@pytest.fixture(scope="module")
def proof(chain: TestChain) -> dict[str, Any]:
    return access_proof_document(chain.ledger, PATIENT, entries(chain))


@pytest.fixture(scope="module")
def node_key(chain: TestChain) -> str:
    return chain.ledger.verifier_key()


def test_the_log_verifies_against_the_nodes_key(
    chain: TestChain, proof: dict[str, Any], node_key: str
) -> None:
    report = verify_access_proof(proof, [node_key])
    assert report.patient == PATIENT and report.signers == ("hosp-node",)
    assert report.tree_size == proof["tree_size"] == int(proof["checkpoint"].split("\n")[1])
    assert [(a["accessor"], a["action"], a["basis"]["kind"]) for a in report.accesses] == [
        ("dr-a", "read", "custodian"), (PATIENT, "export", "self"), ("dr-a", "read", "custodian")
    ]  # fmt: skip
    assert report.accesses[2]["interaction"] == "read"
    assert report.accesses[0]["created"] == "2026-11-24T00:00:00Z"  # as the node signed it
    assert report.to_json()["ok"] is True
    # the readable entry is the ledger's, as the state holds it
    assert [a["entry"] for a in proof["accesses"]] == entries(chain)[:3]


def test_it_still_verifies_after_the_ledger_grows(
    chain: TestChain, proof: dict[str, Any], node_key: str
) -> None:
    access(chain, "dr-a", {"kind": "custodian"})
    assert len(verify_access_proof(proof, [node_key]).accesses) == 3


def _flip_hex(value: str) -> str:
    return ("0" if value[0] != "0" else "1") + value[1:]


def _note_line(note: str, index: int, value: str) -> str:
    lines = note.split("\n")
    lines[index] = value
    return "\n".join(lines)


def _bad_signature(line: str) -> str:
    """The same signature line with one bit of its signature flipped."""
    name, text = line.removeprefix("\u2014 ").split(" ")
    raw = bytearray(base64.b64decode(text))
    raw[-1] ^= 1
    return f"\u2014 {name} {base64.b64encode(bytes(raw)).decode()}"


def _set(doc: dict[str, Any], path: tuple[Any, ...], change: Any) -> None:
    *parents, last = path
    target: Any = doc
    for step in parents:
        target = target[step]
    target[last] = change(target[last]) if callable(change) else change


TAMPERED = [
    # the envelope
    (("accesses", 0, "envelope", "body", "args", "purpose"), "HRESCH"),
    (("accesses", 0, "envelope", "body", "args", "accessor"), "pharm-admin"),
    (("accesses", 0, "envelope", "body", "args", "patient"), "patient-2"),
    (("accesses", 0, "envelope", "body", "nonce"), lambda n: n + 1),
    (("accesses", 0, "envelope", "body", "created"), "2020-01-01T00:00:00Z"),
    (("accesses", 0, "envelope", "sig"), lambda s: s[:-2] + ("AA" if s[-2:] != "AA" else "AB")),
    (("accesses", 0, "tx"), _flip_hex),
    # the receipt and its place in the log
    (("accesses", 0, "receipt", "height"), lambda h: h + 1),
    (("accesses", 0, "receipt", "result"), "rejected"),
    (("accesses", 0, "receipt", "tx_id"), _flip_hex),
    (("accesses", 0, "receipt", "envelope_hash"), _flip_hex),
    (("accesses", 0, "leaf_index"), lambda i: i + 1),
    (("accesses", 0, "proof", "path", 0), _flip_hex),
    (("accesses", 0, "proof", "path"), lambda p: p[:-1]),
    (("accesses", 0, "proof", "tree_size"), lambda s: s - 1),
    # the checkpoint (a changed root, size or origin breaks the node's signature)
    (("checkpoint",), lambda n: _note_line(n, 2, base64.b64encode(b"\0" * 32).decode())),
    (("checkpoint",), lambda n: _note_line(n, 1, str(int(n.split("\n")[1]) - 1))),
    (("checkpoint",), lambda n: _note_line(n, 0, "another.chain")),
    (("tree_size",), lambda s: s - 1),
    (("chain",), "another.chain"),
    (("patient",), "patient-2"),
    # the readable entry
    (("accesses", 0, "entry", "accessor"), "pharm-admin"),
    (("accesses", 0, "entry", "accessor_org"), "pharm"),
    (("accesses", 0, "entry", "purpose"), "HRESCH"),
    (("accesses", 0, "entry", "action"), "write"),
    (("accesses", 0, "entry", "records"), []),
    (("accesses", 0, "entry", "basis"), {"kind": "consent", "id": "c1"}),
    (("accesses", 0, "entry", "break_glass"), True),
    (("accesses", 0, "entry", "height"), lambda h: h + 1),
    (("accesses", 0, "entry", "tx"), _flip_hex),
    (("accesses", 0, "entry", "patient"), "patient-2"),
    (("accesses", 0, "entry", "app"), "some-app"),
    (("accesses", 2, "entry", "interaction"), "search"),
    (("accesses", 0, "entry", "note"), "seen by nobody"),
]


@pytest.mark.parametrize(("path", "change"), TAMPERED, ids=lambda v: ".".join(map(str, v))
                         if isinstance(v, tuple) else None)  # fmt: skip
def test_any_changed_field_is_refused(
    proof: dict[str, Any], node_key: str, path: tuple[Any, ...], change: Any
) -> None:
    doc = copy.deepcopy(proof)
    _set(doc, path, change)
    assert doc != proof
    with pytest.raises(VerificationError) as refused:
        verify_access_proof(doc, [node_key])
    assert refused.value.code == MISMATCH


def test_entries_swapped_listed_twice_or_not_an_access_are_refused(
    chain: TestChain, proof: dict[str, Any], node_key: str
) -> None:
    swapped = copy.deepcopy(proof)
    first, second = swapped["accesses"][0], swapped["accesses"][1]
    first["entry"], second["entry"] = second["entry"], first["entry"]
    twice = copy.deepcopy(proof)
    twice["accesses"].append(twice["accesses"][0])
    # a transaction of the ledger that is not an access, with a made-up entry
    anchor_tx = chain.store.block_txs(1)[0].tx_id
    other = copy.deepcopy(proof)
    other["accesses"][0] = {**proven_tx(chain.ledger, anchor_tx, proof["tree_size"]),
                            "entry": proof["accesses"][0]["entry"]}  # fmt: skip
    # an access the ledger refused (it recorded and rejected it), with a made-up entry
    refused_tx = next(
        t.tx_id
        for h in range(1, chain.ledger.head.height + 1)
        for t in chain.store.block_txs(h)
        if b'"code"' in t.receipt
    )
    rejected = copy.deepcopy(proof)
    rejected["accesses"][0] = {**proven_tx(chain.ledger, refused_tx, proof["tree_size"]),
                               "entry": proof["accesses"][0]["entry"]}  # fmt: skip
    for doc, why in ((swapped, "readable entry"), (twice, "listed twice"),
                     (other, "not a call of audit.access"), (rejected, "refused by the ledger"),
                     ({**proof, "format": "something"}, "not an access proof"),
                     ({**proof, "version": 2}, "version")):  # fmt: skip
        with pytest.raises(VerificationError, match=why) as failed:
            verify_access_proof(doc, [node_key])
        assert failed.value.code == MISMATCH


def test_a_dropped_access_is_not_detected_completeness_is_the_nodes_word(
    proof: dict[str, Any], node_key: str
) -> None:
    shorter = {**proof, "accesses": proof["accesses"][1:]}
    assert len(verify_access_proof(shorter, [node_key]).accesses) == 2


def test_nothing_is_accepted_without_a_trusted_key(proof: dict[str, Any]) -> None:
    stranger = format_vkey("hosp-node", key("stranger").public_key)  # same name, other key
    for keys in ([], [stranger], [format_vkey("pharm-admin", key("pharm-admin").public_key)],
                 ["not a key"]):  # fmt: skip
        with pytest.raises(VerificationError) as refused:
            verify_access_proof(proof, keys)
        assert refused.value.code == UNTRUSTED, keys
    # a checkpoint someone else signed, under the node's name, is not the node's
    body = _note_line(
        parse_note(proof["checkpoint"]).body, 2, base64.b64encode(b"\0" * 32).decode()
    )
    forged = {**proof, "checkpoint": sign_note(body, "hosp-node", key("stranger"))}
    with pytest.raises(VerificationError) as refused:
        verify_access_proof(forged, [format_vkey("hosp-node", key("hosp-node").public_key)])
    assert refused.value.code == UNTRUSTED


def test_a_cosigned_checkpoint_and_min_signatures(
    chain: TestChain, proof: dict[str, Any], node_key: str
) -> None:
    peer = format_vkey("pharm-node", key("pharm-node").public_key)
    cosigned = {**proof, "checkpoint": add_signature(proof["checkpoint"], "pharm-node",
                                                     key("pharm-node"))}  # fmt: skip
    report = verify_access_proof(cosigned, [node_key, peer], min_signatures=2)
    assert report.signers == ("hosp-node", "pharm-node")
    assert verify_access_proof(cosigned, [peer]).signers == ("pharm-node",)
    for doc, keys in ((cosigned, [node_key]), (proof, [node_key, peer])):
        with pytest.raises(VerificationError, match="2 of the nodes") as short:
            verify_access_proof(doc, keys, min_signatures=2)
        assert short.value.code == UNTRUSTED
    # a peer's line that does not verify is a mismatch, not a missing signature
    lines = cosigned["checkpoint"].split("\n")
    broken = {**proof, "checkpoint": "\n".join([*lines[:-2], _bad_signature(lines[-2]), ""])}
    with pytest.raises(VerificationError) as refused:
        verify_access_proof(broken, [node_key, peer])
    assert refused.value.code == MISMATCH


def test_in_a_cluster_the_file_carries_the_peers_cosignatures() -> None:
    """The newest checkpoint the most nodes cosigned that holds every access; when a newer
    access is not cosigned yet, the node's own checkpoint of the current size."""
    doc = genesis("r9")
    doc["members"].append({"id": "pharm-node", "name": "Pharm node", "org": "pharm",
                           "roles": ["node"], "public_key": key("pharm-node").public_b64})  # fmt: skip
    c = TestChain(MemoryStore(), genesis_doc=doc)
    c.run("dr-a", "anchor", {"record": "obs-1", "type": "Observation", "patient": PATIENT,
          "hash": HASH, "version": 1}, contract="records")  # fmt: skip
    access(c, "dr-a", {"kind": "custodian"})
    ours = Witness(c.ledger, lambda subject, data: None, "test")
    peer = Witness(Ledger(c.store, node_name="pharm-node", node_key=key("pharm-node")),
                   lambda subject, data: None, "test")  # fmt: skip
    ours.announce_head()
    ours.on_statement(peer.statement(c.ledger.head.height))
    records = SimpleNamespace(
        ledger=c.ledger, node=SimpleNamespace(witness=ours), access_log=lambda *_: entries(c)
    )
    keys = [c.ledger.verifier_key(), format_vkey("pharm-node", key("pharm-node").public_key)]
    cosigned = build_access_proof(records, None, PATIENT)  # type: ignore[arg-type]
    report = verify_access_proof(cosigned, keys, min_signatures=2)
    assert report.signers == ("hosp-node", "pharm-node") and len(report.accesses) == 1
    access(c, "dr-a", {"kind": "custodian"})  # committed, not yet cosigned by the peer
    alone = build_access_proof(records, None, PATIENT)  # type: ignore[arg-type]
    assert alone["tree_size"] == c.ledger.head.log_size > cosigned["tree_size"]
    assert len(verify_access_proof(alone, keys).accesses) == 2
    with pytest.raises(VerificationError, match="2 of the nodes"):
        verify_access_proof(alone, keys, min_signatures=2)
