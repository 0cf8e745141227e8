"""Helpers the bench scripts share: percentiles, rates, a plain SQLite baseline, many signers,
and ``figure``, through which every bench hands its figures to bench/all.py."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.core.keys import KeyPair
from careledger.core.tx import make_body, sign_body
from careledger.health.service import HealthRecords
from careledger.node import Node

CHUNK = 1000
BENCH_OUT = "CARELEDGER_BENCH_OUT"


def figure(
    bench: str,
    path: str,
    value: float,
    unit: str,
    *,
    baseline: str | None = None,
    baseline_value: float | None = None,
    note: str | None = None,
    peak_rss_mib: float | None = None,
) -> None:
    """Record one figure: when $CARELEDGER_BENCH_OUT names a file, append one JSON line to it.

    Never prints: each bench keeps printing its own table for people. ``baseline`` names the
    no-ledger (or floor) measurement taken in the same run, ``baseline_value`` is it in the
    same unit, and ``ratio`` is value / baseline_value (so above 1 means more tx/s, or more ms).
    """
    out = os.environ.get(BENCH_OUT)
    if not out:
        return
    ratio = None
    if baseline_value and not isinstance(value, bool):
        ratio = value / baseline_value
    record = {
        "bench": bench,
        "path": path,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "note": note,
        "peak_rss_mib": peak_rss_mib,
    }
    with Path(out).open("ab") as lines:
        lines.write(orjson.dumps(record) + b"\n")


def lift_write_budget(node_dir: Path) -> None:
    """Let a bench's one or two signers write as fast as the node can (node.json's
    write_budget): the bench measures the node, not the per-member budget."""
    node_file = node_dir / "node.json"
    config = orjson.loads(node_file.read_bytes())
    config["write_budget"] = {
        "tx_burst": 1e9,
        "tx_per_second": 1e9,
        "bytes_burst": 1e12,
        "bytes_per_second": 1e12,
    }
    node_file.write_bytes(orjson.dumps(config))


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank); 0.0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed(rounds: int, step: Callable[[], object]) -> list[float]:
    """Milliseconds each of ``rounds`` calls of ``step`` took."""
    took = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        took.append((time.perf_counter() - start) * 1000)
    return took


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "n/a"


def plain_db(path: Path) -> sqlite3.Connection:
    """The no-ledger baseline's store: SQLite with the node's durability (WAL, FULL sync)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Chain:
    """Envelopes signed by many keys, committed in chunks through the node's admission."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.nonces: dict[str, int] = {}

    def envelope(self, key: KeyPair, contract: str, method: str, args: Any) -> dict[str, Any]:
        nonce = self.nonces.get(key.public_b64, 1_000_000) + 1
        self.nonces[key.public_b64] = nonce
        body = make_body(
            chain=self.node.ledger.chain,
            contract=contract,
            method=method,
            args=args,
            signer=key.public_b64,
            nonce=nonce,
            created="2026-11-24T00:00:00Z",
        )
        return sign_body(body, key)

    def commit(self, envelopes: list[dict[str, Any]]) -> int:
        """Commit every envelope; the number refused (should be 0)."""
        refused = 0
        for start in range(0, len(envelopes), CHUNK):
            chunk = envelopes[start : start + CHUNK]
            txs = self.node.admit_all(chunk, [None] * len(chunk))
            for future in self.node.submit(txs):
                receipt = future.result(300)
                refused += receipt["result"] != "accepted"
        return refused


# The demo clinician who writes the benches' records, and how many go in one anchor_batch.
ROLES = frozenset({"clinician"})
CALLER = Caller("dr-ana-silva", "st-mary", ROLES, parse_scopes(default_scopes(ROLES)))
BATCH = 250  # records.MAX_BATCH: one anchor_batch per write


def observation(pid: str, i: int) -> dict[str, Any]:
    """The i-th of a patient's Observations: a heart rate or, one in four, a lab value."""
    code = "8867-4" if i % 4 else "4548-4"
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"20{10 + i % 15:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
    }


def write(records: HealthRecords, resources: list[tuple[dict[str, Any], str, int, str]]) -> None:
    for start in range(0, len(resources), BATCH):
        records.write_all(CALLER, resources[start : start + BATCH])
