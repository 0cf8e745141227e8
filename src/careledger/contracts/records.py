"""Anchors of vault records: the ledger proves a record's history without holding any of it.

An anchor names the record, its FHIR type, the patient's pseudonym (a member id, never a name
or an identifier from the record), the custodian organisation and a salted hash of the canonical
resource (the salt stays in the vault, so the hash reveals nothing). Versions chain: an update
names the version it replaces, so two writers cannot silently overwrite each other.

From ruleset r8 (``RecordsV2``) the contract also keeps each custodian's *holdings* of a patient's
records of one type: a count and a hash chain over every anchor and shred, in the order applied.
``attest_holdings`` is accepted only if it names the chain heads the ledger holds at its block,
so an accepted attestation, with the operations that hash to its head, proves which versions of
which records a custodian held then: what a bulk export must contain, checked offline.

From ruleset r10 (``RecordsV3``) an organisation also keeps records about no patient: its
directory (Organization, Practitioner, Location, ...), definitions (Questionnaire, ValueSet, ...)
and the lists of patients it keeps (Group). Only the types in :data:`ORG_RECORD_TYPES` may be
anchored without a patient, so a patient's record can never be passed off as the organisation's
(which no consent guards). They are indexed by custodian and chained in holdings of their own
(``holding-org/{custodian}/{type}``), attested like a patient's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from careledger.contracts.base import Args, Context, Contract, KeyLister, StateReader, tx_method
from careledger.contracts.identity import ID_PATTERN
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.core.block import ZERO_HASH
from careledger.core.canonical import canonical_bytes, sha256_hex
from careledger.errors import Rejected

NAMESPACE = "records"
RECORD_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # the FHIR id format
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
HEX_HASH = re.compile(r"^[0-9a-f]{64}$")
MAX_BATCH = 250  # keeps one anchor_batch envelope under the 64 KiB limit
WRITER_ROLES = frozenset({"admin", "clinician", "nurse", "pharmacist", "node", "device"})


def record_key(record_id: str) -> str:
    return f"record/{record_id}"


def version_key(record_id: str, version: int) -> str:
    return f"record/{record_id}/v/{version:08d}"


def record_of(read: StateReader, record_id: str) -> Mapping[str, Any] | None:
    """A record's anchor (type, patient, custodian, latest version), or None: what it is."""
    found: Mapping[str, Any] | None = read(NAMESPACE, record_key(record_id))
    return found


def patient_index_key(patient: str, record_id: str) -> str:
    return f"patient/{patient}/{record_id}"


PATIENT_INDEX_PREFIX = "patient/"
"""Where every patient's records are indexed (``patient_index_key``): a system export lists
the patients with records from it."""


class IndexedRecord(NamedTuple):
    """A live record in a patient's index."""

    record_id: str
    resource_type: str
    custodian: str


def records_of(read: StateReader, keys: KeyLister, patient: str, limit: int) -> list[IndexedRecord]:
    """A patient's live (unshredded) records, among the first ``limit`` of the patient's index,
    in its order (by record id): which of them a custodian holds, and who else holds some."""
    indexed = patient_index_key(patient, "")
    out = []
    for key in keys(NAMESPACE, indexed, limit):
        entry = read(NAMESPACE, key)
        if entry is not None:
            out.append(IndexedRecord(key[len(indexed) :], entry["type"], entry["custodian"]))
    return out


def patients_with_records(keys: KeyLister, limit: int) -> list[str]:
    """The patients with a live record, sorted, from the first ``limit`` entries of every
    patient's index: whom a system export covers."""
    return sorted({k.split("/", 2)[1] for k in keys(NAMESPACE, PATIENT_INDEX_PREFIX, limit)})


def holding_key(patient: str, custodian: str, resource_type: str) -> str:
    return f"holding/{patient}/{custodian}/{resource_type}"


def holding_op_key(patient: str, custodian: str, resource_type: str, n: int) -> str:
    return f"{holding_key(patient, custodian, resource_type)}/op/{n:010d}"


def next_holding_head(head: str, op: list[Any]) -> str:
    """One step of a holdings chain: ``op`` is ``[kind, record, version, hash, time, height]``
    with kind ``put`` (an anchored version) or ``shred``; the height lets a verifier replay the
    chain up to any block (block times may repeat, heights do not)."""
    return sha256_hex(bytes.fromhex(head) + canonical_bytes(op))


