"""Counterfeit and diversion alerts, derived from the ledger, kept beside it for listing.

Four signals, two sources:

* accepted transactions emit ``supply.alert`` events: a serial of a registered prefix that was
  never commissioned, seen somewhere (``never_commissioned``), or a unit seen at a location its
  custody chain cannot explain (``unexplained_location``); ``supply.illegitimate`` marks a
  determination, whose 24-hour notification clock the alert carries;
* refused transactions keep no events, only a receipt code; ``UNKNOWN_SERIAL`` (acting on a
  serial never commissioned) and ``ALREADY_DISPENSED`` (a second dispense) become alerts, their
  unit recovered by re-running the refused transaction against the state (``Ledger.explain``);
* a verification of a dispensed, decommissioned or destroyed unit
  (``verified_after_decommission``) is raised by the verification service itself, since
  verifications are reads.

The watcher follows commits and, on start, catches up from the last height it recorded, so no
block is missed across restarts; an alert is stored once (tx, kind and unit are unique). The
recorded height moves with every block that raises an alert, and otherwise at most every
``HEIGHT_EVERY`` blocks: recording it is a durable write of its own, and the listeners run
before a block's waiters are answered, so a write on every block added one fsync to every
request the node answered. A restart re-reads the blocks since the recorded height, which
raise no alert by construction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from careledger.contracts.identity import key_of, member_of
from careledger.contracts.supply import prefix_owner
from careledger.core.tx import decode_stored_envelope
from careledger.errors import ValidationError
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import Executed, Explanation
from careledger.ledger.ports import StoredEvent, StoredTx
from careledger.sqlite_threads import ThreadConnections, iso_ms, page_of

log = logging.getLogger(__name__)

HEIGHT_EVERY = 1_000  # blocks without an alert between two recorded heights, at most

REFUSAL_KINDS = {"UNKNOWN_SERIAL": "never_commissioned", "ALREADY_DISPENSED": "dispensed_twice"}
ALERT_KINDS = frozenset(
    {
        "never_commissioned",
        "dispensed_twice",
        "unexplained_location",
        "verified_after_decommission",
        "illegitimate",
    }
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, code TEXT, gtin TEXT, serial TEXT,
  location TEXT, org TEXT, brand_owner TEXT, height INTEGER, tx_id TEXT, time INTEGER NOT NULL,
  detail BLOB NOT NULL, UNIQUE(tx_id, kind, gtin, serial));
CREATE INDEX IF NOT EXISTS alerts_org ON alerts(org);
CREATE INDEX IF NOT EXISTS alerts_brand ON alerts(brand_owner);
CREATE TABLE IF NOT EXISTS alert_meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Alert:
    kind: str
    time: int  # ms since the epoch (block time, or the verification's clock)
    gtin: str | None = None
    serial: str | None = None
    location: str | None = None
    org: str | None = None  # the organisation whose action raised it
    brand_owner: str | None = None  # the GTIN's prefix owner, who must hear of it
    code: str | None = None
    height: int | None = None
    tx_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class AlertStore:
    def __init__(self, path: Path) -> None:
        self._conns = ThreadConnections(path, "alert store")
        self._conns.schema(SCHEMA)

    def add(self, alerts: Iterable[Alert], *, height: int | None = None) -> None:
        """Store alerts (once each) and, with ``height``, record that blocks up to it are done."""
        conn = self._conns.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR IGNORE INTO alerts(kind, code, gtin, serial, location, org, brand_owner,"
                " height, tx_id, time, detail) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        a.kind,
                        a.code,
                        a.gtin,
                        a.serial,
                        a.location,
                        a.org,
                        a.brand_owner,
                        a.height,
                        a.tx_id,
                        a.time,
                        orjson.dumps(dict(a.detail)),
                    )
                    for a in alerts
                ],
            )
            if height is not None:
                conn.execute(
                    "INSERT INTO alert_meta(name, value) VALUES('height', ?)"
                    " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (height,),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def height(self) -> int:
        row = self._conns.get().execute("SELECT value FROM alert_meta WHERE name = 'height'")
        found = row.fetchone()
        return int(found[0]) if found else 0

    def list(
        self,
        *,
        org: str | None,
        kinds: Sequence[str] = (),
        gtin: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Alerts an organisation may see (its own, and those about its brands), oldest first.

        ``org=None`` lists every alert (the node operator's view).
        """
        unknown = set(kinds) - ALERT_KINDS
        if unknown:
            raise ValidationError(
                f"unknown alert kind {sorted(unknown)[0]!r}; one of {sorted(ALERT_KINDS)}",
                code="BAD_ALERT_KIND",
            )
        where: list[str] = ["seq > ?"]
        params: list[object] = [after]
        if org is not None:
            where.append("(org = ? OR brand_owner = ?)")
            params.extend([org, org])
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params.extend(kinds)
        if gtin is not None:
            where.append("gtin = ?")
            params.append(gtin)
        rows = (
            self._conns.get()
            .execute(
                "SELECT seq, kind, code, gtin, serial, location, org, brand_owner, height, tx_id,"  # noqa: S608
                f" time, detail FROM alerts WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                [*params, limit + 1],
            )
            .fetchall()
        )
        rows, last = page_of(rows, limit)
        out = [
            {
                "id": r[0],
                "kind": r[1],
                "code": r[2],
                "gtin": r[3],
                "serial": r[4],
                "location": r[5],
                "org": r[6],
                "brand_owner": r[7],
                "height": r[8],
                "tx_id": r[9],
                "time": iso_ms(r[10]),
                "detail": orjson.loads(r[11]),
            }
            for r in rows
        ]
        return out, last

    def close(self) -> None:
        self._conns.close()


