"""The SMART authorization server's store (``smart.sqlite``: refresh, assertion, revoked_family,
revoked_token, auth_code, spent_code, launch) against the ledger.

What is checked:

* The store's file: ``sqlite_master`` object for object against what ``GrantStore`` creates (none
  missing or altered, no trigger, view or other object added), and SQLite's quick check.
* ``refresh``: the token's hash is a SHA-256 in hex, its family a grant id of the form the node
  makes (16 random bytes, base64url), its state ``active``, ``used`` or ``revoked``. Its client is
  an app registered on the ledger that signs users in (not a backend app: those get no refresh
  token); its member is a ledger member, and the key it names was registered on the ledger to
  that member (a key since rotated is fine: the node refuses the next refresh); its patient, if
  any, is a ledger member; its scope is SMART scope words the apps contract accepts, with
  ``offline_access`` or ``online_access`` (the node issues refresh tokens for no other). Rows of a
  family all carry the grant the first one was issued with (client, member, key, scope, patient,
  expiry: a refresh keeps them), the expiry is the family's first token's ``created`` plus the
  grant's lifetime (``OFFLINE_SECONDS`` or ``ONLINE_SECONDS``, by its scope), no token is created
  after its expiry, at most one token of a family is active (rotation uses one up before issuing
  the next), and a revoked token's family is in ``revoked_family`` (revoking writes both).
* ``assertion``: its client is an app on the ledger; its ``jti`` is 1 to 256 characters.
* ``revoked_family``: a grant id of the node's form; ``until`` a time.
* ``revoked_token``: an access token's ``jti`` of the node's form (12 random bytes, base64url).
* ``auth_code``: the code's hash is a SHA-256 in hex; its client is an app on the ledger that
  signs users in, and its redirect URI one that app registered; the PKCE challenge is an S256
  digest (43 base64url characters); the member and the key as for ``refresh``; the patient a
  ledger member; the scope SMART scope words; the code expires no later than ``CODE_TTL`` from
  now.
* ``spent_code``: a SHA-256 in hex, a grant id of the node's form, an expiry no later than
  ``SPENT_CODE_SECONDS`` from now.
* ``launch``: a SHA-256 in hex; the member a ledger member, the client an app on the ledger,
  the patient a ledger member; it expires no later than ``LAUNCH_TTL`` from now.

What cannot be checked, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* Which token, code or launch a hash stands for: only their SHA-256 is kept (a copy of the file
  must give no one a usable token), and none is on the ledger; the hashes are checked for their
  form.
* A refresh token's state between ``active`` and ``used``: rotation happens only here, so
  whether a token was used is known only here (the family's other rows bound it, as above).
* Which rows should be there: refresh tokens, codes, launches and assertions are swept or
  rotated here and never anchored, so a row the node (or its key) deleted looks like one that
  expired or was never issued; a ``revoked_family`` row so deleted is caught only while its
  family's revoked tokens remain.
* An assertion's ``jti``, a code's redirect URI choice among the app's, its nonce and audience:
  the app chose them; they are checked for their form only.
* Expiries to the second: ``created`` and ``expires`` are the node's clock; a code, spent code
  or launch is compared with the clock the audit is given (``now``), within ``CLOCK_WINDOW``.

SQLite's messages are never repeated. Differences name rows by table and rowid (and by client
id, an app's public name), never a hash, a grant id, a ``jti``, a member, a patient or a key.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from careledger.contracts.apps import app_of, scope_ok
from careledger.contracts.identity import ID_PATTERN, key_of, member_of
from careledger.node_audit.check import (
    Difference,
    NodeContext,
    row_count,
    unreadable,
    written_columns,
)
from careledger.node_audit.monitoring_store import schema_differences
from careledger.smart.grants import SCHEMA, SMART_FILE, SPENT_CODE_SECONDS
from careledger.smart.oauth import CODE_TTL, LAUNCH_TTL, OFFLINE_SECONDS, ONLINE_SECONDS

__all__ = ["SmartStoreCheck"]

CLOCK_WINDOW = 300  # seconds the node's clock and the audit's may differ by
TABLES = ("refresh", "assertion", "revoked_family", "revoked_token", "auth_code", "spent_code",
          "launch")  # fmt: skip
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
FAMILY = re.compile(r"^[A-Za-z0-9_-]{22}$")  # b64url of 16 bytes (GrantStore.new_family)
ACCESS_JTI = re.compile(r"^[A-Za-z0-9_-]{16}$")  # b64url of 12 bytes (TokenIssuer)
PKCE_S256 = re.compile(r"^[A-Za-z0-9_-]{43}$")
PUBLIC_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")  # an Ed25519 key, b64url
STATES = frozenset({"active", "used", "revoked"})
MAX_JTI = 256


def _difference(table: str, row: str, problem: str) -> Difference:
    return Difference(SMART_FILE, table, row, problem)


def _is_time(value: object) -> bool:
    return type(value) is int and value >= 0


@dataclass
class _Family:
    name: str
    grants: set[tuple[Any, ...]] = field(default_factory=set)
    created: list[int] = field(default_factory=list)
    expires: set[int] = field(default_factory=set)
    states: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    scope: str = ""


class SmartStoreCheck:
    """The SMART grant store against the ledger (see the module's docstring). ``now`` is the
    clock codes and launches are bounded by (the audit's; a test passes its own)."""

    store = SMART_FILE

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now

    def size(self, context: NodeContext) -> int:
        return row_count(context, self.store, TABLES)

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        if conn is None:
            return
        audit = _Audit(context, progress, int(self.now()))
        try:
            yield from schema_differences(self.store, conn, ";\n".join(SCHEMA) + ";")
            for table, method in (
                ("refresh", audit.refresh),
                ("assertion", audit.assertion),
                ("revoked_family", audit.revoked_family),
                ("revoked_token", audit.revoked_token),
                ("auth_code", audit.auth_code),
                ("spent_code", audit.spent_code),
                ("launch", audit.launch),
            ):
                try:
                    listed = written_columns(conn, table)
                    rows = conn.execute(
                        f"SELECT rowid, {listed} FROM {table} ORDER BY rowid"  # noqa: S608 - our names
                    ).fetchall()
                except sqlite3.Error as exc:
                    yield _difference(table, "", f"the table cannot be read ({unreadable(exc)})")
                    continue
                yield from method(rows)
            yield from audit.families()
        except sqlite3.DatabaseError as exc:
            yield _difference("(file)", "", f"the store cannot be read ({unreadable(exc)})")
        finally:
            conn.close()


class _Audit:
    def __init__(self, context: NodeContext, progress: Callable[[int], None], now: int) -> None:
        self.context = context
        self.progress = progress
        self.now = now
        self._families: dict[str, _Family] = {}
        self._revoked: set[str] = set()

    # -- the ledger's view ---------------------------------------------------------------------

    def app(self, client_id: object) -> dict[str, Any] | None:
        if not isinstance(client_id, str):
            return None
        found = app_of(self.context.state, client_id)
        return None if found is None else dict(found)

    def _member_problem(self, member: object, what: str) -> str:
        if not isinstance(member, str) or not ID_PATTERN.match(member):
            return f"{what} is not a member id"
        if member_of(self.context.state, member) is None:
            return f"{what} is not a member on the ledger"
        return ""

    def _key_problem(self, member: object, public_key: object) -> str:
        if not isinstance(public_key, str) or not PUBLIC_KEY.match(public_key):
            return "public_key is not an Ed25519 key (base64url)"
        entry = key_of(self.context.state, public_key)
        if entry is None or entry.get("member") != member:
            return "public_key was never the member's key on the ledger"
        return ""

    def _user_app(self, client_id: object, row: str, table: str) -> Iterator[Difference]:
        app = self.app(client_id)
        if app is None:
            yield _difference(table, row, "the client is not an app registered on the ledger")
        elif app.get("kind") == "backend":
            yield _difference(
                table,
                row,
                "the client is a backend app: it signs no user in (no code, no refresh token)",
            )

    def _scope_problem(self, scope: object) -> str:
        if (
            not isinstance(scope, str)
            or not scope
            or not all(scope_ok(word) for word in scope.split(" "))
        ):
            return "scope is not SMART scope words the apps contract accepts"
        return ""

    def _user_parts(self, table: str, row: str, values: dict[str, Any]) -> Iterator[Difference]:
        """The member, key, patient and scope of a refresh token or code."""
        for what in (
            self._member_problem(values["member"], "member"),
            self._key_problem(values["member"], values["public_key"]),
            "" if values["patient"] is None
            else self._member_problem(values["patient"], "patient"),
            self._scope_problem(values["scope"]),
        ):  # fmt: skip
            if what:
                yield _difference(table, row, what)

    # -- tables ----------------------------------------------------------------------------------

    def refresh(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        names = ("rowid", "hash", "family", "client_id", "member", "public_key", "scope",
                 "patient", "created", "expires", "state")  # fmt: skip
        for raw in rows:
            self.progress(1)
            values = dict(zip(names, raw, strict=True))
            row = _row(values["rowid"], values["client_id"])
            if not isinstance(values["hash"], str) or not SHA256_HEX.match(values["hash"]):
                yield _difference("refresh", row, "hash is not a SHA-256 in hex")
            if values["state"] not in STATES:
                yield _difference("refresh", row, f"state is not one of {sorted(STATES)}")
            yield from self._user_app(values["client_id"], row, "refresh")
            yield from self._user_parts("refresh", row, values)
            scope = values["scope"] if isinstance(values["scope"], str) else ""
            words = set(scope.split(" "))
            if not words & {"offline_access", "online_access"}:
                yield _difference(
                    "refresh",
                    row,
                    "the scope has neither offline_access nor online_access: the"
                    " node issues no refresh token for it",
                )
            created, expires = values["created"], values["expires"]
            if not _is_time(created) or not _is_time(expires):
                yield _difference("refresh", row, "created or expires is not a time (seconds)")
                continue
            if created >= expires:
                yield _difference("refresh", row, "created at or after its expiry")
            family = values["family"]
            if not isinstance(family, str) or not FAMILY.match(family):
                yield _difference("refresh", row, "family is not a grant id of the node's form")
                continue
            held = self._families.setdefault(family, _Family(family))
            held.grants.add((values["client_id"], values["member"], values["public_key"], scope,
                             values["patient"]))  # fmt: skip
            held.created.append(created)
            held.expires.add(expires)
            held.states.append(str(values["state"]))
            held.rows.append(row)
            held.scope = scope

    def families(self) -> Iterator[Difference]:
        for family in self._families.values():
            row = family.rows[0]
            if len(family.grants) > 1 or len(family.expires) > 1:
                yield _difference(
                    "refresh",
                    row,
                    "the tokens of one grant differ in what was granted (a"
                    " refresh keeps the grant's client, member, key, scope, patient and expiry)",
                )
                continue
            (expires,) = family.expires
            lifetime = OFFLINE_SECONDS if "offline_access" in family.scope.split(" ") else (
                ONLINE_SECONDS)  # fmt: skip
            if expires != min(family.created) + lifetime:
                yield _difference(
                    "refresh",
                    row,
                    f"the grant's expiry is not its first token's creation plus"
                    f" its lifetime ({lifetime} s)",
                )
            if family.states.count("active") > 1:
                yield _difference(
                    "refresh",
                    row,
                    "more than one token of a grant is active (rotation uses one"
                    " up before issuing the next)",
                )
            if "revoked" in family.states and family.name not in self._revoked:
                yield _difference(
                    "refresh", row, "a revoked token's grant is not in revoked_family"
                )

    def assertion(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        for rowid, client_id, jti, expires in rows:
            self.progress(1)
            row = _row(rowid, client_id)
            if self.app(client_id) is None:
                yield _difference("assertion", row, "the client is not an app on the ledger")
            if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
                yield _difference("assertion", row, f"jti is not 1 to {MAX_JTI} characters")
            if not _is_time(expires):
                yield _difference("assertion", row, "expires is not a time (seconds)")

    def revoked_family(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        for rowid, family, until in rows:
            self.progress(1)
            row = _row(rowid)
            if not isinstance(family, str) or not FAMILY.match(family):
                yield _difference("revoked_family", row, "not a grant id of the node's form")
            else:
                self._revoked.add(family)
            if not _is_time(until):
                yield _difference("revoked_family", row, "until is not a time (seconds)")

    def revoked_token(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        for rowid, jti, until in rows:
            self.progress(1)
            row = _row(rowid)
            if not isinstance(jti, str) or not ACCESS_JTI.match(jti):
                yield _difference("revoked_token", row, "not an access token's jti of the"
                                  " node's form")  # fmt: skip
            if not _is_time(until):
                yield _difference("revoked_token", row, "until is not a time (seconds)")

    def auth_code(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        names = ("rowid", "hash", "client_id", "redirect_uri", "code_challenge", "member",
                 "public_key", "scope", "patient", "aud", "nonce", "expires")  # fmt: skip
        for raw in rows:
            self.progress(1)
            values = dict(zip(names, raw, strict=True))
            row = _row(values["rowid"], values["client_id"])
            if not isinstance(values["hash"], str) or not SHA256_HEX.match(values["hash"]):
                yield _difference("auth_code", row, "hash is not a SHA-256 in hex")
            yield from self._user_app(values["client_id"], row, "auth_code")
            app = self.app(values["client_id"])
            if app is not None and values["redirect_uri"] not in (app.get("redirect_uris") or []):
                yield _difference(
                    "auth_code", row, "redirect_uri is not one the app registered on the ledger"
                )
            challenge = values["code_challenge"]
            if not isinstance(challenge, str) or not PKCE_S256.match(challenge):
                yield _difference("auth_code", row, "code_challenge is not a PKCE S256 digest")
            yield from self._user_parts("auth_code", row, values)
            if not isinstance(values["aud"], str) or not values["aud"]:
                yield _difference("auth_code", row, "aud is not the FHIR base the app asked for")
            yield from self._expiry("auth_code", row, values["expires"], CODE_TTL)

    def spent_code(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        for rowid, digest, family, expires in rows:
            self.progress(1)
            row = _row(rowid)
            if not isinstance(digest, str) or not SHA256_HEX.match(digest):
                yield _difference("spent_code", row, "hash is not a SHA-256 in hex")
            if not isinstance(family, str) or not FAMILY.match(family):
                yield _difference("spent_code", row, "family is not a grant id of the node's form")
            yield from self._expiry("spent_code", row, expires, SPENT_CODE_SECONDS)

    def launch(self, rows: list[tuple[Any, ...]]) -> Iterator[Difference]:
        for rowid, digest, member, client_id, patient, expires in rows:
            self.progress(1)
            row = _row(rowid, client_id)
            if not isinstance(digest, str) or not SHA256_HEX.match(digest):
                yield _difference("launch", row, "hash is not a SHA-256 in hex")
            if self.app(client_id) is None:
                yield _difference("launch", row, "the client is not an app on the ledger")
            for what in (
                self._member_problem(member, "member"),
                "" if patient is None else self._member_problem(patient, "patient"),
            ):
                if what:
                    yield _difference("launch", row, what)
            yield from self._expiry("launch", row, expires, LAUNCH_TTL)

    def _expiry(self, table: str, row: str, expires: object, most: int) -> Iterator[Difference]:
        if not _is_time(expires):
            yield _difference(table, row, "expires is not a time (seconds)")
        elif int(str(expires)) > self.now + most + CLOCK_WINDOW:
            yield _difference(
                table, row, f"expires more than {most} s from now: longer than the node allows"
            )


def _row(rowid: object, client_id: object = None) -> str:
    name = f"rowid {rowid}"
    if isinstance(client_id, str) and re.match(r"^[A-Za-z0-9._-]{1,64}$", client_id):
        name += f" (client {client_id})"
    return name
