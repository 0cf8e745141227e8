"""The ledger engine: admit, commit, prove. No I/O of its own: it talks to a LedgerStore.

Only one thread commits (the orderer's); admission and reads may run on any thread. Commit
listeners (ports.CommitListener) are called by :meth:`Ledger.notify`, which an orderer runs off
its committing thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import orjson

from careledger.contracts.base import Signer
from careledger.contracts.registry import Registry, default_registry
from careledger.contracts.ruleset import SCHEDULE_KEY, SCHEDULE_NAMESPACE, Ruleset
from careledger.core import merkle
from careledger.core.block import BlockHeader
from careledger.core.canonical import canonical_bytes
from careledger.core.checkpoint import Checkpoint, format_checkpoint, format_vkey, sign_note
from careledger.core.keys import KeyPair
from careledger.core.tx import MAX_ENVELOPE_BYTES, Transaction, check_signature, decode_envelope
from careledger.errors import (
    CareLedgerError,
    Conflict,
    NotFound,
    Rejected,
    StorageError,
    ValidationError,
    VerificationError,
)
from careledger.ledger.execute import (
    NONCE_NAMESPACE,
    Executed,
    Explanation,
    execute_block,
    explain,
    genesis_block,
)
from careledger.ledger.keyfilter import KeyFilter
from careledger.ledger.ports import CommitListener, LedgerStore

_STATE_CACHE_LIMIT = 200_000
_SIGNER_CACHE_LIMIT = 10_000
log = logging.getLogger("careledger.ledger")


class Ledger:
    def __init__(
        self,
        store: LedgerStore,
        *,
        node_name: str,
        node_key: KeyPair,
        registry: Registry | None = None,
    ) -> None:
        head = store.head()
        if head is None:
            raise StorageError("the store has no genesis block: run 'careledger init' first")
        self.store = store
        self.registry = registry or default_registry()
        self.node_name = node_name
        self.node_key = node_key
        self.chain = head.chain
        self._head = head
        self._head_hash = store.header_hash(head.height) or ""
        self._frontier = _load_frontier(store, head.log_size)
        self._cache: dict[tuple[str, str], bytes | None] = {}
        self._cache_lock = threading.Lock()
        # Built by the first commit (a ledger that only reads never scans the store).
        self._keys: KeyFilter | None = None
        # The ruleset and signers as of a generation (see rules() and signer()).
        self._rules: tuple[int, Ruleset] | None = None
        self._signers: dict[str, tuple[int, Signer]] = {}
        self._generation = 0
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._checkpoints: dict[int, str] = {}
        self.commit_listeners: list[CommitListener] = []
        self._notifying = threading.local()  # set while this thread runs commit listeners
        self.warn_unknown_rulesets()

    # -- genesis -------------------------------------------------------------------------

    @staticmethod
    def create(
        store: LedgerStore, genesis: Mapping[str, Any], registry: Registry | None = None
    ) -> BlockHeader:
        if store.head() is not None:
            raise Conflict("the store already holds a chain", code="CHAIN_EXISTS")
        executed = genesis_block(genesis, registry)
        store.set_chain_meta("chain", executed.block.header.chain)
        store.set_chain_meta("genesis", canonical_bytes(dict(genesis)).decode())
        store.append_block(executed.block)
        return executed.block.header

    # -- reads ---------------------------------------------------------------------------

    @property
    def head(self) -> BlockHeader:
        return self._head

    @property
    def head_hash(self) -> str:
        return self._head_hash

    def state(self, namespace: str, key: str) -> Any:
        """The committed value of a key (None: absent), decoded afresh for each caller.

        The cache keeps canonical bytes, not decoded values: a caller may change what it gets
        without changing what the next one reads, and the garbage collector has no cached
        dicts and lists to walk (a busy node keeps up to 200,000 entries).
        """
        cached = self._cache.get((namespace, key), _MISSING)
        if cached is not _MISSING:
            raw = cast("bytes | None", cached)
        else:
            keys = self._keys
            if keys is not None and not keys.might_contain(namespace, key):
                return None  # never written: no store read, and nothing to cache
            generation = self._generation
            raw = self.store.get_state(namespace, key)
            with self._cache_lock:
                # A block committed since the read may have changed the key: do not cache it.
                if generation == self._generation:
                    if len(self._cache) >= _STATE_CACHE_LIMIT:
                        self._cache.clear()
                    self._cache[(namespace, key)] = raw
        return None if raw is None else orjson.loads(raw)

    def rules(self) -> Ruleset:
        """The ruleset the next block executes under (UnknownRuleset if this node lacks it)."""
        generation = self._generation  # read first: a commit meanwhile only makes it stale
        known = self._rules
        if known is not None and known[0] == generation:
            return known[1]
        rules = self.registry.at(self._head.height + 1, self.state)
        self._rules = (generation, rules)
        return rules

    def signer(self, public_key: str) -> Signer:
        """The member behind a key, with the roles the rules in force give it (or Rejected).

        Remembered until the next commit (admission asks once per transaction, and most
        transactions come from a few signers); a refusal is not remembered.
        """
        generation = self._generation
        known = self._signers.get(public_key)
        if known is not None and known[0] == generation:
            return known[1]
        signer = self.rules().signer(self.state, public_key)
        if len(self._signers) >= _SIGNER_CACHE_LIMIT:
            self._signers.clear()
        self._signers[public_key] = (generation, signer)
        return signer

    def warn_unknown_rulesets(self) -> list[tuple[int, str]]:
        """Scheduled rulesets this software lacks, logged: the node stops at their height."""
        unknown = self.registry.unknown_scheduled(self.state)
        for height, name in unknown:
            log.warning(
                "the chain activates ruleset %r at height %d (head %d); this node does not know "
                "it and will stop there: upgrade the node software before then",
                name,
                height,
                self._head.height,
            )
        return unknown

    def explain(self, tx: Transaction) -> Explanation | None:
        """Why ``tx`` is (or was) refused, judged on the head state (see execute.explain)."""
        head = self._head
        return explain(
            registry=self.registry,
            read=self.state,
            chain=self.chain,
            height=head.height + 1,
            time=head.time,
            tx=tx,
        )

    # -- admission -----------------------------------------------------------------------

    def decode(
        self, obj: object, *, size: int | None = None, canonical_body: bytes | None = None
    ) -> Transaction:
        """Stateless checks: size, shape, chain (the signature is admission's: see
        ``admit_decoded``). ``canonical_body``: as for :func:`decode_envelope`."""
        if size is not None and size > MAX_ENVELOPE_BYTES:
            raise Rejected("TX_TOO_LARGE", f"an envelope may be at most {MAX_ENVELOPE_BYTES} bytes")
        tx = decode_envelope(obj, canonical_body=canonical_body)
        if len(tx.signed_bytes) > MAX_ENVELOPE_BYTES:
            raise Rejected("TX_TOO_LARGE", f"an envelope may be at most {MAX_ENVELOPE_BYTES} bytes")
        if tx.chain != self.chain:
            raise Rejected("WRONG_CHAIN", f"this node serves chain {self.chain!r}")
        return tx

    def admit_decoded(self, tx: Transaction, *, signature_checked: bool = False) -> Transaction:
        """Stateful checks (signer, contract, method, nonce) and reservation of the nonce."""
        self._admissible(tx, signature_checked=signature_checked, reserve=True)
        return tx

    def check(self, obj: object, *, size: int | None = None) -> Explanation | None:
        """A dry run: every admission check and the contract's judgement on the head state,
        without reserving the nonce or ordering anything. None: it would be accepted now
        (a later block may still decide otherwise)."""
        tx = self.decode(obj, size=size)
        self._admissible(tx, signature_checked=False, reserve=False)
        return self.explain(tx)

    def _admissible(self, tx: Transaction, *, signature_checked: bool, reserve: bool) -> None:
        if not signature_checked:
            check_signature(tx)
        self.signer(tx.signer)
        self.rules().contract(tx.contract, tx.method)
        with self._lock:
            last = max(self.state(NONCE_NAMESPACE, tx.signer) or 0, self._pending.get(tx.signer, 0))
            if tx.nonce <= last:
                if self.store.find_tx(tx.tx_id) is not None:
                    raise Conflict("this transaction is already committed", code="DUPLICATE_TX")
                raise Conflict(
                    f"nonce {tx.nonce} is not above the signer's last nonce {last}",
                    code="NONCE_REPLAY",
                )
            if reserve:
                self._pending[tx.signer] = tx.nonce

    def admit(self, obj: object, *, size: int | None = None) -> Transaction:
        return self.admit_decoded(self.decode(obj, size=size))

    def release(self, txs: Sequence[Transaction]) -> None:
        """Forget nonces reserved by transactions that will not be ordered after all."""
        with self._lock:
            for tx in txs:
                if self._pending.get(tx.signer) == tx.nonce:
                    del self._pending[tx.signer]

    # -- commit (one thread only) --------------------------------------------------------

    def commit(
        self,
        txs: Sequence[Transaction],
        time: int,
        *,
        local: Mapping[str, str] | None = None,
        expect_hash: str | None = None,
        notify: bool = True,
    ) -> Executed | None:
        """Execute and store one block; ``local`` node bookkeeping is stored with it.

        With ``expect_hash`` (a block another node served), the block is stored only if this
        node derives that very header hash; otherwise nothing is written (PEER_FORK).
        With ``notify`` False the commit listeners are not called: the caller (an orderer)
        calls :meth:`notify` for the block on another thread.
        """
        self.refuse_in_listener(txs)
        keys = self._keys
        if keys is None:
            keys = self._keys = KeyFilter.of((ns, key) for ns, key, _ in self.store.state_items())
        executed = execute_block(
            registry=self.registry,
            prev=self._head,
            prev_hash=self._head_hash,
            frontier=self._frontier,
            txs=txs,
            time=time,
            read=self.state,
        )
        if expect_hash is not None and (
            executed is None or executed.block.header_hash != expect_hash
        ):
            self.release(txs)
            raise VerificationError(
                "the served block does not re-execute to its header hash", code="PEER_FORK"
            )
        if executed is not None:
            if local:
                executed = replace(executed, block=replace(executed.block, local=dict(local)))
            for ns, key, raw in executed.block.state:
                if raw is not None:
                    keys.add(ns, key)  # before the store has it: no reader may miss it
            self.store.append_block(executed.block)
            self._head = executed.block.header
            self._head_hash = executed.block.header_hash
            self._frontier = executed.frontier
            with self._cache_lock:
                # Refresh what readers asked for; do not add what the block merely wrote (an
                # access event's keys are written once and never read, and filled the cache
                # with 0.6 KiB per request served until its limit cleared it all at once).
                cache = self._cache
                for ns, key, raw in executed.block.state:
                    if (ns, key) in cache:
                        cache[(ns, key)] = raw
                self._generation += 1
        self.release(txs)
        if executed is not None and (SCHEDULE_NAMESPACE, SCHEDULE_KEY) in executed.state:
            self.warn_unknown_rulesets()
        if executed is not None and notify:
            self.notify(executed)
        return executed

    def notify(self, executed: Executed) -> None:
        """Call every commit listener for a durable block, in the order they were added; a
        listener's failure is logged and the next one runs."""
        self._notifying.active = True
        try:
            for listener in list(self.commit_listeners):
                try:
                    listener(executed)
                except Exception:  # the block is committed whatever a listener does
                    log.exception(
                        "a commit listener failed at height %d", executed.block.header.height
                    )
        finally:
            self._notifying.active = False

    def refuse_in_listener(self, txs: Sequence[Transaction]) -> None:
        """LISTENER_REENTRY if this thread is running a commit listener: a listener that
        commits or submits would wait on itself. ``txs``' reserved nonces are released."""
        if getattr(self._notifying, "active", False):
            self.release(txs)
            raise CareLedgerError(
                "a commit listener may not commit or submit transactions",
                code="LISTENER_REENTRY",
            )

    # -- proofs --------------------------------------------------------------------------

    def _tree_size(self, size: int | None) -> int:
        head_size = self._head.log_size
        if size is None:
            return head_size
        if not 0 < size <= head_size:
            raise ValidationError(
                f"tree size must be between 1 and {head_size}", code="BAD_TREE_SIZE"
            )
        return size

    def root(self, size: int) -> bytes:
        return merkle.root_at(size, self.store.get_nodes) if size else merkle.empty_root()

    def checkpoint(self, size: int | None = None) -> str:
        size = self._head.log_size if size is None else self._tree_size(size)
        note = self._checkpoints.get(size)
        if note is None:
            body = format_checkpoint(Checkpoint(self.chain, size, self.root(size)))
            note = sign_note(body, self.node_name, self.node_key)
            if len(self._checkpoints) > 1024:
                self._checkpoints.clear()
            self._checkpoints[size] = note
        return note

    def verifier_key(self) -> str:
        return format_vkey(self.node_name, self.node_key.public_key)

    def tx_proof(self, tx_id: str, size: int | None = None) -> dict[str, Any]:
        found = self.store.find_tx(tx_id)
        if found is None:
            raise NotFound("no committed transaction with that id", code="UNKNOWN_TX")
        _, stored = found
        size = self._tree_size(size)
        if stored.leaf_index >= size:
            raise ValidationError(
                "the transaction is not in a tree of that size", code="BAD_TREE_SIZE"
            )
        path = merkle.inclusion_proof(stored.leaf_index, size, self.store.get_nodes)
        return {
            "receipt": orjson.loads(stored.receipt),
            "leaf_index": stored.leaf_index,
            "proof": {
                "tree_size": size,
                "root": self.root(size).hex(),
                "path": [p.hex() for p in path],
            },
            "checkpoint": self.checkpoint(size),
        }

    def consistency(self, first: int, second: int) -> dict[str, Any]:
        second = self._tree_size(second)
        if not 0 < first <= second:
            raise ValidationError("need 0 < first <= second", code="BAD_TREE_SIZE")
        path = merkle.consistency_proof(first, second, self.store.get_nodes)
        return {
            "first": first,
            "second": second,
            "first_root": self.root(first).hex(),
            "second_root": self.root(second).hex(),
            "path": [p.hex() for p in path],
        }


_MISSING = object()


def _load_frontier(store: LedgerStore, size: int) -> list[bytes]:
    ids = merkle.frontier_nodes(size)
    return store.get_nodes(ids) if ids else []
