"""The monitoring store (``monitoring.sqlite``: devices, batches, windows) against the ledger.

What is checked:

* Schema: the tables and indexes are exactly those ``ReadingsStore`` creates (none missing or
  altered, no trigger, view or other object added), and SQLite's quick check passes.
* ``devices``: each device is on the ledger and owned by this node's organisation; its state
  opens with the node's at-rest key, sealed for that row; it is newer than every window the
  ledger anchored for the device. A device of which this node anchored windows has a row.
* ``windows``: each belongs to a device the node holds the state of and is numbered below its
  open window; its alerts open with the node's at-rest key, sealed for that row. An anchored
  window is the ledger's, field by field (root, count, first and last times, patient,
  anchoring transaction) and, from the anchoring transaction itself, the same rules version
  and the same alerts (rule, reading index, time). A window waiting for its anchor is not a
  different window the ledger holds under its number; a refused one is not on the ledger.
  Every window this node anchored (the anchoring transaction is signed with its key) is held.
* ``batches``: each belongs to a window held here, or to the device's open window, and names
  that window's patient; a refused window keeps none. A window's batches tile its readings
  exactly, and their salted digests recompute the root: the one the ledger anchored, or for a
  window not yet anchored the window's own root, or for the open window the Merkle frontier in
  the device's state. Each batch's readings open with the node's copy of the data key (bound
  to the batch's device and number), are as many as it says, digest to its stored digests and
  span its first and last times. Batch numbers rise with the windows and reading positions and
  never pass the device's last batch.
* Erasure (ruleset r4, ``monitoring.erase_readings``): a batch whose keys were destroyed is a
  difference unless the ledger records an erasure by its patient that covers it (received
  before the erasure, within the contract's clock skew); a batch the node held when the erasure
  committed (its window anchored at or before the erasure's height, or received before it by
  more than the skew) that can still be read is a difference. An erased batch's digests stay
  and still recompute the anchored root, so a node passes after a patient's erasure.
* ``erasures`` (what the node records as applied, so that an erasure interrupted by a stop or a
  failure is applied again): each row's patient erased their readings on the ledger, at the
  row's height or later, and a device it names is on the ledger and this organisation's. Whether
  the erasure was wholly applied is what the batches' check sees.

What cannot be checked, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* A batch's ``body_hash`` (the hash of the device's signed batch) and its ``received_ms``: the
  signed batch is not kept (the hash only recognises a retry) and the arrival time is the
  node's own clock, seen by no one else. ``received_ms`` is used only to tell an erased batch
  from one received after the erasure.
* The patient's copy of each data key: it opens only with the patient's private key, which
  this checker does not hold; its size is checked, its bytes vouched for by the row's code.
* The readings of an erased batch: they are destroyed by design; only their digests remain.
* Windows not yet anchored (waiting for their anchor) and the device's open window: the ledger
  has not seen them. Anyone can seal readings for the node's public key, but only the node's
  key codes a row: whoever holds it can replace a waiting window's readings, digests and root
  together without being caught here (the node would then anchor them). Once anchored, no
  such change goes unseen.
* The rule evaluator's state and the open window's alerts inside a device's state, and the
  values in a window's alerts: they are sealed (a changed byte is caught), but whether they
  follow from the readings takes a replay of the rules (``careledger devices audit``).
* A sealed value swapped for an older sealed value of the same row (a state restored from a
  backup): sealing binds a value to its row, not to a version. The table's digest catches it,
  unless the whole table was put back with its digest; then only where the older value
  contradicts the rest, as a lagging device state does.

Values in clear (not sealed with the node's key) are differences: the node has sealed them
since issue 15, and a value in clear could have been written by anyone. Differences name
devices, batch numbers, windows and fields, never readings, alert values or patients.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from careledger.contracts.monitoring import (
    SKEW,
    device_ids,
    device_of,
    erasure_entry,
    windows_of,
)
from careledger.core import merkle
from careledger.core.vitals import Reading, from_json
from careledger.errors import CareLedgerError
from careledger.monitoring.batches import (
    READINGS_TYPE,
    batch_record_id,
    reading_digest,
    reading_salt,
)
from careledger.monitoring.store import MONITORING_FILE, SCHEMA
from careledger.node_audit.check import (
    Difference,
    NodeContext,
    SchemaObjects,
    row_count,
    schema_created_by,
    schema_of,
    unreadable,
)
from careledger.vault.at_rest import MARK, AtRest
from careledger.vault.crypto import NONCE_SIZE, SALT_SIZE, open_resource, unwrap_key

DIGEST = 32
LISTED = 100_000_000  # keys of the ledger listed at most: an audit reads them all
WRAPPED_SIZE = 80  # a sealed box: ephemeral key, data key, tag
STATUSES = frozenset({"closed", "anchored", "refused"})
DECODING = (CareLedgerError, ValueError, TypeError, KeyError, IndexError, AttributeError)


def schema_differences(store: str, conn: sqlite3.Connection, schema: str) -> Iterator[Difference]:
    """How a store's schema differs from what ``schema`` creates, and SQLite's quick check."""
    expected = _by_kind(schema_created_by(schema, store=store))
    held = _by_kind(schema_of(conn))
    for kind, name in sorted(expected.keys() | held.keys()):
        ours, theirs = expected.get((kind, name)), held.get((kind, name))
        if theirs is None:
            assert ours is not None
            yield Difference(store, ours[0], f"{kind} {name}", "missing from the schema")
        elif ours is None:
            yield Difference(
                store, theirs[0], f"{kind} {name}", "not in the schema the node creates"
            )
        elif ours != theirs:
            yield Difference(store, theirs[0], f"{kind} {name}", "differs from the schema")
    found = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if found != ["ok"]:
        yield Difference(store, "(file)", "", "SQLite's quick check fails: " + "; ".join(found[:3]))


def _by_kind(objects: SchemaObjects) -> dict[tuple[str, str], tuple[str, str | None]]:
    return {(kind, name): (table, sql) for name, (kind, table, sql) in objects.items()}


def open_sealed(sealed: AtRest, value: object, row: str) -> tuple[bytes | None, str]:
    """A value the node sealed for ``row``, opened; or None and why not (never the value)."""
    blob = value if isinstance(value, bytes) else str(value).encode()
    if not blob.startswith(MARK):
        return None, "held in clear, not sealed with the node's key"
    try:
        return sealed.open(blob, row), ""
    except (CareLedgerError, ValueError):  # a wrong tag, or too short to hold a nonce
        return None, "its sealed value does not open with the node's key (changed, or moved)"


@dataclass(frozen=True)
class _Batch:
    device: str
    seq: int
    window: int
    first_index: int
    count: int
    patient: str
    first_ms: int
    last_ms: int
    received_ms: int
    nonce: bytes
    ciphertext: bytes
    salt: bytes
    wrapped: bytes
    digests: bytes

    @property
    def row(self) -> str:
        return batch_record_id(self.device, self.seq)


@dataclass(frozen=True)
class _Window:
    device: str
    window: int
    patient: str
    count: int
    first_ms: int
    last_ms: int
    root: str
    rules_version: int
    alerts: object
    status: str
    tx: str | None

    @property
    def row(self) -> str:
        return f"{self.device}/{self.window}"


@dataclass(frozen=True)
class _State:
    """The parts of a device's state the store's other rows must agree with."""

    last_seq: int
    window: int
    count: int
    frontier: list[str]
    first_ms: int | None
    last_ms: int | None
    patient: str | None


@dataclass(frozen=True)
class _Expected:
    """What a window's batches must add up to, and who says so."""

    patient: str
    count: int
    first_ms: int | None
    last_ms: int | None
    root: str | None  # the root, or None for the open window (then the frontier)
    frontier: list[str]
    source: str
    height: int | None = None  # the height the ledger anchored the window at


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise TypeError("not a BLOB")


