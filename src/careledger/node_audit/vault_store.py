"""The vault's audit: every sealed record version, wrapped key and blind-index token of
``vault.sqlite`` checked against the ledger's records anchors, and the file against the layout
``careledger.vault.store`` creates.

What is checked, streaming (one record version in memory at a time; ``progress(1)`` for each):

* the file: SQLite's ``integrity_check`` (tables and their indexes agree, pages are sound), and
  ``sqlite_master`` row for row against the schema the store module creates;
* ``meta``: exactly ``schema_version`` and ``blind_index``, each with the value the software
  writes;
* ``records``: each version's record and version are anchored on the ledger with the same type,
  patient, custodian (this organisation) and ``content_hash``; a live version opens with this
  node's key, decrypts under its record binding, and its canonical content hashed with its
  salt is the ledger's anchored hash; the decrypted resource names its own type, id and
  version; ``created`` falls within ``STAMP_WINDOW`` seconds after the resource's own
  ``meta.lastUpdated`` (the same write stamps both). A version the ledger shredded keeps no
  nonce, ciphertext, salt, wrapped key or token, and is marked shredded; a version the vault
  marks shredded must be shredded on the ledger. And the other way: every version the ledger
  anchored for this organisation is held (a shredded record by its tombstone);
* ``wrapped_keys``: each row belongs to a version in ``records``; the node's wrap opens; every
  other wrap is an 80-byte sealed box to a key the ledger registered to the record's patient
  at or before the anchoring block (not a recovery key), one per version; for a patient whose
  key this node holds (``keys/patients``: patients registered without a key of their own) the
  wrap opens with it to the node's own data key;
* ``blind``: each live version's tokens are exactly ``BlindIndex.for_node(...).tokens(
  index_terms(resource))`` of its decrypted resource, what the node writes; no token of a
  shredded or absent version.

What cannot be checked, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* The wrap of a patient who holds their own key: a sealed box (X25519 + XSalsa20-Poly1305) is
  authenticated only to its recipient's secret key, and the ledger holds no hash of it, so
  whether it opens, and holds the record's data key, is the patient's to see (their access is
  denied, the node's is not). Its bytes are vouched for by the row's code only.
* Which of the patient's keys was current when the version was sealed: the vault keeps no
  sealing height, so a wrap to a patient's key registered before the anchoring block is
  accepted even if that key was revoked in between (sealing and anchoring race a rotation).
* ``created`` and ``shredded_at``: the vault's own clock, never anchored. ``created`` is held
  to the resource's ``lastUpdated`` (a change within the window passes); ``shredded_at`` only
  to its form and to coming after ``created``.
* Tokens of a version a vault made before the blind index (ADR 0014) never had: that vault
  was indexed once, for each record's latest live version, so its superseded versions are
  reported as missing tokens (which they are: a search as of an earlier height misses them).
* Bytes of the file that hold no row (free pages, unused cell space): nothing reads them, and
  ``secure_delete`` zeroes them when a row is removed.

A difference never carries decrypted content, token values or key material: it names the
record, version and column, and says what does not match.
"""

from __future__ import annotations

import hmac
import re
import sqlite3
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from string import ascii_letters, digits
from typing import Any

import orjson

from careledger.config import KEYS_DIR, VAULT_FILE
from careledger.contracts.identity import ID_PATTERN, RECOVERY, key_key
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import record_key, version_key
from careledger.core.keys import KeyPair, decode_public_key
from careledger.errors import CareLedgerError, VerificationError
from careledger.fhir.blind_terms import index_terms
from careledger.health.service import BLIND_INDEX_META, BLIND_INDEX_VERSION
from careledger.keyfile import read_key_file
from careledger.node_audit.check import (
    Difference,
    NodeContext,
    schema_created_by,
    schema_of,
    unreadable,
)
from careledger.vault.blind_index import TOKEN_BYTES, BlindIndex
from careledger.vault.crypto import (
    NONCE_SIZE,
    SALT_SIZE,
    WRAPPED_KEY_SIZE,
    content_hash,
    open_resource,
    unwrap_key,
)
from careledger.vault.store import SCHEMA, SCHEMA_VERSION

