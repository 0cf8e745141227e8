"""Consortium ordering: one NATS JetStream stream, replicated by Raft, is the chain's total order.

Every node publishes the transactions it admitted, in batches, to the chain's stream; every
node (the publisher included) consumes the whole stream from its last applied sequence and
commits each batch as one block through the same deterministic committer, with the batch's
time (kept monotonic by the executor). Same batches in the same order, same blocks.

Trust: a node verifies the signature of every transaction another node published (a peer is
not trusted to have checked); a batch or envelope that does not decode is skipped, as every
honest node skips it. A client that retries through two nodes commits once: the second copy
is a nonce replay, and its publisher answers with the first copy's receipt. A publish retried
after a lost acknowledgement carries the same ``Nats-Msg-Id``, so the stream keeps it once.

The same port as the local orderer (ports.Orderer): ``start``, ``stop``, ``submit`` -> futures,
``queued``. Each applied block goes to a CommitNotifier, whose thread runs the commit listeners
and then resolves this node's futures of the block, while the committer applies the next batch.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from careledger.cluster.natsd import require_version
from careledger.contracts.identity import resolve_node
from careledger.core.keys import b64url_decode, b64url_encode, verify_signature
from careledger.core.tx import Transaction
from careledger.errors import CareLedgerError, Conflict, Pushback, StorageError, ValidationError
from careledger.ledger.engine import Ledger
from careledger.ledger.sigcheck import submit_signatures
from careledger.ordering.notify import CommitNotifier, settle

log = logging.getLogger("careledger.jetstream")

SEQ_META = "ordering.jetstream.seq"
BATCH_VERSION = 1
PUBLISH_ATTEMPTS = 8
MAX_BLOCK_TIME = 2**53 - 1  # ms; beyond, canonical JSON would not hold the header
NODE_HEADER = "CareLedger-Node"
SIG_HEADER = "CareLedger-Signature"
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class JetStreamConfig:
    servers: tuple[str, ...]
    replicas: int = 3
    creds: Path | None = None  # NATS decentralised auth: a user JWT + NKey seed file
    nkey_seed: Path | None = None  # NATS NKey authentication: the user's seed file
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_batch_bytes: int = 900_000  # under NATS's default 1 MiB max_payload
    duplicate_window_s: float = 120.0
    max_age_s: float = 0.0  # 0: keep every batch (nodes catch up from the stream)
    max_msgs: int = 0  # 0: no count limit; past a limit, lagging nodes catch up from peers
    catchup_signatures: int = 2  # cosigners a peer's checkpoint needs for a catch-up


def stream_name(chain: str) -> str:
    return "CARELEDGER_" + re.sub(r"[^A-Za-z0-9_-]", "_", chain)


def subject_prefix(chain: str) -> str:
    return "careledger." + re.sub(r"[^A-Za-z0-9_-]", "_", chain)


def stream_subject(chain: str) -> str:
    return subject_prefix(chain) + ".batches"


@dataclass(frozen=True)
class Batch:
    node: str
    time: int
    envelopes: list[Any]


def encode_batch(node: str, time_ms: int, envelopes: Sequence[bytes]) -> bytes:
    head = orjson.dumps({"v": BATCH_VERSION, "node": node, "time": time_ms})[:-1]
    return head + b',"txs":[' + b",".join(envelopes) + b"]}"


def decode_batch(data: bytes) -> Batch:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValidationError("a batch is not JSON", code="BAD_BATCH") from None
    if (
        not isinstance(obj, dict)
        or obj.get("v") != BATCH_VERSION
        or not isinstance(obj.get("node"), str)
        or type(obj.get("time")) is not int
        or not 0 <= obj["time"] <= MAX_BLOCK_TIME
        or not isinstance(obj.get("txs"), list)
    ):
        raise ValidationError("a batch is {v, node, time, txs}", code="BAD_BATCH")
    return Batch(obj["node"], obj["time"], obj["txs"])


def _ssl_context(config: JetStreamConfig) -> ssl.SSLContext | None:
    if config.tls_ca is None and config.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=str(config.tls_ca) if config.tls_ca else None)
    if config.tls_cert is not None:
        key = str(config.tls_key) if config.tls_key else None
        context.load_cert_chain(str(config.tls_cert), key)
    return context


def _mirror(copy: Future[dict[str, Any]], first: Future[dict[str, Any]]) -> None:
    """A copy of a transaction submitted while the first waited: the first's answer."""
    if first.cancelled():
        settle(
            copy, exc=Conflict("the transaction was not committed (replay)", code="NONCE_REPLAY")
        )
    elif first.exception() is not None:
        settle(copy, exc=first.exception())
    else:
        settle(copy, result=first.result())