def replay_holding(
    ops: list[list[Any]],
) -> tuple[str, dict[str, tuple[int, str, int]]]:
    """A holdings chain's head and what it holds after ``ops``: record -> (version, salted hash,
    time anchored). The one reading of a chain, for the node that exports and the recipient
    that checks the export alike."""
    head, held = ZERO_HASH, {}
    for op in ops:
        head = next_holding_head(head, op)
        kind, record, version, digest, at = op[0], str(op[1]), int(op[2]), str(op[3]), int(op[4])
        if kind == "put":
            held[record] = (version, digest, at)
        else:
            held.pop(record, None)
    return head, held


def holding_of(value: Any) -> tuple[int, str]:
    """(operations, head) of a holdings entry; an absent one is empty."""
    if value is None:
        return 0, ZERO_HASH
    return int(value["n"]), str(value["head"])


def org_index_key(custodian: str, record_id: str) -> str:
    return f"org/{custodian}/{record_id}"


def org_holding_key(custodian: str, resource_type: str) -> str:
    return f"holding-org/{custodian}/{resource_type}"


def org_holding_op_key(custodian: str, resource_type: str, n: int) -> str:
    return f"{org_holding_key(custodian, resource_type)}/op/{n:010d}"


def org_records_of(
    read: StateReader, keys: KeyLister, custodian: str, limit: int
) -> list[tuple[str, str]]:
    """(record id, type) of an organisation's own live records (about no patient, r10), among
    the first ``limit`` of its index, in its order (by record id)."""
    indexed = org_index_key(custodian, "")
    out = []
    for key in keys(NAMESPACE, indexed, limit):
        entry = read(NAMESPACE, key)
        if entry is not None:
            out.append((key[len(indexed) :], entry["type"]))
    return out


def holding_state(
    read: StateReader, patient: str | None, custodian: str, resource_type: str
) -> tuple[int, str]:
    """(operations, head) of a custodian's holdings of one type: of ``patient``'s records, or
    with ``patient`` None of its own (r10). What ``attest_holdings`` must name."""
    if patient is None:
        return holding_of(read(NAMESPACE, org_holding_key(custodian, resource_type)))
    return holding_of(read(NAMESPACE, holding_key(patient, custodian, resource_type)))


def holding_ops(
    read: StateReader, patient: str | None, custodian: str, resource_type: str, n: int
) -> list[Any]:
    """The first ``n`` operations of the holdings chain :func:`holding_state` reads, oldest
    first: what :func:`replay_holding` replays to its head."""
    if patient is None:
        return [
            read(NAMESPACE, org_holding_op_key(custodian, resource_type, i))
            for i in range(1, n + 1)
        ]
    return [
        read(NAMESPACE, holding_op_key(patient, custodian, resource_type, i))
        for i in range(1, n + 1)
    ]


ORG_RECORD_TYPES: frozenset[str] = frozenset(
    {
        # the directory: who and where care is given
        "Organization",
        "OrganizationAffiliation",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "HealthcareService",
        "Endpoint",
        "InsurancePlan",
        # what is given: products and their definitions
        "Medication",
        "MedicationKnowledge",
        "Substance",
        "DeviceDefinition",
        # definitions and knowledge
        "ActivityDefinition",
        "PlanDefinition",
        "Questionnaire",
        "Library",
        "Measure",
        "ObservationDefinition",
        "SpecimenDefinition",
        "ChargeItemDefinition",
        "ResearchStudy",
        "CodeSystem",
        "ValueSet",
        "ConceptMap",
        "NamingSystem",
        "EventDefinition",
        "Evidence",
        "EvidenceVariable",
        "ResearchDefinition",
        "ResearchElementDefinition",
        # conformance: how this organisation's systems exchange and check data
        "StructureDefinition",
        "SearchParameter",
        "OperationDefinition",
        "CompartmentDefinition",
        "GraphDefinition",
        "MessageDefinition",
        "ImplementationGuide",
        "TerminologyCapabilities",
        "ExampleScenario",
        "TestScript",
        # the lists of patients an organisation keeps (a bulk export's Group)
        "Group",
    }
)
"""R4 types an organisation may anchor without a patient (r10). None is in R4's Patient
compartment except Group, whose members are read by the custodian only, and none refers to a
patient by its definition (BiologicallyDerivedProduct names its donor: left out); a type that is
about a patient (Observation, Appointment, Provenance, ...) must name one, so consent guards it."""

