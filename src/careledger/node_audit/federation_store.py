"""The federation nonce store (``federation.sqlite``: seen), which ``ReplayGuard`` keeps so that
a signed peer request cannot be replayed across a restart.

What is checked: the file's ``sqlite_master`` against what ``ReplayGuard`` creates (with the
integrity layout) and SQLite's quick check; each row's nonce is text and its time an integer.
Its rows' codes and digest are checked by ``integrity`` like every store's.

What cannot be checked, and why: which nonces were seen, and when. Peer requests are never on
the ledger, and nonces are forgotten once their request is stale, so a nonce deleted by someone
holding the node's key looks like one that expired. Without the key, a deleted or added nonce
breaks the table's digest, and a changed one its row's code.

Differences name rows by rowid, never a nonce.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

from careledger.health.federation import FEDERATION_NONCES_FILE
from careledger.health.replay_guard import SCHEMA
from careledger.node_audit.check import Difference, NodeContext, row_count, unreadable
from careledger.node_audit.monitoring_store import schema_differences

__all__ = ["FederationStoreCheck"]


class FederationStoreCheck:
    """The federation nonce store (see the module's docstring)."""

    store = FEDERATION_NONCES_FILE

    def size(self, context: NodeContext) -> int:
        return row_count(context, self.store, ("seen",))

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        if conn is None:
            return
        try:
            yield from schema_differences(self.store, conn, SCHEMA)
            for rowid, nonce, at in conn.execute("SELECT rowid, nonce, at FROM seen"):
                progress(1)
                if not isinstance(nonce, str) or not nonce or not isinstance(at, int):
                    yield Difference(
                        self.store, "seen", f"rowid {rowid}", "not a nonce and its time"
                    )
        except sqlite3.DatabaseError as exc:
            yield Difference(self.store, "(file)", "", f"cannot be read ({unreadable(exc)})")
        finally:
            conn.close()
