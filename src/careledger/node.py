"""A running node: store, ledger engine and orderer, wired from Settings."""

from __future__ import annotations

import fcntl
import gc
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from careledger.cluster.witness import Witness
from careledger.config import Settings
from careledger.core.keys import KeyPair
from careledger.core.tx import Transaction, make_body, sign_envelope
from careledger.errors import Conflict, Rejected, StorageError
from careledger.keyfile import read_key_file
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import NONCE_NAMESPACE, Explanation
from careledger.ledger.ports import Orderer
from careledger.nonces import NonceSource
from careledger.ordering.jetstream import JetStreamConfig, JetStreamOrderer, subject_prefix
from careledger.ordering.local import LocalOrderer
from careledger.storage.sqlite import SQLiteStore
from careledger.write_budget import WriteBudget

LOCK_FILE = "node.lock"
# The cyclic collector's young-generation threshold once a node runs (CPython's default: 700).
# At 700 a block of 2,000 transactions runs about 30 young collections and every ~70,000
# allocations one that walks the whole heap; the committer paid 20-25 µs a transaction for it.
# Cyclic garbage still goes, after 20,000 allocations instead of 700: a few MB at most.
GC_YOUNG_THRESHOLD = 20_000
_heap_settled = False
_heap_lock = threading.Lock()


def settle_heap() -> None:
    """Once per process, after start-up: collect, then freeze what is alive (modules, app,
    settings, the loaded ledger) so that no later collection walks it again, and raise the
    young threshold. Objects made later are collected as before, so memory does not grow."""
    global _heap_settled
    with _heap_lock:
        if _heap_settled:
            return
        _heap_settled = True
        gc.collect()
        gc.freeze()
        young, middle, old = gc.get_threshold()
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