MAX_ATTESTED = 250
EXPORT_ID = re.compile(r"^[0-9a-f]{1,64}$")


def require_patient(ctx: Context, patient: str) -> dict[str, Any]:
    member = ctx.state.read(IDENTITY, f"member/{patient}")
    if member is None or "patient" not in member["roles"]:
        raise Rejected("UNKNOWN_PATIENT", "no patient member with that pseudonym")
    return dict(member)


def anchored_records(
    ctx: Context,
    raw: object,
    *,
    patient: str,
    types: frozenset[str],
    max_items: int,
    what: str,
) -> list[dict[str, Any]]:
    """``[{record, version, hash}]`` that must name anchored versions (same salted hash) of
    ``patient``'s records of ``types`` held by the signer's organisation: how another contract
    (a trial's CRF, a visit's note) refers to vault content, so both anchors are one content."""
    if not isinstance(raw, list) or not 0 < len(raw) <= max_items:
        raise Rejected("BAD_ARGS", f"{what}: 1..{max_items} anchored records")
    out = []
    for item in raw:
        entry = ctx.args(item if isinstance(item, dict) else {})
        entry.only("record", "version", "hash")
        record = entry.string("record", max_len=64)
        version = entry.integer("version", minimum=1)
        digest = entry.string("hash", pattern=re.compile(r"^[0-9a-f]{64}$"))
        anchored = ctx.state.read(NAMESPACE, version_key(record, version))
        meta = ctx.state.read(NAMESPACE, record_key(record))
        if anchored is None or meta is None or anchored["hash"] != digest:
            raise Rejected("UNKNOWN_RECORD", f"record {record} v{version} is not anchored")
        if meta["custodian"] != ctx.signer.org:
            raise Rejected("NOT_CUSTODIAN", f"record {record} is another organisation's")
        if meta["patient"] != patient or meta["type"] not in types:
            raise Rejected("BAD_ARGS", f"record {record} is not {what} about {patient}")
        out.append({"record": record, "version": version, "hash": digest, "type": meta["type"]})
    return out


