"""Ledger core figures, printed in one run (issue 3).

Prints: the Ed25519 verification ceiling on this machine; committed transactions/s in-process and
over HTTP with batches, each with a plain-SQLite baseline measured in the same run; commit latency
p50/p99 at steady offered loads; inclusion-proof latency at 1M leaves (and at 1k for the O(log n)
comparison); `careledger verify` transactions/s; peak memory.

    .venv/bin/python bench/ledger.py            # full run (a few minutes on 2 cores)
    .venv/bin/python bench/ledger.py --quick    # smaller sizes, for a smoke test
    .venv/bin/python bench/ledger.py --sections commit,verify   # the ledger core only

Sections: ceiling, commit (in-process), http, latency, proofs, verify; commit and verify also
print the CPU time spent per transaction (this process, and its worker processes), which other
load on the machine changes much less than it changes the rates.

Workload: identity.add_member transactions (3 state writes each: member, key, nonce), signed by one
admin, in batches of 2,000. No figure here is asserted anywhere; they go in the issue note.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import figure, lift_write_budget  # noqa: E402
from tests.support.chain import TestChain, genesis, key  # noqa: E402
from tests.support.nodes import Server, free_port  # noqa: E402

from careledger.core import merkle  # noqa: E402
from careledger.core.block import BlockHeader, receipt  # noqa: E402
from careledger.core.canonical import canonical_bytes  # noqa: E402
from careledger.core.keys import KeyPair, verify_signature  # noqa: E402
from careledger.core.tx import make_body, sign_body  # noqa: E402
from careledger.keyfile import read_key_file  # noqa: E402
from careledger.ledger.admission import admit_all  # noqa: E402
from careledger.ledger.engine import Ledger  # noqa: E402
from careledger.ledger.ports import BlockWrite, StoredTx  # noqa: E402
from careledger.ledger.verify import verify_store  # noqa: E402
from careledger.node import settle_heap  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402
from careledger.ordering.local import LocalOrderer  # noqa: E402
from careledger.storage.sqlite import SQLiteStore  # noqa: E402

FABRIC_PUBLISHED_TPS = 3_500
BATCH = 2_000
BENCH = "ledger"
FABRIC = f"Hyperledger Fabric's published ~{FABRIC_PUBLISHED_TPS:,} tx/s"
SECTIONS = ("ceiling", "commit", "http", "latency", "proofs", "verify")


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<52} {value:>16}  {note}")


def children_cpu() -> float:
    """CPU seconds of this process's finished (and reaped) child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_per_tx(label: str, own: float, workers: float, n: int) -> None:
    """CPU time per transaction, which load from other processes disturbs less than rates."""
    line(
        label,
        f"{(own + workers) / n * 1e6:,.1f} µs",
        f"this process {own / n * 1e6:,.1f} µs, its workers {workers / n * 1e6:,.1f} µs",
    )