__all__ = ["STAMP_WINDOW", "VaultStoreCheck"]

#: Seconds between a write's ``meta.lastUpdated`` and the vault's ``created`` of the same
#: version: the two clock readings are a few operations apart, more under load.
STAMP_WINDOW = 5
META = {"schema_version": SCHEMA_VERSION, BLIND_INDEX_META: BLIND_INDEX_VERSION}
TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
# The characters of a record id (contracts.records.RECORD_ID), in key order: the ledger's
# record keys are listed a prefix at a time, one more character deep where a page overflows.
_ID_CHARS = "".join(sorted("-." + digits + ascii_letters))
_RECORD_PREFIX = record_key("")
_COLUMNS = (
    "record_id, version, resource_type, patient, custodian, nonce, ciphertext, salt,"
    " content_hash, created, shredded_at"
)
_TEXT_COLUMNS = ("resource_type", "patient", "custodian", "content_hash", "created")
_LEDGER_FIELDS = (("resource_type", "type"), ("patient", "patient"), ("custodian", "custodian"))
_SEALED_COLUMNS = ("nonce", "ciphertext", "salt")
_SEALED_SIZES: dict[str, Callable[[int], bool]] = {
    "nonce": lambda n: n == NONCE_SIZE,
    "ciphertext": lambda n: n >= 16,  # at least the GCM tag
    "salt": lambda n: n == SALT_SIZE,
}
_PATIENT_KEYS_CACHED = 256


def _difference(table: str, row: str, problem: str) -> Difference:
    return Difference(VAULT_FILE, table, row, problem)


_NOT_BYTES = (
    "SELECT record_id, version FROM records WHERE typeof(nonce) NOT IN ('blob', 'null') "
    "OR typeof(ciphertext) NOT IN ('blob', 'null') OR typeof(salt) NOT IN ('blob', 'null')"
)