class RecordsV1(Contract):
    name = NAMESPACE

    @tx_method
    def anchor(self, ctx: Context, args: Args) -> None:
        self._anchor(ctx, args)

    @tx_method
    def anchor_batch(self, ctx: Context, args: Args) -> None:
        """Several anchors in one transaction: all of them, or (on any refusal) none."""
        args.only("anchors")
        anchors = args.raw.get("anchors")
        if not isinstance(anchors, list) or not 0 < len(anchors) <= MAX_BATCH:
            raise Rejected("BAD_ARGS", f"anchors must be a list of 1..{MAX_BATCH} objects")
        for item in anchors:
            if not isinstance(item, dict):
                raise Rejected("BAD_ARGS", "each anchor is an object")
            self._anchor(ctx, ctx.args(item))

    @staticmethod
    def _anchor(ctx: Context, args: Args) -> None:
        args.only("record", "type", "patient", "hash", "version", "prev_version")
        record_id = args.string("record", pattern=RECORD_ID)
        resource_type = args.string("type", pattern=RESOURCE_TYPE)
        patient = args.string("patient", pattern=ID_PATTERN)
        digest = args.string("hash", pattern=HEX_HASH)
        version = args.integer("version", minimum=1)
        prev_version = args.optional_integer("prev_version", minimum=1)
        if not ctx.signer.roles & WRITER_ROLES:
            raise Rejected("NOT_AUTHORISED", "only an organisation's staff, node or device anchors")
        require_patient(ctx, patient)
        current = ctx.state.get(record_key(record_id))
        if current is None:
            if version != 1 or prev_version is not None:
                raise Rejected("VERSION_CONFLICT", "a new record starts at version 1")
        else:
            if current["shredded"]:
                raise Rejected("RECORD_SHREDDED", "the record was shredded")
            if current["custodian"] != ctx.signer.org:
                raise Rejected("NOT_CUSTODIAN", "only the custodian organisation updates a record")
            if (current["patient"], current["type"]) != (patient, resource_type):
                raise Rejected("BAD_ARGS", "a record keeps its patient and resource type")
            if prev_version != current["version"] or version != current["version"] + 1:
                raise Rejected("VERSION_CONFLICT", f"the current version is {current['version']}")
        entry = {
            "id": record_id,
            "type": resource_type,
            "patient": patient,
            "custodian": ctx.signer.org,
            "version": version,
            "hash": digest,
            "height": ctx.height,
            "time": ctx.time,
            "shredded": False,
        }
        ctx.state.put(record_key(record_id), entry)
        ctx.state.put(
            version_key(record_id, version),
            {"hash": digest, "height": ctx.height, "time": ctx.time, "tx": ctx.tx_id},
        )
        ctx.state.put(
            patient_index_key(patient, record_id),
            {"type": resource_type, "custodian": ctx.signer.org},
        )
        ctx.emit(
            "records.anchored",
            {"record": record_id, "type": resource_type, "patient": patient, "version": version},
        )

    @tx_method
    def shred(self, ctx: Context, args: Args) -> None:
        """The patient, or the custodian (an admin, or its node undoing a write it could not
        complete, such as a CRF entry the trial refused), shreds a record: keys destroyed."""
        args.only("record", "reason")
        record_id = args.string("record", pattern=RECORD_ID)
        reason = args.string("reason", max_len=64, pattern=re.compile(r"^[a-z][a-z0-9_-]*$"))
        current = ctx.state.get(record_key(record_id))
        if current is None:
            raise Rejected("UNKNOWN_RECORD", "no such record")
        if current["shredded"]:
            raise Rejected("ALREADY_SHREDDED", "the record was already shredded")
        is_patient = ctx.signer.member == current["patient"]
        is_custodian_admin = (
            ctx.signer.roles & {"admin", "node"} and ctx.signer.org == current["custodian"]
        )
        if not (is_patient or is_custodian_admin):
            raise Rejected("NOT_AUTHORISED", "only the patient or the custodian's admin may shred")
        ctx.state.put(
            record_key(record_id), {**current, "shredded": True, "shredded_at": ctx.height}
        )
        ctx.state.delete(patient_index_key(current["patient"], record_id))
        ctx.emit(
            "records.shredded",
            {"record": record_id, "patient": current["patient"], "reason": reason},
        )


class RecordsV2(RecordsV1):
    """r8: holdings chains on every anchor and shred, and ``attest_holdings``."""

    version = 2

    @staticmethod
    def _anchor(ctx: Context, args: Args) -> None:
        RecordsV1._anchor(ctx, args)
        entry = ctx.state.get(record_key(args.raw["record"]))
        RecordsV2._append(ctx, entry, "put")

    @staticmethod
    def _append(ctx: Context, entry: dict[str, Any], kind: str) -> None:
        patient, custodian, resource_type = entry["patient"], entry["custodian"], entry["type"]
        key = holding_key(patient, custodian, resource_type)
        n, head = holding_of(ctx.state.get(key))
        op = [kind, entry["id"], entry["version"], entry["hash"], ctx.time, ctx.height]
        ctx.state.put(holding_op_key(patient, custodian, resource_type, n + 1), op)
        ctx.state.put(key, {"n": n + 1, "head": next_holding_head(head, op)})

    @tx_method
    def shred(self, ctx: Context, args: Args) -> None:
        super().shred(ctx, args)
        self._append(ctx, ctx.state.get(record_key(args.raw["record"])), "shred")

    @tx_method
    def attest_holdings(self, ctx: Context, args: Args) -> None:
        """The signer's node states the heads of its organisation's holdings; refused unless
        every one is the ledger's at this block (an empty holding: 0 operations, zero head).
        ``export`` names the bulk export it is made for, so that it cannot be passed off as
        another export's."""
        args.only("holdings", "export")
        if args.has("export"):  # the bulk export it is for: binds it to that export's proof
            args.string("export", pattern=EXPORT_ID)
        if not ctx.signer.has_role("node"):
            raise Rejected("NOT_AUTHORISED", "holdings are attested by the custodian's node")
        raw = args.raw.get("holdings")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ATTESTED:
            raise Rejected("BAD_ARGS", f"holdings must be a list of 1..{MAX_ATTESTED} objects")
        seen = set()
        for item in raw:
            entry = ctx.args(item if isinstance(item, dict) else {})
            entry.only("patient", "type", "n", "head")
            patient = entry.string("patient", pattern=ID_PATTERN)
            resource_type = entry.string("type", pattern=RESOURCE_TYPE)
            n = entry.integer("n")
            head = entry.string("head", pattern=HEX_HASH)
            if (patient, resource_type) in seen:
                raise Rejected("BAD_ARGS", "a holding is attested once per transaction")
            seen.add((patient, resource_type))
            held = holding_of(ctx.state.get(holding_key(patient, ctx.signer.org, resource_type)))
            if held != (n, head):
                raise Rejected(
                    "HOLDINGS_CHANGED",
                    f"the holding of {resource_type} for {patient} is not the one attested",
                )