class AlertWatcher:
    """Turns each committed block into alerts (see the module docstring)."""

    def __init__(self, ledger: Ledger, store: AlertStore) -> None:
        self.ledger = ledger
        self.store = store
        self._recorded = 0  # the height last written to the store
        self._reached = 0  # the height of the last block seen
        self._writing = threading.Lock()  # detach on one thread, a last block on another

    def attach(self) -> None:
        self.catch_up()
        self.ledger.commit_listeners.append(self.on_commit)

    def detach(self) -> None:
        """Stop listening, and record the height reached (a stopped node's audit then covers
        every block it committed)."""
        if self.on_commit in self.ledger.commit_listeners:
            self.ledger.commit_listeners.remove(self.on_commit)
        with self._writing:
            if self._reached > self._recorded:
                self.store.add([], height=self._reached)
                self._recorded = self._reached

    def catch_up(self) -> None:
        """Alerts of the blocks since the recorded height, written a chunk of blocks at a time
        (not one durable write per block: a node down for a day would take minutes)."""
        head = self.ledger.head.height
        start = self._recorded = self._reached = self.store.height()
        pending: list[Alert] = []
        for height in range(start + 1, head + 1):
            header = self.ledger.store.header(height)
            if header is None:  # pragma: no cover - the store is consistent up to its head
                break
            txs = self.ledger.store.block_txs(height)
            events = self.ledger.store.block_events(height)
            pending += self._alerts(height, header.time, txs, events)
            if height == head or height - self._recorded >= HEIGHT_EVERY:
                self.store.add(pending, height=height)
                self._recorded = self._reached = height
                pending = []

    def on_commit(self, executed: Executed) -> None:
        header = executed.block.header
        alerts = self._alerts(
            header.height,
            header.time,
            executed.block.txs,
            executed.block.events,
            executed.rejections,
        )
        with self._writing:
            self._reached = max(self._reached, header.height)
            # the first block always: the audit expects the height row once a block was seen
            if alerts or self._recorded == 0 or header.height - self._recorded >= HEIGHT_EVERY:
                self.store.add(alerts, height=header.height)
                self._recorded = header.height

    def _alerts(
        self,
        height: int,
        block_time: int,
        txs: Sequence[StoredTx],
        events: Sequence[StoredEvent],
        rejections: Mapping[str, Explanation] | None = None,
    ) -> list[Alert]:
        """Alerts of one block. ``rejections`` (from execution, exact) when the block is new;
        when catching up, refusals are re-explained on today's state (best effort)."""
        alerts: list[Alert] = []
        for event in events:
            if event.type not in ("supply.alert", "supply.illegitimate"):
                continue
            data = orjson.loads(event.data)
            kind = data.get("kind", "illegitimate")
            tx_id = txs[event.tx_index].tx_id
            detail = {"notify_by": iso_ms(data["notify_by"])} if "notify_by" in data else {}
            alerts.append(
                Alert(
                    kind=kind,
                    time=block_time,
                    gtin=data.get("gtin"),
                    serial=data.get("serial"),
                    location=data.get("location"),
                    org=data.get("org") or data.get("by"),
                    brand_owner=self._brand(data.get("gtin")),
                    height=height,
                    tx_id=tx_id,
                    detail=detail,
                )
            )
        for stored in txs:
            if b'"code"' not in stored.receipt:  # accepted: no refusal to turn into an alert
                continue
            receipt = orjson.loads(stored.receipt)
            kind = REFUSAL_KINDS.get(receipt.get("code", ""))
            if kind is not None:
                known = (rejections or {}).get(stored.tx_id)
                alert = self._refusal_alert(stored, receipt, kind, height, block_time, known)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _refusal_alert(
        self,
        stored: StoredTx,
        receipt: Mapping[str, Any],
        kind: str,
        height: int,
        at: int,
        known: Explanation | None,
    ) -> Alert | None:
        tx = decode_stored_envelope(stored.envelope)
        if tx.contract != "supply":
            return None
        why = known or self.ledger.explain(tx)
        detail = dict(why.detail) if why is not None and why.code == receipt["code"] else {}
        gtin = detail.pop("gtin", None)
        return Alert(
            kind=kind,
            time=at,
            gtin=gtin,
            serial=detail.pop("serial", None),
            location=detail.pop("location", None),
            org=self._org_of(tx.signer, tx.args.get("actor")),
            brand_owner=self._brand(gtin),
            code=str(receipt["code"]),
            height=height,
            tx_id=stored.tx_id,
            detail=detail,
        )

    def _brand(self, gtin: object) -> str | None:
        return prefix_owner(self.ledger.state, gtin) if isinstance(gtin, str) else None

    def _org_of(self, public_key: str, actor: object) -> str | None:
        member_id = actor
        if not isinstance(member_id, str):
            key = key_of(self.ledger.state, public_key)
            member_id = key.get("member") if key else None
        member = member_of(self.ledger.state, str(member_id)) if member_id else None
        return member.get("org") if member else None