def _lock(data_dir: Path) -> int:
    """Hold the node directory exclusively: two writers would each think they own the head."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(
            f"cannot write in {data_dir}: {exc.strerror}; a node needs its directory writable",
            code="DIR_NOT_WRITABLE",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(
            f"another process is running the node in {data_dir}", code="NODE_BUSY"
        ) from None
    return fd


def preflight(data_dir: Path) -> None:
    """What ``serve`` checks before it says it serves: the directory is writable and no other
    process runs this node (DIR_NOT_WRITABLE, NODE_BUSY)."""
    fd = _lock(data_dir)
    try:
        probe = data_dir / f".write-check-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"cannot write in {data_dir}: {exc.strerror}; a node needs its directory writable",
                code="DIR_NOT_WRITABLE",
            ) from None
    finally:
        os.close(fd)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock_fd = _lock(settings.data_dir)
        try:
            self._open(settings)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self, settings: Settings) -> None:
        passphrase = os.environ.get("CARELEDGER_KEY_PASSPHRASE") or None
        _, node_key = read_key_file(settings.node_key_file, passphrase=passphrase)
        self.store = SQLiteStore(settings.store_path)
        self.ledger = Ledger(self.store, node_name=settings.node_name, node_key=node_key)
        self.write_budget = WriteBudget(settings.write_budget, time.monotonic)
        self._nonces: dict[str, NonceSource] = {}
        self._nonces_lock = threading.Lock()
        # Processes, not threads: a verifying thread must retake the GIL after every signature
        # and would queue behind the committer. "spawn" because this process already has threads.
        self.verify_pool = ProcessPoolExecutor(
            max_workers=max(1, settings.verify_workers), mp_context=get_context("spawn")
        )
        self.orderer: Orderer  # either implementation, checked against the port by mypy
        self.witness: Witness | None = None
        batching = {
            "max_batch": settings.max_batch,
            "max_wait": settings.max_wait,
            "max_queue": settings.max_queue,
        }
        if settings.ordering == "jetstream":
            config = JetStreamConfig(
                servers=settings.nats_servers,
                replicas=settings.nats_replicas,
                creds=settings.nats_creds,
                nkey_seed=settings.nats_nkey_seed,
                tls_ca=settings.nats_tls_ca,
                tls_cert=settings.nats_tls_cert,
                tls_key=settings.nats_tls_key,
                max_msgs=settings.nats_max_msgs,
                catchup_signatures=settings.catchup_signatures,
            )
            orderer = JetStreamOrderer(
                self.ledger,
                config,
                node_name=settings.node_name,
                org=settings.org,
                pool=self.verify_pool,
                workers=settings.verify_workers,
                **batching,
            )
            prefix = subject_prefix(self.ledger.chain)
            self.witness = Witness(self.ledger, orderer.publish_core, prefix)
            orderer.core_handlers += [
                (self.witness.statements_subject, self.witness.on_statement),
                (self.witness.alarms_subject, self.witness.on_alarm),
            ]
            self.ledger.commit_listeners.append(self.witness.on_commit)
            self.orderer = orderer
        else:
            self.orderer = LocalOrderer(self.ledger, **batching)

    def _nonce_source(self, key: KeyPair) -> NonceSource:
        with self._nonces_lock:
            source = self._nonces.get(key.public_b64)
            if source is None:
                last = self.ledger.state(NONCE_NAMESPACE, key.public_b64) or 0
                source = self._nonces[key.public_b64] = NonceSource(last)
            return source

    def start(self) -> None:
        self.verify_pool.submit(abs, 0).result()  # start the workers now, not on the first request
        self.orderer.start()
        if self.witness is not None:
            self.witness.announce_head()
            self.witness.start_heartbeat()
        settle_heap()

    def stop(self) -> None:
        if self.witness is not None:
            self.witness.stop_heartbeat()
        self.orderer.stop()
        self.verify_pool.shutdown(wait=True)
        self.store.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = -1

    def admit_all(self, objs: Sequence[object], sizes: Sequence[int | None]) -> list[Transaction]:
        """Decode, verify and admit every envelope, or none (raises AdmissionErrors)."""
        from careledger.ledger.admission import admit_all

        return admit_all(
            self.ledger, objs, sizes, pool=self.verify_pool, workers=self.settings.verify_workers
        )

    def charge_writes(self, txs: Sequence[Transaction]) -> None:
        """Charge externally signed transactions to their signers' write budgets."""
        own = self.ledger.node_key.public_b64
        self.write_budget.charge(
            (tx.signer, len(tx.signed_bytes) + len(tx.sig)) for tx in txs if tx.signer != own
        )

    def submit(self, txs: Sequence[Transaction]) -> list[Future[dict[str, Any]]]:
        return self.orderer.submit(txs)

    def execute(
        self,
        calls: Sequence[tuple[str, str, Mapping[str, Any]]],
        *,
        keypair: KeyPair | None = None,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Sign ``(contract, method, args)`` calls (node key by default), commit them, wait.

        The receipts come back in order; a contract rejection is a receipt, not an exception.
        """
        return [r for r, _ in self.execute_explained(calls, keypair=keypair, timeout=timeout)]

    def act_for(
        self, contract: str, member: str, method: str, args: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run ``contract.on_behalf`` for a member this node authenticated; the receipt, or the
        refusal raised as ``Rejected`` with the contract's reason."""
        call = {"actor": member, "method": method, "args": dict(args)}
        ((receipt, why),) = self.execute_explained([(contract, "on_behalf", call)])
        if receipt["result"] != "accepted":
            message = why.message if why is not None and why.code == receipt["code"] else ""
            raise Rejected(receipt["code"], message or "the ledger refused the transaction")
        return receipt

    def execute_explained(
        self,
        calls: Sequence[tuple[str, str, Mapping[str, Any]]],
        *,
        keypair: KeyPair | None = None,
        timeout: float = 30.0,
    ) -> list[tuple[dict[str, Any], Explanation | None]]:
        """As :meth:`execute`, with each rejection's message and detail (see Ledger.explain)."""
        from careledger.ledger.admission import admit_signed

        key = keypair or self.ledger.node_key
        nonces = self._nonce_source(key)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # Nonces must reach admission in the order they were drawn: one signer, one queue.
        with nonces.lock:
            signed = [
                sign_envelope(
                    make_body(
                        chain=self.ledger.chain,
                        contract=contract,
                        method=method,
                        args=args,
                        signer=key.public_b64,
                        nonce=nonces.next(),
                        created=created,
                    ),
                    key,
                )
                for contract, method, args in calls
            ]
            # Signed here, just now: admitted without encoding or verifying them again.
            txs = admit_signed(self.ledger, signed)
            futures = self.submit(txs)
        out: list[tuple[dict[str, Any], Explanation | None]] = []
        for tx, future in zip(txs, futures, strict=True):
            receipt = future.result(timeout)
            why = self.ledger.explain(tx) if receipt["result"] != "accepted" else None
            out.append((receipt, why))
        return out
