"""Issue 20's fast paths keep every check and every byte.

- An envelope this process signs is admitted without encoding its body again or verifying the
  signature it has just made, and is the very transaction full admission makes of it; anything
  else is still verified, so a tampered envelope is refused.
- The block executor keeps a resolved signer until a write touches what it was resolved from.
- Admission remembers signers and the ruleset until the next commit.
- A read of a key that was never written skips the store (a Bloom filter of the store's keys);
  every read returns a value of its own.
- ``careledger verify`` checks each transaction in its worker processes and gets the answers
  it gets inline, a bad signature included.
"""

from __future__ import annotations

import copy
import itertools
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from careledger.core.keys import KeyPair, b64url_decode, b64url_encode
from careledger.core.tx import decode_envelope, make_body, sign_body, sign_envelope
from careledger.errors import BatchRefused
from careledger.ledger.admission import admit_all, admit_signed
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import encode_writes
from careledger.ledger.keyfilter import KeyFilter
from careledger.ledger.verify import verify_store
from careledger.storage.memory import MemoryStore
from tests.support.chain import CHAIN, TestChain, key

_nonces = itertools.count(1)


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore())


def body(member: str, *, signer: KeyPair | None = None, **changes: Any) -> dict[str, Any]:
    made = make_body(
        chain=CHAIN,
        contract="identity",
        method="add_member",
        args={"id": member, "name": "N", "roles": ["nurse"], "public_key": key(member).public_b64},
        signer=(signer or key("hosp-admin")).public_b64,
        nonce=next(_nonces),
        created="2026-11-24T00:00:00Z",
    )
    return {**made, **changes}