def _batch(row: tuple[Any, ...]) -> _Batch:
    return _Batch(
        device=str(row[0]), seq=int(row[1]), window=int(row[2]), first_index=int(row[3]),
        count=int(row[4]), patient=str(row[5]), first_ms=int(row[6]), last_ms=int(row[7]),
        received_ms=int(row[8]), nonce=_bytes(row[9]), ciphertext=_bytes(row[10]),
        salt=_bytes(row[11]), wrapped=_bytes(row[12]), digests=_bytes(row[13]),
    )  # fmt: skip


def _window(row: tuple[Any, ...]) -> _Window:
    return _Window(
        device=str(row[0]), window=int(row[1]), patient=str(row[2]), count=int(row[3]),
        first_ms=int(row[4]), last_ms=int(row[5]), root=str(row[6]), rules_version=int(row[7]),
        alerts=row[8], status=str(row[9]), tx=None if row[10] is None else str(row[10]),
    )  # fmt: skip


def _state(raw: bytes) -> _State:
    state = orjson.loads(raw)
    frontier = [str(h) for h in state["frontier"]]
    for h in frontier:
        if len(bytes.fromhex(h)) != DIGEST:
            raise ValueError("not a hash")
    return _State(
        last_seq=int(state["last_seq"]),
        window=int(state["window"]),
        count=int(state["count"]),
        frontier=frontier,
        first_ms=None if state["first_ms"] is None else int(state["first_ms"]),
        last_ms=None if state["last_ms"] is None else int(state["last_ms"]),
        patient=None if state["patient"] is None else str(state["patient"]),
    )


