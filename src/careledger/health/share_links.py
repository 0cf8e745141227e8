"""SMART Health Links a patient makes to hand their record to someone outside the consortium.

The link itself (``shlink:/…``: manifest URL, key, flags, expiry, label) is the patient's to
give; the node keeps only what it needs to serve it and nothing that turns back into it:

- the manifest URL's 256-bit token as its SHA-256 (the lookup key);
- the link's AES key wrapped under a key derived from that token, so the node can encrypt a
  file only while a recipient presents the URL, and a copy of ``links.sqlite`` opens nothing;
- the passcode as an scrypt hash, with the attempts left (the spec's lifetime count);
- the label and what the link reaches (types, dates, summary or not, and for a link without
  ``L`` the exact versions it was made with) sealed at rest under the node's key.

On the ledger (ruleset r9) the patient signs ``links.create`` and ``links.revoke``; each opening
is ``audit.access`` on the ``link`` basis, committed before a byte is served, with the
recipient's declared name sealed for the patient and this node. The ledger refuses an opening
of a revoked or expired link from the block that ended it.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from careledger.callers.caller import Caller
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.identity import member_of
from careledger.contracts.links import LINK_ID, link_key, link_serves
from careledger.contracts.links import NAMESPACE as LINKS
from careledger.core.keys import b64url_encode, decode_public_key
from careledger.entropy import SYSTEM_RANDOM, Random, token_urlsafe
from careledger.errors import (
    CareLedgerError,
    Forbidden,
    NotFound,
    RateLimited,
    StorageError,
    ValidationError,
)
from careledger.fhir.types import RECORD_TYPES
from careledger.health.service import HealthRecords, StoredResource
from careledger.health_links import jwe
from careledger.health_links.ips import patient_summary
from careledger.health_links.link import MAX_LABEL_CHARS, LinkPayload, key_bytes, new_key, to_uri
from careledger.health_links.qr import qr_svg
from careledger.patient_signing import sign_as_patient
from careledger.sealing import seal
from careledger.sqlite_threads import ThreadConnections
from careledger.vault.at_rest import AtRest

LINKS_FILE = "links.sqlite"
MAX_ATTEMPTS = 5  # wrong passcodes in a link's lifetime, then it is disabled on the ledger
LOCATION_SECONDS = 3600  # the spec: a location URL lives at most an hour
MAX_RECIPIENT = 200
MAX_RECORDS = 2_000  # served by one opening
RECORDS_PER_EVENT = 500  # an access event's envelope stays far below the 64 KiB limit
OPENINGS = 20  # openings of one link (each an access event, for ever) ...
OPENINGS_WINDOW_S = 600  # ... in ten minutes; then 429 with Retry-After, as the spec allows
FILES_PER_LINK = 5  # location URLs of one link alive at once
FHIR_JSON = "application/fhir+json"
SUMMARY_TYPES = frozenset(
    {"Patient", "Condition", "AllergyIntolerance", "MedicationRequest", "MedicationStatement",
     "Immunization", "Observation", "Procedure"}
)  # fmt: skip
# where R4 puts a record's clinical date (a dateTime, or a Period's start), most telling first
DATE_FIELDS = ("effectiveDateTime", "effectiveInstant", "onsetDateTime", "performedDateTime",
               "occurrenceDateTime", "authoredOn", "recordedDate", "issued", "date", "created",
               "assertedDate", "dateWritten", "sent", "started", "recorded")  # fmt: skip
PERIOD_FIELDS = ("effectivePeriod", "onsetPeriod", "performedPeriod", "occurrencePeriod",
                 "period", "billablePeriod", "whenHandedOver")  # fmt: skip
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS link(
        id TEXT PRIMARY KEY, patient TEXT NOT NULL, token_hash TEXT UNIQUE NOT NULL,
        wrapped_key BLOB NOT NULL, passcode BLOB, attempts_left INTEGER NOT NULL,
        sealed BLOB NOT NULL, created INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS file(
        token_hash TEXT PRIMARY KEY, link TEXT NOT NULL, jwe BLOB NOT NULL,
        expires INTEGER NOT NULL)""",
)


