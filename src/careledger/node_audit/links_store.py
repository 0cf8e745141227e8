"""The SMART Health Links store (``links.sqlite``: link, file) and the SMART Health Cards
issuer key (``shc-issuer.json``) against the ledger (ruleset r9, ``contracts/links.py``).

What is checked:

* The store's file: ``sqlite_master`` object for object against what ``ShareLinks`` creates (none
  missing or altered, no trigger, view or other object added), and ``PRAGMA integrity_check``.
* ``link``: each id is a ``links.create`` the ledger holds, for this organisation (custodian),
  of the row's patient. Its parts have the form the node writes: the token's SHA-256 in hex, the
  link key wrapped with AES-GCM (nonce, key, tag: 60 bytes), the passcode as salt and scrypt
  hash (48 bytes), ``created`` a time. A passcode is held exactly when the ledger's flags have
  ``P``. The attempts left are 0 to ``MAX_ATTEMPTS``, all of them for a link without passcode
  (nothing counts them down), none for a link the ledger shows disabled (only running out of
  attempts here disables one), and a link with none left is not active on the ledger (the node
  disables it when they run out; an interrupted disabling shows here too). The sealed part opens
  with the node's at-rest key, sealed for that link; what it holds has the node's form (the
  label, 1 to 80 characters, is checked for length only), the record types it reaches are those
  the ledger's link names, and it names the exact record versions it serves exactly when the
  ledger's flags lack ``L``; each such version is anchored on the ledger, held by this
  organisation, of the link's patient, of a type the link reaches, and was anchored before the
  link was made. ``created`` is within ``CLOCK_WINDOW`` of the ledger's time of the link.
* ``file`` (location files, an hour's life): each is of a link held here and on the ledger; it is
  a compact JWE with the header, IV and tag the node writes (its content cannot be read: see
  below); its link is not a direct-file (``U``) link, never served from a location; it was made
  (``expires`` less ``LOCATION_SECONDS``) after the link was on the ledger and before it expired.
  No file remains of a link the ledger shows revoked or disabled, nor one made before a record
  of the link's patient was shredded: ``ShareLinks`` deletes those when the link ends or the
  record is erased (``revoke``, ``on_commit``).
* Links that must be held and are not: a link the ledger gives this organisation whose
  ``links.create`` was signed with the key this node holds for the patient (only this node can
  have made it, through ``ShareLinks.create``), or that this node disabled, or whose opening this
  node committed (``audit.access`` on the ``link`` basis, signed with the node's key). A node
  without ``links.sqlite`` is checked for these too.
* ``shc-issuer.json``: it holds a private P-256 key and a revocation secret the node can use;
  for every card the ledger shows this node issued (``links.issue_card`` signed with the node's
  key), the key's RFC 7638 thumbprint is the card's ``kid`` (the key the issuer's JWKS publishes
  is the one the card was signed with) and the secret gives the card's ``rid``. A card issued
  here needs the file.

What cannot be checked, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* The wrapped key and the passcode hash: the key that wraps a link's key is derived from the
  URL token, which only whoever holds the link has, and the passcode is the patient's; neither
  is anchored. That they open is seen when a recipient presents the link (a wrong wrapped key
  fails its AES-GCM tag); their bytes are vouched for by the row's code only.
* The token hash: the token is not kept, so whether a hash is the one of the link's token is
  seen only in its form (and the row's code).
* A file's content: it is encrypted under the link's key, which the node cannot open without
  the token. Which records it served is on the ledger (the opening's access event), not in it.
* How many wrong passcodes were tried: attempts are counted here only, never on the ledger, so
  any count from 1 to ``MAX_ATTEMPTS`` the node wrote is accepted for a link with a passcode.
* Key material of a link that ended: ``ShareLinks`` keeps a revoked, disabled or expired link's
  row (its wrapped key and passcode hash) and deletes only its files. That is by design, not a
  leak: the wrapped key opens only with the URL's token, and the node serves nothing of a link
  the ledger ended. So there is nothing zeroed to check, only that the files are gone.
* Files of an expired link: they are deleted lazily (the next location file the node makes
  sweeps expired ones), and the node refuses them by the ledger, so a file of an expired link
  is no difference unless it was made after the link expired.
* The number of files of a link: ``FILES_PER_LINK`` is kept by a delete and an insert that two
  simultaneous openings can interleave, so a link may briefly hold one more.
* Which record versions a link without ``L`` was made with: they are the versions current when
  the row was written, a height the store does not keep, so a version swapped for another
  version of the link's patient anchored before the link was made is not seen (the list is
  sealed: only the node's key can write it).
* A link the ledger gives this organisation that this node neither made nor served, opened or
  disabled: a patient may sign ``links.create`` themselves and send it to any node of the
  organisation (or none), so its absence here is no difference (unless the node held it: the
  table's digest then says rows were removed).
* The label: it is sealed and seen by no one else; it is checked only for its length.
* Times to the second: ``created`` and ``expires`` are the node's clock, the ledger's times the
  clock of the node that ordered the block; they are compared within ``CLOCK_WINDOW``.
* The issuer key file when no card was issued with it: the ledger holds no ``kid`` of it yet, so
  a replaced key cannot be told from the one the node made (its form is still checked). It is a
  file, not a store: no integrity code covers it.

SQLite's messages are never repeated (they can quote a damaged column's text). Differences
name links by id (a ledger transaction id), files by their link and row number, cards by id;
never a patient, a label, a token hash, a wrapped key, a passcode hash, a file's content or
any part of the issuer's key or secret.
"""

