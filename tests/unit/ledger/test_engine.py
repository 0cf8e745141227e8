"""Admission, commit and proofs of the engine, on the memory store."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from careledger.core import merkle
from careledger.core.canonical import canonical_bytes
from careledger.core.checkpoint import parse_vkey
from careledger.core.keys import b64url_encode
from careledger.core.tx import MAX_ENVELOPE_BYTES
from careledger.errors import BatchRefused, Conflict, Rejected, ValidationError, VerificationError
from careledger.sdk import verify_checkpoint, verify_consistency, verify_tx_proof
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore())


def new_member(
    tc: TestChain, member_id: str, signer: str = "hosp-admin", **kw: Any
) -> dict[str, Any]:
    args = {
        "id": member_id,
        "name": "N",
        "roles": ["nurse"],
        "public_key": key(member_id).public_b64,
    }
    return tc.envelope(signer, "add_member", args, **kw)


def snapshot(chain: TestChain) -> tuple[Any, ...]:
    return chain.ledger.head, list(chain.store.state_items())


def refused(chain: TestChain, envelope: Any) -> str:
    before = snapshot(chain)
    with pytest.raises((BatchRefused, Rejected, Conflict, ValidationError)) as info:
        chain.commit(envelope)
    assert snapshot(chain) == before, "a refused transaction changed the ledger"
    return info.value.code


def test_replayed_envelope_is_refused(chain: TestChain) -> None:
    env = new_member(chain, "n1")
    chain.commit(env)
    assert refused(chain, env) == "DUPLICATE_TX"
    stale = new_member(chain, "n2", nonce=1)
    assert refused(chain, stale) == "NONCE_REPLAY"


def test_resigned_by_someone_else_is_refused(chain: TestChain) -> None:
    env = new_member(chain, "n1")
    forged = copy.deepcopy(env)
    forged["sig"] = b64url_encode(key("dr-a").sign(canonical_bytes(env["body"])))
    assert refused(chain, forged) == "BAD_SIGNATURE"
    # Re-signed properly by dr-a as signer: a valid transaction, but dr-a is no admin.
    body = {**env["body"], "signer": key("dr-a").public_b64}
    resigned = {"body": body, "sig": b64url_encode(key("dr-a").sign(canonical_bytes(body)))}
    before = list(chain.store.state_items())
    executed = chain.commit(resigned)
    (receipt,) = executed.receipts.values()
    assert (receipt["result"], receipt["code"]) == ("rejected", "NOT_AUTHORISED")
    assert chain.ledger.state("identity", "member/n1") is None
    changed = {(ns, k) for ns, k, _ in chain.store.state_items()} ^ {(ns, k) for ns, k, _ in before}
    assert changed <= {("nonce", key("dr-a").public_b64)}


def test_wrong_chain_is_refused(chain: TestChain) -> None:
    assert refused(chain, new_member(chain, "n1", chain="other.chain")) == "WRONG_CHAIN"


def test_oversize_is_refused(chain: TestChain) -> None:
    env = chain.envelope("hosp-admin", "add_member", {"id": "n1", "name": "x" * MAX_ENVELOPE_BYTES})
    assert refused(chain, env) == "TX_TOO_LARGE"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("sig"),
        lambda e: e.update(extra=1),
        lambda e: e["body"].pop("nonce"),
        lambda e: e["body"].update(nonce=0),
        lambda e: e["body"].update(nonce=1.5),
        lambda e: e["body"].update(nonce=True),
        lambda e: e["body"].update(contract="Identity!"),
        lambda e: e["body"].update(args=[]),
        lambda e: e["body"].update(signer="short"),
        lambda e: e.update(sig="!!!"),
        lambda e: e["body"].update(created=5),
        lambda e: e["body"].update(surprise=True),
    ],
)
def test_malformed_is_refused(chain: TestChain, mutate: Any) -> None:
    env = new_member(chain, "n1")
    mutate(env)
    assert refused(chain, env) in {"MALFORMED_TX", "BAD_SIGNATURE"}


def test_not_an_object_is_refused(chain: TestChain) -> None:
    assert refused(chain, ["not", "an", "envelope"]) == "MALFORMED_TX"


def test_unknown_signer_contract_method_are_refused(chain: TestChain) -> None:
    assert refused(chain, new_member(chain, "n1", signer="stranger")) == "UNKNOWN_SIGNER"
    assert (
        refused(chain, chain.envelope("hosp-admin", "x", {}, contract="nosuch"))
        == "UNKNOWN_CONTRACT"
    )
    assert refused(chain, chain.envelope("hosp-admin", "fly", {})) == "UNKNOWN_METHOD"


def test_batch_is_all_or_nothing(chain: TestChain) -> None:
    good = new_member(chain, "n1")
    bad = new_member(chain, "n2", chain="other.chain")
    before = snapshot(chain)
    with pytest.raises(BatchRefused) as info:
        chain.commit(good, bad)
    assert info.value.errors == [
        {
            "index": 1,
            "code": "WRONG_CHAIN",
            "status": 400,
            "detail": "this node serves chain 'test.chain'",
        }
    ]
    assert snapshot(chain) == before
    chain.commit(good)  # its nonce reservation was released
    assert chain.ledger.state("identity", "member/n1") is not None


def test_duplicate_nonce_in_one_batch(chain: TestChain) -> None:
    a = new_member(chain, "n1", nonce=50)
    b = new_member(chain, "n2", nonce=50)
    with pytest.raises(BatchRefused) as info:
        chain.commit(a, b)
    assert info.value.errors[0]["code"] == "NONCE_REPLAY"


def test_commit_skips_stale_nonce_deterministically(chain: TestChain) -> None:
    """Two orderers could both order a retried transaction: the second copy is left out."""
    from careledger.ledger.admission import admit_all

    env = new_member(chain, "n1")
    (tx,) = admit_all(chain.ledger, [env], [None])
    chain.ledger.release([tx])
    executed = chain.ledger.commit([tx, tx], chain.time + 1)
    assert len(executed.receipts) == 1
    assert executed.skipped == {tx.tx_id: "NONCE_REPLAY"}
    assert chain.store.head().tx_count == 1


def test_block_time_is_monotonic(chain: TestChain) -> None:
    chain.commit(new_member(chain, "n1"))
    t1 = chain.store.head().time
    from careledger.ledger.admission import admit_all

    txs = admit_all(chain.ledger, [new_member(chain, "n2")], [None])
    chain.ledger.commit(txs, t1 - 5000)
    assert chain.store.head().time == t1


def vkeys(chain: TestChain) -> list[str]:
    return [chain.ledger.verifier_key()]


def test_inclusion_proofs_verify_for_every_tx(chain: TestChain) -> None:
    for block in range(4):
        chain.commit(*[new_member(chain, f"b{block}-{i}") for i in range(block + 1)])
    size = chain.ledger.head.log_size
    for index in range(size):
        tx = chain.store.leaf(index)
        answer = chain.ledger.tx_proof(tx.tx_id)
        verified = verify_tx_proof(answer, vkeys(chain))
        assert verified.receipt["tx_id"] == tx.tx_id
        assert verified.checkpoint.size == size
        old = chain.ledger.tx_proof(tx.tx_id, index + 1)
        assert verify_tx_proof(old, vkeys(chain)).checkpoint.size == index + 1


def test_forged_receipt_does_not_verify(chain: TestChain) -> None:
    chain.commit(*[new_member(chain, f"n{i}") for i in range(5)])
    answer = chain.ledger.tx_proof(chain.store.leaf(2).tx_id)
    forged = copy.deepcopy(answer)
    forged["receipt"]["result"] = "rejected"
    with pytest.raises(VerificationError):
        verify_tx_proof(forged, vkeys(chain))
    other_node = parse_vkey(vkeys(chain)[0])
    assert other_node.name == "hosp-node"
    from careledger.core.checkpoint import format_vkey

    with pytest.raises(VerificationError):
        verify_tx_proof(answer, [format_vkey("hosp-node", key("impostor").public_key)])


def test_consistency_from_every_earlier_checkpoint(chain: TestChain) -> None:
    notes = []
    for block in range(6):
        chain.commit(*[new_member(chain, f"c{block}-{i}") for i in range(block % 3 + 1)])
        notes.append(chain.ledger.checkpoint())
    latest, _ = verify_checkpoint(notes[-1], vkeys(chain))
    for note in notes[:-1]:
        old, _ = verify_checkpoint(note, vkeys(chain))
        proof = chain.ledger.consistency(old.size, latest.size)
        verify_consistency(proof, old, latest)
        if old.size < latest.size and proof["path"]:
            forged = dict(proof, path=["00" * 32, *proof["path"][1:]])
            with pytest.raises(VerificationError):
                verify_consistency(forged, old, latest)
        wrong_root = type(old)(old.origin, old.size, merkle.leaf_hash(b"x"))
        with pytest.raises(VerificationError):
            verify_consistency(proof, wrong_root, latest)


def test_proof_arguments_are_checked(chain: TestChain) -> None:
    chain.commit(new_member(chain, "n1"))
    with pytest.raises(ValidationError):
        chain.ledger.consistency(2, 1)
    with pytest.raises(ValidationError):
        chain.ledger.consistency(1, 99)
    from careledger.errors import NotFound

    with pytest.raises(NotFound):
        chain.ledger.tx_proof("ab" * 32)


def test_a_read_racing_a_commit_never_caches_the_old_value() -> None:
    """A reader that fetched a key before a block changed it must not cache the stale value."""

    class RacingStore(MemoryStore):
        hook: Any = None

        def get_state(self, namespace: str, key: str) -> bytes | None:
            raw = super().get_state(namespace, key)
            if self.hook is not None and (namespace, key) == ("identity", "member/dr-a"):
                hook, self.hook = self.hook, None
                hook()  # a block commits between this read and the cache fill
            return raw

    store = RacingStore()
    tc = TestChain(store)
    tc.ledger._cache.clear()
    change = tc.envelope("hosp-admin", "set_roles", {"member": "dr-a", "roles": ["auditor"]})
    store.hook = lambda: tc.commit(change)
    stale = tc.ledger.state("identity", "member/dr-a")
    assert stale["roles"] == ["clinician"]  # what this read saw, before the block
    assert tc.ledger.state("identity", "member/dr-a")["roles"] == ["auditor"]