class WrongPasscode(CareLedgerError):
    """401 with the attempts left, as the spec answers a wrong passcode."""

    def __init__(self, remaining: int) -> None:
        super().__init__("the passcode is not right", code="WRONG_PASSCODE")
        self.remaining = remaining


@dataclass(frozen=True)
class Selection:
    """What a link reaches: record types (or an International Patient Summary built from the
    patient's records), optionally only those dated within [since, until] (ISO dates)."""

    types: tuple[str, ...]
    summary: bool = False
    since: str | None = None
    until: str | None = None

    def ledger_types(self) -> list[str]:
        return sorted(SUMMARY_TYPES if self.summary else set(self.types))

    def to_json(self) -> dict[str, Any]:
        return {"types": list(self.types), "summary": self.summary, "since": self.since,
                "until": self.until}  # fmt: skip


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _kek(token: str) -> AESGCM:
    """The key that wraps a link's key: derived from the URL token the node does not keep."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"careledger shl v1",
                   info=b"link key wrap").derive(token.encode())  # fmt: skip
    return AESGCM(derived)


def _passcode_hash(passcode: str, salt: bytes) -> bytes:
    return hashlib.scrypt(passcode.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _clinical_day(resource: Mapping[str, Any]) -> str | None:
    """The record's clinical date (YYYY-MM-DD), if it has one R4 names."""
    for name in DATE_FIELDS:
        value = resource.get(name)
        if isinstance(value, str) and len(value) >= 4:
            return value[:10]
    for name in PERIOD_FIELDS:
        period = resource.get(name)
        if isinstance(period, dict):
            value = period.get("start") or period.get("end")
            if isinstance(value, str) and len(value) >= 4:
                return value[:10]
    return None


def _dated_within(resource: Mapping[str, Any], since: str | None, until: str | None) -> bool:
    """Whether the record's clinical date lies in [since, until]. With a range, a record with no
    date it can be placed by is left out: a patient who limits a link to recent records must
    not find their childhood history in it."""
    if since is None and until is None:
        return True
    day = _clinical_day(resource)
    if day is None:
        return False
    return (since is None or day >= since[: len(day)]) and (until is None or day <= until)


def _utf8(text: str | None, what: str, code: str) -> None:
    """Text that cannot be written as UTF-8 (a lone surrogate) is refused before anything is
    committed, not found unwritable after."""
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{what} is not valid text", code=code) from None


