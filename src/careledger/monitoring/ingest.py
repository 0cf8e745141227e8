"""Ingestion of signed device batches: verify, check the binding, encrypt, window, alert, anchor.

A device signs each batch (``{"batch": {...}, "sig"}``, Ed25519 over the batch's RFC 8785
bytes) with the key registered on the ledger, numbers its batches (``seq``, strictly increasing:
replays are refused, a retried batch gets its first acknowledgement back) and sends readings
compact or as FHIR Observations. The node checks that the device is its organisation's and
bound to a patient, seals the readings, appends their salted digests to the device's open
window and runs the patient's rules over them in order. A window closes when it is full, when
it has been open for ``window_ms``, or at once when a rule fired (so an alert waits for no
timer); closed windows are anchored in order by one background thread, many per block.

A patient's erasure (``monitoring.erase_readings``) reaches every copy of their readings here:
the stored batches (crypto-shredded), their windows' alert values, and each device's live state
(the rules' memory of recent values, the open window's alert values). It is applied from the
ledger's state, never from a message alone, and recorded in the store only once done, so a stop
or a failure between the erasure's commit and its application leaves it to be applied at the
next pass or start (see ``_reconcile`` for why it holds under every interleaving).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.identity import member_of
from careledger.contracts.monitoring import NAMESPACE as MONITORING
from careledger.contracts.monitoring import (
    binding_of,
    device_of,
    next_window,
    rules_of,
    window_of,
)
from careledger.core import merkle
from careledger.core.alert_rules import evaluate
from careledger.core.canonical import canonical_bytes
from careledger.core.keys import b64url_decode, decode_public_key
from careledger.core.vitals import Reading, ReadingError, parse_readings
from careledger.errors import Conflict, Forbidden, Gone, NotFound, ValidationError
from careledger.monitoring.batches import (
    READINGS_TYPE,
    batch_record_id,
    open_batch,
    reading_digest,
    reading_salt,
)
from careledger.monitoring.store import (
    ClosedWindow,
    Erasure,
    ReadingsStore,
    StoredBatch,
    erased_alerts,
    erasure_of,
)
from careledger.node import Node
from careledger.vault.crypto import DATA_KEY_SIZE, NONCE_SIZE, seal_resource, wrap_key

log = logging.getLogger(__name__)
WINDOW_READINGS = 4096
WINDOW_MS = 2000
MAX_ATTEMPTS = 50  # a window waiting this many rounds for its predecessor is given up
BATCH_FIELDS = frozenset({"device", "seq", "sent", "compact", "observations"})


@dataclass
class DeviceState:
    """A device's live position: what the next batch and window are, and the rules' state."""

    device: str
    last_seq: int = 0
    window: int = 0
    count: int = 0
    frontier: list[str] = field(default_factory=list)
    first_ms: int | None = None
    last_ms: int | None = None
    patient: str | None = None
    rules_version: int = 0
    evaluator: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    opened: float | None = None  # monotonic time the open window got its first batch
    acks: dict[int, dict[str, Any]] = field(default_factory=dict)  # recent acks, for retries

    def to_json(self) -> dict[str, Any]:
        return {
            "last_seq": self.last_seq,
            "window": self.window,
            "count": self.count,
            "frontier": self.frontier,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "patient": self.patient,
            "rules_version": self.rules_version,
            "evaluator": self.evaluator,
            "alerts": self.alerts,
        }

    @classmethod
    def from_json(cls, device: str, raw: Mapping[str, Any]) -> DeviceState:
        return cls(device=device, **{k: raw[k] for k in raw if k != "acks"})


@dataclass(frozen=True)
class Ack:
    device: str
    seq: int
    readings: int
    window: int
    first_index: int
    alerts: int

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "seq": self.seq,
            "readings": self.readings,
            "window": self.window,
            "index": self.first_index,
            "alerts": self.alerts,
            "status": "accepted",
        }


class Ingestor:
    def __init__(
        self,
        node: Node,
        store: ReadingsStore,
        *,
        window_readings: int = WINDOW_READINGS,
        window_ms: int = WINDOW_MS,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Clock = SYSTEM_CLOCK,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.ledger = node.ledger
        self.store = store
        self.window_readings = window_readings
        self.window_ms = window_ms
        self._rng = rng
        self._clock = clock  # when a batch was received (stored with it)
        # how long a window has been open: an interval, never a date (a test drives it)
        self._monotonic = monotonic
        self._devices: dict[str, DeviceState] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # patients whose erasure may not be applied yet: a hint (the ledger's state decides)
        self._erasures: set[str] = set()
        self._erasures_lock = threading.Lock()
        self._applied: dict[tuple[str, str], int] = {}  # (patient, device): erasure height
        self._closed: queue.Queue[ClosedWindow] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # observers of anchored windows (bench: alert latency): (window, receipt)
        self.on_anchored: list[Callable[[ClosedWindow, dict[str, Any]], None]] = []
        self._attempts: dict[tuple[str, int], int] = {}

    @property
    def org(self) -> str:
        return self.node.settings.org

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for window in self.store.pending():  # closed before a restart, not yet anchored
            self._closed.put(window)
        left = self._erasures_left()  # committed before a stop, or failed, and not applied
        with self._erasures_lock:
            self._erasures |= left
        self.forget_erased()  # before the anchoring thread: what fails is retried by it
        self._thread = threading.Thread(target=self._anchor_loop, name="anchorer", daemon=True)
        self._thread.start()

    def stop(self, *, drain_seconds: float = 10.0) -> None:
        """Close the open windows and anchor what is closed (bounded), then stop."""
        if self._thread is not None and self._thread.is_alive():
            self.flush()
            deadline = time.monotonic() + drain_seconds
            while not self._closed.empty() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.05)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _lock(self, device: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(device, threading.Lock())

    def _state(self, device: str) -> DeviceState:
        state = self._devices.get(device)
        if state is None:
            raw = self.store.device_state(device)
            state = DeviceState(device) if raw is None else DeviceState.from_json(device, raw)
            if state.count:  # a window left open at the last stop: its timer starts now
                state.opened = self._monotonic()
            if raw is None:
                state.window = next_window(self.ledger.state, device)
            self._devices[device] = state
        return state

    # -- accepting a batch -------------------------------------------------------------------

    def device_of(self, device_id: str) -> dict[str, Any]:
        device = device_of(self.ledger.state, device_id)
        if device is None:
            raise NotFound(f"no device {device_id!r}", code="UNKNOWN_DEVICE")
        return dict(device)

    def now(self) -> float:
        """The monotonic source windows are timed on."""
        return self._monotonic()

    def accept(self, device_id: str, envelope: object, *, received: float | None = None) -> Ack:
        """Check, seal and window one signed batch; its acknowledgement (or a clear error)."""
        received = self._monotonic() if received is None else received
        batch, body_hash = self._verified(device_id, envelope)
        seq = batch["seq"]
        binding = binding_of(self.ledger.state, device_id)
        if binding is None or binding["status"] != "active":
            raise Forbidden("the device is not bound to a patient", code="NOT_BOUND")
        patient = str(binding["patient"])
        try:
            readings = parse_readings(batch)
        except ReadingError as exc:
            raise ValidationError(exc.message, code=exc.code) from None
        if not readings:
            raise ValidationError("the batch holds no reading", code="EMPTY_BATCH")
        if min(r.time_ms for r in readings) < binding["since"] - 5 * 60_000:
            raise ValidationError("readings predate the binding", code="BEFORE_BINDING")
        with self._lock(device_id):
            state = self._state(device_id)
            if seq <= state.last_seq:
                return self._replayed(state, seq, body_hash)
            self._reconcile(state, patient)  # no erased value judges this batch, or stays
            rules = self._rules(device_id, patient)
            if state.patient not in (None, patient):
                self._close(state)  # a new binding starts a new window, and a new memory:
                state.evaluator = {}  # one patient's values never judge another's
            elif self._rules_changed(state, rules):
                self._close(state)  # new rules start a new window
            return self._append(state, seq, body_hash, patient, readings, received, rules)

    def _verified(self, device_id: str, envelope: object) -> tuple[dict[str, Any], str]:
        if not isinstance(envelope, dict) or set(envelope) != {"batch", "sig"}:
            raise ValidationError("a batch is {batch, sig}", code="BAD_BATCH")
        batch, sig = envelope["batch"], envelope["sig"]
        if not isinstance(batch, dict) or not isinstance(sig, str):
            raise ValidationError("a batch is {batch: object, sig: base64url}", code="BAD_BATCH")
        extra = set(batch) - BATCH_FIELDS
        if extra:
            raise ValidationError(f"unknown batch fields {sorted(extra)}", code="BAD_BATCH")
        if batch.get("device") != device_id:
            raise ValidationError("the batch names another device", code="WRONG_DEVICE")
        seq = batch.get("seq")
        if type(seq) is not int or not 0 < seq < 2**53:
            raise ValidationError("seq is a positive whole number", code="BAD_BATCH")
        device = self.device_of(device_id)
        if device["org"] != self.org:
            raise Forbidden(
                f"device {device_id} belongs to {device['org']}: send to its node",
                code="NOT_OWNER",
            )
        if device["status"] != "active":
            raise Forbidden("the device is retired", code="DEVICE_RETIRED")
        signed = canonical_bytes(batch)
        try:
            VerifyKey(decode_public_key(device["key"])).verify(signed, b64url_decode(sig))
        except (BadSignatureError, ValueError, ValidationError):
            raise Forbidden("the batch's signature does not verify", code="BAD_SIGNATURE") from None
        return batch, hashlib.sha256(signed).hexdigest()

    @staticmethod
    def _replayed(state: DeviceState, seq: int, body_hash: str) -> Ack:
        known = state.acks.get(seq)
        if known is not None and known["hash"] == body_hash:
            return known["ack"]  # type: ignore[no-any-return]  # a retry: same answer
        raise Conflict(
            f"batch {seq} was already received (next: > {state.last_seq})", code="REPLAY"
        )

    @staticmethod
    def _rules_changed(state: DeviceState, rules: dict[str, Any] | None) -> bool:
        version = 0 if rules is None else int(rules["version"])
        if version == state.rules_version:
            return False
        if state.count == 0:
            state.rules_version, state.evaluator = version, {}
            return False
        return True

    def _append(
        self,
        state: DeviceState,
        seq: int,
        body_hash: str,
        patient: str,
        readings: list[Reading],
        received: float,
        rules: dict[str, Any] | None,
    ) -> Ack:
        if state.count == 0:
            state.rules_version = 0 if rules is None else int(rules["version"])
        device = state.device
        batch_salt = self._rng(32)
        digests = [
            reading_digest(r, device, reading_salt(batch_salt, i)) for i, r in enumerate(readings)
        ]
        data_key, nonce = self._rng(DATA_KEY_SIZE), self._rng(NONCE_SIZE)
        plaintext = canonical_bytes([r.as_json() for r in readings])
        patient_key = decode_public_key(self._member_key(patient))
        node_key = self.ledger.node_key.public_key
        stored = StoredBatch(
            device=device,
            seq=seq,
            window=state.window,
            first_index=state.count,
            count=len(readings),
            patient=patient,
            first_ms=min(r.time_ms for r in readings),
            last_ms=max(r.time_ms for r in readings),
            received_ms=self._clock.now_ms(),
            body_hash=body_hash,
            nonce=nonce,
            ciphertext=seal_resource(
                plaintext,
                record_id=batch_record_id(device, seq),
                resource_type=READINGS_TYPE,
                version=1,
                data_key=data_key,
                nonce=nonce,
            ),
            salt=batch_salt,
            wrapped={
                "patient": wrap_key(data_key, patient_key),
                "custodian": wrap_key(data_key, node_key),
            },
            digests=b"".join(digests),
        )
        fired = evaluate(
            rules["rules"] if rules else [], state.evaluator, readings, start=state.count
        )
        frontier = [bytes.fromhex(h) for h in state.frontier]
        frontier, _ = merkle.append_leaf_hashes(
            frontier, state.count, [merkle.leaf_hash(d) for d in digests]
        )
        first_index = state.count
        state.frontier = [h.hex() for h in frontier]
        state.count += len(readings)
        state.first_ms = min(stored.first_ms, state.first_ms or stored.first_ms)
        state.last_ms = max(stored.last_ms, state.last_ms or 0)
        state.patient = patient
        state.last_seq = seq
        state.alerts += [f.as_json() for f in fired]
        if state.opened is None:
            state.opened = received
        window = state.window
        closed = self._closing(state) if fired or state.count >= self.window_readings else None
        self.store.add_batch(stored, state.to_json(), closed)
        if closed is not None:
            self._closed.put(closed)
        ack = Ack(device, seq, len(readings), window, first_index, len(fired))
        state.acks = {
            **{k: v for k, v in state.acks.items() if k > seq - 64},
            seq: {"hash": body_hash, "ack": ack},
        }
        return ack

    def _rules(self, device: str, patient: str) -> dict[str, Any] | None:
        """The device's rules, if they are this patient's (set since the current binding)."""
        rules = rules_of(self.ledger.state, device)
        return dict(rules) if rules is not None and rules.get("patient") == patient else None

    def _member_key(self, patient: str) -> str:
        member = member_of(self.ledger.state, patient)
        if member is None:
            raise NotFound("the bound patient is not a member", code="UNKNOWN_PATIENT")
        return str(member["key"])

    def _closing(self, state: DeviceState) -> ClosedWindow:
        """The open window as closed, and the state moved on to the next one (not stored)."""
        root = merkle.root_from_frontier([bytes.fromhex(h) for h in state.frontier]).hex()
        closed = ClosedWindow(
            device=state.device,
            window=state.window,
            patient=str(state.patient),
            count=state.count,
            first_ms=int(state.first_ms or 0),
            last_ms=int(state.last_ms or 0),
            root=root,
            rules_version=state.rules_version,
            alerts=state.alerts,
            status="closed",
            tx=None,
        )
        state.window += 1
        state.count = 0
        state.frontier = []
        state.first_ms = state.last_ms = None
        state.alerts = []
        state.opened = None
        return closed

    def _close(self, state: DeviceState) -> None:
        if state.count == 0:
            return
        closed = self._closing(state)
        self.store.close_window(closed, state.to_json())
        self._closed.put(closed)

    def close_due(self, now: float | None = None) -> int:
        """Close every window open for ``window_ms`` or longer; how many closed."""
        now = self._monotonic() if now is None else now
        closed = 0
        for device, state in list(self._devices.items()):
            if state.opened is None or (now - state.opened) * 1000 < self.window_ms:
                continue
            with self._lock(device):
                if state.opened is not None and state.count:
                    self._close(state)
                    closed += 1
        return closed

    def flush(self) -> None:
        """Close every open window now (shutdown, tests, the bench's end)."""
        for device, state in list(self._devices.items()):
            with self._lock(device):
                self._close(state)

    # -- erasure ---------------------------------------------------------------------------

    def on_commit(self, executed: Any) -> None:
        """A patient's readings erasure (a commit listener: it only notes the patient; the
        anchoring thread applies the erasure the ledger holds, under each device's lock)."""
        for event in executed.block.events:
            if event.type == "monitoring.readings_erased":
                with self._erasures_lock:
                    self._erasures.add(str(orjson.loads(event.data)["patient"]))

    def _applied_to(self, patient: str, device: str) -> int:
        """The height of the patient's erasure last applied to the device (its lock held)."""
        key = (patient, device)
        if key not in self._applied:
            self._applied[key] = self.store.erasure_applied(patient, device)
        return self._applied[key]

    def _reconcile(self, state: DeviceState, patient: str | None = None) -> int:
        """Apply to the device (its lock held) the ledger's erasure of the patient of its live
        state, and of ``patient`` (a batch's, about to be appended), if not applied to it yet.
        How many were applied.

        Why every copy goes, whatever the interleaving. A batch is appended to a device only
        under the device's lock, after this check of the ledger, and the erasure is recorded as
        applied to the device (in the store, with the scrub, in one transaction) before the lock
        is let go. So a batch of the patient appended to the device while the device is not
        recorded as scrubbed for the erasure was checked before the erasure committed: the
        erasure covers it, even when its write lands after the store-wide shred (the group
        commit it waited in ran late). The scrub, under the lock, therefore shreds again every
        batch of the patient the device holds (with their windows' alert values, and the live
        state's memory of values), and every batch appended after it was read after the
        erasure and is kept; the store-wide shred leaves devices already scrubbed alone, so it
        never destroys those. Reading times (the device's clock) could not draw that line: a
        batch read before the erasure may hold readings stamped after its block time (a clock
        ahead), and one read after it may hold readings measured before (a device that was
        offline); refusing or shredding by them would keep the first and lose the second.

        The one bound on time is the ledger's own: a batch received later than the erasure's
        block time plus the contract's clock skew is not the erasure's to destroy (a node
        catching up reads it before it commits the erasure's block), as the node audit holds.

        The live state only ever holds its patient's values (a new binding empties the rules'
        memory), and it changes patient only under the lock, after this check."""
        applied = 0
        for who in dict.fromkeys(p for p in (state.patient, patient) if p):
            erasure = erasure_of(self.ledger, who)
            if erasure is not None and self._applied_to(who, state.device) < erasure.height:
                self._scrub(state, who, erasure)
                applied += 1
        return applied

    def _scrub(self, state: DeviceState, patient: str, erasure: Erasure) -> None:
        """The erasure applied to a device (its lock held): its batches of the patient
        shredded; if the live state is the patient's, the rules' memory of recent values goes
        (their counters stay, so an alert under way does not fire twice) and the open window's
        alerts keep only what the ledger will hold (rule, index, time). Recorded as applied in
        the same transaction; memory changes only once that is durable."""
        live = state.patient == patient
        evaluator = {rule: {k: v for k, v in memory.items() if k != "recent"}
                     for rule, memory in state.evaluator.items()}  # fmt: skip
        alerts = erased_alerts(state.alerts)
        scrubbed = {**state.to_json(), "evaluator": evaluator, "alerts": alerts} if live else None
        self.store.scrub_device(state.device, patient, erasure, scrubbed)
        if live:
            state.evaluator, state.alerts = evaluator, alerts
        self._applied[(patient, state.device)] = erasure.height

    def _erasures_left(self) -> set[str]:
        """Patients held here whose erasure on the ledger is not wholly applied (a stop between
        its commit and its application, or a failure): to a device whose live state is theirs,
        to the whole store, or to a batch stored after the store-wide shred."""
        left, patients = set(), set(self.store.patients())
        for device in self.store.devices():
            with self._lock(device):  # what is applied to a device is read under its lock
                patient = self._state(device).patient
                if patient is None:
                    continue
                patients.add(patient)
                erasure = erasure_of(self.ledger, patient)
                if erasure is not None and self._applied_to(patient, device) < erasure.height:
                    left.add(patient)
        for patient in sorted(patients - left):
            erasure = erasure_of(self.ledger, patient)
            if erasure is not None and (
                self.store.erasure_applied(patient) < erasure.height
                or self.store.devices_holding(patient, erasure)
            ):
                left.add(patient)
        return left

    def forget_erased(self) -> int:
        """Apply the erasures noted (committed since the last pass, or left by a stop or a
        failure). One that fails stays noted for the next pass (the anchoring thread's, or the
        next start's: the store records what was applied). How many devices were scrubbed."""
        scrubbed, _ = self._apply_erasures()
        return scrubbed

    def _apply_erasures(self) -> tuple[int, bool]:
        with self._erasures_lock:
            noted, self._erasures = self._erasures, set()
        scrubbed, failed = 0, False
        for patient in sorted(noted):
            try:
                scrubbed += self._apply_erasure(patient)
            except Exception as exc:  # a busy or failing store: applied at the next pass
                failed = True
                log.warning(
                    "an erasure of device readings could not be applied yet (%s); it will be "
                    "retried",
                    type(exc).__name__,
                )  # the patient and the store's message are not logged
                with self._erasures_lock:
                    self._erasures.add(patient)
        return scrubbed, failed

    def _apply_erasure(self, patient: str) -> int:
        erasure = erasure_of(self.ledger, patient)
        if erasure is None:
            return 0
        if self.store.erasure_applied(patient) < erasure.height:
            self.store.shred_patient(patient, erasure)  # its listener's shred failed, or none ran
        scrubbed = 0
        for device in sorted(set(self.store.devices()) | set(self._devices)):
            with self._lock(device):
                state = self._state(device)
                if state.patient == patient and self._reconcile(state):
                    scrubbed += 1
        # a batch stored after the shred on a device whose live state has moved on since
        for device in self.store.devices_holding(patient, erasure):
            with self._lock(device):
                state = self._state(device)
                if self._applied_to(patient, device) < erasure.height:
                    self._scrub(state, patient, erasure)
                    scrubbed += 1
        return scrubbed

    # -- anchoring -------------------------------------------------------------------------

    def _anchor_loop(self) -> None:
        while not self._stop.is_set():
            if self._apply_erasures()[1]:
                self._stop.wait(0.5)  # a failing store: not retried in a tight loop
            try:
                first = self._closed.get(timeout=min(0.05, self.window_ms / 4000))
            except queue.Empty:
                self.close_due()
                continue
            windows = [first]
            with contextlib.suppress(queue.Empty):
                while len(windows) < 500:
                    windows.append(self._closed.get_nowait())
            try:
                self.anchor(windows)
            except Exception:  # not committed (a timeout, a stopped orderer): try them again
                log.exception("anchoring %d windows failed; retrying", len(windows))
                for window in windows:
                    self._closed.put(window)
                self._stop.wait(0.5)
            self.close_due()

    def anchor(self, windows: list[ClosedWindow]) -> list[dict[str, Any]]:
        """Anchor closed windows in order (one submission); handle each receipt."""
        # each device's windows in order, whatever order they were queued in; and only windows
        # still waiting here (a refused device's later windows are gone)
        windows = sorted(
            (w for w in windows if self._still_closed(w)), key=lambda w: (w.device, w.window)
        )
        if not windows:
            return []
        calls = [
            (
                MONITORING,
                "anchor_window",
                {
                    "device": w.device,
                    "patient": w.patient,
                    "window": w.window,
                    "root": w.root,
                    "count": w.count,
                    "first": w.first_ms,
                    "last": w.last_ms,
                    "rules_version": w.rules_version,
                    "alerts": [{k: a[k] for k in ("rule", "index", "at")} for a in w.alerts],
                },
            )
            for w in windows
        ]
        receipts = self.node.execute(calls, timeout=120)
        waiting: set[str] = set()  # devices whose later windows wait for an earlier one
        dropped: set[str] = set()  # devices whose unanchored windows were refused
        again: list[ClosedWindow] = []
        for window, receipt in zip(windows, receipts, strict=True):
            device = window.device
            if device in dropped:
                continue
            code = None if receipt["result"] == "accepted" else receipt["code"]
            if code is None:
                self._anchored(window, receipt["tx_id"], receipt)
            elif device in waiting:
                again.append(window)  # in order, after the window it waits for
            elif code == "STALE_RULES":  # the rules changed after it was evaluated
                again.append(self._reevaluated(window))
                waiting.add(device)
            elif code == "WINDOW_ORDER" and self._already_anchored(window):
                continue
            elif code == "WINDOW_ORDER" and self._retry(window):
                again.append(window)  # an earlier window is still on its way
                waiting.add(device)
            else:
                log.warning(
                    "window %s/%s refused (%s): its readings are dropped",
                    device,
                    window.window,
                    code,
                )
                dropped.add(device)
                self._refused(device, window.window)
        for window in again:
            self._closed.put(window)
        return receipts

    def _still_closed(self, window: ClosedWindow) -> bool:
        held = self.store.window(window.device, window.window)
        return held is not None and held.status == "closed" and held.root == window.root

    def _anchored(self, window: ClosedWindow, tx_id: str, receipt: dict[str, Any]) -> None:
        self._attempts.pop((window.device, window.window), None)
        self.store.anchored(window.device, window.window, tx_id)
        for observer in self.on_anchored:
            observer(window, receipt)

    def _already_anchored(self, window: ClosedWindow) -> bool:
        """A window the ledger holds already (a retry after a timeout, or a restart)."""
        held = window_of(self.ledger.state, window.device, window.window)
        if held is None or held["root"] != window.root:
            return False
        self._anchored(window, str(held["tx"]), {"result": "accepted", "tx_id": held["tx"]})
        return True

    def _retry(self, window: ClosedWindow) -> bool:
        key = (window.device, window.window)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        return self._attempts[key] <= MAX_ATTEMPTS

    def _refused(self, device: str, window: int) -> None:
        with self._lock(device):
            state = self._state(device)
            try:
                self._reconcile(state)  # before the state forgets whose it was
            except Exception:  # the store-wide pass finds the device by its batches
                if state.patient is not None:
                    with self._erasures_lock:
                        self._erasures.add(state.patient)
            fresh = DeviceState(device, last_seq=state.last_seq)
            fresh.window = next_window(self.ledger.state, device)
            self._devices[device] = fresh
            self.store.refused(device, window, fresh.to_json())

    def _reevaluated(self, window: ClosedWindow) -> ClosedWindow:
        """The window under the patient's current rules (they changed before it anchored)."""
        rules = self._rules(window.device, window.patient)
        readings: list[Reading] = []
        try:
            for batch in self.store.batches_of(window.device, window.window):
                readings += open_batch(batch, self.ledger.node_key, "custodian")
            fired = evaluate(rules["rules"] if rules else [], {}, readings)
        except Gone:
            # the patient erased these readings before the window anchored: nothing is left to
            # judge, so it anchors under the new rules with no alert (never retried for ever)
            fired = []
        redone = ClosedWindow(
            **{
                **window.__dict__,
                "rules_version": 0 if rules is None else int(rules["version"]),
                "alerts": [f.as_json() for f in fired],
            }
        )
        self.store.resubmit(redone)
        return redone
