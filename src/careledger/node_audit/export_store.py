"""The bulk export store (``export.sqlite``: job) and its files (``exports/{job}/``) against the
ledger and the node's key.

What is checked:

* The store's file: ``sqlite_master`` object for object against what ``ExportJobs`` creates, and
  SQLite's quick check.
* ``job``: the id is of the node's form (12 random bytes, hex); the client is a backend app
  registered on the ledger and the row's organisation is that app's, an organisation on the
  ledger; the request is the kind, URL and purpose the node records; the status is one the
  node writes, with ``finished`` exactly when the job ended (not before it was created), a
  manifest exactly when it is complete, an error exactly when it failed or was withdrawn (the
  node's own words for a withdrawal) and its patients (member ids) once it ended. An app has at
  most one job under way and ``KEEP_JOBS`` in all.
* A complete job's manifest is signed by this node's key (its verifier key is the node's, the
  signature is over ``manifest_body``), as is the checkpoint it carries, whose size is the
  ledger size the proof names and whose root is the ledger's at that size; it names this job, its
  client and organisation, and a height the ledger has reached. The files in ``exports/{job}/``
  are exactly those it lists, each with the SHA-256 and line count it gives; then the whole
  export is checked as a recipient would (``export_proof.verify_export`` with this node's key:
  each record against its anchor, the holdings attested). No patient it holds erased records or
  revoked a consent after it was finished: the node withdraws such an export (``on_commit``).
* A job that failed or was withdrawn holds no files, nor does one the store does not know
  (``ExportJobs`` removes them); a job still running may hold the files it is writing.

What cannot be checked, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* A job the node forgot (with its files): jobs are forgotten after ``KEEP_SECONDS``, on cancel
  and beyond ``KEEP_JOBS``, and no job is on the ledger (its access events are, but they do not
  name the job), so a job deleted with the node's key looks like one that expired.
* A failed job's error text and a running job's progress: the node's words, not anchored.
* The patients of a complete export: the list is the node's own (only the access events, which
  do not name the job, are on the ledger); they are checked for their form and for withdrawal.
* When a job was created or finished to the second: the node's clock, not the ledger's.
* A job under way while the audit runs: its files are being written, so they are not checked.
  The files of any job are outside the store: the manifest's signature vouches for them.

SQLite's messages are never repeated. Differences name jobs by id and files by name (a resource
type or a proof file); never a patient, a record or any line of a file.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from careledger.contracts.apps import app_of
from careledger.contracts.identity import ID_PATTERN, org_of
from careledger.core.checkpoint import format_vkey, parse_checkpoint, parse_vkey, verify_note
from careledger.errors import CareLedgerError
from careledger.health.bulk_export import (
    EXPORT_DIR,
    EXPORT_FILE,
    KEEP_JOBS,
    PROOF_EXTENSION,
    PROOF_FILES,
    RUNNING,
    SCHEMA,
    WITHDRAWN,
    manifest_body,
)
from careledger.health.export_proof import verify_export
from careledger.node_audit.check import Difference, NodeContext, row_count, unreadable
from careledger.node_audit.monitoring_store import schema_differences

__all__ = ["ExportStoreCheck"]

JOB_ID = re.compile(r"^[0-9a-f]{24}$")
STATUSES = frozenset({*RUNNING, "complete", "failed", "withdrawn"})
ENDED = frozenset({"failed", "withdrawn"})
KINDS = frozenset({"system", "patient", "group"})
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
WITHDRAWING = ("records.shredded", "consent.revoked")
CLOCK_WINDOW = 300  # seconds between the node's clock and a block's time
COLUMNS = "id, client, org, request, status, progress, created, finished, manifest, error, patients"


def _difference(table: str, row: str, problem: str) -> Difference:
    return Difference(EXPORT_FILE, table, row, problem)


class ExportStoreCheck:
    """The export job store and its files against the ledger (see the module's docstring)."""

    store = EXPORT_FILE

    def size(self, context: NodeContext) -> int:
        return row_count(context, self.store, ("job",))

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        root = context.data_dir / EXPORT_DIR
        if conn is None:
            yield from _orphans(root, set())
            return
        audit = _Audit(context, progress)
        try:
            yield from schema_differences(self.store, conn, SCHEMA)
            try:
                rows = conn.execute(f"SELECT {COLUMNS} FROM job ORDER BY id").fetchall()  # noqa: S608 - our names
            except sqlite3.Error as exc:
                yield _difference("job", "", f"the table cannot be read ({unreadable(exc)})")
                return
            for row in rows:
                yield from audit.job(dict(zip(COLUMNS.split(", "), row, strict=True)))
            yield from audit.per_client()
            yield from _orphans(root, {str(r[0]) for r in rows})
        except sqlite3.DatabaseError as exc:
            yield _difference("(file)", "", f"the store cannot be read ({unreadable(exc)})")
        finally:
            conn.close()


def _orphans(root: Path, jobs: set[str]) -> Iterator[Difference]:
    """Folders of ``exports/`` no job owns (``ExportJobs`` removes them)."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.name not in jobs:
            name = path.name if JOB_ID.match(path.name) else "(a folder not named as a job)"
            yield Difference(EXPORT_DIR, "(folder)", name, "files of a job the store does not hold")


class _Audit:
    def __init__(self, context: NodeContext, progress: Callable[[int], None]) -> None:
        self.context = context
        self.progress = progress
        self.vkey = format_vkey(context.node_name, context.node_key.public_key)
        self.clients: dict[str, list[str]] = {}  # client -> statuses
        self._withdrawing: dict[str, list[int]] | None = None

    def job(self, job: dict[str, Any]) -> Iterator[Difference]:
        self.progress(1)
        job_id = job["id"]
        name = str(job_id) if isinstance(job_id, str) and JOB_ID.match(job_id) else "(bad id)"
        if name == "(bad id)":
            yield _difference("job", name, "id is not a job id of the node's form")
        client, status = job["client"], job["status"]
        app = app_of(self.context.state, client) if isinstance(client, str) else None
        if app is None:
            yield _difference("job", name, "the client is not an app registered on the ledger")
        else:
            if app.get("kind") != "backend":
                yield _difference("job", name, "the client is not a backend app (only those"
                                  " export)")  # fmt: skip
            if app.get("org") != job["org"]:
                yield _difference("job", name, "the organisation is not the app's on the ledger")
            self.clients.setdefault(str(client), []).append(str(status))
        if not isinstance(job["org"], str) or org_of(self.context.state, job["org"]) is None:
            yield _difference("job", name, "the organisation is not one on the ledger")
        yield from self._request(name, job["request"])
        yield from self._lifecycle(name, job)
        folder = self.context.data_dir / EXPORT_DIR / str(job_id)
        if status in ENDED and folder.exists() and any(folder.iterdir()):
            yield _difference("job", name, f"the job is {status}, yet exports/{name}/ holds files")
        if status == "complete" and name != "(bad id)":
            yield from self._complete(name, job, folder)

    def _request(self, name: str, raw: object) -> Iterator[Difference]:
        try:
            request = orjson.loads(raw) if isinstance(raw, str) else None
        except orjson.JSONDecodeError:
            request = None
        if (
            not isinstance(request, dict)
            or set(request) != {"kind", "url", "purpose"}
            or request["kind"] not in KINDS
            or not all(isinstance(request[k], str) for k in ("url", "purpose"))
        ):
            yield _difference("job", name, "request is not the kind, URL and purpose the node"
                              " records")  # fmt: skip

    def _lifecycle(self, name: str, job: dict[str, Any]) -> Iterator[Difference]:
        status = job["status"]
        if status not in STATUSES:
            yield _difference("job", name, f"status is not one of {sorted(STATUSES)}")
            return
        created, finished = job["created"], job["finished"]
        running = status in RUNNING
        if type(created) is not int:
            yield _difference("job", name, "created is not a time (seconds)")
        if running != (finished is None):
            yield _difference("job", name, "finished is set exactly when the job ended; it is not")
        elif type(finished) is int and type(created) is int and finished < created:
            yield _difference("job", name, "finished before it was created")
        if (status == "complete") != (job["manifest"] is not None):
            yield _difference("job", name, "a manifest is held exactly when the job is complete;"
                              " it is not")  # fmt: skip
        if (status in ENDED) != (job["error"] is not None):
            yield _difference("job", name, "an error is held exactly when the job failed or was"
                              " withdrawn; it is not")  # fmt: skip
        if status == "withdrawn" and job["error"] != WITHDRAWN:
            yield _difference("job", name, "the error is not the node's words for a withdrawal")
        patients = _patients(job["patients"])
        if running != (job["patients"] is None) or (not running and patients is None):
            yield _difference("job", name, "patients is not the list of member ids the node"
                              " keeps once a job ends")  # fmt: skip

    def _complete(self, name: str, job: dict[str, Any], folder: Path) -> Iterator[Difference]:
        try:
            manifest = orjson.loads(str(job["manifest"]))
        except orjson.JSONDecodeError:
            manifest = None
        proof = (manifest.get("extension") or {}).get(PROOF_EXTENSION) if isinstance(
            manifest, dict) else None  # fmt: skip
        if not isinstance(manifest, dict) or not isinstance(proof, dict):
            yield _difference("job", name, "manifest is not a manifest with the export proof")
            return
        problem = self._signed(manifest, proof)
        if problem:
            yield _difference("job", name, f"manifest: {problem}")
            return
        requester = proof.get("requester") or {}
        if proof.get("job") != job["id"] or requester != {"client_id": job["client"],
                                                          "org": job["org"]}:  # fmt: skip
            yield _difference("job", name, "manifest: it names another job, client or"
                              " organisation")  # fmt: skip
        listed = _listed(proof)
        if listed is None:
            yield _difference("job", name, "manifest: its files are not names, hashes and counts")
            return
        held = {p.name: p for p in folder.iterdir()} if folder.is_dir() else {}
        files_ok = True
        for file_name in sorted(set(listed) | set(held)):
            shown = file_name if file_name in listed else "(a file it does not list)"
            where = f"{name}/{shown}"
            if file_name not in held:
                yield _difference("job", where, "a file the manifest lists is missing")
                files_ok = False
            elif file_name not in listed:
                yield _difference("job", where, "a file the manifest does not list")
                files_ok = False
            elif _digest(held[file_name]) != listed[file_name]:
                yield _difference("job", where, "the file's SHA-256 or line count is not the"
                                  " manifest's")  # fmt: skip
                files_ok = False
        if files_ok:
            try:
                verify_export(manifest, held.values(), [self.vkey], allow_unproven=True)
            except CareLedgerError as exc:
                yield _difference("job", name, f"the export does not verify as a recipient"
                                  f" checks it ({exc.code})")  # fmt: skip
        yield from self._withdrawal(name, job)

    def _signed(self, manifest: dict[str, Any], proof: dict[str, Any]) -> str:
        """What is wrong with the manifest's signatures and checkpoint, or ''."""
        if proof.get("node") != self.vkey:
            return "not signed with this node's key"
        try:
            key = parse_vkey(self.vkey)
            body, _ = verify_note(str(proof.get("signature")), [key])
            if body != manifest_body(manifest):
                return "changed after the node signed it"
            checkpoint = parse_checkpoint(verify_note(str(proof.get("checkpoint")), [key])[0])
        except CareLedgerError:
            return "a signature does not verify with this node's key"
        size, height = proof.get("tree_size"), proof.get("height")
        if type(size) is not int or checkpoint.size != size:
            return "the checkpoint is not of the ledger size the proof names"
        if type(height) is not int or not 0 <= height <= self.context.ledger.head_height():
            return "it names a height the ledger has not reached"
        if self._root_at(size, height) != checkpoint.root.hex():
            return "the checkpoint's root is not the ledger's at that size"
        return ""

    def _root_at(self, size: int, height: int) -> str | None:
        """The ledger's log root at ``size``, from the block that reached it (at or after the
        export's height)."""
        ledger = self.context.ledger
        for at in range(height, ledger.head_height() + 1):
            header = ledger.header(at)
            if header is None or header.log_size > size:
                return None
            if header.log_size == size:
                return header.log_root
        return None

    def _withdrawal(self, name: str, job: dict[str, Any]) -> Iterator[Difference]:
        patients = _patients(job["patients"]) or []
        finished = job["finished"]
        if type(finished) is not int:
            return
        times = self._withdrawing_times()
        after = finished * 1000 + CLOCK_WINDOW * 1000
        if any(t > after for p in patients for t in times.get(p, [])):
            yield _difference(
                "job",
                name,
                "a patient it holds erased records or revoked a consent after it"
                " was finished; the node withdraws such an export",
            )

    def _withdrawing_times(self) -> dict[str, list[int]]:
        """When each patient erased a record or revoked a consent (block times, ms)."""
        if self._withdrawing is None:
            ledger = self.context.ledger
            self._withdrawing = {}
            times: dict[int, int] = {}
            for event in ledger.events_of_types(list(WITHDRAWING), 100_000_000):
                patient = orjson.loads(event.data).get("patient")
                if not isinstance(patient, str):
                    continue
                if event.height not in times:
                    header = ledger.header(event.height)
                    times[event.height] = 0 if header is None else header.time
                self._withdrawing.setdefault(patient, []).append(times[event.height])
        return self._withdrawing

    def per_client(self) -> Iterator[Difference]:
        for client, statuses in sorted(self.clients.items()):
            if sum(s in RUNNING for s in statuses) > 1:
                yield _difference("job", f"(client {client})", "more than one job under way")
            if len(statuses) > KEEP_JOBS:
                yield _difference("job", f"(client {client})", f"more than {KEEP_JOBS} jobs kept")


def _patients(raw: object) -> list[str] | None:
    try:
        patients = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(patients, list) or not all(
        isinstance(p, str) and ID_PATTERN.match(p) for p in patients
    ):
        return None
    return [str(p) for p in patients]


def _listed(proof: dict[str, Any]) -> dict[str, tuple[str, int]] | None:
    files = proof.get("files")
    if not isinstance(files, list):
        return None
    out: dict[str, tuple[str, int]] = {}
    for entry in files:
        if not isinstance(entry, dict):
            return None
        name, digest, count = entry.get("name"), entry.get("sha256"), entry.get("count")
        if (
            not isinstance(name, str)
            or not (name in PROOF_FILES or re.match(r"^[A-Za-z]{1,64}\.ndjson$", name))
            or not isinstance(digest, str)
            or not SHA256_HEX.match(digest)
            or type(count) is not int
        ):
            return None
        out[name] = (digest, count)
    return out


def _digest(path: Path) -> tuple[str, int] | None:
    """A file's SHA-256 and line count, as the manifest gives them."""
    if not path.is_file():
        return None
    digest, lines = hashlib.sha256(), 0
    with path.open("rb") as handle:
        for line in handle:
            digest.update(line)
            lines += 1
    return digest.hexdigest(), lines
