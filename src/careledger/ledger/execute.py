"""Deterministic block execution: the same inputs give the same block on every node.

Pure: it reads committed state through a callback and returns everything the block changes;
it writes nothing. The committer stores the result; ``careledger verify`` re-runs it over the
stored transactions and compares, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

from careledger.contracts.base import (
    BlockState,
    Context,
    Contract,
    Signer,
    StateReader,
    StateView,
    TxState,
)
from careledger.contracts.identity import genesis_writes
from careledger.contracts.registry import Registry, default_registry
from careledger.contracts.ruleset import (
    FIRST_RULESET,
    SCHEDULE_KEY,
    SCHEDULE_NAMESPACE,
    Ruleset,
)
from careledger.core import merkle
from careledger.core.block import (
    ZERO_HASH,
    BlockHeader,
    Write,
    canonical_writeset,
    events_digest,
    next_state_digest,
    receipt,
)
from careledger.core.canonical import canonical_bytes, canonical_values, sha256_hex
from careledger.core.tx import Transaction
from careledger.errors import Rejected, UnknownRuleset, ValidationError
from careledger.ledger.ports import BlockWrite, StoredEvent, StoredTx
from careledger.ledger.ports import Executed as Executed  # defined beside the listener port
from careledger.ledger.ports import Explanation as Explanation

NONCE_NAMESPACE = "nonce"
CHAIN_NAMESPACE = "chain"
NONCE_POLICY = "strictly-increasing-per-signer"  # what execute_block implements
RECEIPT_VERSION = 1


def encode_writes(writes: Sequence[Write]) -> tuple[bytes, list[tuple[str, str, bytes | None]]]:
    """The canonical write-set and each value's canonical bytes, canonicalising each value once.

    The write-set is the canonical form of ``[[ns, key, value], ...]`` sorted by (ns, key);
    RFC 8785 is compositional, so it is assembled from the values' own canonical bytes.
    """
    rows = sorted(writes, key=_NS_KEY)
    raws = canonical_values([value for _, _, value in rows])
    encoded = [(ns, key, raw) for (ns, key, _), raw in zip(rows, raws, strict=True)]
    return canonical_writeset(encoded), encoded


_NS_KEY = itemgetter(0, 1)


def genesis_block(genesis: Mapping[str, Any], registry: Registry | None = None) -> Executed:
    """Block 0. A genesis that names no ``ruleset`` runs r0 (every chain made before rulesets
    had names); one that names it records it as the first entry of the chain's schedule."""
    chain = genesis.get("chain")
    time = genesis.get("time")
    if not isinstance(chain, str) or not chain:
        raise ValidationError("genesis: 'chain' must be a chain id", code="BAD_GENESIS")
    if type(time) is not int or time < 0:
        raise ValidationError("genesis: 'time' must be milliseconds since 1970", code="BAD_GENESIS")
    named = genesis.get("ruleset")
    if named is not None and not isinstance(named, str):
        raise ValidationError("genesis: 'ruleset' must be a ruleset name", code="BAD_GENESIS")
    rules = (registry or default_registry()).named(named or FIRST_RULESET)
    writes = genesis_writes(genesis, rules)
    if named is not None:
        writes.append((SCHEDULE_NAMESPACE, SCHEDULE_KEY, [{"height": 0, "name": named}]))
    writes.append((CHAIN_NAMESPACE, "genesis", sha256_hex(canonical_bytes(dict(genesis)))))
    writeset, encoded = encode_writes(writes)
    header = BlockHeader(
        chain=chain,
        height=0,
        prev=ZERO_HASH,
        time=time,
        log_size=0,
        log_root=merkle.empty_root().hex(),
        state_digest=next_state_digest(ZERO_HASH, writeset),
        events_digest=events_digest(()),
        tx_count=0,
    )
    block = BlockWrite(header, header.hash(), (), (), writeset, encoded, ())
    return Executed(block, [], {}, {}, {(ns, k): v for ns, k, v in writes})


def execute_block(
    *,
    registry: Registry,
    prev: BlockHeader,
    prev_hash: str,
    frontier: Sequence[bytes],
    txs: Sequence[Transaction],
    time: int,
    read: StateReader,
) -> Executed | None:
    """Run ``txs`` in order on top of ``prev``; None when nothing is left to commit.

    A transaction whose nonce is not above its signer's last committed nonce is left out (it is
    a replay or a retry of one already ordered); every other one becomes a leaf, accepted or
    rejected by its contract with a stable code.
    """
    height = prev.height + 1
    time = max(time, prev.time)
    state = BlockState(read)
    rules = registry.at(height, state.get)
    if rules.nonce_policy != NONCE_POLICY or rules.receipt_version != RECEIPT_VERSION:
        raise UnknownRuleset(f"ruleset {rules.name} needs an executor this node does not have")
    receipts: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    rejections: dict[str, Explanation] = {}
    stored: list[StoredTx] = []
    events: list[StoredEvent] = []
    leaves: list[bytes] = []
    signers = _Signers(rules, state)
    contracts = _Contracts(rules)
    chain = prev.chain
    for tx in txs:
        last = state.get(NONCE_NAMESPACE, tx.signer)
        if tx.chain != chain:
            skipped[tx.tx_id] = "WRONG_CHAIN"
            continue
        if last is not None and tx.nonce <= last:
            skipped[tx.tx_id] = "NONCE_REPLAY"
            continue
        index = len(stored)
        code, tx_events, tx_writes, why = _run(
            rules, state, signers, contracts, tx, chain, height, time
        )
        if why is not None:
            rejections[tx.tx_id] = why
        nonce_write = {(NONCE_NAMESPACE, tx.signer): tx.nonce}
        if tx_writes:
            state.apply(tx_writes)
            signers.forget_readers_of(tx_writes)
        state.apply(nonce_write)
        signers.forget_readers_of(nonce_write)
        leaf_index = prev.log_size + index
        envelope = tx.envelope_bytes()
        rec = receipt(
            chain=chain,
            tx_id=tx.tx_id,
            envelope_hash=sha256_hex(envelope),
            height=height,
            index=index,
            leaf_index=leaf_index,
            code=code,
        )
        leaf_data = canonical_bytes(rec)
        receipts[tx.tx_id] = rec
        stored.append(StoredTx(tx.tx_id, envelope, leaf_data, leaf_index))
        leaves.append(merkle.leaf_hash(leaf_data))
        for event in tx_events:
            events.append(
                StoredEvent(height, index, len(events), event.type, canonical_bytes(event.data))
            )
    if not stored:
        return None
    new_frontier, nodes = merkle.append_leaf_hashes(frontier, prev.log_size, leaves)
    writes = state.writes()
    writeset, encoded = encode_writes(writes)
    header = BlockHeader(
        chain=chain,
        height=height,
        prev=prev_hash,
        time=time,
        log_size=prev.log_size + len(stored),
        log_root=merkle.root_from_frontier(new_frontier).hex(),
        state_digest=next_state_digest(prev.state_digest, writeset),
        events_digest=events_digest((e.tx_index, e.type, e.data) for e in events),
        tx_count=len(stored),
    )
    block = BlockWrite(header, header.hash(), stored, nodes, writeset, encoded, events)
    decoded = {(ns, k): v for ns, k, v in writes}
    return Executed(block, new_frontier, receipts, skipped, decoded, rejections)