from __future__ import annotations

import base64
import binascii
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from careledger.config import KEYS_DIR
from careledger.contracts.audit import NAMESPACE as AUDIT
from careledger.contracts.audit import access_prefix
from careledger.contracts.identity import ID_PATTERN
from careledger.contracts.links import CARD_ID, LINK_ID, card_key, link_key
from careledger.contracts.links import NAMESPACE as LINKS
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import record_key, version_key
from careledger.errors import CareLedgerError
from careledger.fhir.types import RECORD_TYPES
from careledger.health.health_cards import ISSUER_FILE
from careledger.health.share_links import (
    FHIR_JSON,
    LINKS_FILE,
    LOCATION_SECONDS,
    MAX_ATTEMPTS,
    SCHEMA,
    Selection,
)
from careledger.health_links.card import issuer_jwk, revocation_id
from careledger.health_links.link import MAX_LABEL_CHARS
from careledger.keyfile import read_key_file
from careledger.node_audit.check import (
    Difference,
    NodeContext,
    row_count,
    schema_created_by,
    schema_of,
    unreadable,
)
from careledger.node_audit.monitoring_store import open_sealed
from careledger.vault.at_rest import AtRest

__all__ = ["CLOCK_WINDOW", "IssuerKeyCheck", "LinksStoreCheck"]

#: Seconds two clock readings of one event may differ by: the node's clock after a commit and
#: the block's time (set by whichever node orders it), or a file's making and its link's expiry.
CLOCK_WINDOW = 300
NONCE_BYTES, KEY_BYTES, TAG_BYTES, SALT_BYTES, SCRYPT_BYTES = 12, 32, 16, 16, 32
WRAPPED_KEY_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES  # ShareLinks.create
PASSCODE_BYTES = SALT_BYTES + SCRYPT_BYTES
TOKEN_HASH = re.compile(r"^[0-9a-f]{64}$")
DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
FILE_HEADER = {"alg": "dir", "enc": "A256GCM", "cty": FHIR_JSON, "zip": "DEF"}  # ShareLinks._serve
ENDED = frozenset({"revoked", "disabled"})
LINK_COLUMNS = (
    "rowid, id, patient, token_hash, wrapped_key, passcode, attempts_left, sealed, created"
)
FILE_COLUMNS = "rowid, token_hash, link, jwe, expires"
TABLES = ("link", "file")


def _difference(table: str, row: str, problem: str) -> Difference:
    return Difference(LINKS_FILE, table, row, problem)


def _issuer_difference(part: str, row: str, problem: str) -> Difference:
    return Difference(ISSUER_FILE, part, row, problem)


@dataclass(frozen=True)
class _Link:
    rowid: int
    id: object
    patient: object
    token_hash: object
    wrapped_key: object
    passcode: object
    attempts_left: object
    sealed: object
    created: object

    @property
    def name(self) -> str:
        """How a difference names the row: its id when it is a link id, else its row number."""
        return (
            self.id
            if isinstance(self.id, str) and LINK_ID.match(self.id)
            else f"rowid {self.rowid}"
        )


