"""What the store checkers' tests share: a copy of a pristine node, a tamper, an audit."""

from __future__ import annotations

import shutil
from contextlib import closing
from pathlib import Path

from careledger import store_mac
from careledger.config import Settings
from careledger.keyfile import read_key_file
from careledger.node_audit import Difference, NodeContext, StoreCheck
from careledger.storage.sqlite import SQLiteStore


def copy_of(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "node"
    shutil.copytree(pristine, target)
    return target


def run_sql(path: Path, *statements: str) -> None:
    with closing(store_mac.connect(path)) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()


def audit(data: Path, check: StoreCheck) -> list[Difference]:
    """The check's differences; its progress ends exactly at its size."""
    settings = Settings.load(data)
    store = SQLiteStore(settings.store_path, readonly=True)
    try:
        key = read_key_file(settings.node_key_file)[1]
        context = NodeContext(data, store, key, settings.node_name, settings.org)
        done: list[int] = []
        found = list(check.check(context, done.append))
        assert sum(done) == check.size(context)
        return found
    finally:
        store.close()


def leaked(found: list[Difference], secrets: list[str]) -> list[str]:
    text = " ".join(f"{d.table} {d.row} {d.problem}" for d in found)
    return [s for s in secrets if s and s in text]
