"""FHIR Bulk Data Access (``$export``) for backend apps, with a manifest that proves what it holds.

A job exports, as of the ledger height at kick-off, every record this custodian holds that the
app may see: its organisation's own records as custodian, others' under a consent to the
organisation. Each patient's exported records get one access event (action ``export``), committed
before a line of them is written. Files are NDJSON per type, streamed to disk (memory bounded by
2,000 decrypted records and one patient's plan and chains, however large the export: see
``_ExportReads``), listed in a manifest the node signs: each file's SHA-256 and count, the
ledger height and the checkpoint (signed tree head) of that height, and ``records.ndjson``, which
names every exported record version with its anchoring transaction, so that a recipient can check
offline (``careledger export verify``) that the files are exactly what the node says it sent.

And that nothing was left out (ruleset r8): before a patient's records are read, the node commits
``records.attest_holdings`` for each type the app may see of that patient, which the ledger
accepts only if it names the chain heads it holds. ``holdings.ndjson`` carries each chain's
operations (record ids, versions, salted hashes, no content), ``attestations.ndjson`` the
attesting transactions with their inclusion proofs; replaying the operations up to the export's
height gives exactly the versions the export must hold. Records withheld by ``_typeFilter`` are
named in ``withheld.ndjson``. Types under a query-restricted SMART scope are not attested: their
operations would show the app records its scopes do not reach.

A Group export (``Group/{id}/$export``, ruleset r10: a Group is the organisation's own record)
exports the Group's member patients as of the kick-off height, for the custodian's own apps
only. Its proof goes further than a system export's, whose patient set is the node's word: the
Group itself is in ``group.ndjson`` with its salt and anchor, its holdings chain (the
organisation's Groups) is attested with the patients', so the recipient checks that the Group
exported is the one the ledger held, reads its members itself, and requires every member's
every requested type attested (a member with nothing held has an empty chain).

Jobs run one at a time on a worker thread. A job under way when the node stops is marked failed
on restart ("start it again"): never left half-written and reported complete.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson

from careledger.callers.caller import Caller, require_scope
from careledger.callers.scopes import allows, restrictions
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.consent import consent_covers, consent_of
from careledger.contracts.records import (
    MAX_ATTESTED,
    holding_ops,
    holding_state,
    patients_with_records,
    replay_holding,
)
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.core.canonical import canonical_bytes
from careledger.core.checkpoint import sign_note
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex
from careledger.errors import CareLedgerError, Forbidden, NotFound, RateLimited, StorageError
from careledger.fhir.extract import group_patients
from careledger.fhir.search import SearchRequest, matches
from careledger.fhir.types import RECORD_TYPES
from careledger.health.scope_query import within_scopes
from careledger.health.service import HealthRecords, StoredResource
from careledger.ledger.engine import Ledger
from careledger.sqlite_threads import ThreadConnections

EXPORT_FILE = "export.sqlite"
EXPORT_DIR = "exports"
PROOF_EXTENSION = "https://careledger.dev/fhir/StructureDefinition/export-proof"
INDEX_FILE = "records.ndjson"
ANCHORS_FILE = "anchors.ndjson"  # each anchoring transaction, its receipt and inclusion proof
HOLDINGS_FILE = "holdings.ndjson"  # each attested holdings chain, with its operations
ATTESTATIONS_FILE = "attestations.ndjson"  # each attesting transaction, receipt and proof
WITHHELD_FILE = "withheld.ndjson"  # records held and visible but left out by _typeFilter
GROUP_FILE = "group.ndjson"  # a Group export's Group, with its salt and anchor
PROOF_FILES = (
    INDEX_FILE, ANCHORS_FILE, HOLDINGS_FILE, ATTESTATIONS_FILE, WITHHELD_FILE, GROUP_FILE
)
ATTEST_RETRIES = 3  # a write landing between reading the heads and attesting them: read again
PATIENTS_PER_COMMIT = 50
FLUSH_RECORDS = 2_000  # decrypted records held at once; also the most one access event names
SCHEMA = """CREATE TABLE IF NOT EXISTS job(
    id TEXT PRIMARY KEY, client TEXT NOT NULL, org TEXT NOT NULL, request TEXT NOT NULL,
    status TEXT NOT NULL, progress TEXT NOT NULL, created INTEGER NOT NULL, finished INTEGER,
    manifest TEXT, error TEXT, patients TEXT)"""
RUNNING = ("accepted", "in-progress")
KEEP_SECONDS = 24 * 3600  # a finished export's files are served this long, then removed
KEEP_JOBS = 5  # finished exports an app keeps at once (the oldest go first)
WITHDRAWN = (
    "withdrawn: since the export, a patient in it erased records or revoked a consent; "
    "start a new export"
)


@dataclass(frozen=True)
class ExportRequest:
    kind: str  # "system", "patient" or "group"
    types: frozenset[str] | None
    since_ms: int | None
    filters: Mapping[str, Sequence[SearchRequest]]  # _typeFilter, per type (OR)
    url: str  # the kick-off request, as the manifest repeats it
    purpose: str
    origin: str  # where the files are fetched: {origin}/fhir/$export-file/{job}/{name}
    group: str | None = None  # the Group's id, for a Group export


@dataclass
class _File:
    handle: IO[bytes]
    digest: Any = field(default_factory=hashlib.sha256)
    count: int = 0

    def write(self, line: bytes) -> None:
        self.handle.write(line)
        self.digest.update(line)
        self.count += 1


class ExportJobs:
    def __init__(
        self,
        records: HealthRecords,
        data_dir: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self._clock = clock  # job times, expiry of finished exports, consent checks
        self._random = random  # job ids
        self.records = records
        self.ledger = records.ledger
        self.root = data_dir / EXPORT_DIR
        self._conns = ThreadConnections(data_dir / EXPORT_FILE, "export job store")
        self._conns.schema(SCHEMA)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk-export")
        self._cancelled: set[str] = set()
        self._exported: dict[str, list[str]] = {}  # job -> patients exported (while it runs)
        self._touched: dict[str, set[str]] = {}  # job -> patients who erased or revoked since
        self._lock = threading.RLock()
        self._fail_interrupted()
        self._sweep()

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conns.get().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"the export job store failed: {exc}") from None

    def _fail_interrupted(self) -> None:
        """Jobs the node was running when it stopped: failed, their partial files removed."""
        for (job,) in self._run("SELECT id FROM job WHERE status IN (?, ?)", RUNNING):
            shutil.rmtree(self.root / job, ignore_errors=True)
            self._finish(
                job, "failed", error="the node restarted during the export: start it again"
            )

    def _sweep(self) -> None:
        """Remove expired exports, and directories no job owns (a crash between steps)."""
        cutoff = int(self._clock.time()) - KEEP_SECONDS
        for (job,) in self._run(
            "SELECT id FROM job WHERE status NOT IN (?, ?) AND finished < ?", (*RUNNING, cutoff)
        ):
            self._forget(job)
        owned = {j for (j,) in self._run("SELECT id FROM job")}
        if self.root.exists():
            for path in self.root.iterdir():
                if path.name not in owned:
                    shutil.rmtree(path, ignore_errors=True)

    def _forget(self, job: str) -> None:
        self._run("DELETE FROM job WHERE id = ?", (job,))
        shutil.rmtree(self.root / job, ignore_errors=True)

    def on_commit(self, executed: Any) -> None:
        """A patient's erasure or consent revocation withdraws every finished export holding
        that patient: its files are deleted at once (the app must ask again, and the ledger
        decides again)."""
        touched = set()
        for event in executed.block.events:
            if event.type in ("records.shredded", "consent.revoked"):
                touched.add(str(orjson.loads(event.data).get("patient")))
        if not touched:
            return
        with self._lock:
            for running in self._touched.values():  # judged when the job finishes
                running.update(touched)
            rows = self._run("SELECT id, patients FROM job WHERE status = 'complete'")
            for job, patients in rows:
                if touched & set(orjson.loads(patients or "[]")):
                    shutil.rmtree(self.root / job, ignore_errors=True)
                    self._run(
                        "UPDATE job SET status = 'withdrawn', manifest = NULL, error = ? "
                        "WHERE id = ?",
                        (WITHDRAWN, job),
                    )

    def close(self) -> None:
        with self._lock:
            self._cancelled.update(j for (j,) in self._run(
                "SELECT id FROM job WHERE status IN (?, ?)", RUNNING))  # fmt: skip
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._conns.close()

    # -- kick-off, status, files, cancel ---------------------------------------------------

    def start(self, caller: Caller, request: ExportRequest) -> str:
        if not caller.is_app:
            raise Forbidden("bulk export is for backend apps (SMART Backend Services)",
                            code="EXPORT_FOR_APPS")  # fmt: skip
        for kind in request.types or ():
            require_scope(caller, kind, "search", None)  # a named type the app may not read
        if request.group is not None:
            self._group_meta(caller, request.group)
        self._sweep()
        with self._lock:
            running = self._run(
                "SELECT COUNT(*) FROM job WHERE client = ? AND status IN (?, ?)",
                (caller.member, *RUNNING),
            )[0][0]
            if running:
                raise RateLimited("this app has an export under way: wait for it", retry_after=5)
            kept = self._run(
                "SELECT id FROM job WHERE client = ? ORDER BY created DESC", (caller.member,)
            )
            for (old,) in kept[KEEP_JOBS - 1 :]:
                self._forget(old)
        job = token_hex(self._random, 12)
        raw = {"kind": request.kind, "url": request.url, "purpose": request.purpose}
        self._run(
            "INSERT INTO job(id, client, org, request, status, progress, created) "
            "VALUES(?, ?, ?, ?, 'accepted', 'waiting to start', ?)",
            (job, caller.member, caller.org, orjson.dumps(raw).decode(), int(self._clock.time())),
        )
        self._pool.submit(self._work, job, caller, request)
        return job

    def _own(self, caller: Caller, job: str) -> tuple[Any, ...]:
        rows = self._run(
            "SELECT status, progress, manifest, error, client FROM job WHERE id = ?", (job,)
        )
        if not rows or rows[0][4] != caller.member:
            raise NotFound("no such export job", code="UNKNOWN_EXPORT")
        return rows[0]

    def status(self, caller: Caller, job: str) -> tuple[str, str, dict[str, Any] | None, str]:
        """(status, progress, manifest when complete, error when failed or withdrawn)."""
        self._sweep()
        status, progress, manifest, error, _ = self._own(caller, job)
        return status, progress, orjson.loads(manifest) if manifest else None, error or ""

    def cancel(self, caller: Caller, job: str) -> None:
        """Stop a job (or forget a finished one) and delete its files."""
        with self._lock:
            self._own(caller, job)
            self._cancelled.add(job)
            self._forget(job)

    def file(self, caller: Caller, job: str, name: str) -> Path:
        self._sweep()
        status, *_ = self._own(caller, job)
        path = self.root / job / name
        if status != "complete" or "/" in name or not name.endswith(".ndjson") or not path.exists():
            raise NotFound("no such export file", code="UNKNOWN_EXPORT")
        return path

    def _finish(
        self,
        job: str,
        status: str,
        *,
        manifest: Any = None,
        error: str = "",
        patients: Sequence[str] = (),
    ) -> None:
        self._run(
            "UPDATE job SET status = ?, finished = ?, manifest = ?, error = ?, patients = ? "
            "WHERE id = ?",
            (status, int(self._clock.time()), orjson.dumps(manifest).decode() if manifest else None,
             error or None, orjson.dumps(list(patients)).decode(), job),
        )  # fmt: skip

    # -- the work ----------------------------------------------------------------------------

    def _progress(self, job: str, text: str) -> None:
        self._run("UPDATE job SET status = 'in-progress', progress = ? WHERE id = ?", (text, job))

    def _stopped(self, job: str) -> bool:
        with self._lock:
            return job in self._cancelled

    def _work(self, job: str, caller: Caller, request: ExportRequest) -> None:
        out = self.root / job
        with self._lock:
            self._touched[job] = set()  # patients erasing or revoking while the job runs
        try:
            out.mkdir(parents=True, exist_ok=False)
            manifest = self._export(job, caller, request, out)
        except Exception as exc:  # any failure ends the job clearly, never half-written
            shutil.rmtree(out, ignore_errors=True)
            self._exported.pop(job, None)
            with self._lock:
                self._touched.pop(job, None)
            if not self._stopped(job):
                why = exc.message if isinstance(exc, CareLedgerError) else "the export failed"
                self._finish(job, "failed", error=why)
            return
        with self._lock:  # a cancel between the check and the update would leave files behind
            touched = self._touched.pop(job, set())
            exported = self._exported.pop(job, [])
            if self._stopped(job):
                shutil.rmtree(out, ignore_errors=True)
                return
            if touched & set(exported):  # an erasure or revocation came while it ran
                shutil.rmtree(out, ignore_errors=True)
                self._finish(job, "withdrawn", error=WITHDRAWN, patients=exported)
                return
            self._finish(job, "complete", manifest=manifest, patients=exported)

    def _patients(self) -> list[str]:
        return patients_with_records(self.ledger.store.state_keys, 100_000_000)

    def _group_meta(self, caller: Caller, group: str) -> dict[str, Any]:
        """The Group's ledger entry: a live Group of this organisation's, which only its own
        staff and apps read (NotFound, or Forbidden(NOT_CUSTODIAN))."""
        meta = self.records.record_meta(group, "Group")
        if meta["patient"] is not None or meta["custodian"] != self.records.org:
            raise NotFound("no Group with that id is held here", code="UNKNOWN_RECORD")
        self.records.may_read_own(caller, "Group", self.records.org)
        return meta

    def _group(
        self, caller: Caller, group: str, height: int, moment: int, proof: _Proof
    ) -> tuple[list[str], tuple[str, int, str]]:
        """The Group as it stood at ``height`` (block time ``moment``): its member patients
        then, and (record, version, anchoring tx) for the proof; its line is written to
        ``group.ndjson``."""
        self._group_meta(caller, group)
        version = self.records.version_at(group, height)
        if version is None:
            raise NotFound("the Group did not exist at the export's height", code="UNKNOWN_RECORD")
        stored = self.records.open_version(group, version)
        proof.group.write(orjson.dumps({
            "id": group, "version": version, "hash": stored.content_hash, "salt": stored.salt,
            "anchor_tx": stored.anchor_tx, "resource": stored.resource}) + b"\n")  # fmt: skip
        proof.extra_anchors.append(stored.anchor_tx)
        return group_patients(stored.resource, moment), (group, version, stored.anchor_tx)

    @staticmethod
    def _plan(
        reads: HealthRecords, caller: Caller, patient: str, request: ExportRequest, height: int
    ) -> list[tuple[str, str, int]]:
        """(record, type, version at ``height``) of a patient's records to export."""
        planned = []
        for record_id, kind in reads.patient_records(patient, set(request.types or ()) or None):
            if not allows(caller.scopes, kind, "search"):
                continue  # a type the app's scopes do not reach is not exported
            version = reads.current_at(record_id, height)
            if version is None:
                continue
            since = request.since_ms
            if since is not None and reads.version_time(record_id, version[1]) < since:
                continue
            planned.append((record_id, kind, version[1]))
        return planned

    def _export(
        self, job: str, caller: Caller, request: ExportRequest, out: Path
    ) -> dict[str, Any]:
        height = self.ledger.head.height
        header = self.ledger.store.header(height)
        moment = header.time if header is not None else int(self._clock.time() * 1000)
        files: dict[str, _File] = {}
        proof = _Proof(out, group=request.group is not None)
        reads = _ExportReads(self.records)
        if request.group is not None:
            patients, _ = self._group(caller, request.group, height, moment, proof)
            self._attest_groups(reads, proof, job)
        else:
            patients = self._patients()
        exported = refused = 0
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        try:
            for start in range(0, len(patients), PATIENTS_PER_COMMIT):
                if self._stopped(job):
                    raise CareLedgerError("cancelled", code="CANCELLED")
                batch = patients[start : start + PATIENTS_PER_COMMIT]
                done, skipped = self._batch(
                    job, caller, request, batch, height, now, files, proof, out, reads
                )
                exported += len(done)
                self._exported.setdefault(job, []).extend(sorted(done))
                refused += skipped
                self._progress(job, f"{min(start + len(batch), len(patients))} of "
                                    f"{len(patients)} patients")  # fmt: skip
        finally:
            proof.close()
            for f in files.values():
                f.handle.close()
        # every access event and attestation is committed: prove them in one later checkpoint
        size = self.ledger.head.log_size
        anchors = self._tx_proofs(
            out / ANCHORS_FILE, itertools.chain(proof.anchor_txs(), proof.extra_anchors), size
        )
        attestations = self._tx_proofs(out / ATTESTATIONS_FILE, proof.attest_txs, size)
        outputs = [
            {"type": kind, "url": f"{request.origin}/fhir/$export-file/{job}/{kind}.ndjson",
             "count": f.count}
            for kind, f in sorted(files.items())
        ]  # fmt: skip
        written = {f"{kind}.ndjson": f for kind, f in sorted(files.items())}
        written.update({INDEX_FILE: proof.index, ANCHORS_FILE: anchors,
                        HOLDINGS_FILE: proof.holdings, ATTESTATIONS_FILE: attestations,
                        WITHHELD_FILE: proof.withheld})  # fmt: skip
        if request.group is not None:
            written[GROUP_FILE] = proof.group
        listed = [
            {"name": name, "sha256": f.digest.hexdigest(), "count": f.count}
            for name, f in written.items()
        ]
        body = {
            "job": job,
            "height": height,
            "since_ms": request.since_ms,
            # requested types whose completeness is not proven, and why (the node's word)
            "excused": {
                "types": self._scope_excused(caller, request),
                "patients": dict(sorted(proof.uncovered.items())),
            },
            "tree_size": size,
            "checkpoint": self.ledger.checkpoint(size),
            "node": self.ledger.verifier_key(),
            "files": listed,
            # how many had no basis is told only to the custodian's own apps: to another
            # organisation's it would count patients who never consented to it
            "patients": {"exported": exported}
            | ({"no_basis": refused} if caller.org == self.records.org else {}),
            "requester": {"client_id": caller.member, "org": caller.org},
        }
        manifest: dict[str, Any] = {
            "transactionTime": datetime.fromtimestamp(moment / 1000, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "request": request.url,
            "requiresAccessToken": True,
            "output": outputs,
            "error": [],
            "extension": {PROOF_EXTENSION: body},
        }
        body["signature"] = sign_note(
            manifest_body(manifest), self.ledger.node_name, self.ledger.node_key
        )
        return manifest

    def _tx_proofs(self, path: Path, tx_ids: Iterable[str], size: int) -> _File:
        """One line per transaction, in order of id: its envelope, its receipt and the inclusion
        proof of that receipt in the checkpoint the manifest carries (which is there once, not
        per line). The ids are put in order on disk, in a temporary SQLite database: an export
        may name a transaction per record (records written one at a time)."""
        out = _File(open(path, "wb"))  # noqa: SIM115 - closed below
        ids = sqlite3.connect("")  # private and temporary: deleted when closed
        try:
            # TEXT in SQLite's binary order is UTF-8 byte order, which is sorted()'s order
            ids.execute("CREATE TABLE tx(id TEXT PRIMARY KEY) WITHOUT ROWID")
            ids.executemany("INSERT OR IGNORE INTO tx VALUES(?)", ((t,) for t in tx_ids))
            for (tx_id,) in ids.execute("SELECT id FROM tx ORDER BY id"):
                out.write(orjson.dumps(proven_tx(self.ledger, tx_id, size)) + b"\n")
        finally:
            ids.close()
            out.handle.close()
        return out

    def _attests(self) -> bool:
        """Whether the ruleset in force keeps holdings (r8)."""
        return "attest_holdings" in self.ledger.rules().contracts[RECORDS].methods()

    def _scope_excused(self, caller: Caller, request: ExportRequest) -> dict[str, str]:
        """Requested types whose completeness no export of this app proves, and why: its scopes
        do not reach them, or reach them only through a query restriction (a chain's operations
        would show the app records the restriction hides)."""
        excused = {}
        for kind in sorted((request.types or RECORD_TYPES) & RECORD_TYPES):
            if not allows(caller.scopes, kind, "search"):
                excused[kind] = "not in the app's scopes"
            elif restrictions(caller.scopes, kind, "search") is not None:
                excused[kind] = "the app's scope reaches it only through a query restriction"
        return excused

    def _attestable(
        self, caller: Caller, request: ExportRequest, basis: Mapping[str, Any]
    ) -> tuple[set[str], list[str]]:
        """(types of a patient whose completeness the export proves, requested types the
        patient's consent does not cover): those the request and the app's scopes reach and,
        under a consent, those the consent covers."""
        excused = self._scope_excused(caller, request)
        kinds = {k for k in (request.types or RECORD_TYPES) & RECORD_TYPES if k not in excused}
        uncovered: list[str] = []
        if basis.get("kind") == "consent":
            consent = consent_of(self.ledger.state, str(basis["id"]))
            now_ms = self._clock.now_ms()
            uncovered = sorted(
                kind
                for kind in kinds
                if consent is None
                or not consent_covers(consent, member="", org=caller.org, action="read",
                                      resource_type=kind, purpose=request.purpose, time=now_ms)
            )  # fmt: skip
        return kinds - set(uncovered), uncovered

    def _attest_groups(self, reads: HealthRecords, proof: _Proof, job: str) -> None:
        """Commit ``records.attest_holdings`` of the organisation's own Group holdings (r10),
        naming this export, and write the chain's line: the recipient replays it to see that
        the Group exported is the version the ledger held."""
        org = self.records.org
        for _ in range(ATTEST_RETRIES):
            n, head = holding_state(reads.ledger.state, None, org, "Group")
            item = {"type": "Group", "n": n, "head": head}
            (receipt,) = self.records.node.execute(
                [("records", "attest_holdings", {"holdings": [item], "export": job})]
            )
            if receipt["result"] == "accepted" or receipt.get("code") != "HOLDINGS_CHANGED":
                break
        if receipt["result"] != "accepted":
            raise StorageError(f"the ledger refused the export's holdings ({receipt.get('code')})")
        proof.attest_txs.append(str(receipt["tx_id"]))
        ops = holding_ops(reads.ledger.state, None, org, "Group", n)
        proof.holdings.write(orjson.dumps({
            "org": org, "type": "Group", "n": n, "head": head, "tx": receipt["tx_id"],
            "ops": ops}) + b"\n")  # fmt: skip

    def _attest(
        self, reads: HealthRecords, wanted: Sequence[tuple[str, str]], proof: _Proof, job: str
    ) -> dict[tuple[str, str], tuple[int, str, str]]:
        """Commit ``records.attest_holdings`` (naming this export) for each (patient, type), and
        return each chain's (operations, head, attesting transaction); ``_chain`` reads it."""
        if not wanted or not self._attests():
            return {}
        org = self.records.org
        attested: dict[tuple[str, str], tuple[int, str, str]] = {}
        for start in range(0, len(wanted), MAX_ATTESTED):
            chunk = wanted[start : start + MAX_ATTESTED]
            for _ in range(ATTEST_RETRIES):
                heads = [
                    (patient, kind, *holding_state(reads.ledger.state, patient, org, kind))
                    for patient, kind in chunk
                ]
                items = [{"patient": p, "type": k, "n": n, "head": h} for p, k, n, h in heads]
                (receipt,) = self.records.node.execute(
                    [("records", "attest_holdings", {"holdings": items, "export": job})]
                )
                if receipt["result"] == "accepted" or receipt.get("code") != "HOLDINGS_CHANGED":
                    break
            if receipt["result"] != "accepted":
                raise StorageError(
                    f"the ledger refused the export's holdings ({receipt.get('code')})"
                )
            proof.attest_txs.append(str(receipt["tx_id"]))
            for patient, kind, n, head in heads:
                attested[(patient, kind)] = (n, head, receipt["tx_id"])
        return attested

    def _chain(
        self,
        reads: HealthRecords,
        patient: str,
        kind: str,
        attested: tuple[int, str, str],
        proof: _Proof,
        since: int | None,
    ) -> tuple[dict[str, int], set[str]]:
        """Write an attested chain's line, with its operations up to the attested one (a chain
        only grows, so they read the same at any time after), and return what it held then:
        (record -> version, anchored at or after ``since``; every record the chain names)."""
        n, head, tx_id = attested
        org = self.records.org
        ops = holding_ops(reads.ledger.state, patient, org, kind, n)
        proof.holdings.write(orjson.dumps({
            "patient": patient, "type": kind, "n": n, "head": head, "tx": tx_id,
            "ops": ops}) + b"\n")  # fmt: skip
        _, current = replay_holding(ops)
        chosen = {r: v for r, (v, _, at) in current.items() if since is None or at >= since}
        return chosen, {str(op[1]) for op in ops}

    def _batch(
        self,
        job: str,
        caller: Caller,
        request: ExportRequest,
        patients: list[str],
        height: int,
        now: datetime,
        files: dict[str, _File],
        proof: _Proof,
        out: Path,
        reads: HealthRecords,
    ) -> tuple[set[str], int]:
        """Export a few patients: basis first, then their holdings attested (together), then
        one patient at a time: its chains' lines written, its records decrypted and filtered at
        most FLUSH_RECORDS at a time, then one committed access event per patient and set for
        exactly what is written, then the lines. Memory holds one patient's plan and chains and
        one set of decrypted records, however many records the batch has: a patient's plan is
        made again when its turn comes (as of ``height``, it reads the same), not kept."""
        chosen: list[tuple[str, set[str]]] = []  # (patient, types whose completeness is proven)
        refused = 0
        for patient in patients:
            types = {kind for _, kind, _ in self._plan(reads, caller, patient, request, height)}
            if not types and request.group is None:
                continue
            # a Group's member with nothing held is attested too: its empty chains are the
            # proof that nothing was left out
            try:  # the ledger basis, before anything is opened
                args = self.records.access_args(
                    caller, patient, [], types or {"Patient"}, "export", request.purpose
                )
            except Forbidden:
                refused += 1
                continue
            attested, uncovered = self._attestable(caller, request, args["basis"])
            if uncovered:
                proof.uncovered[patient] = uncovered
            chosen.append((patient, attested))
        heads = self._attest(reads, [(p, k) for p, kinds in chosen for k in sorted(kinds)],
                             proof, job)  # fmt: skip
        pending: list[tuple[str, list[StoredResource]]] = []
        held = 0
        exported: set[str] = set()
        for patient, attested in chosen:
            chains = {
                (patient, kind): self._chain(
                    reads, patient, kind, heads[(patient, kind)], proof, request.since_ms
                )
                for kind in sorted(attested)
                if (patient, kind) in heads
            }
            planned = _from_chains(
                patient, self._plan(reads, caller, patient, request, height), attested, chains
            )
            del chains
            for start in range(0, len(planned), FLUSH_RECORDS):
                part = planned[start : start + FLUSH_RECORDS]
                kept = []
                for stored in (reads.open_version(r, v) for r, _, v in part):
                    if _kept(stored.resource, request, caller, now):
                        kept.append(stored)
                    elif stored.resource_type in attested:  # only _typeFilter, there
                        proof.withheld.write(orjson.dumps({
                            "patient": patient, "type": stored.resource_type,
                            "id": stored.record_id, "version": stored.version,
                            "reason": "_typeFilter"}) + b"\n")  # fmt: skip
                if kept:
                    pending.append((patient, kept))
                    exported.add(patient)
                    held += len(kept)
                if held >= FLUSH_RECORDS:
                    self._flush(caller, request, pending, files, proof.index, out)
                    pending, held = [], 0
        self._flush(caller, request, pending, files, proof.index, out)
        return exported, refused

    def _flush(
        self,
        caller: Caller,
        request: ExportRequest,
        pending: list[tuple[str, list[StoredResource]]],
        files: dict[str, _File],
        index: _File,
        out: Path,
    ) -> None:
        """Commit the access events of ``pending`` (all or nothing), then write its lines."""
        if not pending:
            return
        calls = [
            ("audit", "access", self.records.access_args(
                caller, patient, [s.record_id for s in kept],
                {s.resource_type for s in kept}, "export", request.purpose, interaction="export"))
            for patient, kept in pending
        ]  # fmt: skip
        for receipt in self.records.node.execute(calls):
            if receipt["result"] != "accepted":
                raise Forbidden("the ledger refused an export's access event",
                                code=receipt["code"])  # fmt: skip
        for _, kept in pending:
            for stored in kept:
                target = files.get(stored.resource_type)
                if target is None:
                    handle = open(out / f"{stored.resource_type}.ndjson", "wb")  # noqa: SIM115
                    target = files[stored.resource_type] = _File(handle)
                target.write(orjson.dumps(stored.resource) + b"\n")
                index.write(orjson.dumps({
                    "type": stored.resource_type, "id": stored.record_id,
                    "version": stored.version, "patient": stored.patient,
                    "anchor_tx": stored.anchor_tx, "leaf_index": stored.leaf_index,
                    "hash": stored.content_hash, "salt": stored.salt}) + b"\n")  # fmt: skip


class _StoreReads:
    """The ledger as an export reads it: state straight from the store (committed state, as
    the ledger's own reads), never kept in the ledger's cache; anything else is the ledger's."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def state(self, namespace: str, key: str) -> Any:
        raw = self._ledger.store.get_state(namespace, key)
        return None if raw is None else orjson.loads(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


class _ExportReads(HealthRecords):
    """The records service as an export reads through it: the same node, vault and keys, but
    ledger state read through ``_StoreReads`` and no version's height remembered. An export
    asks about each of its records once or twice, so keeping what it reads would grow the node
    with the export (some 3 KiB a record: four entries in the ledger's state cache, up to its
    200,000, and a version's height in the service's, up to its 1,000,000) and push out what
    other requests read often."""

    def __init__(self, records: HealthRecords) -> None:
        vars(self).update(vars(records))  # a view of the same service, not a second one
        self.ledger = cast(Ledger, _StoreReads(records.ledger))

    def _remember_height(self, record_id: str, version: int, height: int) -> None:
        return  # each version is asked about once or twice: nothing worth keeping


class _Proof:
    """The files beside the data that let a recipient check the export offline."""

    def __init__(self, out: Path, *, group: bool = False) -> None:
        self.out = out
        self.index = _File(open(out / INDEX_FILE, "wb"))  # noqa: SIM115 - closed by close()
        self.holdings = _File(open(out / HOLDINGS_FILE, "wb"))  # noqa: SIM115
        self.withheld = _File(open(out / WITHHELD_FILE, "wb"))  # noqa: SIM115
        # a Group export's Group (the file exists, and is listed, for a Group export only)
        self.group = _File(open(out / GROUP_FILE, "wb") if group else open(os.devnull, "wb"))  # noqa: SIM115
        self.attest_txs: list[str] = []
        self.extra_anchors: list[str] = []  # the Group's anchoring transaction
        self.uncovered: dict[str, list[str]] = {}  # patient -> requested types no consent covers

    def close(self) -> None:
        for f in (self.index, self.holdings, self.withheld, self.group):
            f.handle.close()

    def anchor_txs(self) -> Iterator[str]:
        """The anchoring transaction of every exported version, read back from the index (once
        a version: ``_tx_proofs`` keeps each once)."""
        with (self.out / INDEX_FILE).open("rb") as listed:
            for line in listed:
                yield str(orjson.loads(line)["anchor_tx"])


def _from_chains(
    patient: str,
    planned: list[tuple[str, str, int]],
    attested: set[str],
    chains: Mapping[tuple[str, str], tuple[dict[str, int], set[str]]],
) -> list[tuple[str, str, int]]:
    """What to export of a patient: for an attested type, exactly the versions its chain held
    when attested (what the recipient's check expects), and records anchored before chains
    were kept (r8), which no chain names; other types as planned."""
    out = []
    for kind in sorted(attested):
        chosen, named = chains.get((patient, kind), ({}, set()))
        out += [(record, kind, version) for record, version in sorted(chosen.items())]
        out += [p for p in planned if p[1] == kind and p[0] not in named]
    return out + [p for p in planned if p[1] not in attested]


def _kept(
    resource: Mapping[str, Any], request: ExportRequest, caller: Caller, now: datetime
) -> bool:
    """Whether a resource meets the request's _typeFilter for its type (any of them) and the
    app's query-restricted scopes (SMART v2), if it has any."""
    if not within_scopes(resource, caller.scopes, "", "search", now=now):
        return False
    wanted = request.filters.get(str(resource.get("resourceType")))
    return not wanted or any(matches(resource, f, now=now) for f in wanted)


def proven_tx(ledger: Ledger, tx_id: str, size: int) -> dict[str, Any]:
    """A committed transaction as an offline proof carries it: its id, envelope and receipt,
    and the inclusion proof of that receipt in the tree of ``size`` (whose checkpoint the
    proof carries once, not per transaction). Checked by ``export_proof.verify_proven_tx``."""
    found = ledger.store.find_tx(tx_id)
    if found is None:
        raise StorageError(f"a transaction of the proof is missing: {tx_id}")
    answer = ledger.tx_proof(tx_id, size)
    answer.pop("checkpoint", None)
    return {"tx": tx_id, "envelope": orjson.loads(found[1].envelope), **answer}


def manifest_body(manifest: Mapping[str, Any]) -> str:
    """What the node signs: the SHA-256 of the manifest's RFC 8785 bytes, its signature left out."""
    copy = orjson.loads(orjson.dumps(manifest))
    copy.get("extension", {}).get(PROOF_EXTENSION, {}).pop("signature", None)
    digest = hashlib.sha256(canonical_bytes(copy)).hexdigest()
    return f"careledger bulk export manifest\n{digest}\n"