class JetStreamOrderer:
    def __init__(
        self,
        ledger: Ledger,
        config: JetStreamConfig,
        *,
        node_name: str,
        org: str = "",
        pool: Executor,
        workers: int,
        max_batch: int = 2000,
        max_wait: float = 0.002,
        max_queue: int = 200_000,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.ledger = ledger
        self.config = config
        self.node_name = node_name
        self.org = org
        self.applied_height = ledger.head.height
        self.pool = pool
        self.workers = workers
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.clock = clock
        self.stream = stream_name(ledger.chain)
        self.subject = stream_subject(ledger.chain)
        self.applied_seq = int(ledger.store.local_meta(SEQ_META) or 0)
        self.blocks_committed = 0
        self.txs_committed = 0
        self.server_version = ""
        self._pending: dict[str, tuple[Future[dict[str, Any]], bytes]] = {}
        self._pending_lock = threading.Lock()
        self._queued = 0
        self._deliveries: queue.Queue[tuple[int, bytes, dict[str, str]] | None] = queue.Queue()
        self.gap: tuple[int, int] | None = None
        self._loop = asyncio.new_event_loop()
        self._loop_thread: threading.Thread | None = None
        self._committer: threading.Thread | None = None
        self._notifier = CommitNotifier(ledger)
        self._inbox: asyncio.Queue[Transaction] | None = None
        self._nc: Any = None
        self._js: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = threading.Event()
        self.applied = threading.Condition()
        # (subject, handler) pairs subscribed on core NATS when connected (the witness's).
        self.core_handlers: list[tuple[str, Callable[[bytes], None]]] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_thread is not None:
            return
        self._notifier.start()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="careledger-nats", daemon=True
        )
        self._loop_thread.start()
        try:
            first = asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(60)
            if self.applied_seq + 1 < first:  # the stream dropped what this node missed
                self._catch_up_from_peers(first)
            asyncio.run_coroutine_threadsafe(self._subscribe(), self._loop).result(60)
        except BaseException:
            self.stop()
            raise
        self._committer = threading.Thread(
            target=self._commit_loop, name="careledger-committer", daemon=True
        )
        self._committer.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._loop_thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout)
            except Exception:  # closing a broken connection must not block shutdown
                log.warning("NATS connection did not close cleanly")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout)
            self._loop_thread = None
        self._close_loop()
        if self._committer is not None:
            self._deliveries.put(None)
            self._committer.join(timeout)
            self._committer = None
        self._notifier.stop(timeout)
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            settle(fut, exc=Pushback("the node stopped", code="NODE_STOPPING"))

    def _close_loop(self) -> None:
        """Cancel what still runs on the stopped loop (the client's consumer tasks) and close
        it, so its sockets are released with the orderer rather than at exit."""
        loop = self._loop
        if loop.is_running() or loop.is_closed():
            return  # its thread did not stop in time: leave it to the process's exit
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    def _catch_up_from_peers(self, first: int) -> None:
        from careledger.cluster.catchup import catch_up_from_any

        log.warning(
            "the stream starts at %d, after this node's %d: catching up from a peer",
            first,
            self.applied_seq,
        )
        catch_up_from_any(self.ledger, self.org, min_signatures=self.config.catchup_signatures)
        # Resume at the oldest batch the stream still holds: batches the replayed blocks
        # already contain re-apply as replays (no block, on any node), so nothing is skipped
        # on a peer's unsigned word about sequences.
        seq = first - 1
        self.ledger.store.set_local_meta(SEQ_META, str(seq))
        self.applied_seq = seq

    async def _connect(self) -> int:
        options: dict[str, Any] = {
            "servers": list(self.config.servers),
            "name": self.node_name,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.2,
            "connect_timeout": 5,
        }
        if self.config.creds is not None:
            options["user_credentials"] = str(self.config.creds)
        if self.config.nkey_seed is not None:
            options["nkeys_seed"] = str(self.config.nkey_seed)
        context = _ssl_context(self.config)
        if context is not None:
            options["tls"] = context
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:  # auth and TLS failures arrive here
            errors.append(f"{type(exc).__name__}: {exc}".strip())
            log.warning("NATS: %s", errors[-1])

        options["error_cb"] = on_error
        try:
            # Reconnects are unbounded once connected; the first connection is not.
            self._nc = await asyncio.wait_for(nats.connect(**options), CONNECT_TIMEOUT_S)
        except Exception as exc:
            why = errors[-1] if errors else f"{type(exc).__name__}: {exc}"
            raise CareLedgerError(
                f"cannot connect to NATS at {', '.join(self.config.servers)} ({why})",
                code="NATS_UNREACHABLE",
            ) from None
        self.server_version = str(self._nc.connected_server_version)
        require_version(self.server_version)
        self._js = self._nc.jetstream()
        first, last = await self._ensure_stream()
        log.info(
            "ordering on %s: stream %s at %d, node at %d",
            self.server_version,
            self.stream,
            last,
            self.applied_seq,
        )
        return first

    async def _subscribe(self) -> None:
        self._inbox = asyncio.Queue()
        deadline = time.monotonic() + 30
        while True:  # after a server crash the cluster may still be electing a meta leader
            try:
                await self._js.subscribe(
                    self.subject,
                    cb=self._on_message,
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self.applied_seq + 1,
                    ),
                )
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise CareLedgerError(
                        f"cannot consume the stream {self.stream}: {exc}", code="NATS_UNAVAILABLE"
                    ) from None
                log.warning("consumer not created yet (%s); retrying", exc)
                await asyncio.sleep(0.5)
        for subject, handler in self.core_handlers:
            await self._nc.subscribe(subject, cb=self._core_callback(handler))
        self._tasks.append(self._loop.create_task(self._publish_loop()))

    @staticmethod
    def _core_callback(handler: Callable[[bytes], None]) -> Callable[[Any], Any]:
        async def callback(msg: Any) -> None:
            handler(bytes(msg.data))

        return callback

    def publish_core(self, subject: str, data: bytes) -> None:
        """Fire-and-forget on core NATS (cosignatures, alarms), from any thread."""
        nc = self._nc
        if nc is None or self._stopping.is_set():
            return

        def send() -> None:
            if nc.is_connected:
                self._loop.create_task(nc.publish(subject, data))

        self._loop.call_soon_threadsafe(send)

    async def _ensure_stream(self) -> tuple[int, int]:
        """The chain's stream (created on first use), as (first, last) sequence."""
        config = StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            num_replicas=self.config.replicas,
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            duplicate_window=self.config.duplicate_window_s,
            max_age=self.config.max_age_s,
            max_msgs=self.config.max_msgs or -1,
            max_msg_size=self.config.max_batch_bytes + 4096,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                info = await self._js.stream_info(self.stream)
                return int(info.state.first_seq), int(info.state.last_seq)
            except nats.js.errors.NotFoundError:
                pass
            except Exception as exc:  # no JetStream leader yet: the cluster is still forming
                if time.monotonic() > deadline:
                    raise CareLedgerError(
                        f"JetStream is not available: {exc}", code="NATS_UNAVAILABLE"
                    ) from None
                await asyncio.sleep(0.2)
                continue
            try:
                await self._js.add_stream(config)
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise CareLedgerError(
                        f"cannot create the stream {self.stream}: {exc}", code="NATS_UNAVAILABLE"
                    ) from None
                await asyncio.sleep(0.2)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    # -- publishing ----------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    def submit(self, txs: Sequence[Transaction]) -> list[Future[dict[str, Any]]]:
        self.ledger.refuse_in_listener(txs)
        if self._loop_thread is None or self._stopping.is_set():
            self.ledger.release(txs)
            raise Pushback("the node is not accepting transactions", code="NODE_STOPPING")
        futures: list[Future[dict[str, Any]]] = []
        fresh: list[Transaction] = []
        replays: list[tuple[Future[dict[str, Any]], Future[dict[str, Any]]]] = []
        with self._pending_lock:
            # again under the lock: _fail_pending empties _pending under it once ordering
            # stopped, and an entry added after that would never be answered
            if self._stopping.is_set():
                self.ledger.release(txs)
                raise Pushback("the node is not accepting transactions", code="NODE_STOPPING")
            if self._queued + len(txs) > self.max_queue:  # checked and taken in one step
                self.ledger.release(txs)
                raise Pushback("too many transactions waiting to be ordered; retry later")
            for tx in txs:
                fut: Future[dict[str, Any]] = Future()
                futures.append(fut)
                if tx.tx_id in self._pending:  # a copy already waits: it gets the same answer
                    replays.append((self._pending[tx.tx_id][0], fut))
                    continue
                self._pending[tx.tx_id] = (fut, tx.sig)
                fresh.append(tx)
            self._queued += len(fresh)
        for first, copy in replays:  # the one receipt of that transaction, as a batch gives
            first.add_done_callback(functools.partial(_mirror, copy))
        inbox = self._inbox
        assert inbox is not None

        def enqueue() -> None:
            for tx in fresh:
                inbox.put_nowait(tx)

        self._loop.call_soon_threadsafe(enqueue)
        return futures

    async def _publish_loop(self) -> None:
        assert self._inbox is not None
        while True:
            batch = [await self._inbox.get()]
            envelopes = [batch[0].envelope_bytes()]
            size = len(envelopes[0])
            deadline = self._loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    tx = self._inbox.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - self._loop.time()
                    if remaining <= 0:
                        break
                    try:
                        tx = await asyncio.wait_for(self._inbox.get(), remaining)
                    except TimeoutError:
                        break
                raw = tx.envelope_bytes()
                if size + len(raw) > self.config.max_batch_bytes:
                    self._inbox.put_nowait(tx)  # next batch (order is kept: nothing else waits)
                    break
                batch.append(tx)
                envelopes.append(raw)
                size += len(raw)
            await self._publish(batch, encode_batch(self.node_name, self.clock(), envelopes))

    async def _publish(self, batch: list[Transaction], payload: bytes) -> None:
        msg_id = hashlib.sha256(payload).hexdigest()
        signature = b64url_encode(self.ledger.node_key.sign(payload))
        headers = {"Nats-Msg-Id": msg_id, NODE_HEADER: self.node_name, SIG_HEADER: signature}
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                await self._js.publish(self.subject, payload, timeout=5, headers=headers)
                return
            except Exception as exc:  # no leader, reconnecting: retry, same message id
                log.warning("publish attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        self.ledger.release(batch)
        error = StorageError(
            "the ordering service did not take the batch; it may still commit",
            code="ORDERING_UNAVAILABLE",
        )
        self._fail(batch, error)

    def _fail(self, txs: Sequence[Transaction], error: Exception) -> None:
        with self._pending_lock:
            entries = [self._pending.pop(tx.tx_id, None) for tx in txs]
            self._queued -= sum(1 for entry in entries if entry is not None)
        for entry in entries:
            if entry is not None:
                settle(entry[0], exc=error)

    def _fail_pending(self, error: Exception) -> None:
        """Every future still pending fails with ``error``, after the blocks already posted
        resolved theirs (on the notifier's thread, in order)."""

        def fail() -> None:
            with self._pending_lock:
                pending, self._pending = self._pending, {}
                self._queued -= len(pending)
            for fut, _ in pending.values():
                settle(fut, exc=error)

        self._notifier.post(None, fail)

    # -- consuming -----------------------------------------------------------------------

    async def _on_message(self, msg: Any) -> None:
        headers = dict(msg.headers or {})
        self._deliveries.put((int(msg.metadata.sequence.stream), bytes(msg.data), headers))

    def _commit_loop(self) -> None:
        while True:
            item = self._deliveries.get()
            if item is None:
                return
            seq, data, headers = item
            if seq <= self.applied_seq:
                continue  # redelivered after a consumer reset
            if seq != self.applied_seq + 1:
                # The stream no longer holds what comes next (retention): applying the rest
                # would fork this node. Stop; a restart catches up from a peer.
                self.gap = (self.applied_seq + 1, seq)
                log.error(
                    "gap in the stream: expected sequence %d, got %d; this node stops ordering "
                    "until restarted (it then catches up from a peer)",
                    self.applied_seq + 1,
                    seq,
                )
                self._stopping.set()
                # what they wait for is beyond the gap: this node will not commit it
                self._fail_pending(
                    StorageError(
                        "this node met a gap in the ordering stream and stopped ordering until "
                        "restarted; the stream keeps the batch, which may still commit on "
                        "other nodes",
                        code="STREAM_GAP",
                    )
                )
                return
            try:
                self._apply(seq, data, headers)
            except Exception:
                # The store failed: stop applying (a gap would fork this node), say so loudly,
                # and to every waiter: this node will not commit what they wait for.
                log.exception("could not apply stream sequence %d; this node stops ordering", seq)
                self._stopping.set()
                self._fail_pending(
                    StorageError(
                        "this node could not write a block and stopped ordering; the stream "
                        "keeps the batch, which may still commit on other nodes",
                        code="ORDERING_STOPPED",
                    )
                )
                return

    def _publisher_ok(self, data: bytes, headers: Mapping[str, str]) -> bool:
        """A batch counts only if an active node of this chain signed it (judged on the state
        every node has at this point of the stream, so all nodes judge alike)."""
        signature = headers.get(SIG_HEADER)
        if not isinstance(signature, str):
            return False
        try:
            _, public_key = resolve_node(self.ledger.state, headers.get(NODE_HEADER))
            return verify_signature(public_key, data, b64url_decode(signature))
        except (CareLedgerError, ValueError):
            return False

    def _apply(self, seq: int, data: bytes, headers: Mapping[str, str]) -> None:
        envelopes: list[Any] = []
        block_time = 0
        if not self._publisher_ok(data, headers):
            log.warning("stream sequence %d is not signed by a node of this chain; skipped", seq)
        else:
            try:
                batch = decode_batch(data)
                envelopes, block_time = batch.envelopes, batch.time
            except ValidationError:
                log.warning("stream sequence %d is not a batch; skipped", seq)
        txs = self._decoded(envelopes)
        # The applied sequence is stored with the block, in one transaction; a batch that makes
        # no block (all replays, or skipped) is recorded alone.
        marker = {SEQ_META: str(seq)}
        executed = None
        if txs:
            try:
                executed = self.ledger.commit(txs, block_time, local=marker, notify=False)
            except StorageError:
                raise
            except Exception:  # deterministic in the batch's content: every node skips it
                log.exception("stream sequence %d could not be executed; skipped", seq)
                self.ledger.release(txs)
        if executed is None:
            self.ledger.store.set_local_meta(SEQ_META, str(seq))
        with self.applied:
            self.applied_seq = seq
            self.applied_height = self.ledger.head.height
            self.applied.notify_all()
        receipts = {} if executed is None else executed.receipts
        if executed is not None:
            self.blocks_committed += 1
            self.txs_committed += len(receipts)
        # Listeners, then this node's waiters, on the notifier's thread: never on this one.
        self._notifier.post(executed, lambda: self._resolve(txs, receipts))

    def _decoded(self, envelopes: list[Any]) -> list[Transaction]:
        """The batch's transactions that decode and whose signatures verify, in order."""
        txs: list[Transaction] = []
        seen: set[str] = set()
        for obj in envelopes:
            try:
                tx = self.ledger.decode(obj)
            except CareLedgerError:
                continue
            if tx.tx_id in seen:
                continue
            seen.add(tx.tx_id)
            txs.append(tx)
        with self._pending_lock:
            checked = {
                tx.tx_id
                for tx in txs
                if (entry := self._pending.get(tx.tx_id)) is not None and entry[1] == tx.sig
            }
        foreign = [tx for tx in txs if tx.tx_id not in checked]
        if foreign:
            results = submit_signatures(foreign, self.pool, self.workers)()
            bad = {tx.tx_id for tx, ok in zip(foreign, results, strict=True) if not ok}
            txs = [tx for tx in txs if tx.tx_id not in bad]
        return txs

    def _resolve(self, txs: Sequence[Transaction], receipts: Mapping[str, dict[str, Any]]) -> None:
        with self._pending_lock:
            mine = [(tx, self._pending.pop(tx.tx_id, None)) for tx in txs]
            self._queued -= sum(1 for _, entry in mine if entry is not None)
        for tx, entry in mine:
            if entry is None:
                continue
            fut = entry[0]
            receipt = receipts.get(tx.tx_id)
            if receipt is None:  # a replay: committed before (perhaps through another node)
                found = self.ledger.store.find_tx(tx.tx_id)
                if found is not None:
                    receipt = orjson.loads(found[1].receipt)
            # settle: a waiter may have cancelled (a request's wait timed out); set_result on
            # its future raises, and would leave the block's other futures unresolved.
            if receipt is not None:
                settle(fut, result=receipt)
            else:
                settle(
                    fut,
                    exc=Conflict("the transaction was not committed (replay)", code="NONCE_REPLAY"),
                )

    def _applied_snapshot(self) -> dict[str, int]:
        """The last applied stream sequence and the height it left, read together."""
        with self.applied:
            return {"applied_seq": self.applied_seq, "applied_height": self.applied_height}

    def wait_applied(self, seq: int, timeout: float) -> bool:
        with self.applied:
            return self.applied.wait_for(lambda: self.applied_seq >= seq, timeout)

    def status(self) -> dict[str, Any]:
        return {
            "kind": "jetstream",
            "stream": self.stream,
            **self._applied_snapshot(),
            "server_version": self.server_version,
            "connected": bool(self._nc is not None and self._nc.is_connected),
            "queued": self._queued,
            "gap": self.gap,
            "stopped": self._stopping.is_set(),
        }