class RecordsV3(RecordsV2):
    """r10: records about no patient (the types of :data:`ORG_RECORD_TYPES`), the anchoring
    organisation's own: indexed by custodian, chained in their own holdings, shredded by the
    custodian's admin or node."""

    version = 3

    @staticmethod
    def _anchor(ctx: Context, args: Args) -> None:
        if args.has("patient"):
            RecordsV2._anchor(ctx, args)
            return
        args.only("record", "type", "hash", "version", "prev_version")
        record_id = args.string("record", pattern=RECORD_ID)
        resource_type = args.string("type", pattern=RESOURCE_TYPE)
        digest = args.string("hash", pattern=HEX_HASH)
        version = args.integer("version", minimum=1)
        prev_version = args.optional_integer("prev_version", minimum=1)
        if resource_type not in ORG_RECORD_TYPES:
            raise Rejected("NO_PATIENT", f"a {resource_type} record names its patient")
        if not ctx.signer.roles & WRITER_ROLES - {"device"}:
            raise Rejected("NOT_AUTHORISED", "only an organisation's staff or node anchors")
        current = ctx.state.get(record_key(record_id))
        if current is None:
            if version != 1 or prev_version is not None:
                raise Rejected("VERSION_CONFLICT", "a new record starts at version 1")
        else:
            if current["shredded"]:
                raise Rejected("RECORD_SHREDDED", "the record was shredded")
            if current["custodian"] != ctx.signer.org:
                raise Rejected("NOT_CUSTODIAN", "only the custodian organisation updates a record")
            if (current["patient"], current["type"]) != (None, resource_type):
                raise Rejected("BAD_ARGS", "a record keeps its patient and resource type")
            if prev_version != current["version"] or version != current["version"] + 1:
                raise Rejected("VERSION_CONFLICT", f"the current version is {current['version']}")
        entry = {
            "id": record_id,
            "type": resource_type,
            "patient": None,
            "custodian": ctx.signer.org,
            "version": version,
            "hash": digest,
            "height": ctx.height,
            "time": ctx.time,
            "shredded": False,
        }
        ctx.state.put(record_key(record_id), entry)
        ctx.state.put(
            version_key(record_id, version),
            {"hash": digest, "height": ctx.height, "time": ctx.time, "tx": ctx.tx_id},
        )
        ctx.state.put(org_index_key(ctx.signer.org, record_id), {"type": resource_type})
        RecordsV3._append(ctx, entry, "put")
        ctx.emit(
            "records.anchored",
            {"record": record_id, "type": resource_type, "patient": None, "version": version},
        )

    @staticmethod
    def _append(ctx: Context, entry: dict[str, Any], kind: str) -> None:
        if entry["patient"] is not None:
            RecordsV2._append(ctx, entry, kind)
            return
        custodian, resource_type = entry["custodian"], entry["type"]
        key = org_holding_key(custodian, resource_type)
        n, head = holding_of(ctx.state.get(key))
        op = [kind, entry["id"], entry["version"], entry["hash"], ctx.time, ctx.height]
        ctx.state.put(org_holding_op_key(custodian, resource_type, n + 1), op)
        ctx.state.put(key, {"n": n + 1, "head": next_holding_head(head, op)})

    @tx_method
    def shred(self, ctx: Context, args: Args) -> None:
        named = args.raw.get("record")
        current = ctx.state.get(record_key(named)) if isinstance(named, str) else None
        if current is None or current["patient"] is not None:
            super().shred(ctx, args)
            return
        args.only("record", "reason")
        record_id = args.string("record", pattern=RECORD_ID)
        reason = args.string("reason", max_len=64, pattern=re.compile(r"^[a-z][a-z0-9_-]*$"))
        if current["shredded"]:
            raise Rejected("ALREADY_SHREDDED", "the record was already shredded")
        own = ctx.signer.org == current["custodian"]
        if not (own and ctx.signer.roles & {"admin", "node"}):
            raise Rejected("NOT_AUTHORISED", "the custodian's admin or node shreds its records")
        shredded = {**current, "shredded": True, "shredded_at": ctx.height}
        ctx.state.put(record_key(record_id), shredded)
        ctx.state.delete(org_index_key(current["custodian"], record_id))
        self._append(ctx, shredded, "shred")
        ctx.emit("records.shredded", {"record": record_id, "patient": None, "reason": reason})

    @tx_method
    def attest_holdings(self, ctx: Context, args: Args) -> None:
        """As r8, and an item without ``patient`` names the organisation's own holding of a
        type about no patient."""
        args.only("holdings", "export")
        raw = args.raw.get("holdings")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ATTESTED:
            raise Rejected("BAD_ARGS", f"holdings must be a list of 1..{MAX_ATTESTED} objects")
        own = [i for i in raw if isinstance(i, dict) and "patient" not in i]
        if len(own) < len(raw):  # the patients' holdings, checked as r8 does
            theirs = [i for i in raw if not (isinstance(i, dict) and "patient" not in i)]
            super().attest_holdings(ctx, ctx.args({**args.raw, "holdings": theirs}))
        if not own:
            return
        if args.has("export"):
            args.string("export", pattern=EXPORT_ID)
        if not ctx.signer.has_role("node"):
            raise Rejected("NOT_AUTHORISED", "holdings are attested by the custodian's node")
        seen = set()
        for item in own:
            entry = ctx.args(item)
            entry.only("type", "n", "head")
            resource_type = entry.string("type", pattern=RESOURCE_TYPE)
            n = entry.integer("n")
            head = entry.string("head", pattern=HEX_HASH)
            if resource_type in seen:
                raise Rejected("BAD_ARGS", "a holding is attested once per transaction")
            seen.add(resource_type)
            held = holding_of(ctx.state.get(org_holding_key(ctx.signer.org, resource_type)))
            if held != (n, head):
                raise Rejected(
                    "HOLDINGS_CHANGED",
                    f"the organisation's holding of {resource_type} is not the one attested",
                )


