"""Recruitment at a site: feasibility counts over the custodian's own records, and invitations.

A sponsor's ``trials.feasibility`` query reaches every node through the ledger. The node of each
site named in it evaluates the criteria over the records in its own vault (decrypted here, never
sent anywhere) and answers on the ledger with a count, or with no count and the reason it was
withheld: a small cell, or a population that differs from one released before by a small group
(``careledger.core.disclosure``). The populations behind released counts stay at the site, as
keyed pseudonyms, so later queries can be checked against them.

From ruleset r5 (queries that carry ``epsilon_milli``) the answer is a noisy count or one uniform
"withheld" (``careledger.core.privacy``), sealed for the sponsor and this node
(``careledger.sealing``); the populations are then not kept: the noise, not a record of
earlier answers, is what protects each patient.

When the query asks for invitations, the site invites the matching patients who granted it a
research-contact consent (purpose HRESCH): each invitation is a read the ledger authorises
against that consent and logs as an access event the patient sees. The sponsor learns nothing
about who was invited; patients answer the invitation to their own site.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections.abc import Iterable
from datetime import UTC, date, datetime
from itertools import groupby
from pathlib import Path
from random import SystemRandom
from typing import Any

import orjson

from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.commit_worker import CommitWorker
from careledger.contracts.trials import NAMESPACE as TRIALS
from careledger.contracts.trials import answer_of, answer_readers, query_of, unanswered_queries
from careledger.core import privacy
from careledger.core.disclosure import Release, decide
from careledger.core.eligibility import TYPES, Criteria, CriteriaError, eligible, gather
from careledger.core.eligibility import parse_criteria as parse
from careledger.core.keys import decode_public_key
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex
from careledger.errors import Forbidden, NotFound, ValidationError
from careledger.health.service import HealthRecords
from careledger.sealing import seal
from careledger.sqlite_threads import ThreadConnections, iso_ms

TRIALS_FILE = "trials.sqlite"
ANSWERS = frozenset({"interested", "declined"})
MAX_QUERIES_SCANNED = 10_000
# the noise must be unpredictable: os.urandom behind it, never the Random a service is given
# (a test's may be predictable; core.privacy draws from this uniform source)
_SYSTEM = SystemRandom()

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS released(
  query TEXT NOT NULL, site TEXT NOT NULL, count INTEGER NOT NULL, population BLOB NOT NULL,
  PRIMARY KEY(query, site));
CREATE TABLE IF NOT EXISTS invitations(
  id TEXT PRIMARY KEY, query TEXT NOT NULL, study TEXT NOT NULL, site TEXT NOT NULL,
  patient TEXT NOT NULL, created INTEGER NOT NULL, status TEXT NOT NULL, answered INTEGER,
  UNIQUE(study, site, patient));
CREATE INDEX IF NOT EXISTS invitations_patient ON invitations(patient);
"""