class GcMeter:
    """Time spent in the cyclic garbage collector (all threads), and collections per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _on(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on)

    def print_per_tx(self, n: int) -> None:
        gens = "/".join(f"{c:,}" for c in self.collections)
        line(
            "  garbage collection per transaction",
            f"{self.seconds / n * 1e6:,.1f} µs",
            f"collections gen0/gen1/gen2 {gens}",
        )


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def envelopes(
    signer: KeyPair, chain: str, n: int, prefix: str, nonce0: int = 1
) -> list[dict[str, Any]]:
    member_keys = [
        KeyPair.from_seed(hashlib.sha256(f"{prefix}{i}".encode()).digest()) for i in range(n)
    ]
    return [
        sign_body(
            make_body(
                chain=chain,
                contract="identity",
                method="add_member",
                args={
                    "id": f"{prefix}{i}",
                    "name": "Bench",
                    "roles": ["nurse"],
                    "public_key": k.public_b64,
                },
                signer=signer.public_b64,
                nonce=nonce0 + i,
                created="2026-11-24T00:00:00Z",
            ),
            signer,
        )
        for i, k in enumerate(member_keys)
    ]


# -- 1. the verification ceiling ----------------------------------------------------------


def _verify_chunk(items: list[tuple[bytes, bytes, bytes]]) -> int:
    return sum(verify_signature(pk, msg, sig) for pk, msg, sig in items)


def ceiling(n: int) -> float:
    print("\n[1] Ed25519 verification ceiling (PyNaCl/libsodium)")
    keys = [KeyPair.from_seed(hashlib.sha256(b"k%d" % i).digest()) for i in range(64)]
    items = []
    for i in range(n):
        k = keys[i % 64]
        msg = b"message %d" % i + bytes(200)
        items.append((k.public_key, msg, k.sign(msg)))
    t = time.perf_counter()
    assert _verify_chunk(items) == n
    one = n / (time.perf_counter() - t)
    halves = [items[: n // 2], items[n // 2 :]]
    with ThreadPoolExecutor(2) as pool:
        t = time.perf_counter()
        assert sum(pool.map(_verify_chunk, halves)) == n
        threads = n / (time.perf_counter() - t)
    with ProcessPoolExecutor(2) as procs:
        list(procs.map(_verify_chunk, [items[:10], items[10:20]]))  # warm up
        t = time.perf_counter()
        assert sum(procs.map(_verify_chunk, halves)) == n
        processes = n / (time.perf_counter() - t)
    best = max(threads, processes)
    line("verifications/s, 1 thread", f"{one:,.0f}")
    line("verifications/s, 2 threads", f"{threads:,.0f}", f"{threads / one:.2f}x one thread")
    line("verifications/s, 2 processes", f"{processes:,.0f}", f"{processes / one:.2f}x one thread")
    line("ceiling (best of the 2-core figures)", f"{best:,.0f}")
    one_thread = "1 thread, same run"
    figure(BENCH, "Ed25519 verifications/s, 1 thread", one, "/s")
    figure(
        BENCH,
        "Ed25519 verifications/s, 2 threads",
        threads,
        "/s",
        baseline=one_thread,
        baseline_value=one,
    )
    figure(
        BENCH,
        "Ed25519 verifications/s, 2 processes",
        processes,
        "/s",
        baseline=one_thread,
        baseline_value=one,
    )
    figure(BENCH, "Ed25519 verification ceiling (best 2-core figure)", best, "/s")
    return best


# -- 2. in-process commit -----------------------------------------------------------------


def sqlite_baseline(envs: list[dict[str, Any]], path: Path) -> float:
    """The same envelopes inserted into SQLite (WAL, synchronous=FULL) in the same batches, no ledger."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE txs(id INTEGER PRIMARY KEY, tx_id TEXT UNIQUE, envelope BLOB)")
    t = time.perf_counter()
    for i in range(0, len(envs), BATCH):
        rows = []
        for j, env in enumerate(envs[i : i + BATCH]):
            raw = orjson.dumps(env)
            rows.append((i + j, hashlib.sha256(raw).hexdigest(), raw))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO txs VALUES(?,?,?)", rows)
        conn.execute("COMMIT")
    rate = len(envs) / (time.perf_counter() - t)
    conn.close()
    return rate