ORG_RECORD_TYPES_V4: frozenset[str] = ORG_RECORD_TYPES | frozenset(
    {
        # conformance and testing: what this organisation's systems say and were shown to do
        "CapabilityStatement",
        "StructureMap",
        "TestReport",  # the outcome of a TestScript run against a system, not a patient
        # knowledge: evidence syntheses over populations, never one patient
        "EffectEvidenceSynthesis",
        "RiskEvidenceSynthesis",
        # regulated product definitions (ISO IDMP): a product, its authorisation, its label
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "SubstanceSpecification",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "CatalogEntry",  # an entry of the organisation's catalogue of products and services
        # types about a patient when they name one, and the organisation's own otherwise:
        "Schedule",  # a practitioner's, a room's or a device's diary
        "Slot",  # a free or busy time of such a Schedule
        "DeviceMetric",  # a measurement channel of a device assigned to no patient
        "SupplyRequest",  # supplies ordered for a ward or a store
        "PaymentNotice",  # a payment notified between an insurer and a provider
        "PaymentReconciliation",  # an insurer's remittance to a provider
        "VerificationResult",  # a practitioner's or an organisation's credentials checked
        "Linkage",  # copies of one directory entry linked (two Practitioner records)
        "EnrollmentResponse",  # an insurer's answer to an enrolment of no patient held here
        "Account",  # a cost centre of a ward, a device or a service
        "Contract",  # an agreement between organisations
        "BiologicallyDerivedProduct",  # a blood bank's unit collected by an organisation
        "MessageHeader",  # a message between the organisation's systems about no patient
        "Provenance",  # who made the organisation's own records, and how
    }
)
"""R4 types an organisation may anchor without a patient from r11 (``RecordsV4``): r10's,
the R4 definitions r10 left out, and the types about a patient only when they name one (then
they are the patient's record, which the contract anchors under any type). Never Patient,
nor a type that is always about a patient (Observation, Appointment, Person, Binary, ...)."""