BATCH_COLUMNS = (
    "device, seq, window, first_index, count, patient, first_ms, last_ms, received_ms, nonce,"
    " ciphertext, salt, wrapped, digests"
)
WINDOW_COLUMNS = (
    "device, window, patient, count, first_ms, last_ms, root, rules_version, alerts, status, tx"
)


class MonitoringStoreCheck:
    """The monitoring store against the ledger (see the module's docstring)."""

    store = MONITORING_FILE

    def size(self, context: NodeContext) -> int:
        return row_count(context, self.store, ("devices", "batches", "windows", "erasures"))

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        if conn is None:
            yield from _Audit(context, None, progress).run()
            return
        try:
            yield from schema_differences(self.store, conn, SCHEMA)
            yield from _Audit(context, conn, progress).run()
        except sqlite3.DatabaseError as exc:
            why = f"the store cannot be read ({unreadable(exc)})"
            yield Difference(self.store, "(file)", "", why)
        finally:
            conn.close()


class _Audit:
    def __init__(
        self,
        context: NodeContext,
        conn: sqlite3.Connection | None,
        progress: Callable[[int], None],
    ) -> None:
        self.context = context
        self.conn = conn
        self.progress = progress
        self.sealed = AtRest.for_node(context.node_key, "monitoring")
        self.signer = context.node_key.public_b64
        self.states: dict[str, _State] = {}
        self._devices: dict[str, Any] = {}
        self._erased: dict[str, Any] = {}
        self._ledger_windows: dict[str, dict[int, dict[str, Any]]] = {}

    def _difference(self, table: str, row: str, problem: str) -> Difference:
        return Difference(MONITORING_FILE, table, row, problem)

    # -- the ledger's side ---------------------------------------------------------------------

    def ledger_device(self, device: str) -> Any:
        if device not in self._devices:
            self._devices[device] = device_of(self.context.state, device)
        return self._devices[device]

    def ledger_windows(self, device: str) -> dict[int, dict[str, Any]]:
        """The windows the ledger anchored for a device, by number."""
        if device not in self._ledger_windows:
            held = windows_of(self.context.state, self.context.state_keys, device, LISTED)
            self._ledger_windows[device] = {n: dict(w) for n, w in held.items()}
        return self._ledger_windows[device]

    def erasure(self, patient: str) -> Any:
        if patient not in self._erased:
            self._erased[patient] = erasure_entry(self.context.state, patient)
        return self._erased[patient]

    def anchoring(self, held: dict[str, Any]) -> dict[str, Any] | None:
        """The body of the transaction that anchored a window (None: not found)."""
        found = self.context.ledger.find_tx(str(held.get("tx")))
        if found is None:
            return None
        body = orjson.loads(found[1].envelope)["body"]
        return dict(body) if body.get("method") == "anchor_window" else None

    def anchored_here(self, held: dict[str, Any]) -> bool:
        body = self.anchoring(held)
        return body is not None and body.get("signer") == self.signer

    def owned_devices(self) -> list[str]:
        owned = []
        for device in device_ids(self.context.state_keys, LISTED):
            entry = self.ledger_device(device)
            if entry is not None and entry.get("org") == self.context.org:
                owned.append(device)
        return sorted(owned)

    # -- the store's side ----------------------------------------------------------------------

    def _rows(self, table: str, columns: str, order: str) -> Iterator[tuple[Any, ...] | Difference]:
        if self.conn is None:
            return
        try:
            rows = self.conn.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()  # noqa: S608 - our names
        except sqlite3.Error as exc:
            yield self._difference(table, "", f"the table cannot be read ({unreadable(exc)})")
            with contextlib.suppress(sqlite3.Error):  # its rows were counted in size()
                self.progress(int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]))  # noqa: S608
            return
        yield from (tuple(r) for r in rows)

    def run(self) -> Iterator[Difference]:
        devices: dict[str, object] = {}
        for item in self._rows("devices", "device, state", "device"):
            if isinstance(item, Difference):
                yield item
            else:
                devices[str(item[0])] = item[1]
        windows: dict[tuple[str, int], _Window] = {}
        for item in self._rows("windows", WINDOW_COLUMNS, "device, window"):
            if isinstance(item, Difference):
                yield item
                continue
            try:
                w = _window(item)
            except DECODING:
                self.progress(1)
                yield self._difference(
                    "windows", f"{item[0]}/{item[1]}", "a column holds a value of the wrong type"
                )
                continue
            windows[(w.device, w.window)] = w
        batches: list[_Batch] = []
        for item in self._rows("batches", BATCH_COLUMNS, "device, seq"):
            if isinstance(item, Difference):
                yield item
                continue
            try:
                batches.append(_batch(item))
            except DECODING:
                self.progress(1)
                yield self._difference(
                    "batches", f"{item[0]}:{item[1]}", "a column holds a value of the wrong type"
                )
        erasures: list[tuple[Any, ...]] = []
        for item in self._rows("erasures", "patient, device, height", "device, height, patient"):
            if isinstance(item, Difference):
                yield item
            else:
                erasures.append(item)
        owned = self.owned_devices()
        yield from self.devices(devices, owned)
        yield from self.windows(windows, set(devices), owned)
        yield from self.batches(batches, windows)
        yield from self.erasures(erasures)

    # -- erasures ------------------------------------------------------------------------------

    def erasures(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        """Each recorded erasure is one the ledger holds (the row names no patient)."""
        for patient, device, height in rows:
            self.progress(1)
            if not (isinstance(patient, str) and isinstance(device, str) and type(height) is int):
                yield self._difference(
                    "erasures", f"{device}@{height}", "a column holds a value of the wrong type"
                )
                continue
            row = f"{device or '(every device)'}@{height}"
            erasure = self.erasure(patient)
            if erasure is None or height < 1:
                yield self._difference(
                    "erasures", row, "records an erasure the ledger does not hold"
                )
            elif height > int(erasure.get("height", 0)):
                yield self._difference(
                    "erasures", row, "records an erasure later than the patient's on the ledger"
                )
            if device:
                entry = self.ledger_device(device)
                if entry is None or entry.get("org") != self.context.org:
                    yield self._difference(
                        "erasures", row, "names a device that is not this organisation's"
                    )

    # -- devices -------------------------------------------------------------------------------

    def devices(self, held: dict[str, object], owned: list[str]) -> Iterator[Difference]:
        for device, blob in held.items():
            self.progress(1)
            entry = self.ledger_device(device)
            if entry is None:
                yield self._difference("devices", device, "no such device on the ledger")
                continue
            if entry.get("org") != self.context.org:
                yield self._difference(
                    "devices", device,
                    "the ledger gives the device to another organisation: only its owner's "
                    "node ingests its readings",
                )  # fmt: skip
            opened, why = open_sealed(self.sealed, blob, f"devices:{device}")
            if opened is None:
                yield self._difference("devices", device, f"its state: {why}")
                continue
            try:
                state = _state(opened)
            except DECODING:
                yield self._difference("devices", device, "its state is not a device's state")
                continue
            self.states[device] = state
            anchored = self.ledger_windows(device)
            if anchored and max(anchored) >= state.window:
                yield self._difference(
                    "devices", device,
                    "its state is older than the windows the ledger anchored for the device",
                )  # fmt: skip
        for device in owned:
            if device in held:
                continue
            anchored = self.ledger_windows(device)
            if anchored and self.anchored_here(anchored[max(anchored)]):
                yield self._difference(
                    "devices", device,
                    "this node anchored windows of the device; its state is not held",
                )  # fmt: skip

    # -- windows -------------------------------------------------------------------------------

    def windows(
        self, held: dict[tuple[str, int], _Window], devices: set[str], owned: list[str]
    ) -> Iterator[Difference]:
        for w in held.values():
            self.progress(1)
            for problem in self._window_problems(w, devices):
                yield self._difference("windows", w.row, problem)
        for device in owned:
            for number, anchored in sorted(self.ledger_windows(device).items()):
                if (device, number) in held or not self.anchored_here(anchored):
                    continue
                yield self._difference(
                    "windows", f"{device}/{number}", "this node anchored the window; it is not held"
                )

    def _window_problems(self, w: _Window, devices: set[str]) -> Iterator[str]:
        if w.device not in devices:
            yield "a window of a device whose state is not held"
        if w.status not in STATUSES:
            yield "its status is not one the node writes"
            return
        state = self.states.get(w.device)
        if state is not None and w.status != "refused" and w.window >= state.window:
            yield "numbered at or beyond the device's open window"
        alerts: list[tuple[Any, ...]] | None = None
        opened, why = open_sealed(self.sealed, w.alerts, f"windows:{w.device}/{w.window}")
        if opened is None:
            yield f"its alerts: {why}"
        else:
            try:
                alerts = [(a["rule"], a["index"], a["at"]) for a in orjson.loads(opened)]
            except DECODING:
                yield "its alerts are not a list of alerts"
        held = self.ledger_windows(w.device).get(w.window)
        if w.status == "closed":
            if w.tx is not None:
                yield "waiting for its anchor, yet it names an anchoring transaction"
            if held is not None and held.get("root") != w.root:
                yield "waiting for its anchor, but the ledger anchored another window as this one"
        elif w.status == "refused":
            if held is not None and held.get("root") == w.root:
                yield "refused here, but the ledger anchored it"
        elif held is None:
            yield "anchored here, unknown to the ledger"
        else:
            yield from self._anchored_problems(w, held, alerts)

    def _anchored_problems(
        self, w: _Window, held: dict[str, Any], alerts: list[tuple[Any, ...]] | None
    ) -> Iterator[str]:
        ours = {"root": w.root, "count": w.count, "first": w.first_ms, "last": w.last_ms,
                "patient": w.patient, "tx": w.tx}  # fmt: skip
        differ = [name for name, value in ours.items() if held.get(name) != value]
        if differ:
            yield f"differs from the window the ledger anchored in {', '.join(differ)}"
        body = self.anchoring(held)
        if body is None:
            yield "the ledger's anchoring transaction of the window is not found"
            return
        args = body.get("args") or {}
        if args.get("rules_version") != w.rules_version:
            yield "its rules version is not the one the window was anchored under"
        anchored = [(a.get("rule"), a.get("index"), a.get("at")) for a in args.get("alerts", [])]
        if alerts is not None and alerts != anchored:
            yield "its alerts are not those the window was anchored with"

    # -- batches -------------------------------------------------------------------------------

    def batches(
        self, batches: list[_Batch], windows: dict[tuple[str, int], _Window]
    ) -> Iterator[Difference]:
        by_window: dict[tuple[str, int], list[_Batch]] = defaultdict(list)
        for batch in batches:
            by_window[(batch.device, batch.window)].append(batch)
        yield from self._numbering(batches)
        for key in sorted(by_window):
            group = sorted(by_window[key], key=lambda b: (b.first_index, b.seq))
            expected, why = self._expected(key, windows)
            for batch in group:
                self.progress(1)
                for problem in self._batch_problems(batch, expected):
                    yield self._difference("batches", batch.row, problem)
            if why:
                yield self._difference("batches", f"{key[0]}/{key[1]}", why)
            elif expected is not None:
                yield from self._window_readings(key, group, expected)
        for key, w in sorted(windows.items()):
            state = self.states.get(key[0])
            is_open = state is not None and state.window == key[1]
            if key not in by_window and w.status != "refused" and not is_open:
                yield self._difference("batches", w.row, "none of the window's readings are held")
        for device, state in sorted(self.states.items()):
            if state.count and (device, state.window) not in by_window:
                yield self._difference(
                    "batches", f"{device}/{state.window}",
                    "none of the readings of the device's open window are held",
                )  # fmt: skip

    def _numbering(self, batches: list[_Batch]) -> Iterator[Difference]:
        """Batch numbers rise with their windows and positions, up to the device's last."""
        by_device: dict[str, list[_Batch]] = defaultdict(list)
        for batch in batches:
            by_device[batch.device].append(batch)
        for device, group in sorted(by_device.items()):
            group.sort(key=lambda b: b.seq)
            state = self.states.get(device)
            previous: _Batch | None = None
            for batch in group:
                if previous is not None and (batch.window, batch.first_index) <= (
                    previous.window,
                    previous.first_index,
                ):
                    yield self._difference(
                        "batches", batch.row, "numbered out of order with its window and position"
                    )
                if state is not None and batch.seq > state.last_seq:
                    yield self._difference(
                        "batches", batch.row, "numbered beyond the device's last batch"
                    )
                previous = batch

    def _expected(
        self, key: tuple[str, int], windows: dict[tuple[str, int], _Window]
    ) -> tuple[_Expected | None, str]:
        """What the batches of a window must add up to; or why they should not be here."""
        device, number = key
        state = self.states.get(device)
        w = windows.get(key)
        if state is not None and number == state.window:
            return (
                _Expected(
                    patient=str(state.patient), count=state.count, first_ms=state.first_ms,
                    last_ms=state.last_ms, root=None, frontier=state.frontier,
                    source="the device's state",
                ),
                "",
            )  # fmt: skip
        if w is None:
            return None, "batches of a window that is not held"
        if w.status == "refused":
            return None, "batches of a refused window (its readings are dropped)"
        held = self.ledger_windows(device).get(number)
        if w.status == "anchored" and held is not None:
            return (
                _Expected(
                    patient=str(held.get("patient")), count=int(held.get("count", -1)),
                    first_ms=held.get("first"), last_ms=held.get("last"),
                    root=str(held.get("root")), frontier=[], source="the ledger",
                    height=int(held.get("height", -1)),
                ),
                "",
            )  # fmt: skip
        return (
            _Expected(w.patient, w.count, w.first_ms, w.last_ms, w.root, [], "its window"),
            "",
        )

    def _batch_problems(self, batch: _Batch, expected: _Expected | None) -> Iterator[str]:
        if expected is not None and batch.patient != expected.patient:
            yield "names another patient than its window"
        if (
            batch.count < 1
            or len(batch.digests) != DIGEST * batch.count
            or len(batch.salt) != SALT_SIZE
            or len(batch.nonce) != NONCE_SIZE
        ):
            yield "its count, digests, salt or nonce are malformed"
            return
        try:
            wrapped = {str(k): bytes.fromhex(v) for k, v in orjson.loads(batch.wrapped).items()}
        except DECODING:
            yield "its wrapped data keys are not the node's"
            return
        must, may = self._erasure_covers(batch, expected)
        if not wrapped:
            if not may:
                yield "its readings were destroyed, but the ledger records no erasure covering them"
            elif batch.ciphertext:
                yield "erased, yet its ciphertext is kept"
            elif any(batch.salt):
                yield "erased, yet its salt is kept (its readings could be found by guessing)"
            return
        if must:
            yield "the patient erased these readings (on the ledger), yet they can still be read"
        if set(wrapped) != {"patient", "custodian"} or any(
            len(k) != WRAPPED_SIZE for k in wrapped.values()
        ):
            yield "its data key is not wrapped for the patient and the node"
            return
        try:
            readings = self._open(batch, wrapped["custodian"])
        except DECODING:
            yield "its readings do not open with the node's key (changed, or moved)"
            return
        if len(readings) != batch.count:
            yield "it holds another number of readings than it says"
            return
        digests = b"".join(
            reading_digest(r, batch.device, reading_salt(batch.salt, i))
            for i, r in enumerate(readings)
        )
        if digests != batch.digests:
            yield "its digests do not commit to its readings"
        times = [r.time_ms for r in readings]
        if (batch.first_ms, batch.last_ms) != (min(times), max(times)):
            yield "its first and last times are not its readings'"

    def _erasure_covers(self, batch: _Batch, expected: _Expected | None) -> tuple[bool, bool]:
        """Whether the ledger's erasure by the batch's patient must, and may, have destroyed it.

        It must if the node held the batch when the erasure committed: its window was anchored
        at or before the erasure's height, or it arrived before the erasure's block time (by
        more than the contract's clock skew). It may if it arrived before that time plus skew.
        """
        erasure = self.erasure(batch.patient)
        if erasure is None:
            return False, False
        before = int(erasure["before"])
        height = None if expected is None else expected.height
        held = height is not None and height <= int(erasure["height"])
        must = held or batch.received_ms < before - SKEW
        return must, must or batch.received_ms <= before + SKEW

    def _open(self, batch: _Batch, wrapped: bytes) -> list[Reading]:
        plaintext = open_resource(
            batch.ciphertext,
            record_id=batch_record_id(batch.device, batch.seq),
            resource_type=READINGS_TYPE,
            version=1,
            data_key=unwrap_key(wrapped, self.context.node_key),
            nonce=batch.nonce,
        )
        return from_json(orjson.loads(plaintext))

    def _window_readings(
        self, key: tuple[str, int], group: list[_Batch], expected: _Expected
    ) -> Iterator[Difference]:
        """A window's batches tile its readings, and their digests make its root."""
        row = f"{key[0]}/{key[1]}"
        position = 0
        for batch in group:
            if batch.first_index > position:
                yield self._difference(
                    "batches", row, f"readings {position}..{batch.first_index - 1} are missing"
                )
            elif batch.first_index < position:
                yield self._difference(
                    "batches", row, f"batches overlap at reading {batch.first_index}"
                )
            position = max(position, batch.first_index + max(batch.count, 0))
        if position != expected.count:
            yield self._difference(
                "batches", row,
                f"its batches hold {position} readings; {expected.source} says {expected.count}",
            )  # fmt: skip
            return
        if any(len(b.digests) != DIGEST * b.count or b.count < 1 for b in group):
            return  # malformed batches are reported one by one
        if (min(b.first_ms for b in group), max(b.last_ms for b in group)) != (
            expected.first_ms,
            expected.last_ms,
        ):
            yield self._difference(
                "batches", row, f"its readings' first and last times are not {expected.source}'s"
            )
        digests = b"".join(b.digests for b in group)
        leaves = [merkle.leaf_hash(digests[i : i + DIGEST]) for i in range(0, len(digests), DIGEST)]
        if expected.root is None:
            frontier, _ = merkle.append_leaf_hashes([], 0, leaves)
            if [h.hex() for h in frontier] != expected.frontier:
                yield self._difference(
                    "batches", row, "its digests are not the Merkle frontier in the device's state"
                )
        elif merkle.root_from_leaf_hashes(leaves).hex() != expected.root:
            yield self._difference(
                "batches", row, f"its digests do not make the root {expected.source} holds"
            )
