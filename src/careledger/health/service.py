"""Health records on a node: FHIR resources in the vault, anchored and access-logged on the ledger.

Every write seals the resource in the vault, then commits its anchor together with an access
event; a refused anchor removes the sealed version again. Every read first commits an access
event whose basis the audit contract re-checks; only an accepted event releases data, and the
decrypted resource must hash to the ledger's anchor.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from careledger.callers.caller import Caller, require_scope
from careledger.callers.scopes import restrictions
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.config import KEYS_DIR, VAULT_FILE
from careledger.contracts.audit import NAMESPACE as AUDIT
from careledger.contracts.audit import access_key, access_prefix
from careledger.contracts.consent import NAMESPACE as CONSENT
from careledger.contracts.consent import consent_key, consents_of
from careledger.contracts.identity import KEY_EVENTS, key_events_of, member_of
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import WRITER_ROLES as RECORD_WRITER_ROLES
from careledger.contracts.records import (
    org_index_key,
    org_records_of,
    record_key,
    records_of,
    version_key,
)
from careledger.core.keys import KeyPair, b64url_encode, decode_public_key
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex
from careledger.errors import (
    CareLedgerError,
    Conflict,
    Forbidden,
    NotFound,
    Rejected,
    ValidationError,
)
from careledger.fhir.blind_terms import index_terms
from careledger.fhir.extract import (
    path_patients,
    path_reference_problem,
    patient_id,
    referenced_records,
)
from careledger.fhir.types import (
    CUSTODIAN_ONLY,
    EITHER_TYPES,
    NOT_HELD,
    ORG_ONLY_TYPES,
    ORG_TYPES,
    ORG_TYPES_R10,
    PATIENT_PATHS,
    RECORD_PATHS,
    STORED_BUNDLE_TYPES,
)
from careledger.fhir.validate import SUPPORTED_TYPES
from careledger.health.access import CARE_ROLES, CUSTODIAN_PURPOSES, choose_basis
from careledger.health.scope_query import within_scopes
from careledger.keyfile import generate_keypair, write_key_file
from careledger.ledger.execute import Executed
from careledger.node import Node
from careledger.sealing import open_sealed
from careledger.sqlite_threads import iso_ms
from careledger.vault import Vault, VaultStore
from careledger.vault.blind_index import BlindIndex

Call = tuple[str, str, Mapping[str, Any]]
WRITER_ROLES = RECORD_WRITER_ROLES  # one source: the records contract decides who anchors
MAX_KEY_EVENTS_SCANNED = 100_000
MAX_HEIGHTS_REMEMBERED = 1_000_000
BLIND_INDEX_META = "blind_index"
BLIND_INDEX_VERSION = "1"
SHREDDED_EVENT = "records.shredded"
# A failed commit whose batch is in the consortium's stream all the same (ordering/jetstream.py)
IN_THE_STREAM = frozenset({"STREAM_GAP", "ORDERING_STOPPED"})
MAX_SHREDDINGS_SCANNED = 100_000_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredResource:
    """A resource as released to a reader, with what a client needs to check it on the ledger."""

    resource: dict[str, Any]
    record_id: str
    resource_type: str
    version: int
    patient: str  # "" for an organisation's own record (about no patient)
    custodian: str
    content_hash: str
    salt: str  # base64url: lets the reader recompute the salted hash the ledger anchors
    anchor_tx: str
    leaf_index: int
    last_updated: str


class RemoteCustodians(Protocol):
    """What the records service asks of other custodians' nodes (consortium mode): reads of
    the records they hold. ``careledger.health.federation.FederationClient`` implements it."""

    def read(
        self,
        caller: Caller,
        custodian: str,
        resource_type: str,
        record_id: str,
        *,
        version: int | None,
        purpose: str,
    ) -> StoredResource:
        """The version (None: the latest) of a record ``custodian`` holds, as it answered the
        caller. MUST return only a resource that hashes to its ledger anchor and is the record
        and version asked for (else VerificationError, REMOTE_TAMPERED); a custodian that cannot
        be reached is NotFound (REMOTE_UNAVAILABLE), its refusal a CareLedgerError of its code."""
        ...

    def everything(
        self,
        caller: Caller,
        patient: str,
        custodians: Sequence[str],
        *,
        types: set[str] | None,
        purpose: str,
    ) -> tuple[list[StoredResource], list[tuple[str, str]]]:
        """The records of ``patient`` (of ``types``) each custodian shares with the caller, and
        (custodian, error code) of each that could not answer or refused (one custodian's
        CareLedgerError is reported there, not raised). MUST return only resources of that
        patient and those types that hash to their ledger anchors."""
        ...


MAX_ACCESS_LOG = 100_000  # the newest accesses a log shows


class HealthRecords:
    def __init__(
        self,
        node: Node,
        vault: Vault,
        *,
        patient_keys_dir: Path,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self.clock = clock  # consent decisions, lastUpdated, search and scope dates
        self.random = random  # patient pseudonyms, record ids
        self.node = node
        self.ledger = node.ledger
        self.vault = vault
        self.patient_keys_dir = patient_keys_dir
        self.blind = BlindIndex.for_node(node.ledger.node_key)
        self._heights: dict[tuple[str, int], int] = {}  # (record, version) -> anchoring height
        # Reads of records other custodians hold (consortium mode); None: local records only.
        self.federation: RemoteCustodians | None = None

    @classmethod
    def for_node(
        cls, node: Node, *, clock: Clock = SYSTEM_CLOCK, random: Random = SYSTEM_RANDOM
    ) -> HealthRecords:
        """The service over the node's own vault file, listening to the node's commits."""
        data_dir = node.settings.data_dir

        def vault_now() -> str:
            # A row's created (and shredded_at) by the clock that stamps meta.lastUpdated: the
            # node audit wants created within seconds after lastUpdated.
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.time()))

        records = cls(
            node,
            Vault(
                # record versions written by a worker process: off this process's GIL
                VaultStore(data_dir / VAULT_FILE, clock=vault_now, writer_pool=node.verify_pool),
                clock=vault_now,
            ),
            patient_keys_dir=data_dir / KEYS_DIR / "patients",
            clock=clock,
            random=random,
        )
        node.ledger.commit_listeners.append(records.on_commit)
        records.shred_missed()  # before anything opens a record
        records.build_blind_index()
        return records

    def build_blind_index(self) -> int:
        """Index the records stored before the blind index existed (once per vault); how many
        were indexed. Each is opened against its ledger anchor, as any read."""
        store = self.vault.store
        if store.meta_value(BLIND_INDEX_META) == BLIND_INDEX_VERSION:
            return 0
        done = 0
        for _, record_id, version, _ in store.live_records(SUPPORTED_TYPES):
            resource = self.open_anchored(record_id, version)
            if resource is not None:
                store.index_version(record_id, version, self.blind.tokens(index_terms(resource)))
                done += 1
        store.set_meta(BLIND_INDEX_META, BLIND_INDEX_VERSION)
        return done

    def close(self) -> None:
        if self.on_commit in self.node.ledger.commit_listeners:
            self.node.ledger.commit_listeners.remove(self.on_commit)
        self.vault.store.close()

    def node_caller(self) -> Caller:
        """The node itself as a caller (imports, demo data): its org's system scopes."""
        from careledger.callers.scopes import parse_scopes

        name = self.node.settings.node_name
        return Caller(
            name, self.org, frozenset({"node"}), parse_scopes("system/*.read system/*.write")
        )

    @property
    def org(self) -> str:
        return self.node.settings.org

    def now(self) -> datetime:
        """The service clock's time, in UTC (what searches and scope restrictions compare to)."""
        return datetime.fromtimestamp(self.clock.time(), UTC)

    def new_record_id(self) -> str:
        """A fresh record id: 16 random bytes, hex."""
        return token_hex(self.random, 16)

    # -- ledger helpers ------------------------------------------------------------------

    def _commit(self, calls: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        return self.node.execute(calls)

    def record_meta(self, record_id: str, resource_type: str | None = None) -> dict[str, Any]:
        meta = self.ledger.state(RECORDS, record_key(record_id))
        if meta is None or (resource_type is not None and meta["type"] != resource_type):
            raise NotFound(f"no {resource_type or 'record'} with that id", code="UNKNOWN_RECORD")
        if meta["shredded"]:
            raise NotFound("the record was shredded", code="RECORD_SHREDDED")
        return dict(meta)

    def _anchor_of(self, record_id: str, version: int) -> tuple[str, str, int]:
        """(hash, anchoring tx id, leaf index) of a record version."""
        entry = self.ledger.state(RECORDS, version_key(record_id, version))
        if entry is None:
            raise NotFound("no such version", code="UNKNOWN_VERSION")
        found = self.ledger.store.find_tx(entry["tx"])
        leaf = found[1].leaf_index if found is not None else -1
        return entry["hash"], entry["tx"], leaf

    def _patient_key(self, patient: str) -> bytes:
        member = member_of(self.ledger.state, patient)
        if member is None or "patient" not in member["roles"]:
            raise ValidationError(
                "the subject is not a patient on this ledger", code="UNKNOWN_PATIENT"
            )
        return decode_public_key(member["key"])

    # -- access --------------------------------------------------------------------------

    def authorise(
        self,
        caller: Caller,
        *,
        patient: str,
        records: Sequence[str],
        types: set[str],
        action: str,
        purpose: str,
        windows: Sequence[str] = (),
        interaction: str | None = None,
    ) -> dict[str, Any]:
        """Commit the access event for ``records`` (and device reading ``windows``, as
        ``device/seq``); Forbidden unless the ledger accepts it."""
        args = self.access_args(
            caller, patient, records, types, action, purpose, windows, interaction
        )
        (receipt,) = self._commit([("audit", "access", args)])
        if receipt["result"] != "accepted":
            raise Forbidden("the ledger refused the access", code=receipt["code"])
        return receipt

    def _says_interaction(self) -> bool:
        """Whether the ruleset in force records the FHIR interaction of an access (r7)."""
        return int(getattr(self.ledger.rules().contracts["audit"], "version", 1)) >= 3

    def access_args(
        self,
        caller: Caller,
        patient: str,
        records: Sequence[str],
        types: set[str],
        action: str,
        purpose: str,
        windows: Sequence[str] = (),
        interaction: str | None = None,
    ) -> dict[str, Any]:
        """An ``audit.access`` call, with the basis the ledger should accept (Forbidden if
        there is none); with the FHIR ``interaction`` when the ruleset records it."""
        basis = choose_basis(
            self.ledger,
            caller,
            patient=patient,
            custodian=self.org,
            action=action,
            purpose=purpose,
            types=types,
            time=self.clock.now_ms(),
        )
        args: dict[str, Any] = {
            "patient": patient,
            "accessor": caller.member,
            "accessor_org": caller.org,
            "action": action,
            "purpose": purpose,
            "basis": basis,
        }
        if caller.app is not None:
            args["app"] = caller.app
        if interaction is not None and self._says_interaction():
            args["interaction"] = interaction
        if records:
            args["records"] = sorted(set(records))
        if windows:
            args["windows"] = sorted(set(windows))
        return args

    # -- writes --------------------------------------------------------------------------

    def register_patient(self, public_key: str | None) -> str:
        pseudonym = f"pt-{token_hex(self.random, 8)}"
        if public_key is None:
            keypair = generate_keypair()
            self.patient_keys_dir.mkdir(parents=True, exist_ok=True)
            write_key_file(self.patient_keys_dir / f"{pseudonym}.key", keypair, name=pseudonym)
            public_key = keypair.public_b64
        else:
            decode_public_key(public_key)
        (receipt,) = self._commit(
            [
                (
                    "identity",
                    "add_member",
                    {
                        "id": pseudonym,
                        "name": pseudonym,
                        "roles": ["patient"],
                        "public_key": public_key,
                    },
                )
            ]
        )
        if receipt["result"] != "accepted":
            raise Rejected(receipt["code"], "the patient could not be registered")
        return pseudonym

    def custodial_key(self, patient: str) -> KeyPair | None:
        """The patient's key when this node holds it (patients registered without their own)."""
        from careledger.keyfile import read_key_file

        path = self.patient_keys_dir / f"{patient}.key"
        return read_key_file(path)[1] if path.exists() else None

    def create(
        self,
        caller: Caller,
        resource: dict[str, Any],
        *,
        patient_of: Any,
        patient_public_key: str | None = None,
        purpose: str = "TREAT",
    ) -> StoredResource:
        prepared = self.prepare(
            caller,
            resource,
            record_id=None,
            patient_of=patient_of,
            patient_public_key=patient_public_key,
        )
        (stored,) = self.write_all(caller, [prepared], purpose=purpose)
        return stored

    def create_at(
        self,
        caller: Caller,
        resource: dict[str, Any],
        record_id: str,
        *,
        patient_of: Any,
        purpose: str = "TREAT",
    ) -> StoredResource:
        """FHIR's update-as-create: a new record under the id the client chose (a PUT to an id
        nobody holds). A Patient's id is its ledger pseudonym, made by the ledger: never chosen.
        An id another record holds is refused by the ledger (records are one namespace)."""
        if resource["resourceType"] == "Patient":
            raise ValidationError(
                "a Patient's id is its ledger pseudonym: create it with POST", code="PATIENT_ID"
            )
        self.require_free_id(record_id)
        prepared, _, version, patient = self.prepare(
            caller, resource, record_id=None, patient_of=patient_of
        )
        (stored,) = self.write_all(caller, [(prepared, record_id, version, patient)],
                                   purpose=purpose)  # fmt: skip
        return stored

    def require_free_id(self, record_id: str) -> None:
        """Conflict(ID_TAKEN) when a record holds, or held, the id: an update-as-create is
        refused before anything is sealed, and alike whoever holds it (which would tell the
        caller where an id lives)."""
        if self.ledger.state(RECORDS, record_key(record_id)) is not None:
            raise Conflict("that id is taken: choose another, or POST", code="ID_TAKEN")

    def update(
        self,
        caller: Caller,
        resource: dict[str, Any],
        record_id: str,
        *,
        if_match: int | None = None,
        purpose: str = "TREAT",
    ) -> StoredResource:
        prepared = self.prepare(
            caller, resource, record_id=record_id, patient_of=None, if_match=if_match
        )
        (stored,) = self.write_all(caller, [prepared], purpose=purpose)
        return stored

    def prepare(
        self,
        caller: Caller,
        resource: dict[str, Any],
        *,
        record_id: str | None,
        patient_of: Any,
        if_match: int | None = None,
        patient_public_key: str | None = None,
        pending: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], str, int, str]:
        """Checks for one write of a transaction: (resource, record id, version, patient: ""
        for an organisation's own record). ``pending``: ``Type/id`` -> patient ("" for an
        organisation's record) of the records the same transaction writes before this one.

        A new Patient is registered on the ledger here, before the records are anchored.
        """
        resource_type = resource["resourceType"]
        self._require_writer(caller, resource_type)
        pending = pending or {}
        if record_id is not None:
            meta = self.record_meta(record_id, resource_type)
            require_scope(caller, resource_type, "update", meta["patient"])
            self._within(caller, resource, "update")
            if restrictions(caller.scopes, resource_type, "update"):
                current = self._open(record_id, meta["version"]).resource
                self._within(caller, current, "update")
            if meta["custodian"] != self.org:
                raise Forbidden("this node is not the record's custodian", code="NOT_CUSTODIAN")
            if if_match is not None and if_match != meta["version"]:
                raise Conflict(f"the current version is {meta['version']}", code="VERSION_CONFLICT")
            if meta["patient"] is None:
                self._about_no_patient(resource, pending)  # an update carries none either
                self._group_members(resource)
            elif resource_type != "Patient" and (
                self.patient_of(caller, resource, patient_of=patient_id, pending=pending)
                != meta["patient"]
            ):
                # sealed, anchored and logged as the record's patient: its content must be
                # about that patient, never moved to (or written as) another's
                raise ValidationError(
                    "an update keeps the record's patient: its subject must name that patient",
                    code="PATIENT_CHANGED",
                )
            return resource, record_id, meta["version"] + 1, meta["patient"] or ""
        if resource_type in ORG_ONLY_TYPES:  # the organisation's own record, about no patient
            return self._prepare_own(caller, resource, pending)
        if resource_type == "Patient":
            require_scope(caller, resource_type, "create", None)
            patient = self.register_patient(patient_public_key)
            return resource, patient, 1, patient
        patient = self.patient_of(caller, resource, patient_of=patient_of, pending=pending)
        if patient is None and resource_type in EITHER_TYPES and self._holds_own(resource_type):
            return self._prepare_own(caller, resource, pending)
        if patient is None:
            raise ValidationError(
                "the resource must reference its Patient on this ledger", code="NO_PATIENT"
            )
        require_scope(caller, resource_type, "create", patient)
        self._within(caller, resource, "create")
        self._patient_key(patient)
        return resource, self.new_record_id(), 1, patient

    def _prepare_own(
        self, caller: Caller, resource: dict[str, Any], pending: Mapping[str, str]
    ) -> tuple[dict[str, Any], str, int, str]:
        resource_type = resource["resourceType"]
        self._require_org_records(resource_type)
        self._about_no_patient(resource, pending)
        self._group_members(resource)
        require_scope(caller, resource_type, "create", None)
        self._within(caller, resource, "create")
        return resource, self.new_record_id(), 1, ""

    def patient_of(
        self,
        caller: Caller,
        resource: Mapping[str, Any],
        *,
        patient_of: Any = patient_id,
        pending: Mapping[str, str] | None = None,
    ) -> str | None:
        """The patient a resource about a patient belongs to, by its type's rule (see
        careledger.fhir.types), or None. ValidationError(MULTIPLE_PATIENTS) when it names
        several: a record is one patient's, so that consent can guard it.

        Through the records it refers to (Provenance.target, ...), a record counts when it is
        held here (or written earlier in the same transaction: ``pending``) and the caller may
        see its patient's records of its type; any other is as unknown as a record that does
        not exist, so the answer never tells whether another patient's record exists."""
        kind = resource.get("resourceType")
        if kind == "Bundle":
            return self._bundle_patient(caller, resource, pending or {})
        if kind not in PATIENT_PATHS and kind not in RECORD_PATHS:
            found: str | None = patient_of(resource)
            return found
        problem = path_reference_problem(resource)
        if problem is not None:  # a second patient must not hide behind a type or an MRN
            raise ValidationError(problem, code="PATIENT_REFERENCE")
        patients = set(path_patients(resource))
        for ref_type, ref_id in sorted(referenced_records(resource)):
            owner = self._record_patient(caller, ref_type, ref_id, pending or {})
            if owner:
                patients.add(owner)
        return _one_patient(str(kind), patients)

    def _record_patient(
        self, caller: Caller, kind: str, record_id: str, pending: Mapping[str, str]
    ) -> str | None:
        """The patient of a record this node holds that the caller may see, else None."""
        if f"{kind}/{record_id}" in pending:
            return pending[f"{kind}/{record_id}"] or None
        meta = self.ledger.state(RECORDS, record_key(record_id))
        if meta is None or meta["shredded"] or meta["type"] != kind or meta["patient"] is None:
            return None
        if meta["custodian"] != self.org:
            return None
        patient = str(meta["patient"])
        if not self.may_search(caller, patient, kind, purpose="TREAT"):
            return None
        return patient

    def _bundle_patient(
        self, caller: Caller, bundle: Mapping[str, Any], pending: Mapping[str, str]
    ) -> str | None:
        """A stored Bundle (document or collection) is one patient's: every entry's resource
        belongs to that patient by its own type's rule. The organisation's directory and
        definitions it carries (Practitioner, Organization) are no patient's, and so carry no
        patient's data (the organisation-record rule: they are read under the patient's consent
        here, but must not name another patient); a Group (its members are for the custodian
        only) is never carried. Entries carry no ``request`` or ``response`` (R4 bdl-3, bdl-4:
        those are a transaction's, a batch's or a history's, and an outcome is unchecked)."""
        if bundle.get("type") not in STORED_BUNDLE_TYPES:
            raise ValidationError(
                "a Bundle is stored when it is a document or a collection (a transaction or a"
                " batch is POSTed to /fhir)",
                code="BUNDLE_TYPE",
            )
        patients: set[str] = set()
        entries = bundle.get("entry")
        for index, entry in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict) and ("request" in entry or "response" in entry):
                raise ValidationError(
                    f"Bundle.entry[{index}]: a document's or a collection's entries carry no"
                    " request or response (R4 bdl-3, bdl-4)",
                    code="BUNDLE_TYPE",
                )
            resource = entry.get("resource") if isinstance(entry, dict) else None
            kind = resource.get("resourceType") if isinstance(resource, dict) else None
            if not isinstance(resource, dict):
                continue
            if kind in CUSTODIAN_ONLY:
                raise ValidationError(
                    f"Bundle.entry[{index}]: a {kind} lists patients for its custodian only;"
                    " a stored Bundle does not carry it",
                    code="NO_PATIENT_DATA",
                )
            if kind in ORG_ONLY_TYPES:
                self._about_no_patient(resource, pending)
                continue
            if kind == "Patient":
                owner = patient_id(resource)
            elif kind in NOT_HELD or kind == "Consent":
                owner = None
            else:
                owner = self.patient_of(caller, resource, pending=pending)
            if owner is None:
                raise ValidationError(
                    f"Bundle.entry[{index}]: every entry of a stored Bundle belongs to its"
                    " patient (a Patient/{id} on this ledger)",
                    code="NO_PATIENT",
                )
            patients.add(owner)
        return _one_patient("Bundle", patients)

    def _holds_own(self, resource_type: str) -> bool:
        """Whether the ruleset in force holds this type as an organisation's own record."""
        needed = 3 if resource_type in ORG_TYPES_R10 else 4
        return int(getattr(self.ledger.rules().contracts["records"], "version", 1)) >= needed

    def write_all(
        self,
        caller: Caller,
        writes: Sequence[tuple[dict[str, Any], str, int, str]],
        *,
        purpose: str = "TREAT",
    ) -> list[StoredResource]:
        """Seal every write, then anchor them all in ONE ledger transaction: all or none."""
        stored, _ = self.write_then(caller, writes, purpose=purpose)
        return stored

    def write_then(
        self,
        caller: Caller,
        writes: Sequence[tuple[dict[str, Any], str, int, str]],
        *,
        purpose: str = "TREAT",
        then: Callable[[list[tuple[str, int, str]]], list[Call]] | None = None,
    ) -> tuple[list[StoredResource], list[dict[str, Any]]]:
        """As :meth:`write_all`, with ``then``'s calls (given each write's (record id, version,
        hash)) committed right after the anchors, in the same submission: one round trip
        where a workflow anchors records and refers to them (a trial's CRF capture). Their
        receipts come back; refusing them is the caller's to handle."""
        sealed = []
        for resource, record_id, version, patient in writes:
            stored = self._stamped(resource, record_id, version)
            record = self.vault.encrypt(
                stored,
                record_id=record_id,
                resource_type=stored["resourceType"],
                version=version,
                patient=patient,
                patient_key=self._patient_key(patient) if patient else None,
                custodian=self.org,
                custodian_key=self.ledger.node_key.public_key,
            )
            sealed.append((stored, record, patient))
        tokens = {
            (r.record_id, r.version): self.blind.tokens(index_terms(stored))
            for stored, r, _ in sealed
        }
        # one transaction: every version and its blind-index tokens, or none
        self.vault.store.put_many([r for _, r, _ in sealed], tokens)
        try:
            anchors = [
                self._anchor_args(r.record_id, r.resource_type, p, r.content_hash, r.version)
                for _, r, p in sealed
            ]
            by_patient: dict[str, list[str]] = {}
            for _, r, p in sealed:
                if p:  # an organisation's own record is no patient's data: no access event
                    by_patient.setdefault(p, []).append(r.record_id)
            calls: list[tuple[str, str, Mapping[str, Any]]] = [
                ("records", "anchor_batch", {"anchors": anchors})
            ]
            created = {r.record_id for _, r, _ in sealed if r.version == 1}
            says = self._says_interaction()
            calls += [
                ("audit", "access", self._write_access(
                    caller, p, ids, purpose,
                    ("create" if set(ids) <= created else "update") if says else None))
                for p, ids in by_patient.items()
            ]  # fmt: skip
            mine = len(calls)
            if then is not None:
                calls += then([(r.record_id, r.version, r.content_hash) for _, r, _ in sealed])
            receipts = self._commit(calls)
            receipts, extra = receipts[:mine], receipts[mine:]
        except BaseException as exc:
            if getattr(exc, "code", None) not in IN_THE_STREAM:
                self._discard_unanchored([r for _, r, _ in sealed])
            # else the anchor is in the ordering stream and commits here on catch-up: the
            # sealed versions stay, or the ledger would anchor what this vault threw away
            raise
        anchor = receipts[0]
        if anchor["result"] != "accepted":
            self._discard_unanchored([r for _, r, _ in sealed])
            raise Conflict("the ledger refused the transaction", code=anchor["code"])
        refused = [r for r in receipts[1:] if r["result"] != "accepted"]
        if refused:
            # The records are anchored but their write was not logged: say so, loudly.
            raise Conflict(
                "the write was anchored but its access event was refused", code=refused[0]["code"]
            )
        return [
            StoredResource(
                resource=stored,
                record_id=r.record_id,
                resource_type=r.resource_type,
                version=r.version,
                patient=p,
                custodian=self.org,
                content_hash=r.content_hash,
                salt=b64url_encode(r.salt),
                anchor_tx=anchor["tx_id"],
                leaf_index=anchor["leaf_index"],
                last_updated=stored["meta"]["lastUpdated"],
            )
            for stored, r, p in sealed
        ], extra

    def _discard_unanchored(self, sealed: Sequence[Any]) -> None:
        """Remove sealed versions the ledger does not hold, and only those.

        A timeout or a failure after the commit does not mean the block is absent: a version
        whose anchor is on the ledger is kept, or its anchor would point at nothing.
        """
        for record in sealed:
            anchored = self.ledger.state(RECORDS, version_key(record.record_id, record.version))
            meta = self.ledger.state(RECORDS, record_key(record.record_id))
            if (
                anchored is None
                or anchored["hash"] != record.content_hash
                or meta is None
                or meta["custodian"] != self.org
            ):  # not this version of ours: another's record, or a version the ledger refused
                self.vault.store.discard(record.record_id, record.version)

    def _stamped(self, resource: dict[str, Any], record_id: str, version: int) -> dict[str, Any]:
        stored = dict(resource)
        stored["id"] = record_id
        meta = dict(stored.get("meta") or {})
        updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.time()))
        meta.update({"versionId": str(version), "lastUpdated": updated})
        stored["meta"] = meta
        return stored

    @staticmethod
    def _anchor_args(
        record_id: str, resource_type: str, patient: str, digest: str, version: int
    ) -> dict[str, Any]:
        args: dict[str, Any] = {"record": record_id, "type": resource_type}
        if patient:
            args["patient"] = patient
        args.update(hash=digest, version=version)
        if version > 1:
            args["prev_version"] = version - 1
        return args

    @staticmethod
    def _write_access(
        caller: Caller,
        patient: str,
        records: list[str],
        purpose: str,
        interaction: str | None = None,
    ) -> dict[str, Any]:
        # The purpose the caller gave is the one recorded (HPAYMT was rewritten to TREAT): one
        # the custodian may not write for is refused, never changed.
        if purpose not in CUSTODIAN_PURPOSES:
            raise ValidationError(
                f"a custodian writes for {sorted(CUSTODIAN_PURPOSES)}, not {purpose!r}",
                code="BAD_PURPOSE",
            )
        args: dict[str, Any] = {
            "patient": patient,
            "accessor": caller.member,
            "accessor_org": caller.org,
            "records": sorted(set(records)),
            "action": "write",
            "purpose": purpose,
            "basis": {"kind": "custodian"},
        }
        if caller.app is not None:
            args["app"] = caller.app
        if interaction is not None:
            args["interaction"] = interaction
        return args

    def may_change(self, caller: Caller, record_id: str, resource_type: str, mode: str) -> None:
        """Whether ``caller`` may update (``mode`` "update") or erase ("delete") this record,
        as FHIR's instance ``$validate`` asks; Forbidden or NotFound as the write itself would
        answer. A record the caller may not erase is "not found" to them: whether it exists
        is not told."""
        if mode == "delete":
            try:
                meta = self.record_meta(record_id, resource_type)
            except NotFound:
                meta = None
            if meta is not None and meta["patient"] is None:
                try:
                    self._may_erase_own(caller, meta)
                    return
                except Forbidden:
                    meta = None
            if meta is None or not caller.is_patient(meta["patient"]):
                raise NotFound(f"no {resource_type} with that id you may erase",
                               code="UNKNOWN_RECORD")  # fmt: skip
            require_scope(caller, resource_type, "delete", meta["patient"])
            return
        self._require_writer(caller, resource_type)
        meta = self.record_meta(record_id, resource_type)
        if meta["custodian"] != self.org:
            raise Forbidden("this node is not the record's custodian", code="NOT_CUSTODIAN")
        require_scope(caller, resource_type, "update", meta["patient"])

    def _group_members(self, resource: Mapping[str, Any]) -> None:
        """A Group's members are named so that anyone reads them alike (the exporter and the
        recipient checking the export): each by a reference, and a patient as relative
        ``Patient/{id}`` of a patient on this ledger; never an absolute URL, an identifier
        alone or a search (BAD_MEMBER)."""
        members = resource.get("member") if resource.get("resourceType") == "Group" else None
        for index, member in enumerate(members if isinstance(members, list) else ()):
            entity = member.get("entity") if isinstance(member, dict) else None
            ref = entity.get("reference") if isinstance(entity, dict) else None
            if not isinstance(ref, str):
                raise ValidationError(f"Group.member[{index}].entity names its member by a"
                                      " reference", code="BAD_MEMBER")  # fmt: skip
            patient = patient_id({"resourceType": "Basic", "subject": {"reference": ref}})
            if patient is not None:
                self._patient_key(patient)  # UNKNOWN_PATIENT unless a patient on this ledger
            elif _names_a_patient([entity]) or "?" in ref:
                raise ValidationError(
                    f"Group.member[{index}]: a patient member is Patient/{{id}} on this server",
                    code="BAD_MEMBER",
                )

    def _require_org_records(self, resource_type: str) -> None:
        """An organisation's own records need ruleset r10 (``RecordsV3``) in force, and those
        of the types r11 added ``RecordsV4``."""
        if not self._holds_own(resource_type):
            since = "r10" if resource_type in ORG_TYPES_R10 else "r11"
            raise NotFound(
                f"{resource_type} is held as an organisation's record from ruleset {since};"
                " this chain runs an older ruleset",
                code="UNSUPPORTED_TYPE",
            )

    def _about_no_patient(self, resource: Mapping[str, Any], pending: Mapping[str, str]) -> None:
        """:func:`_about_no_patient`, and a reference to a type that may also be a patient's
        record (a Schedule, a Provenance) must name one of this organisation's own records
        (one of the same transaction included): a patient's, another's or an unknown one is
        refused alike, so the answer tells nothing of whose it is."""
        problem = path_reference_problem(resource)  # an update of a Schedule, say
        if problem is not None:
            raise ValidationError(problem, code="PATIENT_REFERENCE")
        _about_no_patient(resource)
        for ref, _, _ in _references(_outside_members(resource)):
            match = _ORG_REFERENCE.match(ref) if ref is not None else None
            if ref is None or match is None or match.group("type") not in EITHER_TYPES:
                continue
            kind, record_id = ref.split("/_history/")[0].rsplit("/", 2)[-2:]
            named = f"{kind}/{record_id}"
            if named in pending:
                if pending[named] == "":
                    continue
            elif self.ledger.state(RECORDS, org_index_key(self.org, record_id)) is not None:
                meta = self.ledger.state(RECORDS, record_key(record_id))
                if meta is not None and meta["type"] == kind:
                    continue
            raise ValidationError(
                f"an organisation's record about no patient refers to a {kind} only when it is"
                " one of the organisation's own records",
                code="NO_PATIENT_DATA",
            )

    def may_read_own(
        self, caller: Caller, resource_type: str, custodian: str, action: str = "read"
    ) -> None:
        """Who reads (``action`` read, or search) an organisation's own records (about no
        patient, so no consent decides and no access event is made): its directory and
        definitions, any member or app of the network its scopes allow (a ``patient/`` scope
        too, for its patient's app); a Group, which lists patients, the custodian's own staff
        and apps alone, and never through a ``patient/`` scope (a launch about one patient
        does not reach the organisation's lists of others). Forbidden otherwise."""
        listed = resource_type in CUSTODIAN_ONLY
        require_scope(caller, resource_type, action, None if listed else caller.own_patient)
        if listed:
            own = caller.org == custodian and (
                caller.is_app or bool(caller.roles & (CARE_ROLES | {"admin", "auditor"}))
            )
            if not own:
                raise Forbidden(
                    f"a {resource_type} is read by its custodian's staff only",
                    code="NOT_CUSTODIAN",
                )

    def own_records(self, resource_type: str, as_of: int) -> dict[str, int]:
        """record id -> version as at ``as_of`` of this organisation's own live records of a
        type (from the ledger's index of them)."""
        out = {}
        own = org_records_of(self.ledger.state, self.ledger.store.state_keys, self.org, 1_000_000)
        for record_id, kind in own:
            if kind != resource_type:
                continue
            version = self._version_at(record_id, as_of)
            if version is not None:
                out[record_id] = version
        return out

    def _read_own(
        self, caller: Caller, meta: Mapping[str, Any], version: int | None
    ) -> StoredResource:
        record_id, resource_type = str(meta["id"]), str(meta["type"])
        if meta["custodian"] != self.org:
            raise NotFound("the record is held by another custodian", code="REMOTE_RECORD")
        self.may_read_own(caller, resource_type, str(meta["custodian"]))
        if version is not None and not 1 <= version <= meta["version"]:
            raise NotFound("no such version", code="UNKNOWN_VERSION")
        stored = self._open(record_id, version or int(meta["version"]))
        self._within(caller, stored.resource, "read")
        return stored

    def _require_writer(self, caller: Caller, resource_type: str) -> None:
        if caller.org != self.org or not caller.roles & WRITER_ROLES:
            raise Forbidden("only the custodian's staff write its records", code="NOT_CUSTODIAN")
        if resource_type == "Consent":
            raise ValidationError("Consent is written through the consent API", code="USE_CONSENT")

    # -- reads ---------------------------------------------------------------------------

    def _open(self, record_id: str, version: int) -> StoredResource:
        meta = self.ledger.state(RECORDS, record_key(record_id))
        if meta is not None and meta["shredded"]:
            # its anchors stay; its content is gone for good, even if this vault could not
            # destroy the keys yet (shred_missed)
            raise NotFound("the record was shredded", code="RECORD_SHREDDED")
        expected, tx_id, leaf = self._anchor_of(record_id, version)
        resource, sealed = self.vault.open(
            record_id, version, self.ledger.node_key, expected_content_hash=expected
        )
        meta = resource.get("meta")
        updated = meta.get("lastUpdated", "") if isinstance(meta, dict) else ""
        return StoredResource(
            resource=resource,
            record_id=record_id,
            resource_type=sealed.resource_type,
            version=version,
            patient=sealed.patient,
            custodian=sealed.custodian,
            content_hash=sealed.content_hash,
            salt=b64url_encode(sealed.salt),
            anchor_tx=tx_id,
            leaf_index=leaf,
            last_updated=str(updated),
        )

    def open_anchored(self, record_id: str, version: int) -> dict[str, Any] | None:
        """A version held here, checked against its ledger anchor (None: not anchored, or
        shredded). For computations the custodian runs over its own records; the caller
        answers for the access (see trials.recruitment)."""
        entry = self.ledger.state(RECORDS, version_key(record_id, version))
        meta = self.ledger.state(RECORDS, record_key(record_id))
        if entry is None or meta is None or meta["shredded"]:
            return None  # a shredded record's anchor stays; its content is gone for good
        try:
            resource, _ = self.vault.open(
                record_id, version, self.ledger.node_key, expected_content_hash=entry["hash"],
                keep=False,  # scans of every record: nothing of them stays in memory
            )  # fmt: skip
        except NotFound:
            return None
        return resource

    def read(
        self,
        caller: Caller,
        resource_type: str,
        record_id: str,
        *,
        version: int | None = None,
        purpose: str = "TREAT",
        local_only: bool = False,
    ) -> StoredResource:
        """A record version, after the ledger accepted the access event.

        A record another organisation holds is asked of its custodian's node (federation),
        unless ``local_only`` (a federated request itself never hops further).
        """
        meta = self.record_meta(record_id, resource_type)
        if meta["patient"] is None:
            return self._read_own(caller, meta, version)
        require_scope(caller, resource_type, "read", meta["patient"])
        if meta["custodian"] != self.org:
            if local_only or self.federation is None:
                raise NotFound("the record is held by another custodian", code="REMOTE_RECORD")
            remote = self.federation.read(
                caller,
                meta["custodian"],
                resource_type,
                record_id,
                version=version,
                purpose=purpose,
            )
            self._within(caller, remote.resource, "read")
            return remote
        if version is not None and not 1 <= version <= meta["version"]:
            raise NotFound("no such version", code="UNKNOWN_VERSION")
        self.authorise(
            caller,
            patient=meta["patient"],
            records=[record_id],
            types={resource_type},
            action="read",
            purpose=purpose,
            interaction="read" if version is None else "vread",
        )
        stored = self._open(record_id, version or meta["version"])
        self._within(caller, stored.resource, "read")
        return stored

    def _within(self, caller: Caller, resource: Mapping[str, Any], action: str) -> None:
        """Forbidden(SCOPE) for a resource a query-restricted scope does not reach (SMART v2)."""
        if not within_scopes(resource, caller.scopes, "", action, now=self.now()):
            raise Forbidden("the token's scopes do not reach this resource", code="SCOPE")

    def history(
        self, caller: Caller, resource_type: str, record_id: str, *, purpose: str = "TREAT"
    ) -> list[StoredResource]:
        meta = self.record_meta(record_id, resource_type)
        if meta["patient"] is None:
            self._read_own(caller, meta, None)
            versions = [self._open(record_id, v) for v in range(meta["version"], 0, -1)]
            for stored in versions:
                self._within(caller, stored.resource, "read")
            return versions
        require_scope(caller, resource_type, "read", meta["patient"])
        self.authorise(
            caller,
            patient=meta["patient"],
            records=[record_id],
            types={resource_type},
            action="read",
            purpose=purpose,
            interaction="history",
        )
        versions = [self._open(record_id, v) for v in range(meta["version"], 0, -1)]
        for stored in versions:
            self._within(caller, stored.resource, "read")
        return versions

    def patient_records(self, patient: str, types: set[str] | None = None) -> list[tuple[str, str]]:
        """(record id, type) of a patient's live records held here, from the ledger's index."""
        held = records_of(self.ledger.state, self.ledger.store.state_keys, patient, 1_000_000)
        return [
            (r.record_id, r.resource_type)
            for r in held
            if r.custodian == self.org and (types is None or r.resource_type in types)
        ]

    def custodians_of(self, patient: str) -> list[str]:
        """Other organisations holding live records of ``patient`` (from the ledger's index)."""
        held = records_of(self.ledger.state, self.ledger.store.state_keys, patient, 1_000_000)
        return sorted({r.custodian for r in held if r.custodian != self.org})

    def everything_everywhere(
        self,
        caller: Caller,
        patient: str,
        *,
        types: set[str] | None = None,
        purpose: str = "TREAT",
    ) -> tuple[list[StoredResource], list[tuple[str, str]]]:
        """Every custodian's records of ``patient`` the caller may see; (org, why) of those
        that could not answer or refused (the answer is then partial, and says so)."""
        missing: list[tuple[str, str]] = []
        try:
            found = self.everything(caller, patient, types=types, purpose=purpose)
        except Forbidden as exc:
            found, missing = [], [(self.org, exc.code)]
        others = self.custodians_of(patient)
        if others and self.federation is not None:
            remote, gone = self.federation.everything(
                caller, patient, others, types=types, purpose=purpose
            )
            found.extend(remote)
            missing.extend(gone)
        elif others:
            missing.extend((org, "REMOTE_UNAVAILABLE") for org in others)
        if not found and missing and all(org == self.org for org, _ in missing):
            raise Forbidden("no consent covers these records", code=missing[0][1])
        return found, missing

    def everything(
        self,
        caller: Caller,
        patient: str,
        *,
        types: set[str] | None = None,
        purpose: str = "TREAT",
        action: str = "read",
        as_of: int | None = None,
    ) -> list[StoredResource]:
        """Every record of ``patient`` held here (of ``types``) that the caller may see; with
        ``as_of``, each as it stood at that ledger height (records made later left out), so
        that the pages of one search show one result set."""
        self._patient_key(patient)
        records = self.patient_records(patient, types)
        if as_of is not None:
            versions = {r: self._version_at(r, as_of) for r, _ in records}
            records = [(r, t) for r, t in records if versions[r] is not None]
        allowed = [(r, t) for r, t in records if _scope_ok(caller, t, patient)]
        if not allowed:
            if records:
                raise Forbidden("the token's scopes allow none of these records", code="SCOPE")
            return []
        self.authorise(
            caller,
            patient=patient,
            records=[r for r, _ in allowed],
            types={t for _, t in allowed},
            action=action,
            purpose=purpose,
        )
        if as_of is not None:
            return [self._open(r, versions[r] or 0) for r, _ in allowed]
        return [self._open(r, self.record_meta(r)["version"]) for r, _ in allowed]

    def searchable(
        self, caller: Caller, patient: str, resource_type: str, *, purpose: str, as_of: int
    ) -> dict[str, int]:
        """record id -> version as at ``as_of`` of the patient's records of this type that the
        caller could be shown (scopes and a ledger basis checked; nothing read, nothing logged:
        the records a search then returns are logged by :meth:`log_reads`)."""
        self._patient_key(patient)
        # checked before looking: "200, none" against "403" must not tell what is held
        if not _scope_ok(caller, resource_type, patient):
            raise Forbidden("the token's scopes allow none of these records", code="SCOPE")
        self.access_args(caller, patient, [], {resource_type}, "read", purpose)  # a basis?
        records = self.patient_records(patient, {resource_type})
        versions = {r: self._version_at(r, as_of) for r, _ in records}
        return {r: v for r, v in versions.items() if v is not None}

    def visible_versions(
        self, caller: Caller, patient: str, types: set[str], *, purpose: str, as_of: int
    ) -> tuple[list[tuple[str, int, str]], set[str]]:
        """(record, version at ``as_of``, type) of the patient's records of ``types`` the caller
        may be shown, and the types held here the caller may not see (nothing read or logged)."""
        self._patient_key(patient)
        held = self.patient_records(patient, types)
        visible, refused = [], set()
        for kind in sorted({t for _, t in held}):
            if not self.may_search(caller, patient, kind, purpose=purpose):
                refused.add(kind)
        for record_id, kind in held:
            if kind in refused:
                continue
            version = self._version_at(record_id, as_of)
            if version is not None:
                visible.append((record_id, version, kind))
        return visible, refused

    def may_search(self, caller: Caller, patient: str, resource_type: str, *, purpose: str) -> bool:
        """Whether the caller could be shown this patient's records of this type (a search
        across patients leaves out, without a word, the patients it may not see)."""
        if not _scope_ok(caller, resource_type, patient):
            return False
        try:
            self.access_args(caller, patient, [], {resource_type}, "read", purpose)
        except Forbidden:
            return False
        return True

    def current_at(self, record_id: str, height: int) -> tuple[str, int] | None:
        """(patient, version current at ``height``) of a live patient's record held here, else
        None."""
        meta = self.ledger.state(RECORDS, record_key(record_id))
        if meta is None or meta["shredded"] or meta["custodian"] != self.org:
            return None
        if meta["patient"] is None:  # the organisation's own record: no patient's
            return None
        version = self._version_at(record_id, height)
        return None if version is None else (str(meta["patient"]), version)

    def version_at(self, record_id: str, height: int) -> int | None:
        """The version of a live record current at ``height`` (None: it did not exist yet)."""
        return self._version_at(record_id, height)

    def log_reads_many(
        self,
        caller: Caller,
        disclosed: Mapping[str, Sequence[tuple[str, str]]],
        *,
        purpose: str,
        interaction: str = "search",
    ) -> None:
        """One access event per patient for what a search disclosed (patient -> (record id,
        type) pairs), committed together; Forbidden (nothing is returned) unless the ledger
        accepts every one. Nothing disclosed, nothing committed."""
        calls: list[Call] = [
            (
                "audit",
                "access",
                self.access_args(
                    caller,
                    patient,
                    [r for r, _ in pairs],
                    {t for _, t in pairs},
                    "read",
                    purpose,
                    interaction=interaction,
                ),
            )
            for patient, pairs in sorted(disclosed.items())
            if pairs
        ]
        if not calls:
            return
        for receipt in self._commit(calls):
            if receipt["result"] != "accepted":
                raise Forbidden("the ledger refused the access", code=receipt["code"])

    def blind_candidates(self, groups: Sequence[Sequence[str]]) -> set[tuple[str, int]]:
        """(record id, version) pairs holding a term of every group (see fhir.blind_terms)."""
        return self.vault.store.blind_lookup([self.blind.tokens(g) for g in groups])

    def version_time(self, record_id: str, version: int) -> int:
        """When a version was anchored (block time, ms)."""
        entry = self.ledger.state(RECORDS, version_key(record_id, version))
        return int(entry["time"]) if entry is not None else -1

    def version_height(self, record_id: str, version: int) -> int:
        """The ledger height a version was anchored at (-1: no such version)."""
        known = self._heights.get((record_id, version))
        if known is not None:
            return known
        entry = self.ledger.state(RECORDS, version_key(record_id, version))
        if entry is None:
            return -1
        self._remember_height(record_id, version, int(entry["height"]))
        return int(entry["height"])

    def open_version(self, record_id: str, version: int) -> StoredResource:
        """Decrypt one version held here, checked against its anchor; not a read of the
        caller's (the search that decides what to return logs what it returns)."""
        return self._open(record_id, version)

    def _version_at(self, record_id: str, height: int) -> int | None:
        """The version of a record current at ``height`` (None: it did not exist yet). The
        record's own entry says its latest version and when it was written, which answers
        nearly every call with one read; the height of each version is remembered (it never
        changes) so that ordering a result set costs no more reads."""
        meta = self.record_meta(record_id)
        version = int(meta["version"])
        if int(meta["height"]) <= height:
            self._remember_height(record_id, version, int(meta["height"]))
            return version
        while version >= 1:
            written = self.version_height(record_id, version)
            if 0 <= written <= height:
                return version
            version -= 1
        return None

    def _remember_height(self, record_id: str, version: int, height: int) -> None:
        if len(self._heights) >= MAX_HEIGHTS_REMEMBERED:
            self._heights.clear()
        self._heights[(record_id, version)] = height

    def shred(self, caller: Caller, record_id: str) -> dict[str, Any]:
        """A patient whose key this node holds shreds a record; others sign records.shred.
        An organisation's own record is erased by its admin or one of its apps, signed by
        this node."""
        meta = self.record_meta(record_id)
        if meta["patient"] is None:
            return self._shred_own(caller, meta)
        if not caller.is_patient(meta["patient"]):
            raise Forbidden(
                "the patient, or the custodian's admin with their own key, shreds",
                code="NOT_AUTHORISED",
            )
        require_scope(caller, meta["type"], "delete", meta["patient"])
        if restrictions(caller.scopes, meta["type"], "delete"):
            self._within(caller, self._open(record_id, meta["version"]).resource, "delete")
        key = self.custodial_key(meta["patient"])
        if key is None:
            raise Forbidden(
                "sign records.shred with your own key (POST /v1/tx)", code="SIGN_YOURSELF"
            )
        # the delete is an access like any other (BALP PatientDelete): logged before it happens
        self.authorise(caller, patient=meta["patient"], records=[record_id], types={meta["type"]},
                       action="write", purpose="PATRQT", interaction="delete")  # fmt: skip
        args = {"record": record_id, "reason": "patient_request"}
        (receipt,) = self.node.execute([("records", "shred", args)], keypair=key)
        if receipt["result"] != "accepted":
            raise Conflict("the ledger refused the shredding", code=receipt["code"])
        return receipt

    def _may_erase_own(self, caller: Caller, meta: Mapping[str, Any]) -> None:
        own = caller.org == self.org == meta["custodian"]
        if not own or not (caller.is_app or "admin" in caller.roles):
            raise Forbidden(
                "the custodian's admins and apps erase its own records", code="NOT_AUTHORISED"
            )
        require_scope(caller, str(meta["type"]), "delete", None)

    def _shred_own(self, caller: Caller, meta: Mapping[str, Any]) -> dict[str, Any]:
        self._may_erase_own(caller, meta)
        record_id = str(meta["id"])
        if restrictions(caller.scopes, meta["type"], "delete"):
            self._within(caller, self._open(record_id, meta["version"]).resource, "delete")
        args = {"record": record_id, "reason": "custodian_request"}
        (receipt,) = self._commit([("records", "shred", args)])
        if receipt["result"] != "accepted":
            raise Conflict("the ledger refused the shredding", code=receipt["code"])
        return receipt

    def on_commit(self, executed: Executed) -> None:
        """Destroy the vault keys of every record the ledger just shredded, however it was asked."""
        shredded = [
            str(orjson.loads(event.data)["record"])
            for event in executed.block.events
            if event.type == SHREDDED_EVENT
        ]
        if shredded:
            self.shred_held(shredded)

    def shred_held(self, record_ids: Sequence[str]) -> int:
        """Destroy the vault keys of records the ledger shredded; how many were shredded here.

        Every one leaves memory first, then each leaves the disk on its own: a shredding the
        vault cannot make (a locked or full disk) stops none of the others, is logged, and is
        made by ``shred_missed`` at the next start. Each leaves memory again after, so a read
        racing the shredding cannot put it back.
        """
        for record_id in record_ids:
            self.vault.opened.drop(record_id)
        done = 0
        for record_id in record_ids:
            try:
                self.vault.store.shred(record_id)
                done += 1
            except (NotFound, Conflict):  # not held here, or already shredded
                pass
            except Exception:  # the next start shreds it: see shred_missed
                log.exception("the vault could not shred record %s; the next start will", record_id)
            finally:
                self.vault.opened.drop(record_id)
        return done

    def shred_missed(self) -> int:
        """Shred what the ledger shredded while this vault kept the keys (the node was down
        when the block came, or the vault could not shred then); how many were shredded."""
        events = self.ledger.store.events_of_types([SHREDDED_EVENT], MAX_SHREDDINGS_SCANNED)
        held = []
        for event in events:
            record_id = str(orjson.loads(event.data)["record"])
            with contextlib.suppress(NotFound):  # not a record held here
                if not self.vault.store.is_shredded(record_id):
                    held.append(record_id)
        return self.shred_held(held) if held else 0

    # -- consents ------------------------------------------------------------------------

    def _patient_signer(self, caller: Caller, patient: str) -> KeyPair:
        require_scope(caller, "Consent", "write", patient)
        if not caller.is_patient(patient):
            raise Forbidden(
                "a patient grants and revokes their own consents", code="NOT_AUTHORISED"
            )
        key = self.custodial_key(patient)
        if key is None:
            raise Forbidden(
                "sign consent.grant with your own key (POST /v1/tx)", code="SIGN_YOURSELF"
            )
        return key

    def grant_consent(
        self, caller: Caller, patient: str, args: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Grant on the ledger for a patient whose key this node holds; the ledger entry."""
        key = self._patient_signer(caller, patient)
        (receipt,) = self.node.execute([("consent", "grant", dict(args))], keypair=key)
        if receipt["result"] != "accepted":
            raise Rejected(receipt["code"], "the ledger refused the consent")
        return dict(self.ledger.state(CONSENT, consent_key(receipt["tx_id"])))

    def revoke_consent(self, caller: Caller, consent_id: str) -> dict[str, Any]:
        entry = self.consent(caller, consent_id)
        key = self._patient_signer(caller, entry["patient"])
        (receipt,) = self.node.execute(
            [("consent", "revoke", {"consent": consent_id})], keypair=key
        )
        if receipt["result"] != "accepted":
            raise Conflict("the ledger refused the revocation", code=receipt["code"])
        return dict(self.ledger.state(CONSENT, consent_key(consent_id)))

    def _may_see_consents(self, caller: Caller, patient: str) -> None:
        require_scope(caller, "Consent", "read", patient)  # a narrowed token stays narrow
        if caller.is_patient(patient):
            return
        own_team = caller.org == self.org and bool(caller.roles & CARE_ROLES)
        if not own_team or not self.patient_records(patient):
            raise Forbidden(
                "the patient, and the care team of an organisation holding the patient's records,"
                " see consents",
                code="NOT_AUTHORISED",
            )

    def consent(self, caller: Caller, consent_id: str) -> dict[str, Any]:
        entry = self.ledger.state(CONSENT, consent_key(consent_id))
        if entry is None:
            raise NotFound("no such consent", code="UNKNOWN_CONSENT")
        self._may_see_consents(caller, entry["patient"])
        return dict(entry)

    def consents(self, caller: Caller, patient: str) -> list[dict[str, Any]]:
        self._may_see_consents(caller, patient)
        return [
            dict(c)
            for c in consents_of(self.ledger.state, self.ledger.store.state_keys, patient, 10_000)
        ]

    def access_log(self, caller: Caller, patient: str) -> list[dict[str, Any]]:
        require_scope(caller, "AuditEvent", "read", patient)  # a narrowed token stays narrow
        oversight = caller.org == self.org and bool(caller.roles & {"admin", "auditor"})
        if not caller.is_patient(patient) and not (oversight and self.patient_records(patient)):
            raise Forbidden(
                "a patient sees their own access log; the custodian's admins and auditors see it"
                " for patients whose records they hold",
                code="NOT_AUTHORISED",
            )
        prefix = access_prefix(patient)
        # the newest: however many accesses came before, the latest are never cut off
        keys = self.ledger.store.state_keys(AUDIT, prefix, MAX_ACCESS_LOG, last=True)
        own = caller.is_patient(patient)
        return [self._named(self.ledger.state(AUDIT, k), own) for k in keys]

    def _named(self, entry: dict[str, Any], own: bool) -> dict[str, Any]:
        """A link's opening with its recipient's declared name, opened from the ledger's sealed
        copy (sealed for the patient and the serving node): for the patient only, not for the
        custodian's oversight (who a patient shares with is theirs)."""
        sealed = entry.get("recipient")
        if not own or not isinstance(sealed, dict):
            return entry
        try:
            name = open_sealed(sealed, self.node.settings.node_name, self.ledger.node_key.seed)
        except CareLedgerError:
            return entry
        return {**entry, "recipient_name": name.decode("utf-8", "replace").strip()}

    def access_entry(self, caller: Caller, tx_id: str) -> dict[str, Any]:
        """One access event, by the transaction that recorded it, for those who may see the
        patient's access log (NotFound otherwise: whether it exists is not told)."""
        found = self.ledger.store.find_tx(tx_id)
        body = orjson.loads(found[1].envelope)["body"] if found is not None else {}
        patient = body.get("args", {}).get("patient") if isinstance(body, dict) else None
        if found is None or (body.get("contract"), body.get("method")) != ("audit", "access"):
            raise NotFound("no such access event", code="UNKNOWN_EVENT")
        try:
            self.access_log(caller, str(patient))
        except Forbidden:
            raise NotFound("no such access event", code="UNKNOWN_EVENT") from None
        entry = self.ledger.state(AUDIT, access_key(str(patient), found[0], tx_id))
        if entry is None:  # refused by the ledger: no access happened
            raise NotFound("no such access event", code="UNKNOWN_EVENT")
        return dict(entry)

    def key_history(self, caller: Caller, patient: str) -> list[dict[str, Any]]:
        """Every change to who can sign as ``patient``: key rotations and revocations, the
        recovery path they set, guardians' approvals and recoveries, with block times. Shown
        beside the access log, to the same readers."""
        self.access_log(caller, patient)  # the same authorisation, and nothing more
        store = self.ledger.store
        found = store.events_of_types(KEY_EVENTS, MAX_KEY_EVENTS_SCANNED)
        triples = ((e.height, e.type, orjson.loads(e.data)) for e in found)
        entries = key_events_of(patient, triples)
        for entry in entries:
            header = store.header(entry["height"])
            entry["time"] = iso_ms(header.time) if header is not None else None
        return entries


_ORG_REFERENCE = re.compile(
    r"^(?:https?://[^\s/]+(?:/[^\s]*)?/)?(?P<type>[A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


def _one_patient(kind: str, patients: set[str]) -> str | None:
    if len(patients) > 1:
        raise ValidationError(
            f"this {kind} is about {len(patients)} patients: a record belongs to exactly one"
            " patient, so that consent can guard it (write one per patient)",
            code="MULTIPLE_PATIENTS",
        )
    return next(iter(patients)) if patients else None


def _outside_members(resource: Mapping[str, Any]) -> Any:
    """The resource without a Group's member entities (which may name patients)."""
    if resource.get("resourceType") == "Group" and isinstance(resource.get("member"), list):
        members = [{k: v for k, v in m.items() if k != "entity"} if isinstance(m, dict) else m
                   for m in resource["member"]]  # fmt: skip
        return {**resource, "member": members}
    return resource


def _about_no_patient(resource: Mapping[str, Any]) -> None:
    """An organisation's own record is read network-wide with no consent and no access event:
    its structure may carry no patient's data. So no contained resource, and every reference
    (extensions' included) goes to another organisation record (a Group's members aside, which
    only the custodian reads, checked by ``_group_members``): never a Patient, nor a patient's
    record (an Encounter names its patient), nor a search. A ``urn:uuid:`` (an entry of a Bundle
    that was not resolved to a record: what it names is unknown) is refused, and so is a
    reference by identifier unless its type is one only ever the organisation's (an MRN names
    a patient as surely as ``Patient/{id}`` does). Free text (``display`` included) is the
    writer's to keep clean, as on any directory."""
    if resource.get("contained"):
        raise ValidationError(
            "an organisation's record about no patient holds no contained resources",
            code="NO_PATIENT_DATA",
        )
    for ref, kind, by_identifier in _references(_outside_members(resource)):
        match = _ORG_REFERENCE.match(ref) if ref is not None else None
        target = match.group("type") if match else None
        if ref is not None and target not in ORG_TYPES:
            raise ValidationError(
                "an organisation's record about no patient refers only to other organisation"
                " records (Organization, Practitioner, Location, ...)"
                + (": a urn:uuid: names no record here" if ref.startswith("urn:uuid:") else ""),
                code="NO_PATIENT_DATA",
            )
        if kind is not None and kind not in ORG_TYPES:
            raise ValidationError(
                "an organisation's record about no patient refers only to other organisation"
                " records",
                code="NO_PATIENT_DATA",
            )
        if by_identifier and (kind or target) not in ORG_ONLY_TYPES:
            raise ValidationError(
                "an organisation's record about no patient refers by identifier only to a type"
                " that is only ever an organisation's record (Organization, Practitioner, ...):"
                " whose an identifier is cannot be checked",
                code="NO_PATIENT_DATA",
            )


_REFERENCE_KEYS = frozenset({"id", "extension", "reference", "type", "identifier", "display"})


def _references(value: Any) -> list[tuple[str | None, str | None, bool]]:
    """(reference, type, by identifier) of every Reference in ``value``: one with a
    ``reference``, or with an ``identifier`` and no other element than a Reference has (one by
    type or identifier only gives None for the reference)."""
    out: list[tuple[str | None, str | None, bool]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref, kind = item.get("reference"), item.get("type")
            logical = (
                isinstance(item.get("identifier"), dict)
                and item.keys() <= _REFERENCE_KEYS
                and (kind is None or isinstance(kind, str))
            )
            if "resourceType" not in item and (isinstance(ref, str) or logical):
                out.append((ref if isinstance(ref, str) else None,
                            kind if isinstance(kind, str) else None, logical))  # fmt: skip
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return out


def _names_a_patient(value: Any) -> bool:
    """Whether a reference in ``value`` points at a Patient (relative, absolute or typed)."""
    return any(
        kind == "Patient" or (ref is not None and re.search(r"(^|/)Patient/", ref) is not None)
        for ref, kind, _ in _references(value)
    )


def _scope_ok(caller: Caller, resource_type: str, patient: str, action: str = "search") -> bool:
    try:
        require_scope(caller, resource_type, action, patient)
    except Forbidden:
        return False
    return True