def anchor_without_patient(ctx: Context, args: Args, types: frozenset[str]) -> None:
    """An organisation's own record (about no patient) anchored, for the types ``types``: what
    ``RecordsV3`` does for r10's list, for another list."""
    args.only("record", "type", "hash", "version", "prev_version")
    record_id = args.string("record", pattern=RECORD_ID)
    resource_type = args.string("type", pattern=RESOURCE_TYPE)
    digest = args.string("hash", pattern=HEX_HASH)
    version = args.integer("version", minimum=1)
    prev_version = args.optional_integer("prev_version", minimum=1)
    if resource_type not in types:
        raise Rejected("NO_PATIENT", f"a {resource_type} record names its patient")
    if not ctx.signer.roles & WRITER_ROLES - {"device"}:
        raise Rejected("NOT_AUTHORISED", "only an organisation's staff or node anchors")
    current = ctx.state.get(record_key(record_id))
    if current is None:
        if version != 1 or prev_version is not None:
            raise Rejected("VERSION_CONFLICT", "a new record starts at version 1")
    else:
        if current["shredded"]:
            raise Rejected("RECORD_SHREDDED", "the record was shredded")
        if current["custodian"] != ctx.signer.org:
            raise Rejected("NOT_CUSTODIAN", "only the custodian organisation updates a record")
        if (current["patient"], current["type"]) != (None, resource_type):
            raise Rejected("BAD_ARGS", "a record keeps its patient and resource type")
        if prev_version != current["version"] or version != current["version"] + 1:
            raise Rejected("VERSION_CONFLICT", f"the current version is {current['version']}")
    entry = {
        "id": record_id,
        "type": resource_type,
        "patient": None,
        "custodian": ctx.signer.org,
        "version": version,
        "hash": digest,
        "height": ctx.height,
        "time": ctx.time,
        "shredded": False,
    }
    ctx.state.put(record_key(record_id), entry)
    ctx.state.put(
        version_key(record_id, version),
        {"hash": digest, "height": ctx.height, "time": ctx.time, "tx": ctx.tx_id},
    )
    ctx.state.put(org_index_key(ctx.signer.org, record_id), {"type": resource_type})
    RecordsV3._append(ctx, entry, "put")
    ctx.emit(
        "records.anchored",
        {"record": record_id, "type": resource_type, "patient": None, "version": version},
    )


NOT_HELD_TYPES: frozenset[str] = frozenset(
    {"Parameters", "OperationOutcome", "Subscription", "AuditEvent"}
)
"""R4 types never anchored as a record from r11 (``RecordsV4``), with a patient or without:
Parameters and OperationOutcome (R4 never persists them), Subscription (no notifications are
sent, a stored one would never fire) and AuditEvent (the ledger's access events are the audit
trail; a written one would sit beside them). ``careledger.fhir.types.NOT_HELD`` gives each its
HTTP answer, for these names."""


class RecordsV4(RecordsV3):
    """r11: as r10, with the organisation's own records of :data:`ORG_RECORD_TYPES_V4`, and
    none of the types of :data:`NOT_HELD_TYPES`, a patient's or not."""

    version = 4

    @staticmethod
    def _anchor(ctx: Context, args: Args) -> None:
        kind = args.raw.get("type")
        if isinstance(kind, str) and kind in NOT_HELD_TYPES:
            raise Rejected("UNSUPPORTED_TYPE", f"a {kind} is never held as a record")
        if args.has("patient"):
            RecordsV2._anchor(ctx, args)
            return
        anchor_without_patient(ctx, args, ORG_RECORD_TYPES_V4)