def refusals(admit: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    with pytest.raises(BatchRefused) as info:
        admit(*args, **kwargs)
    return info.value.errors


# -- own-signed admission -----------------------------------------------------------------


def test_an_own_signed_envelope_is_the_transaction_full_admission_makes(chain: TestChain) -> None:
    admin = key("hosp-admin")
    bodies = [body(f"own{i}") for i in range(3)]
    signed = [sign_envelope(b, admin) for b in bodies]
    assert [envelope for envelope, _ in signed] == [sign_body(b, admin) for b in bodies]
    own = admit_signed(chain.ledger, signed)
    chain.ledger.release(own)
    full = admit_all(chain.ledger, [envelope for envelope, _ in signed], [None] * 3)
    assert [(t.tx_id, t.sig, t.signed_bytes, t.envelope_bytes()) for t in own] == [
        (t.tx_id, t.sig, t.signed_bytes, t.envelope_bytes()) for t in full
    ]
    executed = chain.ledger.commit(full, chain.time + 1000)
    assert executed is not None
    assert all(r["result"] == "accepted" for r in executed.receipts.values())


def test_own_signed_admission_refuses_what_full_admission_refuses(chain: TestChain) -> None:
    admin, nobody = key("hosp-admin"), key("nobody")
    cases = [
        sign_envelope(body("m1", method="Add-Member"), admin),  # MALFORMED_TX
        sign_envelope(body("m2", chain="other.chain"), admin),  # WRONG_CHAIN
        sign_envelope(body("m3", signer=nobody), nobody),  # UNKNOWN_SIGNER
        sign_envelope(body("m4", method="no_such_method"), admin),  # UNKNOWN_METHOD
        sign_envelope(body("m5", nonce=0), admin),  # MALFORMED_TX
    ]
    for case in cases:
        own = refusals(admit_signed, chain.ledger, [case])
        full = refusals(admit_all, chain.ledger, [case[0]], [None])
        assert own == full
    assert [e["code"] for case in cases for e in refusals(admit_signed, chain.ledger, [case])] == [
        "MALFORMED_TX",
        "WRONG_CHAIN",
        "UNKNOWN_SIGNER",
        "UNKNOWN_METHOD",
        "MALFORMED_TX",
    ]


def tampered(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """The envelope with its body changed after signing, and with its signature changed."""
    changed_body = copy.deepcopy(envelope)
    changed_body["body"]["args"]["name"] = "Mallory"
    sig = bytearray(b64url_decode(envelope["sig"]))
    sig[0] ^= 1
    changed_sig = {**envelope, "sig": b64url_encode(bytes(sig))}
    return [changed_body, changed_sig]


def test_a_tampered_envelope_from_outside_is_refused(chain: TestChain) -> None:
    envelope, _ = sign_envelope(body("t1"), key("hosp-admin"))
    for bad in tampered(envelope):
        assert [e["code"] for e in refusals(admit_all, chain.ledger, [bad], [None])] == [
            "BAD_SIGNATURE"
        ]
    assert admit_all(chain.ledger, [envelope], [None])  # the original still passes


def test_a_tampered_envelope_is_refused_when_workers_check_signatures(chain: TestChain) -> None:
    envelopes = [sign_body(body(f"w{i}"), key("hosp-admin")) for i in range(70)]
    envelopes[41] = tampered(envelopes[41])[0]
    envelopes[66] = tampered(envelopes[66])[1]
    with ThreadPoolExecutor(2) as pool:
        errors = refusals(admit_all, chain.ledger, envelopes, [None] * 70, pool=pool)
    assert [(e["index"], e["code"]) for e in errors] == [
        (41, "BAD_SIGNATURE"),
        (66, "BAD_SIGNATURE"),
    ]


# -- signers, in a block and at admission --------------------------------------------------


def test_a_signer_is_resolved_again_once_its_key_is_revoked_in_the_same_block(
    chain: TestChain,
) -> None:
    own_key = key("pharm-admin").public_b64
    envelopes = [
        chain.envelope("pharm-admin", "add_member", new_member_args("p1")),
        chain.envelope("pharm-admin", "revoke_key", {"public_key": own_key}),
        chain.envelope("pharm-admin", "add_member", new_member_args("p2")),
    ]
    executed = chain.commit(*envelopes)
    codes = [executed.receipts[decode_envelope(e).tx_id].get("code") for e in envelopes]
    assert codes == [None, None, "KEY_REVOKED"]
    assert chain.ledger.state("identity", "member/p2") is None


def test_a_signer_keeps_its_roles_until_they_change_in_the_same_block(chain: TestChain) -> None:
    envelopes = [
        chain.envelope("pharm-admin", "add_member", new_member_args("q1")),
        chain.envelope("hosp-admin", "add_member", new_member_args("q2")),
        chain.envelope("pharm-admin", "set_roles", {"member": "pharm-admin", "roles": ["nurse"]}),
        chain.envelope("pharm-admin", "add_member", new_member_args("q3")),
    ]
    executed = chain.commit(*envelopes)
    codes = [executed.receipts[decode_envelope(e).tx_id].get("code") for e in envelopes]
    assert codes == [None, None, None, "NOT_AUTHORISED"]


def new_member_args(member: str) -> dict[str, Any]:
    return {"id": member, "name": "N", "roles": ["nurse"], "public_key": key(member).public_b64}


def test_admission_sees_a_revocation_as_soon_as_it_commits(chain: TestChain) -> None:
    chain.commit(chain.envelope("pharm-admin", "add_member", new_member_args("r1")))
    assert chain.ledger.signer(key("pharm-admin").public_b64).member == "pharm-admin"
    own_key = key("pharm-admin").public_b64
    chain.commit(chain.envelope("pharm-admin", "revoke_key", {"public_key": own_key}))
    later = chain.envelope("pharm-admin", "add_member", new_member_args("r2"))
    assert [e["code"] for e in refusals(chain.commit, later)] == ["KEY_REVOKED"]


# -- state reads -------------------------------------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []

    def get_state(self, namespace: str, key: str) -> bytes | None:
        self.reads.append((namespace, key))
        return super().get_state(namespace, key)


def test_a_key_never_written_is_not_read_from_the_store() -> None:
    store = CountingStore()
    tc = TestChain(store)
    tc.commit(tc.envelope("hosp-admin", "add_member", new_member_args("k1")))
    store.reads.clear()
    assert tc.ledger.state("identity", "member/nobody") is None
    assert tc.ledger.state("identity", "member/k1")["id"] == "k1"
    assert ("identity", "member/nobody") not in store.reads


def test_keys_stored_before_the_ledger_opened_are_found() -> None:
    tc = TestChain(MemoryStore())
    tc.commit(tc.envelope("hosp-admin", "add_member", new_member_args("old")))
    tc.ledger = Ledger(tc.store, node_name="hosp-node", node_key=key("hosp-node"))  # a restart
    tc.commit(tc.envelope("hosp-admin", "add_member", new_member_args("new")))
    assert tc.ledger.state("identity", "member/old")["id"] == "old"
    # and the executor sees it too: the same id cannot be added again
    assert tc.run("hosp-admin", "add_member", new_member_args("old"))["code"] == "MEMBER_EXISTS"


def test_every_read_returns_a_value_of_its_own(chain: TestChain) -> None:
    chain.commit(chain.envelope("hosp-admin", "add_member", new_member_args("f1")))
    first = chain.ledger.state("identity", "member/f1")
    first["roles"].append("admin")
    assert chain.ledger.state("identity", "member/f1")["roles"] == ["nurse"]


def test_a_commit_refreshes_what_was_read_and_caches_nothing_else(chain: TestChain) -> None:
    """Memory must not grow with the requests served: the state cache holds what readers asked
    for (kept current by each commit), never every key a block wrote."""
    chain.commit(chain.envelope("hosp-admin", "add_member", new_member_args("c0")))
    assert chain.ledger.state("identity", "member/c0")["roles"] == ["nurse"]
    held = len(chain.ledger._cache)
    for i in range(1, 40):
        chain.commit(chain.envelope("hosp-admin", "add_member", new_member_args(f"c{i}")))
    assert len(chain.ledger._cache) == held  # 39 members written, none of them read
    assert chain.ledger.state("identity", "member/c39")["roles"] == ["nurse"]  # from the store
    chain.commit(chain.envelope("hosp-admin", "set_roles", {"member": "c0", "roles": ["admin"]}))
    assert chain.ledger.state("identity", "member/c0")["roles"] == ["admin"]  # refreshed


def test_the_key_filter_never_forgets_a_key() -> None:
    keys = [("ns", f"key/{i}") for i in range(50_000)]
    grown = KeyFilter()
    for ns, k in keys:
        grown.add(ns, k)  # past its first capacity: it grows
    scanned = KeyFilter.of(keys)
    assert all(grown.might_contain(ns, k) and scanned.might_contain(ns, k) for ns, k in keys)
    absent = sum(grown.might_contain("ns", f"other/{i}") for i in range(10_000))
    assert absent < 500  # a false positive costs one store read, never a wrong answer


def test_encoded_writes_are_the_canonical_write_set() -> None:
    from careledger.core.block import writeset_bytes

    writes = [("b", "k", {"z": 1, "a": [True, None]}), ("a", "k2", None), ("a", "k1", "é\u2028")]
    writeset, encoded = encode_writes(writes)
    assert writeset == writeset_bytes(writes)
    assert encoded == [
        ("a", "k1", '"é\u2028"'.encode()),
        ("a", "k2", None),
        ("b", "k", b'{"a":[true,null],"z":1}'),
    ]


# -- verify ------------------------------------------------------------------------------


def test_verify_reports_a_bad_signature_with_and_without_workers() -> None:
    """A block that holds a transaction signed by the wrong key (a committer that skipped
    admission) fails verify at that block, whichever process checks the signature."""
    tc = TestChain(MemoryStore())
    good = [tc.envelope("hosp-admin", "add_member", new_member_args(f"v{i}")) for i in range(80)]
    forged = copy.deepcopy(good[50])
    forged["sig"] = sign_body(forged["body"], key("dr-a"))["sig"]
    txs = [tc.ledger.decode(e) for e in [*good[:50], forged, *good[51:]]]
    executed = tc.ledger.commit(txs, tc.time + 1000)  # no admission: no signature check
    assert executed is not None
    height = executed.block.header.height
    expected = f"signature of transaction {txs[50].tx_id} is invalid"
    with ProcessPoolExecutor(2) as pool:
        for kw in ({}, {"pool": pool}, {"reexecute": True}, {"reexecute": True, "pool": pool}):
            report = verify_store(tc.store, **kw)  # type: ignore[arg-type]
            assert (report.ok, report.height, report.problem) == (False, height, expected), kw


def test_verify_with_workers_equals_verify_inline() -> None:
    tc = TestChain(MemoryStore())
    for block in range(3):
        tc.commit(
            *[
                tc.envelope("hosp-admin", "add_member", new_member_args(f"b{block}-{i % 60}"))
                for i in range(100)  # ids repeat: rejected transactions, with codes
            ]
        )
    with ProcessPoolExecutor(2) as pool:
        for reexecute in (False, True):
            inline = verify_store(tc.store, reexecute=reexecute)
            spread = verify_store(tc.store, pool=pool, reexecute=reexecute)
            assert inline.ok and inline.to_json() == spread.to_json()
            assert inline.transactions == 300