@dataclass(frozen=True)
class _File:
    rowid: int
    token_hash: object
    link: object
    jwe: object
    expires: object

    @property
    def name(self) -> str:
        link = self.link if isinstance(self.link, str) and LINK_ID.match(self.link) else "?"
        return f"{link} file {self.rowid}"


class LinksStoreCheck:
    """The health links store against the ledger (see the module's docstring)."""

    store = LINKS_FILE

    def size(self, context: NodeContext) -> int:
        return row_count(context, self.store, TABLES)

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        audit = _LinksAudit(context)
        conn = context.open_store(self.store)
        if conn is None:
            yield from audit.unheld(set())
            return
        try:
            yield from _schema(conn)
            yield from _integrity(conn)
            links = _read(conn, "link", LINK_COLUMNS, _Link)
            files = _read(conn, "file", FILE_COLUMNS, _File)
            for table, rows in (("link", links), ("file", files)):
                if isinstance(rows, str):
                    yield _difference(table, "", f"the table cannot be read ({rows})")
            links = [] if isinstance(links, str) else links
            files = [] if isinstance(files, str) else files
            held: dict[str, _Link] = {}
            for link in links:
                progress(1)
                yield from audit.link(link)
                if isinstance(link.id, str):
                    held[link.id] = link
            for file in files:
                progress(1)
                yield from audit.file(file, held)
            yield from audit.unheld(set(held))
        except sqlite3.DatabaseError as exc:
            yield _difference("(file)", "", f"the store cannot be read ({unreadable(exc)})")
        finally:
            conn.close()


def _read(conn: sqlite3.Connection, table: str, columns: str, row: Any) -> list[Any] | str:
    """A table's rows (or why they cannot be read, without SQLite's message)."""
    try:
        rows = conn.execute(f"SELECT {columns} FROM {table} ORDER BY rowid").fetchall()  # noqa: S608 - our names
    except sqlite3.Error as exc:
        return unreadable(exc)
    return [row(*values) for values in rows]


def _schema(conn: sqlite3.Connection) -> Iterator[Difference]:
    """``sqlite_master`` against what ``ShareLinks`` creates (built in memory from its script)."""
    expected = schema_created_by(*SCHEMA, store=LINKS_FILE)
    found = schema_of(conn)
    for name in sorted(expected.keys() | found.keys()):
        kind, table, _ = expected.get(name) or found[name]
        row = f"{kind} {name}"
        if name not in found:
            yield _difference(table, row, f"the node creates this {kind}; the file lacks it")
        elif name not in expected:
            yield _difference(found[name][1], row, f"the node creates no {kind} of this name")
        elif found[name] != expected[name]:
            yield _difference(table, row, f"the {kind}'s definition differs from the node's")


def _integrity(conn: sqlite3.Connection) -> Iterator[Difference]:
    """SQLite's integrity check, by table, without its messages (they can quote a value)."""
    owners = {str(n): str(t) for n, t in conn.execute("SELECT name, tbl_name FROM sqlite_master")}
    problems: dict[str, int] = {}
    for (message,) in conn.execute("PRAGMA integrity_check(100)"):
        if message == "ok":
            return
        words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(message))
        table = next((owners[w] for w in words if w in owners), "(file)")
        problems[table] = problems.get(table, 0) + 1
    for table, count in sorted(problems.items()):
        yield _difference(table, "-", f"SQLite's integrity check fails ({count} problems)")


def _signer(context: NodeContext, tx_id: object) -> str | None:
    """Who signed a committed transaction (its public key), or None."""
    if not isinstance(tx_id, str):
        return None
    found = context.ledger.find_tx(tx_id)
    if found is None:
        return None
    body = orjson.loads(found[1].envelope).get("body") or {}
    signer = body.get("signer")
    return signer if isinstance(signer, str) else None


