"""Drug-traceability figures (issue 5), printed in one run with a no-ledger baseline.

A realistic DSCSA flow, every step an EPCIS 2.0 document captured through the node's EPCIS
service (JSON-schema and CBV validation, CBV 2.0 event hashing, one ledger transaction per
document that anchors every hash and applies every unit-state change, then the repository):

  Acme commissions N units (one ObjectEvent per case of 20), packs cases (AggregationEvent)
  and pallets of 25 cases, ships pallets to Medline, which receives them and ships them on to
  City Pharmacy, which receives, unpacks pallets and cases, and dispenses every unit (one
  ObjectEvent per unit).

Prints capture events/s per phase and overall, EPCIS query latency (MATCH_epc, EQ_bizStep),
DSCSA verification latency (in-process and over HTTP), peak memory, and the same documents
inserted into plain SQLite (event bodies and an EPC index, no ledger, same fsync policy).

    .venv/bin/python bench/supply.py [--quick] [--units N] [--workers W]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import figure, pct  # noqa: E402
from tests.support.nodes import Server, free_port  # noqa: E402

from careledger.callers.caller import Caller  # noqa: E402
from careledger.callers.scopes import default_scopes, parse_scopes  # noqa: E402
from careledger.config import EPCIS_FILE, Settings  # noqa: E402
from careledger.demo import DEMO_MEMBERS  # noqa: E402
from careledger.node import Node  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402
from careledger.supply import epcis_build as b  # noqa: E402
from careledger.supply.alerts import AlertStore  # noqa: E402
from careledger.supply.identifiers import (  # noqa: E402
    SGTIN,
    gs1_check_digit,
    to_digital_link,
)
from careledger.supply.repository import EpcisRepository, EventQuery  # noqa: E402
from careledger.supply.service import EpcisService  # noqa: E402
from careledger.supply.supply_service import SupplyService  # noqa: E402
from careledger.supply.verification_log import VerificationLog  # noqa: E402

PREFIX = "0887654"
PLEN = len(PREFIX)
CASE_SIZE = 20
PALLET_CASES = 25
TARGET_EVENTS_PER_S = 5000
EXPIRY_ISO, EXPIRY = "2029-12-31", "291231"
LOT_SIZE = 5000  # units per lot (the contract's lot index holds at most 10,000)
BENCH = "supply"


def lot_of(index: int) -> str:
    return f"B{index // LOT_SIZE:04d}"


def cd(digits: str) -> str:
    return digits + gs1_check_digit(digits)


GTIN = cd("0" + PREFIX + "20001")
PLANT, DC, PHARMACY = (cd(PREFIX + f"0000{i}") for i in (1, 2, 3))


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<52} {value:>16}  {note}")


class Clock:
    """Event times one second apart: the repository's time index sees a real spread."""

    def __init__(self) -> None:
        self.t = 1_790_000_000

    def __call__(self) -> str:
        self.t += 1
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.t))


