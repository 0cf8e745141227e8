"""The trials store (``trials.sqlite``: meta, released and invitations of ``RecruitmentStore``,
consent_records of ``ConsentRecorder``) against the ledger.

What is checked:

* The store's file: ``sqlite_master`` object for object against what the two services create
  (none missing or altered, nothing added), and SQLite's quick check.
* ``meta``: exactly the pseudonym key, 32 bytes (never shown).
* ``released`` (populations behind counts released before ruleset r5): the query is a
  feasibility query on the ledger addressed to this organisation, made before r5 (an r5 query
  carries ``epsilon_milli`` and keeps no population), the row's site is this organisation, and
  the ledger holds its answer with exactly the row's count (remembered before it is said; a
  refused answer is forgotten). The population is sorted, distinct 64-bit pseudonyms, as many
  as the count. Every count this organisation released on the ledger has its population here
  (the node never releases one it has not remembered), when a ``released`` table is held.
* ``invitations``: the id is of the node's form; the study is registered on the ledger and the
  site is this organisation; the query is a ledger query of that study asking for invitations
  and naming this site, or a site's own run (``site-`` and 16 hex digits); the patient is a
  member id, and the ledger holds a research-contact (``HRESCH``) access of that patient by this
  organisation (an invitation is a read the ledger authorised and logged); the status is
  ``open``, ``interested`` or ``declined``, with ``answered`` exactly when answered, not before
  the invitation was made.
* ``consent_records``: the study is registered on the ledger, the participant is enrolled in it
  at this site with at least one consent; the record is a ``Consent`` anchored on the ledger,
  held by this organisation, of the participant.

What cannot be checked, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* The pseudonym key and the pseudonyms: the key is the site's own secret, kept nowhere else, so
  the key and the populations are checked for their form (and the counts they must add up to).
* An invitation's answer (interested or declined) and its times: the patient answers the site
  alone, never on the ledger.
* Which invitations should be there: the ledger logs the research-contact read, not the
  invitation, and a read may be refused an invitation (already invited), so an invitation the
  node never made is no difference.
* A missing consent record: the recorder follows commits only while the node serves its API,
  so a consent committed while it did not has no record yet; a record held is checked in full.

SQLite's messages are never repeated. Differences name queries, studies and invitation ids
(ledger transaction ids and random ids), never a patient, a participant or a pseudonym.
"""

from __future__ import annotations

import re
import sqlite3
from array import array
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

from careledger.contracts.audit import NAMESPACE as AUDIT
from careledger.contracts.audit import access_prefix
from careledger.contracts.identity import ID_PATTERN
from careledger.contracts.records import record_of
from careledger.contracts.trials import (
    NAMESPACE as TRIALS,
)
from careledger.contracts.trials import (
    QUERY_PREFIX,
    answer_of,
    participant_of,
    query_of,
    study_of,
)
from careledger.node_audit.check import (
    Difference,
    NodeContext,
    row_count,
    unreadable,
    written_columns,
)
from careledger.node_audit.monitoring_store import schema_differences
from careledger.trials import consent_records
from careledger.trials.recruitment import SCHEMA, TRIALS_FILE

__all__ = ["TrialsStoreCheck"]

TABLES = ("meta", "released", "invitations", "consent_records")
KEY_BYTES = 32
INVITATION_ID = re.compile(r"^[0-9a-f]{24}$")
SITE_RUN = re.compile(r"^site-[0-9a-f]{16}$")
RECORD_ID = re.compile(r"^[0-9a-f]{32}$")
STATUSES = frozenset({"open", "interested", "declined"})
RESEARCH_CONTACT = "HRESCH"
LISTED = 100_000_000


def _difference(table: str, row: str, problem: str) -> Difference:
    return Difference(TRIALS_FILE, table, row, problem)


def _name(value: object, pattern: re.Pattern[str]) -> str:
    return str(value) if isinstance(value, str) and pattern.match(value) else "(bad id)"


class TrialsStoreCheck:
    """The trials store against the ledger (see the module's docstring)."""

    store = TRIALS_FILE

    def size(self, context: NodeContext) -> int:
        return row_count(context, self.store, TABLES)

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        if conn is None:
            return
        audit = _Audit(context, progress)
        try:
            yield from schema_differences(self.store, conn, SCHEMA + consent_records.SCHEMA)
            for table, method in (
                ("meta", audit.meta),
                ("released", audit.released),
                ("invitations", audit.invitations),
                ("consent_records", audit.consent_records),
            ):
                try:
                    listed = written_columns(conn, table)
                    rows = conn.execute(f"SELECT {listed} FROM {table}").fetchall()  # noqa: S608 - our names
                except sqlite3.Error as exc:
                    yield _difference(table, "", f"the table cannot be read ({unreadable(exc)})")
                    continue
                yield from method(rows)
        except sqlite3.DatabaseError as exc:
            yield _difference("(file)", "", f"the store cannot be read ({unreadable(exc)})")
        finally:
            conn.close()