class _LinksAudit:
    def __init__(self, context: NodeContext) -> None:
        self.context = context
        self.sealed = AtRest.for_node(context.node_key, "health links")
        self.node = context.node_key.public_b64
        self._shreds: dict[str, list[int]] | None = None
        self._openings: dict[str, dict[str, list[str]]] = {}

    def ledger_link(self, link_id: str) -> dict[str, Any] | None:
        held = self.context.state(LINKS, link_key(link_id))
        return dict(held) if isinstance(held, dict) else None

    # -- link rows ---------------------------------------------------------------------------

    def link(self, link: _Link) -> Iterator[Difference]:
        name = link.name
        if name != link.id:
            yield _difference("link", name, "the id is not a link id (a links.create transaction)")
        on_ledger = self.ledger_link(name) if name == link.id else None
        if name == link.id and on_ledger is None:
            yield _difference("link", name, "a link the ledger does not know (no links.create)")
        if on_ledger is not None:
            if on_ledger.get("custodian") != self.context.org:
                yield _difference(
                    "link", name, "the ledger gives this link to another organisation to serve"
                )
            if on_ledger.get("patient") != link.patient:
                yield _difference("link", name, "the patient is not the ledger's for this link")
        yield from self._form(link)
        yield from self._passcode(link, on_ledger)
        yield from self._sealed(link, on_ledger)
        yield from self._created(link, on_ledger)

    def _form(self, link: _Link) -> Iterator[Difference]:
        name = link.name
        if not isinstance(link.patient, str) or not ID_PATTERN.match(link.patient):
            yield _difference("link", name, "the patient is not a member id")
        if not isinstance(link.token_hash, str) or not TOKEN_HASH.match(link.token_hash):
            yield _difference("link", name, "token_hash is not a SHA-256 in hex")
        if not isinstance(link.wrapped_key, bytes) or len(link.wrapped_key) != WRAPPED_KEY_BYTES:
            yield _difference(
                "link", name, f"wrapped_key is not a blob of {WRAPPED_KEY_BYTES} bytes"
            )

    def _passcode(self, link: _Link, on_ledger: dict[str, Any] | None) -> Iterator[Difference]:
        name, passcode, left = link.name, link.passcode, link.attempts_left
        if passcode is not None and (
            not isinstance(passcode, bytes) or len(passcode) != PASSCODE_BYTES
        ):
            yield _difference(
                "link", name, f"passcode is not a salt and scrypt hash ({PASSCODE_BYTES} bytes)"
            )
        flags = str(on_ledger.get("flags") or "") if on_ledger is not None else None
        if flags is not None and ("P" in flags) != (passcode is not None):
            what = "no passcode is held" if passcode is None else "a passcode is held"
            yield _difference(
                "link",
                name,
                f"{what}, but the ledger's flags {'have' if 'P' in flags else 'lack'} P",
            )
        if type(left) is not int or not 0 <= left <= MAX_ATTEMPTS:
            yield _difference(
                "link", name, f"attempts_left is not a whole number from 0 to {MAX_ATTEMPTS}"
            )
            return
        if passcode is None and left != MAX_ATTEMPTS:
            yield _difference(
                "link", name, "attempts were counted down on a link without a passcode"
            )
        status = None if on_ledger is None else on_ledger.get("status")
        if status == "disabled" and left != 0:
            yield _difference(
                "link",
                name,
                "the ledger shows the link disabled (its passcode attempts ran out), yet"
                " attempts are left",
            )
        if status == "active" and left == 0:
            yield _difference(
                "link",
                name,
                "no passcode attempts are left, yet the ledger shows the link active"
                " (links.disable never committed)",
            )

    def _sealed(self, link: _Link, on_ledger: dict[str, Any] | None) -> Iterator[Difference]:
        name = link.name
        if name != link.id:
            return  # sealed for a link id; the row has none
        opened, why = open_sealed(self.sealed, link.sealed, name)
        if opened is None:
            yield _difference("link", name, f"sealed: {why}")
            return
        private = _private(opened)
        if isinstance(private, str):
            yield _difference("link", name, f"sealed: {private}")
            return
        selection, frozen = private
        if on_ledger is None:
            return
        if selection.ledger_types() != sorted(str(t) for t in on_ledger.get("types") or []):
            yield _difference(
                "link",
                name,
                "sealed: the record types it reaches are not those the ledger's link names",
            )
        flags = str(on_ledger.get("flags") or "")
        if ("L" in flags) != (frozen is None):
            why = ("the ledger's flags have L (it follows the record), yet it names versions"
                   if "L" in flags else
                   "the ledger's flags lack L, yet it names no versions")  # fmt: skip
            yield _difference("link", name, f"sealed: {why}")
        for record_id, version in frozen or []:
            problem = self._frozen(record_id, version, on_ledger, selection)
            if problem:
                yield _difference("link", name, f"sealed: a version it serves {problem}")

    def _frozen(
        self, record_id: str, version: int, on_ledger: dict[str, Any], selection: Selection
    ) -> str:
        record = self.context.state(RECORDS, record_key(record_id))
        anchored = self.context.state(RECORDS, version_key(record_id, version))
        if not isinstance(record, dict) or not isinstance(anchored, dict):
            return "is not anchored on the ledger"
        if record.get("custodian") != self.context.org:
            return "is another organisation's record"
        if record.get("patient") != on_ledger.get("patient"):
            return "is not the link's patient's"
        if record.get("type") not in selection.ledger_types():
            return "is of a type the link does not reach"
        if int(anchored.get("time") or 0) > int(on_ledger.get("time") or 0) + CLOCK_WINDOW * 1000:
            return "was anchored after the link was made"
        return ""

    def _created(self, link: _Link, on_ledger: dict[str, Any] | None) -> Iterator[Difference]:
        if type(link.created) is not int:
            yield _difference("link", link.name, "created is not a time (seconds)")
        elif (
            on_ledger is not None
            and abs(link.created * 1000 - int(on_ledger.get("time") or 0)) > CLOCK_WINDOW * 1000
        ):
            yield _difference(
                "link",
                link.name,
                f"created is not within {CLOCK_WINDOW} s of the ledger's time of the link",
            )

    # -- files -------------------------------------------------------------------------------

    def file(self, file: _File, held: dict[str, _Link]) -> Iterator[Difference]:
        name = file.name
        if not isinstance(file.token_hash, str) or not TOKEN_HASH.match(file.token_hash):
            yield _difference("file", name, "token_hash is not a SHA-256 in hex")
        if not _is_file_jwe(file.jwe):
            yield _difference("file", name, "jwe is not a compact JWE of the form the node writes")
        if type(file.expires) is not int:
            yield _difference("file", name, "expires is not a time (seconds)")
        if not isinstance(file.link, str) or not LINK_ID.match(file.link):
            yield _difference("file", name, "link is not a link id")
            return
        if file.link not in held:
            yield _difference("file", name, "a file of a link this store does not hold")
        on_ledger = self.ledger_link(file.link)
        if on_ledger is None:
            yield _difference("file", name, "a file of a link the ledger does not know")
            return
        if on_ledger.get("custodian") != self.context.org:
            yield _difference("file", name, "a file of another organisation's link")
        status = on_ledger.get("status")
        if status in ENDED:
            yield _difference(
                "file",
                name,
                f"the ledger shows the link {status}; its files are deleted when it ends",
            )
        if "U" in str(on_ledger.get("flags") or ""):
            yield _difference(
                "file", name, "a direct-file (U) link is served by GET, never from a location"
            )
        if type(file.expires) is int:
            yield from self._file_times(name, file.expires - LOCATION_SECONDS, on_ledger)

    def _file_times(self, name: str, made: int, on_ledger: dict[str, Any]) -> Iterator[Difference]:
        made_ms, window = made * 1000, CLOCK_WINDOW * 1000
        if made_ms < int(on_ledger.get("time") or 0) - window:
            yield _difference("file", name, "made before the link was on the ledger")
        exp = on_ledger.get("exp")
        if isinstance(exp, int) and made_ms > exp + window:
            yield _difference("file", name, "made after the link expired")
        patient = str(on_ledger.get("patient"))
        if any(shred > made_ms + window for shred in self._shred_times().get(patient, [])):
            yield _difference(
                "file",
                name,
                "made before a record of the link's patient was shredded; files go when a"
                " record is erased",
            )

    def _shred_times(self) -> dict[str, list[int]]:
        """When each patient's records were shredded (block times, ms), read once."""
        if self._shreds is None:
            ledger = self.context.ledger
            times: dict[int, int] = {}
            self._shreds = {}
            for event in ledger.events_of_types(["records.shredded"], 100_000_000):
                patient = orjson.loads(event.data).get("patient")
                if not isinstance(patient, str):
                    continue  # an organisation's own record: no patient's link
                if event.height not in times:
                    header = ledger.header(event.height)
                    times[event.height] = 0 if header is None else header.time
                self._shreds.setdefault(patient, []).append(times[event.height])
        return self._shreds

    # -- links that must be here -------------------------------------------------------------

    def unheld(self, held: set[str]) -> Iterator[Difference]:
        """Links of this organisation this node made, disabled or served, with no row."""
        for key in self.context.state_keys(LINKS, link_key("")):
            link_id = key.split("/", 1)[1]
            if link_id in held:
                continue
            link = self.ledger_link(link_id)
            if link is None or link.get("custodian") != self.context.org:
                continue
            why = self._made_or_served_here(link_id, link)
            if why:
                yield _difference("link", link_id, f"{why}; its row is not held")

    def _made_or_served_here(self, link_id: str, link: dict[str, Any]) -> str:
        patient = str(link.get("patient"))
        custodial = self._custodial_key(patient)
        if custodial is not None and _signer(self.context, link_id) == custodial:
            return "made with the key this node holds for the patient (through this node)"
        if link.get("status") == "disabled" and self._disabled_here(link_id, link):
            return "this node disabled the link"
        for tx_id in self._link_openings(patient).get(link_id, []):
            if _signer(self.context, tx_id) == self.node:
                return "this node served an opening of the link"
        return ""

    def _custodial_key(self, patient: str) -> str | None:
        if not ID_PATTERN.match(patient):
            return None
        path = self.context.data_dir / KEYS_DIR / "patients" / f"{patient}.key"
        if not path.exists():
            return None
        try:
            return read_key_file(path)[1].public_b64
        except (CareLedgerError, OSError):
            return None  # not this store's to judge

    def _disabled_here(self, link_id: str, link: dict[str, Any]) -> bool:
        height = link.get("ended_at")
        if type(height) is not int:
            return False
        for tx in self.context.ledger.block_txs(height):
            body = orjson.loads(tx.envelope).get("body") or {}
            args = body.get("args") or {}
            if (body.get("contract"), body.get("method")) == (LINKS, "disable") and args.get(
                "link"
            ) == link_id:
                return body.get("signer") == self.node
        return False

    def _link_openings(self, patient: str) -> dict[str, list[str]]:
        """A patient's link openings this organisation committed: link id -> transaction ids."""
        if patient not in self._openings:
            found: dict[str, list[str]] = {}
            for key in self.context.state_keys(AUDIT, access_prefix(patient)):
                entry = self.context.state(AUDIT, key)
                if not isinstance(entry, dict) or entry.get("custodian") != self.context.org:
                    continue
                basis = entry.get("basis") or {}
                if basis.get("kind") == "link" and isinstance(basis.get("id"), str):
                    found.setdefault(basis["id"], []).append(str(entry.get("tx")))
            self._openings[patient] = found
        return self._openings[patient]