class RecruitmentStore:
    """The site's own memory: released populations (pseudonymous) and invitations."""

    def __init__(
        self, path: Path, *, clock: Clock = SYSTEM_CLOCK, random: Random = SYSTEM_RANDOM
    ) -> None:
        self._clock = clock  # invitations' and answers' times
        self._random = random  # the pseudonym key, invitation ids
        self._conns = ThreadConnections(path, "recruitment store")
        self._conns.schema(SCHEMA)
        conn = self._conns.get()
        conn.execute(
            "INSERT OR IGNORE INTO meta(name, value) VALUES('pseudonym_key', ?)",
            (self._random.token_bytes(32),),
        )
        (self._key,) = conn.execute("SELECT value FROM meta WHERE name='pseudonym_key'").fetchone()
        self.lock = threading.Lock()  # one disclosure decision at a time per site

    def close(self) -> None:
        self._conns.close()

    def pseudonyms(self, patients: Iterable[str]) -> frozenset[int]:
        """Keyed 64-bit pseudonyms: set arithmetic without keeping patient ids in this table."""
        return frozenset(
            int.from_bytes(hashlib.blake2b(p.encode(), key=self._key, digest_size=8).digest())
            for p in patients
        )

    def populations(self, site: str) -> list[frozenset[int]]:
        rows = (
            self._conns.get()
            .execute("SELECT population FROM released WHERE site = ?", (site,))
            .fetchall()
        )
        return [frozenset(array("Q", bytes(blob))) for (blob,) in rows]

    def remember(self, query: str, site: str, count: int, population: frozenset[int]) -> None:
        blob = array("Q", sorted(population)).tobytes()
        self._conns.get().execute(
            "INSERT OR REPLACE INTO released(query, site, count, population) VALUES(?,?,?,?)",
            (query, site, count, blob),
        )

    def forget(self, query: str, site: str) -> None:
        self._conns.get().execute(
            "DELETE FROM released WHERE query = ? AND site = ?", (query, site)
        )

    # -- invitations ------------------------------------------------------------------------

    def invite(self, query: str, study: str, site: str, patient: str) -> bool:
        """A new invitation (False: this patient was already invited to this study here)."""
        cursor = self._conns.get().execute(
            "INSERT OR IGNORE INTO invitations(id, query, study, site, patient, created, status)"
            " VALUES(?,?,?,?,?,?,'open')",
            (token_hex(self._random, 12), query, study, site, patient, self._clock.now_ms()),
        )
        return cursor.rowcount == 1

    def invited(self, study: str, site: str, patient: str) -> bool:
        row = (
            self._conns.get()
            .execute(
                "SELECT 1 FROM invitations WHERE study = ? AND site = ? AND patient = ?",
                (study, site, patient),
            )
            .fetchone()
        )
        return row is not None

    def invitations_for(self, patient: str) -> list[dict[str, Any]]:
        rows = self._conns.get().execute(
            "SELECT id, study, site, created, status, answered FROM invitations"
            " WHERE patient = ? ORDER BY created DESC",
            (patient,),
        )
        return [_invitation(row) for row in rows]

    def respond(self, patient: str, invitation: str, answer: str) -> dict[str, Any]:
        if answer not in ANSWERS:
            raise ValidationError(f"answer is one of {sorted(ANSWERS)}", code="BAD_ANSWER")
        conn = self._conns.get()
        cursor = conn.execute(
            "UPDATE invitations SET status = ?, answered = ? WHERE id = ? AND patient = ?",
            (answer, self._clock.now_ms(), invitation, patient),
        )
        if cursor.rowcount != 1:
            raise NotFound("no such invitation of yours", code="UNKNOWN_INVITATION")
        row = conn.execute(
            "SELECT id, study, site, created, status, answered FROM invitations WHERE id = ?",
            (invitation,),
        ).fetchone()
        return _invitation(row)

    def interested(self, study: str, site: str) -> list[dict[str, Any]]:
        """Patients of ``site`` who answered yes: the site's own patients, seen by its staff."""
        rows = self._conns.get().execute(
            "SELECT patient, answered FROM invitations"
            " WHERE study = ? AND site = ? AND status = 'interested' ORDER BY answered",
            (study, site),
        )
        return [{"patient": p, "answered": iso_ms(int(a))} for p, a in rows]


def _invitation(row: Any) -> dict[str, Any]:
    ident, study, site, created, status, answered = row
    return {
        "id": ident,
        "study": study,
        "site": site,
        "created": iso_ms(int(created)),
        "status": status,
        "answered": None if answered is None else iso_ms(int(answered)),
    }


# -- evaluation over the custodian's records ---------------------------------------------------


def query_date(query: dict[str, Any]) -> date:
    """The query's block date: every site judges ages on the same day."""
    return datetime.fromtimestamp(query["time"] / 1000, UTC).date()


def evaluate(
    records: HealthRecords, criteria: Criteria, on: date
) -> tuple[list[str], dict[str, list[tuple[str, str]]], list[str]]:
    """(matching patients, their evaluated records as (id, type), every patient evaluated)."""
    matched: list[str] = []
    used: dict[str, list[tuple[str, str]]] = {}
    evaluated: list[str] = []
    rows = records.vault.store.live_records(TYPES)
    for patient, group in groupby(rows, key=lambda row: row[0]):
        found = []
        resources = []
        for _, record_id, version, kind in group:
            resource = records.open_anchored(record_id, version)
            if resource is not None:
                resources.append(resource)
                found.append((record_id, kind))
        if not resources:
            continue
        evaluated.append(patient)
        if eligible(criteria, gather(resources), on):
            matched.append(patient)
            used[patient] = found
    return matched, used, evaluated


