"""What the SMART authorization server must remember across restarts, in one SQLite file.

* Refresh tokens, by SHA-256 only (a copy of the file gives no one a usable token). Each use
  rotates the token; presenting a rotated one again means it leaked, so its whole family (every
  token descended from the same sign-in) is revoked, as the OAuth 2.0 Security BCP asks.
* The ``jti`` of every client assertion until it expires, so a captured assertion cannot be
  replayed, restart or not.
* Revoked grant families, so access tokens issued from a revoked grant die at once.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from careledger.core.keys import b64url_encode
from careledger.errors import StorageError
from careledger.sqlite_threads import ThreadConnections

SMART_FILE = "smart.sqlite"
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


class ReusedToken(Exception):
    """A rotated refresh token came back: the family is revoked."""


class GrantStore:
    def __init__(self, path: Path) -> None:
        self._conns = ThreadConnections(path, "SMART grant store")
        self._lock = threading.Lock()
        conn = self._conns.get()
        for statement in SCHEMA:
            conn.execute(statement)

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            return self._conns.get().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"the SMART grant store failed: {exc}") from None

    def new_family(self) -> str:
        return b64url_encode(secrets.token_bytes(16))

    def issue_refresh(self, grant: Grant, now: int) -> str:
        token = b64url_encode(secrets.token_bytes(32))
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
        self._run("DELETE FROM revoked_token WHERE until < ?", (int(time.time()),))
        self._run("INSERT OR REPLACE INTO revoked_token VALUES(?, ?)", (jti, int(until)))

    def revoked_tokens(self, now: int) -> dict[str, int]:
        rows = self._run("SELECT jti, until FROM revoked_token WHERE until > ?", (now,))
        return {str(j): int(str(u)) for j, u in rows}

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