def _private(opened: bytes) -> tuple[Selection, list[tuple[str, int]] | None] | str:
    """The sealed part's selection and frozen versions, or what is wrong with it (never the
    label, nor any other value of it)."""
    try:
        private = orjson.loads(opened)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(private, dict) or set(private) != {"selection", "label", "frozen"}:
        return "not the selection, label and versions the node seals"
    label, chosen, frozen = private["label"], private["selection"], private["frozen"]
    if label is not None and not (isinstance(label, str) and 0 < len(label) <= MAX_LABEL_CHARS):
        return f"the label is not 1 to {MAX_LABEL_CHARS} characters"
    if not isinstance(chosen, dict) or set(chosen) != {"types", "summary", "since", "until"}:
        return "the selection is not of the node's form"
    types, summary = chosen["types"], chosen["summary"]
    if (
        not isinstance(types, list)
        or not all(isinstance(t, str) and t in RECORD_TYPES for t in types)
        or not isinstance(summary, bool)
        or not (types or summary)
    ):
        return "the selection does not name record types the node holds, nor a summary"
    for day in (chosen["since"], chosen["until"]):
        if day is not None and not _is_day(day):
            return "the selection's dates are not YYYY-MM-DD"
    if frozen is None:
        return Selection(tuple(types), summary, chosen["since"], chosen["until"]), None
    if not isinstance(frozen, list) or not all(
        isinstance(item, list)
        and len(item) == 2
        and isinstance(item[0], str)
        and type(item[1]) is int
        and item[1] >= 1
        for item in frozen
    ):
        return "the versions it serves are not (record, version) pairs"
    versions = [(str(r), int(v)) for r, v in frozen]
    return Selection(tuple(types), summary, chosen["since"], chosen["until"]), versions