class RecruitmentResponder:
    """Answers the feasibility queries addressed to this node's organisation."""

    def __init__(
        self,
        records: HealthRecords,
        store: RecruitmentStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self.records = records
        self._clock = clock  # the day a site's own invitation run judges ages on
        self._random = random  # its run's id (never the noise: see _SYSTEM)
        self.node = records.node
        self.ledger = records.ledger
        self.store = store
        self._worker: CommitWorker[str] = CommitWorker(
            self.ledger, "recruitment", self._pick, self.answer
        )

    @property
    def org(self) -> str:
        return self.records.org

    def attach(self) -> None:
        self._worker.attach(backlog=self._unanswered())

    def detach(self) -> None:
        self._worker.detach()

    def _unanswered(self) -> list[str]:
        """Queries committed while this node was down (or before it served the API)."""
        keys = self.ledger.store.state_keys
        return unanswered_queries(self.ledger.state, keys, self.org, MAX_QUERIES_SCANNED)

    def _pick(self, kind: str, data: dict[str, Any]) -> str | None:
        """A feasibility query addressed to this node's organisation."""
        if kind == "trials.feasibility" and self.org in data["sites"]:
            return str(data["query"])
        return None

    def answer(self, query_id: str) -> dict[str, Any]:
        """Evaluate, decide and answer on the ledger; the answer as committed."""
        done = answer_of(self.ledger.state, query_id, self.org)
        if done is not None:
            return dict(done)
        found = query_of(self.ledger.state, query_id)
        if found is None:
            raise NotFound("no such feasibility query", code="UNKNOWN_QUERY")
        query = dict(found)
        if "epsilon_milli" in query:
            return self._answer_privately(query)
        try:
            criteria = parse(query["criteria"])
        except CriteriaError:
            matched: list[str] = []
            used: dict[str, list[tuple[str, str]]] = {}
            release = Release(None, "not_computable")
        else:
            matched, used, evaluated_ids = evaluate(self.records, criteria, query_date(query))
            with self.store.lock:
                population = self.store.pseudonyms(matched)
                # everyone evaluated counts as released: else "all but those with X" = N - 2
                # would reveal a cell of 2 to whoever knows how many patients the site has
                everyone = self.store.pseudonyms(evaluated_ids)
                release = decide(population, [*self.store.populations(self.org), everyone])
                if release.count is not None:  # remembered before it is said, never after
                    self.store.remember(query_id, self.org, release.count, population)
        args = {"query": query_id, "count": release.count, "reason": release.reason}
        (receipt,) = self.node.execute([(TRIALS, "answer", args)])
        if receipt["result"] != "accepted" and receipt["code"] != "ALREADY_ANSWERED":
            self.store.forget(query_id, self.org)
            raise Forbidden("the ledger refused the answer", code=receipt["code"])
        if query["invite"] and query["study"] is not None and release.count is not None:
            self._invite(query, matched, used)  # never when the count itself was withheld
        return dict(answer_of(self.ledger.state, query_id, self.org) or {})

    def _answer_privately(self, query: dict[str, Any]) -> dict[str, Any]:
        """r5: a noisy count or "withheld", sealed for the sponsor and this node."""
        query_id = str(query["id"])
        try:
            criteria = parse(query["criteria"])
        except CriteriaError:  # depends on the criteria only, never on anyone's data
            said: dict[str, Any] = {"count": None, "status": "not_computable"}
        else:
            matched, _, _ = evaluate(self.records, criteria, query_date(query))
            said = privacy.release(
                len(matched), int(query["epsilon_milli"]), _SYSTEM.random
            ).as_dict()
        member = self.node.settings.node_name
        readers = answer_readers(self.ledger.state, query, self.org, member)
        sealed = seal(orjson.dumps(said), {m: decode_public_key(k) for m, k in readers.items()})
        args = {"query": query_id, "sealed": sealed}
        (receipt,) = self.node.execute([(TRIALS, "answer", args)])
        if receipt["result"] != "accepted" and receipt["code"] != "ALREADY_ANSWERED":
            raise Forbidden("the ledger refused the answer", code=receipt["code"])
        # r5 queries never invite (the contract refuses invite=true): invitations are the
        # site's own act (invite_for_study), so their timing tells nothing about this answer
        return dict(answer_of(self.ledger.state, query_id, self.org) or {})

    def invite_for_study(self, study_id: str, study: dict[str, Any]) -> dict[str, int]:
        """The site invites its patients who meet a registered study's eligibility and opted in
        to research contact (r5: a site's own act, never timed by a sponsor's query, whose noisy
        answer it would otherwise give away). How many were evaluated, matched, invited."""
        try:
            criteria = parse(study["eligibility"])
        except CriteriaError as exc:
            raise ValidationError(exc.message, code=exc.code) from None
        today = datetime.fromtimestamp(self._clock.time(), UTC).date()
        matched, used, evaluated = evaluate(self.records, criteria, today)
        run = {"id": f"site-{token_hex(self._random, 8)}", "study": study_id}
        sent = self._invite(run, matched, used)
        return {"evaluated": len(evaluated), "matched": len(matched), "invited": sent}

    def _invite(
        self, query: dict[str, Any], matched: list[str], used: dict[str, list[tuple[str, str]]]
    ) -> int:
        """Invite those who opted in to research contact by this site; the ledger decides."""
        caller = self.records.node_caller()
        sent = 0
        for patient in matched:
            if self.store.invited(query["study"], self.org, patient):
                continue  # asked again: no second access, no second invitation
            try:
                self.records.authorise(
                    caller,
                    patient=patient,
                    records=[r for r, _ in used[patient]],
                    types={t for _, t in used[patient]},
                    action="read",
                    purpose="HRESCH",
                )
            except Forbidden:
                continue  # no research-contact consent: not contacted, not identified
            sent += self.store.invite(query["id"], query["study"], self.org, patient)
        return sent