class _Audit:
    def __init__(self, context: NodeContext, progress: Callable[[int], None]) -> None:
        self.context = context
        self.progress = progress
        self.org = context.org

    def meta(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        self.progress(len(rows))
        names = [name for name, _ in rows]
        if names != ["pseudonym_key"]:
            yield _difference("meta", "-", "not exactly the pseudonym key the node keeps")
        for name, value in rows:
            if name == "pseudonym_key" and not (
                isinstance(value, bytes) and len(value) == KEY_BYTES
            ):
                yield _difference("meta", "pseudonym_key", f"not a key of {KEY_BYTES} bytes")

    def released(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        held: set[str] = set()
        for query_id, site, count, population in rows:
            self.progress(1)
            name = _name(query_id, re.compile(r"^[0-9a-f]{64}$"))
            held.add(name)
            if site != self.org:
                yield _difference("released", name, "the site is not this organisation")
            query = query_of(self.context.state, str(query_id))
            if query is None or self.org not in (query.get("sites") or []):
                yield _difference("released", name, "not a query on the ledger addressed to this"
                                  " organisation")  # fmt: skip
                continue
            if "epsilon_milli" in query:
                yield _difference("released", name, "an r5 query: its answer is a noisy count"
                                  " and no population is kept")  # fmt: skip
                continue
            answer = answer_of(self.context.state, str(query_id), self.org)
            if answer is None or answer.get("count") is None:
                yield _difference("released", name, "the ledger holds no count released for it")
            elif answer.get("count") != count:
                yield _difference("released", name, "the count is not the one released on the"
                                  " ledger")  # fmt: skip
            if not isinstance(population, bytes) or len(population) % 8:
                yield _difference("released", name, "population is not 64-bit pseudonyms")
                continue
            values = list(array("Q", population))
            if any(a >= b for a, b in pairwise(values)):
                yield _difference("released", name, "population is not sorted and distinct")
            if len(values) != count:
                yield _difference("released", name, "population is not as many as the count")
        yield from self._unreleased(held)

    def _unreleased(self, held: set[str]) -> Iterator[Difference]:
        """Counts this organisation released (before r5) with no population held."""
        for key in self.context.state_keys(TRIALS, QUERY_PREFIX):
            query_id = key[len(QUERY_PREFIX) :]
            if query_id in held:
                continue
            query = query_of(self.context.state, query_id)
            if query is None or "epsilon_milli" in query or self.org not in query["sites"]:
                continue
            answer = answer_of(self.context.state, query_id, self.org)
            if answer is not None and answer.get("count") is not None:
                yield _difference("released", query_id, "a count this organisation released on"
                                  " the ledger; its population is not held")  # fmt: skip

    def invitations(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        for ident, query_id, study, site, patient, created, status, answered in rows:
            self.progress(1)
            name = _name(ident, INVITATION_ID)
            if name == "(bad id)":
                yield _difference("invitations", name, "id is not of the node's form")
            if site != self.org:
                yield _difference("invitations", name, "the site is not this organisation")
            if not isinstance(study, str) or study_of(self.context.state, study) is None:
                yield _difference("invitations", name, "the study is not registered on the"
                                  " ledger")  # fmt: skip
            if not (isinstance(query_id, str) and SITE_RUN.match(query_id)):
                query = query_of(self.context.state, str(query_id))
                if (
                    query is None
                    or not query.get("invite")
                    or query.get("study") != study
                    or self.org not in (query.get("sites") or [])
                ):
                    yield _difference(
                        "invitations",
                        name,
                        "the query is neither a site's own run nor a"
                        " ledger query inviting for this study here",
                    )
            if not isinstance(patient, str) or not ID_PATTERN.match(patient):
                yield _difference("invitations", name, "the patient is not a member id")
            elif not self._contacted(patient):
                yield _difference(
                    "invitations",
                    name,
                    "the ledger holds no research-contact (HRESCH) access"
                    " of the patient by this organisation",
                )
            if status not in STATUSES:
                yield _difference("invitations", name, f"status is not one of {sorted(STATUSES)}")
            elif (status == "open") != (answered is None):
                yield _difference("invitations", name, "answered is set exactly when answered;"
                                  " it is not")  # fmt: skip
            if type(created) is not int or (answered is not None and (
                    type(answered) is not int or answered < created)):  # fmt: skip
                yield _difference("invitations", name, "created or answered is not a time (ms),"
                                  " or answered before it was made")  # fmt: skip

    def _contacted(self, patient: str) -> bool:
        for key in self.context.state_keys(AUDIT, access_prefix(patient), LISTED):
            entry = self.context.state(AUDIT, key)
            if (
                isinstance(entry, dict)
                and entry.get("purpose") == RESEARCH_CONTACT
                and entry.get("custodian") == self.org
                and entry.get("accessor_org") == self.org
            ):
                return True
        return False

    def consent_records(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        for study, participant, record in rows:
            self.progress(1)
            name = f"{study}/record {record}" if isinstance(record, str) and RECORD_ID.match(
                record) else f"{study}/(bad record id)"  # fmt: skip
            if not isinstance(study, str) or study_of(self.context.state, study) is None:
                yield _difference("consent_records", name, "the study is not registered on the"
                                  " ledger")  # fmt: skip
                continue
            entry = (participant_of(self.context.state, study, participant)
                     if isinstance(participant, str) else None)  # fmt: skip
            if entry is None or entry.get("site") != self.org or not entry.get("consents"):
                yield _difference("consent_records", name, "the participant is not enrolled and"
                                  " consented at this site on the ledger")  # fmt: skip
            anchored = record_of(self.context.state, str(record))
            if (
                anchored is None
                or anchored.get("type") != "Consent"
                or anchored.get("custodian") != self.org
                or anchored.get("patient") != participant
            ):
                yield _difference("consent_records", name, "the record is not a Consent this"
                                  " organisation anchored for the participant")  # fmt: skip
