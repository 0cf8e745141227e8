"""Writing a node's store the way someone without the node's key can (ADR 0019)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from careledger.store_mac import ROW_FUNCTION, SET_FUNCTION


def forger(path: Path | str, code: bytes = bytes(32)) -> sqlite3.Connection:
    """A connection to a store with functions named as the node's, which cannot compute them:
    every row it writes gets ``code`` (say, the row's code as it was, as an edit of the file's
    bytes would keep it) and no digest changes. Without them a write fails at once
    ("unknown function")."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.create_function(ROW_FUNCTION, -1, lambda *_: code, deterministic=True)
    conn.create_function(SET_FUNCTION, 9, lambda _table, digest, *_: digest, deterministic=True)
    return conn