def in_process(n: int, workdir: Path, verify_ceiling: float, *, default_gc: bool = False) -> Path:
    print(f"\n[2] In-process commit: {n:,} transactions, batches of {BATCH:,}, SQLite WAL + fsync")
    store_path = workdir / "inproc.sqlite"
    chain = TestChain(SQLiteStore(store_path))
    if not default_gc:
        settle_heap()  # what Node.start does once the ledger is loaded

    envs = envelopes(key("hosp-admin"), chain.ledger.chain, n, "ip")
    workers_before = children_cpu()
    pool = ProcessPoolExecutor(2)
    pool.submit(abs, 0).result()
    orderer = LocalOrderer(chain.ledger, max_batch=BATCH, max_wait=0.002)
    orderer.start()
    futures = []
    with GcMeter() as gc_meter:
        cpu = time.process_time()
        t = time.perf_counter()
        for i in range(0, n, BATCH):
            txs = admit_all(
                chain.ledger, envs[i : i + BATCH], [None] * len(envs[i : i + BATCH]), pool=pool
            )
            futures.extend(orderer.submit(txs))
        wait(futures)
        elapsed = time.perf_counter() - t
        cpu = time.process_time() - cpu
    orderer.stop()
    assert all(f.result()["result"] == "accepted" for f in futures)
    rate = n / elapsed
    base = sqlite_baseline(envs, workdir / "baseline.sqlite")
    pool.shutdown()
    line("committed tx/s (admit + sign check + execute + commit)", f"{rate:,.0f}")
    cpu_per_tx("  CPU per transaction", cpu, children_cpu() - workers_before, n)
    gc_meter.print_per_tx(n)
    line(
        "  as a share of the verification ceiling", f"{rate / verify_ceiling:.0%}", "target >= 50%"
    )
    line(
        "  baseline: plain SQLite insert of the envelopes",
        f"{base:,.0f}",
        f"ledger = {rate / base:.0%} of it",
    )
    line("  vs Hyperledger Fabric's published ~3,500 tx/s", f"{rate / FABRIC_PUBLISHED_TPS:.1f}x")
    figure(
        BENCH,
        "in-process commit: committed tx/s",
        rate,
        "tx/s",
        baseline="plain SQLite insert of the envelopes",
        baseline_value=base,
        note=f"{rate / FABRIC_PUBLISHED_TPS:.1f}x {FABRIC}",
    )
    figure(
        BENCH,
        "in-process commit vs the verification ceiling",
        rate,
        "tx/s",
        baseline="Ed25519 verification ceiling",
        baseline_value=verify_ceiling,
        note="target >= 50%",
    )
    chain.store.close()
    return store_path


# -- 3 & 4. over HTTP ---------------------------------------------------------------------