class VaultStoreCheck:
    """The vault's checker (see the module docstring for what it does and cannot check)."""

    store = VAULT_FILE
    #: Ledger keys listed per query while looking for anchored versions the vault lacks.
    ledger_page = 10_000

    def size(self, context: NodeContext) -> int:
        conn = context.open_store(self.store)
        if conn is None:
            return 0
        try:
            (count,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
            return int(count)
        except sqlite3.Error:
            return 0
        finally:
            conn.close()

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        if conn is None:
            yield from self._no_vault(context)
            return
        reading = "(file)"
        try:
            yield from _integrity(conn)
            yield from _schema(conn)
            reading = "meta"
            yield from _meta(conn)
            reading = "records"
            for record_id, version in conn.execute(_NOT_BYTES):
                where = f"{record_id} v{version}"
                yield _difference("records", where, "a sealed column holds text, not bytes")
            versions = _Versions(context, conn)
            for row in conn.execute(
                f"SELECT {_COLUMNS} FROM records ORDER BY record_id, version"  # noqa: S608
            ):
                progress(1)
                yield from versions.check(row)
            reading = "wrapped_keys"
            yield from _orphans(conn, "wrapped_keys", "wrapped key")
            reading = "blind"
            yield from _orphans(conn, "blind", "blind-index token")
            reading = "records"
            yield from self._unheld(context, conn)
        except (sqlite3.Error, ValueError) as exc:
            # a schema that differs (reported above) or a damaged file: nothing further reads
            why = f"the vault cannot be read any further ({unreadable(exc)})"
            yield _difference(reading, "-", why)
        finally:
            conn.close()

    def _no_vault(self, context: NodeContext) -> Iterator[Difference]:
        for record_id in _anchored_record_ids(context, self.ledger_page):
            entry = context.state(RECORDS, record_key(record_id))
            if entry is not None and entry.get("custodian") == context.org:
                yield _difference(
                    "records",
                    f"{record_id} v1",
                    "the ledger anchored records of this organisation; the node has no vault file",
                )
                return

    def _unheld(self, context: NodeContext, conn: sqlite3.Connection) -> Iterator[Difference]:
        """Versions the ledger anchored for this organisation that the vault does not hold."""
        for record_id in _anchored_record_ids(context, self.ledger_page):
            entry = context.state(RECORDS, record_key(record_id))
            if entry is None or entry.get("custodian") != context.org:
                continue
            held = {
                v
                for (v,) in conn.execute(
                    "SELECT version FROM records WHERE record_id = ?", (record_id,)
                )
            }
            for version in range(1, int(entry["version"]) + 1):
                if version in held:
                    continue
                yield _difference(
                    "records",
                    f"{record_id} v{version}",
                    "the ledger anchored this version of this organisation's record (shredded"
                    " since); the vault holds no tombstone of it"
                    if entry["shredded"]
                    else "the ledger anchored this version for this organisation;"
                    " the vault does not hold it",
                )


class _Versions:
    """Checks one ``records`` row at a time, with its wrapped keys and tokens."""

    def __init__(self, context: NodeContext, conn: sqlite3.Connection) -> None:
        self.context = context
        self.conn = conn
        self.node_key = context.node_key
        self.blind = BlindIndex.for_node(context.node_key)
        self._patient_keys: dict[str, KeyPair | None] = {}

    def check(self, row: tuple[Any, ...]) -> Iterator[Difference]:
        record_id, version = row[0], row[1]
        name = f"{record_id} v{version}"
        if not isinstance(record_id, str) or type(version) is not int or version < 1:
            yield _difference("records", name, "record_id or version has the wrong type")
            return
        stored_hash, shredded_at = row[8], row[10]
        columns = dict(zip(_TEXT_COLUMNS, (row[2], row[3], row[4], row[8], row[9]), strict=True))
        for column, value in columns.items():
            if not isinstance(value, str):
                yield _difference("records", name, f"{column} is not text")
        entry = self.context.state(RECORDS, record_key(record_id))
        if entry is None:
            yield _difference("records", name, "the ledger never anchored this record")
            return
        anchor = self.context.state(RECORDS, version_key(record_id, version))
        if anchor is None:
            yield _difference(
                "records",
                name,
                f"the ledger never anchored this version (it holds 1 to {entry['version']})",
            )
            return
        for column, field in _LEDGER_FIELDS:
            # an organisation's own record names no patient: "" in the vault, null on the ledger
            if columns[column] != ("" if entry[field] is None else entry[field]):
                yield _difference("records", name, f"{column} differs from the ledger's record")
        if entry["custodian"] != self.context.org:
            yield _difference(
                "records", name, "the ledger names another organisation as this record's custodian"
            )
        if stored_hash != anchor["hash"]:
            yield _difference(
                "records", name, "content_hash differs from the hash the ledger anchored"
            )
        if entry["shredded"]:
            yield from self._shredded(row, name)
            return
        if shredded_at is not None:
            yield _difference(
                "records", name, "the vault marks this version shredded; the ledger does not"
            )
        yield from self._live(row, name, entry, anchor)

    # -- shredded versions ---------------------------------------------------------------------

    def _shredded(self, row: tuple[Any, ...], name: str) -> Iterator[Difference]:
        record_id, version, created, shredded_at = row[0], row[1], row[9], row[10]
        left = [c for c, v in zip(_SEALED_COLUMNS, row[5:8], strict=True) if v is not None]
        if left:
            yield _difference(
                "records",
                name,
                f"the ledger shredded this record; the vault still holds its {', '.join(left)}",
            )
        if shredded_at is None:
            yield _difference(
                "records", name, "the ledger shredded this record; the vault does not mark it so"
            )
        elif _timestamp(shredded_at) is None:
            yield _difference("records", name, "shredded_at is not a UTC timestamp")
        elif isinstance(created, str) and shredded_at < created:
            yield _difference("records", name, "shredded_at comes before created")
        if _timestamp(created) is None:
            yield _difference("records", name, "created is not a UTC timestamp")
        for table, what in (("wrapped_keys", "wrapped keys"), ("blind", "blind-index tokens")):
            (count,) = self.conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE record_id = ? AND version = ?",  # noqa: S608
                (record_id, version),
            ).fetchone()
            if count:
                yield _difference(
                    table, name, f"the ledger shredded this record; {what} remain: {count}"
                )

    # -- live versions ---------------------------------------------------------------------------

    def _live(
        self, row: tuple[Any, ...], name: str, entry: dict[str, Any], anchor: dict[str, Any]
    ) -> Iterator[Difference]:
        record_id, version, resource_type, created = row[0], row[1], row[2], row[9]
        wraps: dict[Any, Any] = dict(
            self.conn.execute(
                "SELECT recipient, wrapped FROM wrapped_keys WHERE record_id = ? AND version = ?",
                (record_id, version),
            ).fetchall()
        )
        data_key: bytes | None = None
        own = wraps.pop(self.node_key.public_b64, None)
        if own is None:
            yield _difference(
                "wrapped_keys",
                name,
                "no wrapped key for this node's key: the node cannot open this version",
            )
        else:
            data_key = _unwrap(own, self.node_key)
            if data_key is None:
                yield _difference(
                    "wrapped_keys",
                    f"{name} {self.node_key.public_b64}",
                    "this node's wrapped key does not open with the node's key",
                )
        patient_key = yield from self._patient_wraps(name, wraps, entry, anchor, data_key)
        data_key = data_key or patient_key  # a custodial patient's wrap still opens the record
        if data_key is None:
            return
        nonce, ciphertext, salt = row[5], row[6], row[7]
        bad = [
            column
            for column, value in zip(_SEALED_COLUMNS, (nonce, ciphertext, salt), strict=True)
            if not isinstance(value, bytes) or not _SEALED_SIZES[column](len(value))
        ]
        if bad:
            yield _difference(
                "records", name, f"{', '.join(bad)}: missing, not a blob, or the wrong size"
            )
            return
        if not isinstance(resource_type, str):
            return  # reported above; the record binding cannot be rebuilt
        try:
            plaintext = open_resource(
                ciphertext,
                record_id=record_id,
                resource_type=resource_type,
                version=version,
                data_key=data_key,
                nonce=nonce,
            )
        except CareLedgerError:  # VerificationError, or a binding that is not one
            yield _difference(
                "records",
                name,
                "the ciphertext does not decrypt with its data key, nonce and record binding",
            )
            return
        if not hmac.compare_digest(content_hash(plaintext, salt), str(anchor["hash"])):
            yield _difference(
                "records",
                name,
                "the decrypted content hashed with its salt differs from the hash the ledger"
                " anchored",
            )
            return
        resource = _resource(plaintext)
        if resource is None:
            yield _difference("records", name, "the decrypted content is not a JSON object")
            return
        yield from _stamps(name, resource, record_id, version, resource_type, created)
        yield from self._tokens(name, record_id, version, resource)

    def _patient_wraps(
        self,
        name: str,
        wraps: dict[Any, Any],
        entry: dict[str, Any],
        anchor: dict[str, Any],
        data_key: bytes | None,
    ) -> Generator[Difference, None, bytes | None]:
        """Checks every wrap but the node's; returns the data key a custodial patient's wrap
        opens to (None: no such wrap, or it does not open). An organisation's own record (r10,
        about no patient) is sealed for the node alone."""
        if entry["patient"] is None:
            for recipient in sorted(str(r) for r in wraps):
                yield _difference(
                    "wrapped_keys",
                    f"{name} {recipient}",
                    "a wrapped key besides the node's on a record about no patient",
                )
            return None
        patient = str(entry["patient"])
        if not wraps:
            yield _difference("wrapped_keys", name, "no wrapped key for the patient")
            return None
        if len(wraps) > 1:
            yield _difference(
                "wrapped_keys",
                name,
                f"{len(wraps)} wrapped keys besides the node's; the vault makes one, the patient's",
            )
        opened: bytes | None = None
        for recipient, wrapped in sorted(wraps.items(), key=lambda item: str(item[0])):
            row = f"{name} {recipient}"
            problem = _patient_wrap_problem(self.context, recipient, wrapped, patient, anchor)
            if problem is not None:
                yield _difference("wrapped_keys", row, problem)
                continue
            held = self._patient_key(patient)
            if held is None or held.public_b64 != recipient:
                continue  # the patient's own key: nothing more can be checked (module docstring)
            key = _unwrap(wrapped, held)
            if key is None:
                yield _difference(
                    "wrapped_keys",
                    row,
                    "the patient's wrapped key does not open with the patient's key this node"
                    " holds",
                )
            elif data_key is not None and not hmac.compare_digest(key, data_key):
                yield _difference(
                    "wrapped_keys", row, "the patient's wrapped key holds another data key"
                )
            else:
                opened = key
        return opened

    def _patient_key(self, patient: str) -> KeyPair | None:
        """The patient's key when this node holds it (see HealthRecords.custodial_key)."""
        if patient in self._patient_keys:
            return self._patient_keys[patient]
        key = None
        if ID_PATTERN.match(patient):
            path = self.context.data_dir / KEYS_DIR / "patients" / f"{patient}.key"
            if path.exists():
                try:
                    key = read_key_file(path)[1]
                except (CareLedgerError, OSError):
                    key = None  # not the vault's to judge; the key file's own check reports it
        if len(self._patient_keys) >= _PATIENT_KEYS_CACHED:
            self._patient_keys.clear()
        self._patient_keys[patient] = key
        return key

    def _tokens(
        self, name: str, record_id: str, version: int, resource: dict[str, Any]
    ) -> Iterator[Difference]:
        try:
            # Terms come from strings and booleans only, so the parsed resource gives the ones
            # the node computed from the resource it sealed.
            expected = set(self.blind.tokens(index_terms(resource)))
        except Exception:  # a resource the indexer refuses is a finding, not a crash
            yield _difference("blind", name, "the decrypted resource cannot be indexed")
            return
        have: set[bytes] = set()
        malformed = 0
        for (token,) in self.conn.execute(
            "SELECT token FROM blind WHERE record_id = ? AND version = ?", (record_id, version)
        ):
            if isinstance(token, bytes) and len(token) == TOKEN_BYTES:
                have.add(token)
            else:
                malformed += 1
        missing, extra = len(expected - have), len(have - expected)
        if missing or extra or malformed:
            counts = ((missing, "missing"), (extra, "not of this content"),
                      (malformed, f"not a blob of {TOKEN_BYTES} bytes"))  # fmt: skip
            parts = [f"{n} {what}" for n, what in counts if n]
            yield _difference(
                "blind",
                name,
                "the blind-index tokens differ from those of the decrypted content: "
                + ", ".join(parts),
            )


