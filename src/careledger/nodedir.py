"""Creating node directories: keys, genesis, node.json and the store with its genesis block."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from careledger.config import GENESIS_FILE, KEYS_DIR, NODE_FILE, STORE_FILE
from careledger.core.keys import KeyPair
from careledger.errors import Conflict, ValidationError
from careledger.jsonio import loads
from careledger.ledger.admission import admit_all
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import genesis_block
from careledger.storage.sqlite import SQLiteStore


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_empty(data_dir: Path) -> None:
    if (data_dir / NODE_FILE).exists() or (data_dir / STORE_FILE).exists():
        raise Conflict(f"{data_dir} already holds a node", code="NODE_EXISTS")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(path)


def init_node(
    data_dir: Path,
    *,
    genesis: dict[str, Any],
    node_name: str,
    org: str,
    node_key_file: Path,
) -> Ledger:
    """Create the store with the genesis block and write node.json; the node key must exist.

    Everything is checked before the first file is written, and a failure part-way removes what
    this call created, so a refused init can simply be run again.
    """
    from careledger.keyfile import read_key_file

    _check_empty(data_dir)
    genesis_block(genesis)  # validates the document; raises BAD_GENESIS
    _, key = read_key_file(node_key_file, passphrase=os.environ.get("CARELEDGER_KEY_PASSPHRASE"))
    key_path, root = node_key_file.resolve(), data_dir.resolve()
    relative = key_path.relative_to(root) if key_path.is_relative_to(root) else key_path
    created_dir = not data_dir.exists()
    data_dir.mkdir(parents=True, exist_ok=True)
    written = [data_dir / STORE_FILE, data_dir / GENESIS_FILE, data_dir / NODE_FILE]
    try:
        store = SQLiteStore(data_dir / STORE_FILE)
        Ledger.create(store, genesis)
        _write_json(data_dir / GENESIS_FILE, genesis)
        _write_json(
            data_dir / NODE_FILE, {"node_name": node_name, "org": org, "node_key": str(relative)}
        )
    except BaseException:
        for path in [*written, data_dir / f"{STORE_FILE}-wal", data_dir / f"{STORE_FILE}-shm"]:
            path.unlink(missing_ok=True)
        if created_dir and not any(data_dir.iterdir()):
            data_dir.rmdir()
        raise
    return Ledger(store, node_name=node_name, node_key=key)


def init_demo(
    data_dir: Path,
    *,
    with_records: bool = True,
    with_supply: bool = True,
    ruleset: str | None = None,
) -> Ledger:
    """The demo consortium with a short committed history and, by default, health records
    and a drug supply chain (Acme -> Medline -> City Pharmacy). The chain starts on
    ``ruleset`` (default: the newest this software knows)."""
    from careledger import demo
    from careledger.contracts.registry import default_registry
    from careledger.keyfile import read_key_file

    _check_empty(data_dir)
    keys_dir = data_dir / KEYS_DIR
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys = demo.demo_keys(keys_dir)
    genesis = demo.demo_genesis(keys, _now_ms(), ruleset or default_registry().latest.name)
    ledger = init_node(
        data_dir,
        genesis=genesis,
        node_name=demo.NODE_MEMBER,
        org="st-mary",
        node_key_file=keys_dir / f"{demo.NODE_MEMBER}.key",
    )
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    history = demo.demo_history(keys, keys_dir, created)
    proposal = ""
    for envelopes in history:
        executed = _commit(ledger, envelopes)
        proposal = next(r["tx_id"] for r in reversed(list(executed.values())))
    _commit(ledger, demo.vote_block(keys, proposal, created, nonce_start=100))
    _, node_key = read_key_file(keys_dir / f"{demo.NODE_MEMBER}.key")
    assert node_key.public_key == ledger.node_key.public_key
    if with_records or with_supply:
        ledger.store.close()
        if with_records:
            demo.load_demo_records(data_dir)
            demo.load_demo_trial(data_dir)
            demo.load_demo_monitoring(data_dir)
        if with_supply:
            demo.load_demo_supply(data_dir)
        ledger = Ledger(
            SQLiteStore(data_dir / STORE_FILE), node_name=demo.NODE_MEMBER, node_key=node_key
        )
    return ledger


def _commit(ledger: Ledger, envelopes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    txs = admit_all(ledger, envelopes, [None] * len(envelopes))
    executed = ledger.commit(txs, _now_ms())
    if executed is None:
        raise ValidationError("demo block did not commit", code="DEMO_FAILED")
    rejected = [r for r in executed.receipts.values() if r["result"] != "accepted"]
    if rejected:
        raise ValidationError(
            f"demo transaction rejected: {rejected[0]['code']}", code="DEMO_FAILED"
        )
    return dict(executed.receipts)


def load_genesis(path: Path) -> dict[str, Any]:
    try:
        value = loads(path.read_bytes())
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", code="BAD_GENESIS") from None
    if not isinstance(value, dict):
        raise ValidationError("a genesis document is a JSON object", code="BAD_GENESIS")
    return value


__all__ = ["KeyPair", "init_demo", "init_node", "load_genesis"]