def http_throughput(n: int, workdir: Path) -> tuple[Server, KeyPair, str]:
    print(
        f"\n[3] HTTP batch submit: {n:,} transactions, batches of {BATCH:,}, 2 client threads, wait=true"
    )
    data = workdir / "http-node"
    init_demo(data).store.close()
    lift_write_budget(data)  # one member signs everything here, as fast as it can
    server = Server(data, free_port(), workdir / "http-server.log")
    server.start()
    admin = read_key_file(data / "keys" / "st-mary-admin.key")[1]
    chain = httpx.get(f"{server.url}/healthz").json()["chain"]
    # Nonces above the demo's, which are time-based (microseconds): start from now.
    start = time.time_ns() // 1000
    halves = [
        envelopes(admin, chain, n // 2, "ha", nonce0=start),
        envelopes(
            read_key_file(data / "keys" / "acme-admin.key")[1], chain, n // 2, "hb", nonce0=start
        ),
    ]
    bodies = [[orjson.dumps(h[i : i + BATCH]) for i in range(0, len(h), BATCH)] for h in halves]
    committed = [0, 0]

    def client(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for body in bodies[worker]:
                r = http.post(
                    "/v1/tx",
                    content=body,
                    params={"wait": "true"},
                    headers={"content-type": "application/json"},
                )
                r.raise_for_status()
                committed[worker] += sum("receipt" in x for x in r.json()["results"])

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    rate = sum(committed) / elapsed
    line("committed tx/s over HTTP (client on the same 2 cores)", f"{rate:,.0f}", "target >= 5,000")
    line("  vs Hyperledger Fabric's published ~3,500 tx/s", f"{rate / FABRIC_PUBLISHED_TPS:.1f}x")
    figure(
        BENCH,
        "HTTP batch submit: committed tx/s",
        rate,
        "tx/s",
        note=f"target >= 5,000; {rate / FABRIC_PUBLISHED_TPS:.1f}x {FABRIC}",
    )
    return server, admin, chain


def latency(
    server: Server, admin: KeyPair, chain: str, rates: Sequence[int], seconds: float
) -> None:
    print(
        f"\n[4] Commit latency at steady offered load (single envelopes, wait=true, {seconds:.0f} s each)"
    )
    nonce = [time.time_ns() // 1000 + 10_000_000]  # above section 3's and the demo's
    lock = threading.Lock()

    def one(http: httpx.Client, i: int, out: list[float]) -> None:
        with lock:
            nonce[0] += 1
            n = nonce[0]
        env = envelopes(admin, chain, 1, f"lat{n}-", nonce0=n)[0]
        t = time.perf_counter()
        r = http.post(
            "/v1/tx",
            content=orjson.dumps(env),
            params={"wait": "true"},
            headers={"content-type": "application/json"},
        )
        if r.status_code == 200:
            out.append(time.perf_counter() - t)

    for rate in rates:
        total = int(rate * seconds)
        samples: list[float] = []
        with (
            httpx.Client(
                base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=64)
            ) as http,
            ThreadPoolExecutor(32) as pool,
        ):
            start = time.perf_counter()
            futures = []
            for i in range(total):  # open-loop schedule: one request every 1/rate s
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(one, http, i, samples))
            wait(futures)
            achieved = len(samples) / (time.perf_counter() - start)
        ms = [s * 1000 for s in samples]
        line(
            f"offered {rate}/s: achieved {achieved:,.0f}/s",
            f"p50 {percentile(ms, 50):.1f} ms",
            f"p99 {percentile(ms, 99):.1f} ms  (n={len(ms)})",
        )
        note = f"achieved {achieved:,.0f}/s, n={len(ms)}"
        for p in (50, 99):
            figure(
                BENCH,
                f"HTTP commit latency at {rate}/s offered, p{p}",
                percentile(ms, p) if ms else 0.0,
                "ms",
                note=note,
            )


# -- 5. proofs at 1M leaves ---------------------------------------------------------------


def synthetic_log(path: Path, leaves: int) -> SQLiteStore:
    """A store whose log has ``leaves`` real-format receipts, written straight through the store port.

    The proof path (find the tx, plan and fetch O(log n) nodes, fold, sign the checkpoint) is the
    same as on a chain built by real commits; building 1M signed, executed transactions just to
    measure it would take minutes.
    """
    store = SQLiteStore(path)
    Ledger.create(store, genesis())
    prev = store.header(0)
    frontier: list[bytes] = []
    size = 0
    per_block = 50_000
    while size < leaves:
        count = min(per_block, leaves - size)
        height = prev.height + 1
        txs, leaf_hashes = [], []
        for i in range(count):
            tx_id = hashlib.sha256(b"tx%d" % (size + i)).hexdigest()
            rec = canonical_bytes(
                receipt(
                    chain=prev.chain,
                    tx_id=tx_id,
                    envelope_hash=tx_id,
                    height=height,
                    index=i,
                    leaf_index=size + i,
                    code=None,
                )
            )
            txs.append(StoredTx(tx_id, b"{}", rec, size + i))
            leaf_hashes.append(merkle.leaf_hash(rec))
        frontier, nodes = merkle.append_leaf_hashes(frontier, size, leaf_hashes)
        size += count
        header = BlockHeader(
            prev.chain,
            height,
            prev.hash(),
            prev.time,
            size,
            merkle.root_from_frontier(frontier).hex(),
            prev.state_digest,
            prev.events_digest,
            count,
        )
        store.append_block(BlockWrite(header, header.hash(), txs, nodes, b"[]", (), ()))
        prev = header
    return store


def proofs(workdir: Path, leaves: int, samples: int) -> None:
    print(
        "\n[5] Inclusion-proof latency (Ledger.tx_proof: lookup, O(log n) node reads, root, checkpoint)"
    )
    small: dict[int, float] = {}
    for size in (1_000, leaves):
        t = time.perf_counter()
        store = synthetic_log(workdir / f"proofs-{size}.sqlite", size)
        built = time.perf_counter() - t
        ledger = Ledger(store, node_name="bench", node_key=KeyPair.from_seed(bytes(32)))
        ledger.checkpoint()
        ids = [store.leaf(random.randrange(size)).tx_id for _ in range(samples)]
        times = []
        for tx_id in ids:
            t = time.perf_counter()
            ledger.tx_proof(tx_id)
            times.append((time.perf_counter() - t) * 1000)
        line(
            f"{size:,} leaves (log built in {built:.1f} s)",
            f"p50 {percentile(times, 50):.3f} ms",
            f"p99 {percentile(times, 99):.3f} ms  target <= 1 ms",
        )
        for p in (50, 99):
            value = percentile(times, p)
            if size == 1_000:
                small[p] = value
            figure(
                BENCH,
                f"inclusion proof at {size:,} leaves, p{p}",
                value,
                "ms",
                baseline=None if size == 1_000 else f"1,000 leaves, p{p}",
                baseline_value=None if size == 1_000 else small[p],
                note="target <= 1 ms",
            )
        store.close()


# -- 6. verify ----------------------------------------------------------------------------


def verify_rate(store_path: Path) -> None:
    print("\n[6] careledger verify (2 worker processes for signatures)")
    for reexecute, label in [
        (False, "write-set replay (default)"),
        (True, "--reexecute (contracts re-run)"),
    ]:
        store = SQLiteStore(store_path, readonly=True)
        workers_before = children_cpu()
        with ProcessPoolExecutor(2) as pool:
            pool.submit(abs, 0).result()
            cpu = time.process_time()
            t = time.perf_counter()
            report = verify_store(store, pool=pool, reexecute=reexecute)
            elapsed = time.perf_counter() - t
            cpu = time.process_time() - cpu
        assert report.ok, report.problem
        line(f"verified tx/s, {label}", f"{report.transactions / elapsed:,.0f}", "target >= 20,000")
        cpu_per_tx(
            "  CPU per transaction", cpu, children_cpu() - workers_before, report.transactions
        )
        figure(
            BENCH,
            f"careledger verify: verified tx/s, {label}",
            report.transactions / elapsed,
            "tx/s",
            note="target >= 20,000",
        )
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: CI checks it runs")
    parser.add_argument("--txs", type=int, default=60_000)
    parser.add_argument("--proof-leaves", type=int, default=1_000_000)
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="commit with CPython's default collector settings, not the node's (settle_heap)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of {', '.join(SECTIONS)} (commit runs the ceiling first; "
        "verify runs commit first, to have a store)",
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if unknown := sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if "verify" in sections:
        sections.add("commit")
    if "commit" in sections:
        sections.add("ceiling")
    args.quick = args.quick or args.smoke
    n = 300 if args.smoke else 6_000 if args.quick else args.txs
    leaves = 2_000 if args.smoke else 20_000 if args.quick else args.proof_leaves
    print(f"CareLedger ledger bench — {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-"))
    server = None
    try:
        if "ceiling" in sections:
            top = ceiling(300 if args.smoke else 4_000 if args.quick else 30_000)
        if "commit" in sections:
            store_path = in_process(n, workdir, top, default_gc=args.default_gc)
        if sections & {"http", "latency"}:
            server, admin, chain = http_throughput(n, workdir)
            if "latency" in sections:
                rates, seconds = (
                    ([20], 1) if args.smoke else ([50], 3) if args.quick else ([100, 500], 8)
                )
                latency(server, admin, chain, rates, seconds)
            server.stop()
            server = None
        if "proofs" in sections:
            proofs(workdir, leaves, 50 if args.smoke else 300 if args.quick else 2_000)
        if "verify" in sections:
            verify_rate(store_path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\n  peak memory of the bench process: {peak:,.0f} MiB")
        figure(BENCH, "peak RSS of the bench process", peak, "MiB", peak_rss_mib=peak)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