def _is_day(value: object) -> bool:
    if not isinstance(value, str) or not DAY.match(value):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def _is_file_jwe(value: object) -> bool:
    """A compact JWE as ``ShareLinks`` stores it: the header it writes, no encrypted key
    (``dir``), a 96-bit IV, some ciphertext and a 128-bit tag."""
    if not isinstance(value, bytes):
        return False
    try:
        parts = value.decode("ascii").split(".")
    except UnicodeDecodeError:
        return False
    if len(parts) != 5 or not all(B64URL.match(p) for p in parts):
        return False
    header, key, iv, ciphertext, tag = parts
    try:
        protected = orjson.loads(_unb64(header))
        return (
            protected == FILE_HEADER
            and key == ""
            and len(_unb64(iv)) == NONCE_BYTES
            and len(ciphertext) > 0
            and len(_unb64(tag)) == TAG_BYTES
        )
    except (binascii.Error, ValueError):
        return False


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- the SMART Health Cards issuer key ---------------------------------------------------------


class IssuerKeyCheck:
    """The health cards issuer key file against the cards the ledger says this node issued."""

    store = ISSUER_FILE

    def size(self, context: NodeContext) -> int:
        return len(context.state_keys(LINKS, card_key("")))

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        path = context.data_dir / ISSUER_FILE
        issuer: tuple[str, str] | None = None  # (kid, revocation secret)
        if path.exists():
            try:
                raw = path.read_bytes() if path.is_file() else None
            except OSError:
                raw = None
            issuer_or_why = _issuer(raw)
            if isinstance(issuer_or_why, Difference):
                yield issuer_or_why
            else:
                issuer = issuer_or_why
        node = context.node_key.public_b64
        blocks: dict[int, list[dict[str, Any]]] = {}
        for key in context.state_keys(LINKS, card_key("")):
            progress(1)
            card = context.state(LINKS, key)
            card_id = key.split("/", 1)[1]
            if not isinstance(card, dict) or card.get("issuer") != context.org:
                continue
            if not CARD_ID.match(card_id) or not _issued_here(context, card, node, blocks):
                continue  # another node of this organisation issued it, with its own key
            if not path.exists():
                yield _issuer_difference(
                    "(file)", card_id, "this node issued the card; the issuer key file is missing"
                )
                continue
            if issuer is None:
                continue  # the file's own difference says why
            kid, secret = issuer
            if card.get("kid") != kid:
                yield _issuer_difference(
                    "jwk",
                    card_id,
                    "the issuer key is not the one the card was signed with (its thumbprint is"
                    " not the card's kid): verifiers of the card no longer find its key",
                )
                continue
            try:
                rid = revocation_id(secret, kid, card_id)
            except CareLedgerError:
                rid = None
            if rid != card.get("rid"):
                yield _issuer_difference(
                    "rid_secret",
                    card_id,
                    "the revocation secret does not give the card's rid on the ledger",
                )