class ShareLinks:
    def __init__(
        self,
        records: HealthRecords,
        data_dir: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self._clock = clock  # links' and file locations' expiry, documents' timestamps
        self._random = random  # link tokens, keys, salts, file tokens, summaries' ids
        self.records = records
        self.ledger = records.ledger
        self._conns = ThreadConnections(data_dir / LINKS_FILE, "health link store")
        self._conns.schema(*SCHEMA)
        self._sealed = AtRest.for_node(self.ledger.node_key, "health links")
        self._lock = threading.Lock()  # passcode attempts: counted one at a time
        self._openings: dict[str, deque[float]] = {}

    def close(self) -> None:
        self._conns.close()

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            conn = self._conns.get()
            rows = conn.execute(sql, args).fetchall()
            conn.commit()
            return rows
        except sqlite3.Error as exc:
            raise StorageError(f"the health link store failed: {exc}") from None

    # -- the patient's side ------------------------------------------------------------------

    def create(
        self,
        caller: Caller,
        patient: str,
        *,
        origin: str,
        selection: Selection,
        flags: str,
        passcode: str | None,
        expires: int | None,
        label: str | None,
        key: str | None = None,
        envelope: object | None = None,
        viewer: str | None = None,
        prepare: bool = False,
    ) -> dict[str, Any]:
        """Make a link on the ledger (signed as the patient) and here; its shlink URI and QR.

        ``expires`` is seconds since the epoch; ``key`` a key the patient's browser made (else
        one is drawn here, and forgotten once wrapped)."""
        if not caller.is_patient(patient) or caller.is_app:
            raise Forbidden("a patient shares their own record", code="NOT_AUTHORISED")
        unknown = set(selection.types) - RECORD_TYPES
        if unknown or (not selection.types and not selection.summary):
            raise ValidationError(
                f"choose record types this node holds (not {sorted(unknown)})"
                if unknown else "choose what the link shares", code="BAD_SELECTION")  # fmt: skip
        for day in (selection.since, selection.until):
            if day is not None:
                try:
                    datetime.strptime(day, "%Y-%m-%d")
                except ValueError:
                    raise ValidationError("dates are YYYY-MM-DD", code="BAD_SELECTION") from None
        if label is not None and not 0 < len(label) <= MAX_LABEL_CHARS:
            raise ValidationError(f"a label is 1 to {MAX_LABEL_CHARS} characters",
                                  code="BAD_LABEL")  # fmt: skip
        if "P" in flags and not (passcode and 6 <= len(passcode) <= 64):
            raise ValidationError("a passcode is 6 to 64 characters", code="BAD_PASSCODE")
        if passcode and "P" not in flags:
            raise ValidationError("a passcode needs the P flag", code="BAD_PASSCODE")
        _utf8(passcode, "the passcode", "BAD_PASSCODE")
        _utf8(label, "the label", "BAD_LABEL")
        if expires is not None and expires <= self._clock.time():
            raise ValidationError("the link must expire in the future", code="BAD_EXPIRY")
        if key is not None and not any(key_bytes(key)):  # BAD_SHLINK unless 32 bytes, too
            raise ValidationError("the link key is all zero bytes: not a key", code="BAD_SHLINK")
        if viewer is not None:  # checked before anything is committed: https, no fragment
            probe = LinkPayload(url=f"{origin}/shl/{'A' * 43}", key=new_key(bytes(32)))
            to_uri(probe, viewer)
        args: dict[str, Any] = {"custodian": self.records.org, "types": selection.ledger_types()}
        if flags:
            args["flags"] = flags
        if expires is not None:
            args["exp"] = expires * 1000
        if prepare:  # a patient with their own key signs exactly this, then sends it back
            return {"sign": {"contract": LINKS, "method": "create", "args": args}}
        receipt = sign_as_patient(self.records, caller, LINKS, "create", args, envelope)
        link_id = str(receipt["tx_id"])
        token = token_urlsafe(self._random, 32)
        key = key or new_key(self._random.token_bytes(32))
        nonce = self._random.token_bytes(12)
        wrapped = nonce + _kek(token).encrypt(nonce, key_bytes(key), link_id.encode())
        frozen = None if "L" in flags else self._current(patient, selection)
        private: dict[str, Any] = {
            "selection": selection.to_json(),
            "label": label,
            "frozen": None if frozen is None else [[r, v] for r, v in frozen],
        }
        salt = self._random.token_bytes(16)
        hashed = salt + _passcode_hash(passcode, salt) if passcode else None
        self._run(
            "INSERT INTO link(id, patient, token_hash, wrapped_key, passcode, attempts_left, "
            "sealed, created) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            (link_id, patient, _token_hash(token), wrapped, hashed, MAX_ATTEMPTS,
             self._sealed.seal(orjson.dumps(private), link_id), int(self._clock.time())),
        )  # fmt: skip
        payload = LinkPayload(url=f"{origin}/shl/{token}", key=key, exp=expires,
                              flags=flags, label=label)  # fmt: skip
        uri = to_uri(payload)
        return {
            "id": link_id,
            "shlink": uri,
            "viewer_link": to_uri(payload, viewer) if viewer else None,
            "qr_svg": qr_svg(uri, title=f"SMART Health Link{': ' + label if label else ''}"),
            "flags": flags,
            "expires": expires,
            "label": label,
            "receipt": receipt,
        }

    def links(self, caller: Caller, patient: str) -> list[dict[str, Any]]:
        """The patient's links served here: label, what they reach, status on the ledger, and
        how often each was opened (from the ledger's access events)."""
        if not caller.is_patient(patient) or caller.is_app:
            raise Forbidden("a patient sees their own links", code="NOT_AUTHORISED")
        opened: dict[str, int] = {}
        for entry in self.records.access_log(caller, patient):
            basis = entry.get("basis") or {}
            if basis.get("kind") == "link":
                opened[str(basis.get("id"))] = opened.get(str(basis.get("id")), 0) + 1
        out = []
        for link_id, created, sealed in self._run(
            "SELECT id, created, sealed FROM link WHERE patient = ? ORDER BY created DESC",
            (patient,),
        ):
            private = orjson.loads(self._sealed.open(sealed, link_id))
            on_ledger = self.ledger.state(LINKS, link_key(link_id)) or {}
            status = str(on_ledger.get("status", "unknown"))
            exp = on_ledger.get("exp")
            if status == "active" and exp is not None and self._clock.time() * 1000 >= exp:
                status = "expired"
            out.append({"id": link_id, "label": private["label"], "created": created,
                        "selection": private["selection"], "flags": on_ledger.get("flags", ""),
                        "expires": None if exp is None else exp // 1000, "status": status,
                        "opened": opened.get(link_id, 0)})  # fmt: skip
        return out

    def revoke(
        self, caller: Caller, patient: str, link_id: str, envelope: object | None = None
    ) -> dict[str, Any]:
        if not LINK_ID.match(link_id) or not self._run(
            "SELECT 1 FROM link WHERE id = ? AND patient = ?", (link_id, patient)
        ):
            raise NotFound("no such link", code="UNKNOWN_LINK")
        if not caller.is_patient(patient) or caller.is_app:
            raise Forbidden("a patient revokes their own links", code="NOT_AUTHORISED")
        receipt = sign_as_patient(self.records, caller, LINKS, "revoke", {"link": link_id},
                                  envelope)  # fmt: skip
        self._run("DELETE FROM file WHERE link = ?", (link_id,))
        return receipt

    # -- the recipient's side ----------------------------------------------------------------

    def _row(self, token: str) -> tuple[tuple[Any, ...], str]:
        """The link's row and its flags on the ledger (read once per opening), or 404."""
        rows = self._run(
            "SELECT id, patient, wrapped_key, passcode, attempts_left, sealed FROM link "
            "WHERE token_hash = ?",
            (_token_hash(token),),
        )
        if not rows:
            raise NotFound("no such link, or it no longer works", code="LINK_INACTIVE")
        row = rows[0]
        on_ledger = self.ledger.state(LINKS, link_key(row[0]))
        why = link_serves(on_ledger, patient=row[1], custodian=self.records.org,
                          time=int(self._clock.time() * 1000), types=set())  # fmt: skip
        if why is not None or row[4] <= 0:
            raise NotFound("no such link, or it no longer works", code="LINK_INACTIVE")
        return row, str(on_ledger["flags"])

    def _throttle(self, link_id: str) -> None:
        """At most OPENINGS openings of a link in OPENINGS_WINDOW_S: each is an access event
        on the ledger for ever, so whoever holds a link cannot flood the patient's log."""
        now = time.monotonic()
        with self._lock:
            recent = self._openings.setdefault(link_id, deque())
            while recent and recent[0] <= now - OPENINGS_WINDOW_S:
                recent.popleft()
            if len(recent) >= OPENINGS:
                wait = int(recent[0] + OPENINGS_WINDOW_S - now) + 1
                raise RateLimited("this link was opened often just now: wait", retry_after=wait)
            recent.append(now)

    def _check_passcode(self, row: tuple[Any, ...], passcode: object) -> None:
        """Every wrong passcode counts, for the link's lifetime; at the limit the link is
        disabled on the ledger. Attempts are counted one at a time."""
        stored = row[3]
        if stored is None:
            return
        with self._lock:
            left = self._run("SELECT attempts_left FROM link WHERE id = ?", (row[0],))[0][0]
            if left <= 0:
                raise NotFound("no such link, or it no longer works", code="LINK_INACTIVE")
            given = passcode if isinstance(passcode, str) else ""
            if hmac.compare_digest(_passcode_hash(given, stored[:16]), stored[16:]):
                return
            left -= 1
            self._run("UPDATE link SET attempts_left = ? WHERE id = ?", (left, row[0]))
        if left == 0:
            self.records.node.execute(
                [(LINKS, "disable", {"link": row[0], "reason": "passcode_attempts"})]
            )
        raise WrongPasscode(left)

    def manifest(self, token: str, body: Mapping[str, Any], origin: str) -> dict[str, Any]:
        """The spec's manifest answer, after the opening's access event is committed."""
        row, flags = self._row(token)
        recipient = _recipient(body.get("recipient"))
        limit = body.get("embeddedLengthMax")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValidationError("embeddedLengthMax is a whole number", code="BAD_REQUEST")
        if "U" in flags:
            raise ValidationError("this link is a direct file: GET it", code="DIRECT_FILE")
        self._check_passcode(row, body.get("passcode"))
        self._throttle(str(row[0]))
        token_jwe, updated = self._serve(row, token, recipient, origin)
        entry: dict[str, Any] = {"contentType": FHIR_JSON, "lastUpdated": updated}
        if limit is None or len(token_jwe) <= limit:
            entry["embedded"] = token_jwe
        else:
            file_token = token_urlsafe(self._random, 32)
            self._run("DELETE FROM file WHERE expires < ?", (int(self._clock.time()),))
            self._run(
                "DELETE FROM file WHERE link = ? AND token_hash NOT IN (SELECT token_hash FROM "
                "file WHERE link = ? ORDER BY expires DESC LIMIT ?)",
                (row[0], row[0], FILES_PER_LINK - 1),
            )
            self._run("INSERT INTO file(token_hash, link, jwe, expires) VALUES(?, ?, ?, ?)",
                      (_token_hash(file_token), row[0], token_jwe.encode(),
                       int(self._clock.time()) + LOCATION_SECONDS))  # fmt: skip
            entry["location"] = f"{origin}/shl/file/{file_token}"
        return {"files": [entry]}

    def direct(self, token: str, recipient: object, origin: str) -> str:
        """A U link: the one file, by GET."""
        row, flags = self._row(token)
        if "U" not in flags:
            raise ValidationError("POST this link's manifest", code="NOT_DIRECT")
        name = _recipient(recipient)
        self._throttle(str(row[0]))
        return self._serve(row, token, name, origin)[0]

    def location(self, file_token: str) -> str:
        rows = self._run(
            "SELECT link, jwe, expires FROM file WHERE token_hash = ?", (_token_hash(file_token),)
        )
        if not rows or rows[0][2] < self._clock.time():
            raise NotFound("no such file, or its hour is over", code="LINK_INACTIVE")
        on_ledger = self.ledger.state(LINKS, link_key(rows[0][0]))
        if on_ledger is None or link_serves(
            on_ledger, patient=str(on_ledger["patient"]), custodian=self.records.org,
            time=int(self._clock.time() * 1000), types=set(),
        ) is not None:  # fmt: skip
            raise NotFound("no such file, or its hour is over", code="LINK_INACTIVE")
        return bytes(rows[0][1]).decode()

    # -- what a link serves ------------------------------------------------------------------

    def _current(self, patient: str, selection: Selection) -> list[tuple[str, int]]:
        """(record, version) the selection reaches now."""
        out = []
        for record_id, _ in self.records.patient_records(patient, set(selection.ledger_types())):
            version = self.records.current_at(record_id, self.ledger.head.height)
            if version is not None:
                out.append((record_id, version[1]))
        return out

    def _serve(
        self, row: tuple[Any, ...], token: str, recipient: str, origin: str
    ) -> tuple[str, str]:
        link_id, patient, wrapped = str(row[0]), str(row[1]), bytes(row[2])
        try:
            key = _kek(token).decrypt(wrapped[:12], wrapped[12:], link_id.encode())
        except InvalidTag:
            raise StorageError("a link's key does not open: the store was changed") from None
        private = orjson.loads(self._sealed.open(row[5], link_id))
        chosen_json = private["selection"]
        selection = Selection(tuple(chosen_json["types"]), bool(chosen_json["summary"]),
                              chosen_json["since"], chosen_json["until"])  # fmt: skip
        if private["frozen"] is None:
            chosen = self._current(patient, selection)
        else:  # the versions the link was made with, less any since erased
            height = self.ledger.head.height
            chosen = [(r, int(v)) for r, v in private["frozen"]
                      if self.records.current_at(r, height) is not None]  # fmt: skip
        opened: list[StoredResource] = []
        for record_id, version in chosen[:MAX_RECORDS]:
            stored = self.records.open_version(record_id, version)
            if stored.resource_type == "Patient" or _dated_within(
                stored.resource, selection.since, selection.until
            ):
                opened.append(stored)
        if opened:
            self._log_opening(link_id, patient, opened, recipient)
        document = self._document(patient, selection, opened, origin)
        updated = max((s.last_updated for s in opened), default=self._now())
        plain = orjson.dumps(document)
        return jwe.encrypt(plain, b64url_encode(key), FHIR_JSON, compress=True), updated

    def _log_opening(
        self, link_id: str, patient: str, opened: Sequence[StoredResource], recipient: str
    ) -> None:
        """The opening's access events, committed before anything is served: one per
        RECORDS_PER_EVENT records, so a large record still fits an envelope."""
        member = member_of(self.ledger.state, patient) or {}
        readers = {self.records.node.settings.node_name: self.ledger.node_key.public_key}
        if member.get("key"):
            readers[patient] = decode_public_key(str(member["key"]))
        sealed = seal(recipient.encode(), readers)
        served = sorted({s.record_id for s in opened})
        calls = [
            ("audit", "access", {
                "patient": patient, "accessor": link_id, "accessor_org": self.records.org,
                "records": served[start : start + RECORDS_PER_EVENT], "action": "read",
                "purpose": "PATRQT", "basis": {"kind": "link", "id": link_id},
                "interaction": "read", "recipient": sealed})
            for start in range(0, len(served), RECORDS_PER_EVENT)
        ]  # fmt: skip
        receipts = self.records.node.execute(calls)
        if any(r["result"] != "accepted" for r in receipts):
            raise NotFound("no such link, or it no longer works", code="LINK_INACTIVE")

    def on_commit(self, executed: Any) -> None:
        """Location files (an hour's life) go at once when the patient erases a record or the
        link ends: a file must not outlive what it may hold."""
        for event in executed.block.events:
            data = orjson.loads(event.data)
            if event.type == "records.shredded":
                self._run(
                    "DELETE FROM file WHERE link IN (SELECT id FROM link WHERE patient = ?)",
                    (str(data.get("patient")),),
                )
            elif event.type in ("links.revoked", "links.disabled"):
                self._run("DELETE FROM file WHERE link = ?", (str(data.get("link")),))

    def _now(self) -> str:
        """The clock's time as a FHIR instant, to the second (UTC, ``Z``)."""
        moment = datetime.fromtimestamp(self._clock.time(), UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    def _document(
        self, patient: str, selection: Selection, opened: Sequence[StoredResource], origin: str
    ) -> dict[str, Any]:
        resources = [s.resource for s in opened]
        if selection.summary:
            subject = next((r for r in resources if r.get("resourceType") == "Patient"), None)
            if subject is None:
                subject = {"resourceType": "Patient", "id": patient}
            others = [r for r in resources if r is not subject]
            bundle_id = str(uuid.UUID(bytes=self._random.token_bytes(16), version=4))
            return patient_summary(subject, others, now_iso=self._now(), bundle_id=bundle_id)
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": self._now(),
            "entry": [
                {"fullUrl": f"{origin}/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                for r in resources
            ],
        }


def _recipient(raw: object) -> str:
    if not isinstance(raw, str) or not 0 < len(raw.strip()) <= MAX_RECIPIENT:
        raise ValidationError(f"recipient: who is asking, 1 to {MAX_RECIPIENT} characters",
                              code="BAD_RECIPIENT")  # fmt: skip
    _utf8(raw, "recipient", "BAD_RECIPIENT")
    return raw.strip()
