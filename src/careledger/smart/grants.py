"""What the SMART authorization server must remember across restarts, in one SQLite file.

* Refresh tokens, by SHA-256 only (a copy of the file gives no one a usable token). Each use
  rotates the token; presenting a rotated one again means it leaked, so its whole family (every
  token descended from the same sign-in) is revoked, as the OAuth 2.0 Security BCP asks.
* The ``jti`` of every client assertion until it expires, so a captured assertion cannot be
  replayed, restart or not.
* Revoked grant families, so access tokens issued from a revoked grant die at once.
* Authorization codes and EHR launches, by SHA-256 only, with what finishing the sign-in needs,
  so a restart between ``/authorize`` and ``/token`` loses nothing. A code is redeemed by
  deleting its row (one statement, in a write transaction): exactly one request gets it, across
  threads, processes and restarts. What stays is the code's hash and the grant family it started,
  so a code presented again revokes what it gave (RFC 6749 section 4.1.2).
* Expired codes, launches and spent codes are swept a bounded batch at a time, as new ones come.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.core.keys import b64url_encode
from careledger.entropy import SYSTEM_RANDOM, Random
from careledger.errors import StorageError
from careledger.sqlite_threads import ThreadConnections

SMART_FILE = "smart.sqlite"
MAX_PENDING = 10_000  # codes, launches, spent codes: the oldest go first beyond this many
SWEEP_BATCH = 256  # expired rows deleted per write, at most
SPENT_CODE_SECONDS = 30 * 24 * 3600  # a reused code is caught this long: the longest grant
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS refresh(
        hash TEXT PRIMARY KEY, family TEXT NOT NULL, client_id TEXT NOT NULL,
        member TEXT NOT NULL, public_key TEXT NOT NULL, scope TEXT NOT NULL, patient TEXT,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL, state TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS refresh_family ON refresh(family)",
    """CREATE TABLE IF NOT EXISTS assertion(
        client_id TEXT NOT NULL, jti TEXT NOT NULL, expires INTEGER NOT NULL,
        PRIMARY KEY(client_id, jti))""",
    "CREATE TABLE IF NOT EXISTS revoked_family(family TEXT PRIMARY KEY, until INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS revoked_token(jti TEXT PRIMARY KEY, until INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS auth_code(
        hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, redirect_uri TEXT NOT NULL,
        code_challenge TEXT NOT NULL, member TEXT NOT NULL, public_key TEXT NOT NULL,
        scope TEXT NOT NULL, patient TEXT, aud TEXT NOT NULL, nonce TEXT,
        expires INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS auth_code_expires ON auth_code(expires)",
    """CREATE TABLE IF NOT EXISTS spent_code(
        hash TEXT PRIMARY KEY, family TEXT NOT NULL, expires INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS spent_code_expires ON spent_code(expires)",
    """CREATE TABLE IF NOT EXISTS launch(
        hash TEXT PRIMARY KEY, member TEXT NOT NULL, client_id TEXT NOT NULL, patient TEXT,
        expires INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS launch_expires ON launch(expires)",
)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What a user approved for an app: who, which app, which scopes, which patient."""

    family: str
    client_id: str
    member: str
    public_key: str  # the key the user signed in with: the grant ends if it changes
    scope: str
    patient: str | None
    expires: int  # seconds since the epoch: when the family's refresh tokens stop working


@dataclass(frozen=True)
class PendingCode:
    """What an authorization code stands for until the app redeems it at the token endpoint."""

    client_id: str
    redirect_uri: str
    code_challenge: str  # PKCE S256
    member: str
    public_key: str
    scope: str  # what the user granted
    patient: str | None
    aud: str  # the FHIR base the app asked for (the id_token's fhirUser is under it)
    nonce: str | None  # for the id_token
    expires: int  # seconds since the epoch


@dataclass(frozen=True)
class Launch:
    """An EHR launch: a user opened an app about a patient; the app names it in ``launch``."""

    member: str
    client_id: str
    patient: str | None
    expires: int


class ReusedToken(Exception):
    """A rotated refresh token came back: the family is revoked."""


class ReusedCode(Exception):
    """A redeemed authorization code came back: the family it started is revoked (in the
    store, until ``until``)."""

    def __init__(self, family: str, until: int) -> None:
        super().__init__(family)
        self.family = family
        self.until = until


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class GrantStore:
    def __init__(
        self, path: Path, *, clock: Clock = SYSTEM_CLOCK, random: Random = SYSTEM_RANDOM
    ) -> None:
        self._clock = clock  # sweeping revocations (the rest is given ``now``)
        self._random = random  # codes, refresh tokens, grant families, launch ids
        self._conns = ThreadConnections(path, "SMART grant store")
        self._lock = threading.Lock()
        self._conns.schema(*SCHEMA)

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._conns.get().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"the SMART grant store failed: {exc}") from None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction on this thread's connection, taken at once (IMMEDIATE): other
        writers, in this process or another, wait for it rather than interleave."""
        with self._lock:
            conn = self._conns.get()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"the SMART grant store failed: {exc}") from None
            try:
                yield
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"the SMART grant store failed: {exc}") from None
                raise

    def _sweep(self, table: str, now: int) -> None:
        """Expired rows of ``table`` (a bounded batch), and the oldest beyond ``MAX_PENDING``."""
        self._run(
            f"DELETE FROM {table} WHERE rowid IN "  # noqa: S608 - table is one of ours
            f"(SELECT rowid FROM {table} WHERE expires <= ? LIMIT ?)",
            (now, SWEEP_BATCH),
        )
        self._run(  # room for the row about to come
            f"DELETE FROM {table} WHERE rowid <= (SELECT max(rowid) FROM {table}) - ?",  # noqa: S608
            (MAX_PENDING - 1,),
        )

    def new_family(self) -> str:
        return b64url_encode(self._random.token_bytes(16))

    def issue_refresh(self, grant: Grant, now: int) -> str:
        token = b64url_encode(self._random.token_bytes(32))
        self._run(
            "INSERT INTO refresh VALUES(?,?,?,?,?,?,?,?,?, 'active')",
            (token_hash(token), grant.family, grant.client_id, grant.member, grant.public_key,
             grant.scope, grant.patient, now, grant.expires),
        )  # fmt: skip
        return token

    def redeem_refresh(self, token: str, client_id: str, now: int) -> Grant | None:
        """The grant behind an active refresh token of ``client_id``, now used up (rotation);
        None if unknown, expired, revoked or another client's; ReusedToken if used before."""
        with self._lock:
            rows = self._run(
                "SELECT family, client_id, member, public_key, scope, patient, expires, state "
                "FROM refresh WHERE hash = ?",
                (token_hash(token),),
            )
            if not rows:
                return None
            family, owner, member, key, scope, patient, expires, state = rows[0]
            if owner != client_id or self.family_revoked(str(family)):
                return None
            if state == "used":
                self.revoke_family(str(family), int(str(expires)))
                raise ReusedToken(str(family))
            if state != "active" or int(str(expires)) <= now:
                return None
            self._run("UPDATE refresh SET state = 'used' WHERE hash = ?", (token_hash(token),))
        return Grant(
            str(family), str(owner), str(member), str(key), str(scope),
            None if patient is None else str(patient), int(str(expires)),
        )  # fmt: skip

    def family_of(self, token: str) -> tuple[str, str, int] | None:
        """(family, client id, expiry) of a refresh token, whatever its state."""
        rows = self._run(
            "SELECT family, client_id, expires FROM refresh WHERE hash = ?", (token_hash(token),)
        )
        if not rows:
            return None
        family, client_id, expires = rows[0]
        return str(family), str(client_id), int(str(expires))

    def grants_of(self, member: str, now: int) -> list[dict[str, Any]]:
        """The apps a member approved that can still refresh: one row per grant."""
        rows = self._run(
            "SELECT family, client_id, scope, patient, MIN(created), MAX(expires) FROM refresh "
            "WHERE member = ? AND state = 'active' AND expires > ? GROUP BY family "
            "ORDER BY MAX(rowid) DESC",
            (member, now),
        )
        return [
            {"grant": f, "client_id": c, "scope": s, "patient": p, "since": int(a),
             "until": int(u)}
            for f, c, s, p, a, u in rows
            if not self.family_revoked(str(f))
        ]  # fmt: skip

    def member_of_family(self, family: str) -> str | None:
        rows = self._run("SELECT member FROM refresh WHERE family = ? LIMIT 1", (family,))
        return str(rows[0][0]) if rows else None

    def revoke_family(self, family: str, until: int) -> None:
        self._run("UPDATE refresh SET state = 'revoked' WHERE family = ?", (family,))
        self._run(
            "INSERT INTO revoked_family VALUES(?, ?) ON CONFLICT(family) DO UPDATE SET "
            "until = max(until, excluded.until)",
            (family, until),
        )

    def family_revoked(self, family: str) -> bool:
        return bool(self._run("SELECT 1 FROM revoked_family WHERE family = ?", (family,)))

    def revoked_families(self, now: int) -> dict[str, int]:
        rows = self._run("SELECT family, until FROM revoked_family WHERE until > ?", (now,))
        return {str(f): int(str(u)) for f, u in rows}

    def revoke_token(self, jti: str, until: int) -> None:
        """An access token revoked (sign-out, RFC 7009): refused after a restart too."""
        self._run("DELETE FROM revoked_token WHERE until < ?", (int(self._clock.time()),))
        self._run("INSERT OR REPLACE INTO revoked_token VALUES(?, ?)", (jti, int(until)))

    def revoked_tokens(self, now: int) -> dict[str, int]:
        rows = self._run("SELECT jti, until FROM revoked_token WHERE until > ?", (now,))
        return {str(j): int(str(u)) for j, u in rows}

    # -- authorization codes -------------------------------------------------------------

    def issue_code(self, pending: PendingCode, now: int) -> str:
        """A new authorization code for ``pending``; only its hash is stored."""
        code = b64url_encode(self._random.token_bytes(32))
        p = pending
        with self._transaction():
            self._sweep("auth_code", now)
            self._run(
                "INSERT INTO auth_code(hash, client_id, redirect_uri, code_challenge, member, "
                "public_key, scope, patient, aud, nonce, expires) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                (token_hash(code), p.client_id, p.redirect_uri, p.code_challenge, p.member,
                 p.public_key, p.scope, p.patient, p.aud, p.nonce, p.expires),
            )  # fmt: skip
        return code

    def redeem_code(self, code: str, family: str, now: int) -> PendingCode | None:
        """What ``code`` stands for, now spent and bound to ``family`` (the grant the caller is
        about to issue, whether or not it then accepts the exchange); None if unknown or
        expired; ReusedCode if it was redeemed before (its family is revoked here)."""
        digest = token_hash(code)
        with self._transaction():
            rows = self._run(
                "DELETE FROM auth_code WHERE hash = ? AND expires > ? RETURNING client_id, "
                "redirect_uri, code_challenge, member, public_key, scope, patient, aud, nonce, "
                "expires",
                (digest, now),
            )
            if rows:
                self._sweep("spent_code", now)
                self._run(
                    "INSERT OR REPLACE INTO spent_code VALUES(?, ?, ?)",
                    (digest, family, now + SPENT_CODE_SECONDS),
                )
                spent: list[tuple[object, ...]] = []
            else:
                spent = self._run(
                    "SELECT family, expires FROM spent_code WHERE hash = ? AND expires > ?",
                    (digest, now),
                )
                if spent:
                    self.revoke_family(str(spent[0][0]), int(str(spent[0][1])))
        if spent:
            raise ReusedCode(str(spent[0][0]), int(str(spent[0][1])))
        if not rows:
            return None
        client, uri, challenge, member, key, scope, patient, aud, nonce, expires = rows[0]
        return PendingCode(
            str(client), str(uri), str(challenge), str(member), str(key), str(scope),
            _text(patient), str(aud), _text(nonce), int(str(expires)),
        )  # fmt: skip

    # -- EHR launches --------------------------------------------------------------------

    def create_launch(
        self, member: str, client_id: str, patient: str | None, expires: int, now: int
    ) -> str:
        """A new launch id (given to the app); only its hash is stored."""
        launch_id = b64url_encode(self._random.token_bytes(18))
        with self._transaction():
            self._sweep("launch", now)
            self._run(
                "INSERT INTO launch VALUES(?, ?, ?, ?, ?)",
                (token_hash(launch_id), member, client_id, patient, expires),
            )
        return launch_id

    def launch(self, launch_id: str, now: int) -> Launch | None:
        """The launch behind ``launch_id`` while it lasts (it may be used more than once: the
        authorize page reads it, then the approval)."""
        rows = self._run(
            "SELECT member, client_id, patient, expires FROM launch WHERE hash = ? AND expires > ?",
            (token_hash(launch_id), now),
        )
        if not rows:
            return None
        member, client_id, patient, expires = rows[0]
        return Launch(str(member), str(client_id), _text(patient), int(str(expires)))

    # -- client assertions ---------------------------------------------------------------

    def first_assertion(self, client_id: str, jti: str, expires: int, now: int) -> bool:
        """Record a client assertion's ``jti``; False if it was seen before (a replay)."""
        with self._lock:
            self._run("DELETE FROM assertion WHERE expires < ?", (now - 60,))
            try:
                self._conns.get().execute(
                    "INSERT INTO assertion VALUES(?, ?, ?)", (client_id, jti, expires)
                )
            except sqlite3.IntegrityError:
                return False
            except sqlite3.Error as exc:
                raise StorageError(f"the SMART grant store failed: {exc}") from None
        return True

    def close(self) -> None:
        self._conns.close()