def _unwrap(wrapped: object, key: KeyPair) -> bytes | None:
    if not isinstance(wrapped, bytes):
        return None
    try:
        return unwrap_key(wrapped, key)
    except VerificationError:
        return None


def _patient_wrap_problem(
    context: NodeContext, recipient: object, wrapped: object, patient: str, anchor: dict[str, Any]
) -> str | None:
    if not isinstance(recipient, str):
        return "the recipient is not text"
    try:
        decode_public_key(recipient)
    except CareLedgerError:
        return "the recipient is not a base64url Ed25519 public key"
    if not isinstance(wrapped, bytes) or len(wrapped) != WRAPPED_KEY_SIZE:
        return f"the wrapped key is not a sealed box of {WRAPPED_KEY_SIZE} bytes"
    registered = context.state(IDENTITY, key_key(recipient))
    if (
        not isinstance(registered, dict)
        or registered.get("member") != patient
        or registered.get("status") == RECOVERY
    ):
        return "wrapped to a key the ledger never gave this record's patient"
    if int(registered.get("since", 0)) > int(anchor["height"]):
        return "wrapped to a key the patient was given only after this version was anchored"
    return None


def _resource(plaintext: bytes) -> dict[str, Any] | None:
    try:
        resource = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        return None
    return resource if isinstance(resource, dict) else None