def phases(units: int) -> list[tuple[str, str, list[dict[str, Any]], int]]:
    """(phase, member, events, events per document), in the order they must be captured."""
    now = Clock()
    plant, dc, pharmacy = (b.sgln_urn(g, PLEN) for g in (PLANT, DC, PHARMACY))
    serials = [f"S{i:07d}" for i in range(units)]
    epcs = [b.sgtin_urn(GTIN, s, PLEN) for s in serials]
    cases = [b.sscc_urn(cd("0" + PREFIX + f"{i:09d}"), PLEN) for i in range(units // CASE_SIZE)]
    pallets = [
        b.sscc_urn(cd("1" + PREFIX + f"{i:09d}"), PLEN)
        for i in range((len(cases) + PALLET_CASES - 1) // PALLET_CASES)
    ]
    case_units = [epcs[i * CASE_SIZE : (i + 1) * CASE_SIZE] for i in range(len(cases))]
    pallet_cases = [cases[i * PALLET_CASES : (i + 1) * PALLET_CASES] for i in range(len(pallets))]
    observe = {"action": "OBSERVE"}
    return [
        (
            "commission (1 event per 20 units)",
            "acme-admin",
            [
                b.object_event(
                    time=now(),
                    biz_step="commissioning",
                    action="ADD",
                    epcs=group,
                    location=plant,
                    lot=lot_of(i * CASE_SIZE),
                    expiry_iso=EXPIRY_ISO,
                )
                for i, group in enumerate(case_units)
            ],
            25,
        ),
        (
            "pack cases (20 units)",
            "acme-admin",
            [
                b.aggregation_event(time=now(), parent=c, children=u, location=plant)
                for c, u in zip(cases, case_units, strict=True)
            ],
            25,
        ),
        (
            "pack pallets (25 cases)",
            "acme-admin",
            [
                b.aggregation_event(time=now(), parent=p, children=c, location=plant)
                for p, c in zip(pallets, pallet_cases, strict=True)
            ],
            40,
        ),
        (
            "ship pallets to distributor",
            "acme-admin",
            [
                b.object_event(
                    time=now(),
                    biz_step="shipping",
                    epcs=[p],
                    location=plant,
                    destination=dc,
                    **observe,
                )
                for p in pallets
            ],
            100,
        ),
        (
            "receive at distributor",
            "medline-admin",
            [
                b.object_event(time=now(), biz_step="receiving", epcs=[p], location=dc, **observe)
                for p in pallets
            ],
            100,
        ),
        (
            "ship pallets to pharmacy",
            "medline-admin",
            [
                b.object_event(
                    time=now(),
                    biz_step="shipping",
                    epcs=[p],
                    location=dc,
                    destination=pharmacy,
                    **observe,
                )
                for p in pallets
            ],
            100,
        ),
        (
            "receive at pharmacy",
            "ph-chen-li",
            [
                b.object_event(
                    time=now(), biz_step="receiving", epcs=[p], location=pharmacy, **observe
                )
                for p in pallets
            ],
            100,
        ),
        (
            "unpack pallets and cases",
            "ph-chen-li",
            [
                b.aggregation_event(
                    time=now(), parent=x, children=[], location=pharmacy, pack=False
                )
                for x in [*pallets, *cases]
            ],
            200,
        ),
        (
            "dispense (1 event per unit)",
            "ph-chen-li",
            [
                b.object_event(
                    time=now(), biz_step="dispensing", epcs=[e], location=pharmacy, **observe
                )
                for e in epcs
            ],
            150,
        ),
    ]


def documents(events: list[dict[str, Any]], per_doc: int) -> list[dict[str, Any]]:
    return [
        b.document(events[i : i + per_doc], "2026-11-24T00:00:00.000Z")
        for i in range(0, len(events), per_doc)
    ]


def caller_for(member: str) -> Caller:
    org, roles = next((o, frozenset(r)) for m, _, o, r in DEMO_MEMBERS if m == member)
    return Caller(member, org, roles, parse_scopes(default_scopes(roles)))


def setup_supply(node: Node) -> None:
    # The bench's GLNs all lie under Acme's prefix: the others claim theirs before Acme's
    # prefix is registered (from r3 on, a GLN under a registered prefix is the prefix owner's).
    calls = [
        ("medline-admin", "register_location", {"gln": DC, "name": "dc"}),
        ("ph-chen-li", "register_location", {"gln": PHARMACY, "name": "pharmacy"}),
        ("acme-admin", "register_prefix", {"prefix": PREFIX}),
        ("acme-admin", "register_location", {"gln": PLANT, "name": "plant"}),
    ]
    for actor, method, args in calls:
        call = {"actor": actor, "method": method, "args": args}
        (receipt,) = node.execute([("supply", "on_behalf", call)])
        assert receipt["result"] == "accepted", receipt


def capture_all(
    service: EpcisService,
    plan: list[tuple[str, str, list[dict[str, Any]], int]],
    workers: int,
) -> tuple[int, float]:
    total_events, total_time = 0, 0.0
    with ThreadPoolExecutor(workers) as pool:
        for name, member, events, per_doc in plan:
            docs = documents(events, per_doc)
            caller = caller_for(member)

            def one(doc: dict[str, Any], caller: Caller = caller, name: str = name) -> None:
                status = service.capture(caller, doc)
                if not status["success"]:
                    raise SystemExit(f"capture refused in {name}: {status['errors'][:2]}")

            start = time.perf_counter()
            list(pool.map(one, docs))
            elapsed = time.perf_counter() - start
            total_events += len(events)
            total_time += elapsed
            line(
                f"capture: {name}",
                f"{len(events) / elapsed:,.0f} ev/s",
                f"{len(events):,} events, {len(docs)} docs",
            )
            figure(
                BENCH,
                f"capture: {name}",
                len(events) / elapsed,
                "ev/s",
                note=f"{len(events):,} events, {len(docs)} docs",
            )
    return total_events, total_time


def baseline(
    plan: list[tuple[str, str, list[dict[str, Any]], int]], path: Path
) -> tuple[int, float]:
    """The same documents into plain SQLite: bodies and an EPC index, one transaction each."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE events(seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    conn.execute(
        "CREATE TABLE epcs(epc TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY(epc, seq)) WITHOUT ROWID"
    )
    count, start = 0, time.perf_counter()
    for _, _, events, per_doc in plan:
        for doc in documents(events, per_doc):
            conn.execute("BEGIN")
            for event in doc["epcisBody"]["eventList"]:
                cur = conn.execute("INSERT INTO events(body) VALUES(?)", (orjson.dumps(event),))
                names = [*event.get("epcList", []), *event.get("childEPCs", [])]
                if "parentID" in event:
                    names.append(event["parentID"])
                conn.executemany(
                    "INSERT OR IGNORE INTO epcs VALUES(?,?)", [(n, cur.lastrowid) for n in names]
                )
                count += 1
            conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return count, elapsed


def timed(n: int, fn: Callable[[int], Any]) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def report(label: str, ms: Sequence[float]) -> None:
    line(label, f"p50 {pct(list(ms), 50):.2f} ms", f"p99 {pct(list(ms), 99):.2f} ms, n={len(ms)}")
    for p in (50, 99):
        figure(BENCH, f"{label} p{p}", pct(list(ms), p), "ms", note=f"n={len(ms)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 units")
    parser.add_argument("--workers", type=int, default=2, help="concurrent captures")
    args = parser.parse_args()
    units = 10_000 if args.quick else args.units
    units -= units % (CASE_SIZE * PALLET_CASES)
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-supply-"))
    rng = random.Random(7)
    try:
        data = workdir / "node"
        init_demo(data, with_records=False, with_supply=False).store.close()
        print(f"supply bench: {units:,} units, {args.workers} capture workers, 2 cores")
        plan = phases(units)
        node = Node(Settings.load(data))
        node.start()
        repository = EpcisRepository(data / EPCIS_FILE)
        service = EpcisService(node, repository)
        alerts = AlertStore(data / EPCIS_FILE)
        log = VerificationLog(data / EPCIS_FILE)
        supply = SupplyService(node, alerts, log)
        try:
            setup_supply(node)
            events, elapsed = capture_all(service, plan, args.workers)
            rate = events / elapsed
            line(
                "capture: whole flow",
                f"{rate:,.0f} ev/s",
                f"{events:,} events in {elapsed:.1f} s; target {TARGET_EVENTS_PER_S:,} "
                + ("MET" if rate >= TARGET_EVENTS_PER_S else "MISSED"),
            )
            serials = [f"S{i:07d}" for i in range(units)]
            links = [to_digital_link(SGTIN(GTIN, s)) for s in serials]
            q = timed(1000, lambda i: service.query(EventQuery(epcs=[links[rng.randrange(units)]])))
            report("query MATCH_epc (one unit's 3-6 events), in-process", q)
            q2 = timed(
                300,
                lambda i: service.query(
                    EventQuery(biz_steps=["dispensing"], after_seq=rng.randrange(events), limit=100)
                ),
            )
            report("query EQ_bizStep=dispensing, 100 per page, in-process", q2)

            def verify(i: int) -> None:
                n = rng.randrange(units)
                request = {"serialNumber": serials[n], "lotNumber": lot_of(n)}
                supply.verify(None, {"gtin": GTIN, "expirationDate": EXPIRY, **request})

            report("verification (LMS), in-process", timed(2000, verify))
        finally:
            alerts.close()
            log.close()
            repository.close()
            node.stop()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        line("peak RSS of the capturing process", f"{rss_mb:,.0f} MiB")
        size = sum(p.stat().st_size for p in data.glob("*.sqlite*")) / 2**20
        line("node files (ledger, EPCIS repository)", f"{size:,.0f} MiB")
        figure(BENCH, "peak RSS of the capturing process", rss_mb, "MiB", peak_rss_mib=rss_mb)
        figure(BENCH, "node files (ledger, EPCIS repository)", size, "MiB")

        server = Server(data, free_port(), workdir / "server.log")
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:

                def http_verify(i: int) -> None:
                    n = rng.randrange(units)
                    r = http.get(
                        f"/v1/supply/verify/01/{GTIN}/21/{serials[n]}",
                        params={"10": lot_of(n), "17": EXPIRY},
                    )
                    assert r.status_code == 200, r.text
                    assert r.json()["data"]["verified"] is False  # every unit is dispensed

                report("verification over HTTP (GET LMS path)", timed(500, http_verify))
        finally:
            server.stop()

        count, base_elapsed = baseline(plan, workdir / "baseline.sqlite")
        base_rate = count / base_elapsed
        line(
            "baseline: same documents into plain SQLite",
            f"{base_rate:,.0f} ev/s",
            f"{count:,} events",
        )
        line("ratio capture / baseline", f"{rate / base_rate:.1%}")
        figure(
            BENCH,
            "capture: whole flow",
            rate,
            "ev/s",
            baseline="the same documents into plain SQLite",
            baseline_value=base_rate,
            note=f"{events:,} events in {elapsed:.1f} s; target {TARGET_EVENTS_PER_S:,}",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