def _issuer(raw: bytes | None) -> tuple[str, str] | Difference:
    """The issuer key's kid and revocation secret, or what is wrong with the file (never any
    part of it)."""
    if raw is None:
        return _issuer_difference("(file)", "-", "not a file the node can read")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _issuer_difference("(file)", "-", "not JSON")
    if not isinstance(doc, dict) or not isinstance(doc.get("jwk"), dict):
        return _issuer_difference("jwk", "-", "no private key (jwk) is held")
    try:
        private = ECKey.import_key(doc["jwk"]).raw_value
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError("public only")
        kid = str(issuer_jwk(private)["kid"])
    except Exception:  # joserfc and cryptography raise many types for a bad key
        return _issuer_difference("jwk", "-", "not a private P-256 key the node can sign with")
    secret = doc.get("rid_secret")
    try:
        if not isinstance(secret, str):
            raise CareLedgerError("no secret")
        revocation_id(secret, kid, "0" * 32)  # refuses what is not a secret
    except CareLedgerError:
        return _issuer_difference(
            "rid_secret", "-", "not a revocation secret (base64url of 32 bytes or more)"
        )
    return kid, secret


def _issued_here(
    context: NodeContext, card: dict[str, Any], node: str, blocks: dict[int, list[dict[str, Any]]]
) -> bool:
    """Whether this node signed the card's ``links.issue_card`` (at the card's height)."""
    height = card.get("height")
    if type(height) is not int:
        return False
    if height not in blocks:
        blocks[height] = [
            dict(orjson.loads(tx.envelope).get("body") or {})
            for tx in context.ledger.block_txs(height)
        ]
    for body in blocks[height]:
        args = body.get("args") or {}
        if (body.get("contract"), body.get("method")) == (LINKS, "issue_card") and args.get(
            "card"
        ) == card.get("id"):
            return body.get("signer") == node
    return False