def _stamps(
    name: str,
    resource: dict[str, Any],
    record_id: str,
    version: int,
    resource_type: str,
    created: object,
) -> Iterator[Difference]:
    """The decrypted resource against its row: HealthRecords stamps id, type and version in."""
    meta = resource.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    if resource.get("resourceType", resource_type) != resource_type:
        yield _difference("records", name, "the decrypted resource is of another type")
    if resource.get("id", record_id) != record_id:
        yield _difference("records", name, "the decrypted resource names another id")
    if meta.get("versionId", str(version)) != str(version):
        yield _difference("records", name, "the decrypted resource names another version")
    sealed_at = _timestamp(created)
    if sealed_at is None:
        yield _difference("records", name, "created is not a UTC timestamp")
        return
    stamped = _timestamp(meta.get("lastUpdated"))
    if stamped is not None and not 0 <= (sealed_at - stamped).total_seconds() <= STAMP_WINDOW:
        yield _difference(
            "records",
            name,
            f"created is not within {STAMP_WINDOW} s after the resource's meta.lastUpdated",
        )


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not TIMESTAMP.match(value):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _integrity(conn: sqlite3.Connection) -> Iterator[Difference]:
    owners = {str(n): str(t) for n, t in conn.execute("SELECT name, tbl_name FROM sqlite_master")}
    for (message,) in conn.execute("PRAGMA integrity_check(20)"):
        if message == "ok":
            return
        words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(message))
        table = next((owners[w] for w in words if w in owners), "(file)")
        yield _difference(table, "-", f"SQLite integrity check: {message}")