class _Signers:
    """The signers resolved so far in a block, each kept until a write touches what it read.

    Resolving a signer reads a few identity keys (its key, member and organisation entries) and
    is a pure function of them, so a cached signer equals a fresh resolution for as long as none
    of those keys is written. Invalidating by the keys actually read, instead of on any identity
    write, keeps a block of ``identity.add_member`` calls from resolving its signer each time.
    A refusal (``Rejected``) is not cached: the next transaction of that key resolves again.
    """

    def __init__(self, rules: Ruleset, state: BlockState) -> None:
        self._rules = rules
        self._state = state
        self._by_key: dict[str, Signer] = {}
        self._readers: dict[tuple[str, str], set[str]] = {}  # state key -> signers that read it

    def get(self, public_key: str) -> Signer:
        signer = self._by_key.get(public_key)
        if signer is not None:
            return signer
        read: list[tuple[str, str]] = []
        get = self._state.get

        def recording(namespace: str, key: str) -> Any:
            read.append((namespace, key))
            return get(namespace, key)

        signer = self._rules.signer(recording, public_key)
        self._by_key[public_key] = signer
        for state_key in read:
            self._readers.setdefault(state_key, set()).add(public_key)
        return signer

    def forget_readers_of(self, writes: Mapping[tuple[str, str], Any]) -> None:
        if not self._readers:
            return
        for state_key in writes:
            for public_key in self._readers.pop(state_key, ()):
                self._by_key.pop(public_key, None)


class _Contracts:
    """``rules.contract`` memoised for one block: the ruleset cannot change within a block."""

    def __init__(self, rules: Ruleset) -> None:
        self._rules = rules
        self._found: dict[tuple[str, str], Contract] = {}

    def get(self, contract: str, method: str) -> Contract:
        found = self._found.get((contract, method))
        if found is None:  # an unknown one raises Rejected, every time
            found = self._found[(contract, method)] = self._rules.contract(contract, method)
        return found


def _run(
    rules: Ruleset,
    state: BlockState,
    signers: _Signers,
    contracts: _Contracts,
    tx: Transaction,
    chain: str,
    height: int,
    time: int,
) -> tuple[str | None, Sequence[Any], Mapping[tuple[str, str], Any], Explanation | None]:
    """(rejection code or None, events, writes, why refused) of one transaction."""
    tx_state = TxState(state)
    try:
        signer = signers.get(tx.signer)
        contract = contracts.get(tx.contract, tx.method)
        ctx = Context(
            signer=signer,
            chain=chain,
            height=height,
            time=time,
            tx_id=tx.tx_id,
            state=StateView(contract.name, tx_state),
            rules=rules,
        )
        contract.call(ctx, tx.method, tx.args)
    except Rejected as exc:
        return exc.code, (), {}, Explanation(exc.code, exc.message, exc.detail)
    except Exception:  # a contract bug must not stop the chain; the leaf records it
        return "CONTRACT_FAULT", (), {}, Explanation("CONTRACT_FAULT", "the contract failed", {})
    return None, ctx.events, tx_state.writes, None


def explain(
    *,
    registry: Registry,
    read: StateReader,
    chain: str,
    height: int,
    time: int,
    tx: Transaction,
) -> Explanation | None:
    """Why ``tx`` is refused on top of this state (None: it would be accepted). Writes nothing.

    A receipt keeps only the rejection code; the message and detail (which event, which unit)
    come from running the transaction again, here, against the state it was refused on.
    """
    state = BlockState(read)
    rules = registry.at(height, state.get)
    try:
        signer = rules.signer(state.get, tx.signer)
        contract = rules.contract(tx.contract, tx.method)
        ctx = Context(
            signer=signer,
            chain=chain,
            height=height,
            time=time,
            tx_id=tx.tx_id,
            state=StateView(contract.name, TxState(state)),
            rules=rules,
        )
        contract.call(ctx, tx.method, tx.args)
    except Rejected as exc:
        return Explanation(exc.code, exc.message, exc.detail)
    except Exception:  # the same fault the block recorded
        return Explanation("CONTRACT_FAULT", "the contract failed", {})
    return None