def _schema(conn: sqlite3.Connection) -> Iterator[Difference]:
    """``sqlite_master`` against the schema ``careledger.vault.store`` creates, as SQLite
    records it (built in memory from the same script)."""
    expected = schema_created_by(SCHEMA, store=VAULT_FILE)
    found = schema_of(conn)
    for name in sorted(expected.keys() | found.keys()):
        kind, table, _ = expected.get(name) or found[name]
        row = f"{kind} {name}"
        if name not in found:
            yield _difference(table, row, f"the vault store creates this {kind}; the file lacks it")
        elif name not in expected:
            yield _difference(
                found[name][1], row, f"the vault store creates no {kind} of this name"
            )
        elif found[name] != expected[name]:
            yield _difference(
                table, row, f"the {kind}'s definition differs from the one the vault store creates"
            )


def _meta(conn: sqlite3.Connection) -> Iterator[Difference]:
    seen = set()
    for name, value in conn.execute("SELECT name, value FROM meta ORDER BY name"):
        key = str(name)
        if key not in META:
            yield _difference("meta", key[:64], "a name the vault does not use")
            continue
        seen.add(key)
        if value != META[key]:
            yield _difference("meta", key, f"the value is not {META[key]!r}")
    for key in sorted(META.keys() - seen):
        what = "the blind index was never built" if key == BLIND_INDEX_META else "missing"
        yield _difference("meta", key, what)


def _orphans(conn: sqlite3.Connection, table: str, what: str) -> Iterator[Difference]:
    """Rows of ``table`` for a version ``records`` does not have, one difference per version."""
    for record_id, version, count in conn.execute(
        f"SELECT t.record_id, t.version, COUNT(*) FROM {table} t"  # noqa: S608
        " WHERE NOT EXISTS (SELECT 1 FROM records r"
        " WHERE r.record_id = t.record_id AND r.version = t.version)"
        " GROUP BY t.record_id, t.version"
    ):
        yield _difference(
            table,
            f"{record_id} v{version}",
            f"{what}s of a version the vault does not hold: {count}",
        )


def _anchored_record_ids(context: NodeContext, page: int) -> Iterator[str]:
    """Every record id the ledger anchored, in key order, listing at most ``page`` + 1 keys at
    a time: where a prefix holds more, its ids are listed one character deeper."""
    yield from _record_ids_under(context, "", max(page, 1))


def _record_ids_under(context: NodeContext, start: str, page: int) -> Iterator[str]:
    prefix = _RECORD_PREFIX + start
    keys = context.state_keys(RECORDS, prefix, page + 1)
    if len(keys) <= page:
        for key in keys:
            rest = key[len(_RECORD_PREFIX) :]
            if rest and "/" not in rest:  # record/{id}, not record/{id}/v/{n}
                yield rest
        return
    if start and keys[0] == prefix:
        yield start
    for char in _ID_CHARS:
        yield from _record_ids_under(context, start + char, page)
