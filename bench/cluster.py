"""Consortium figures (issue 6): one node vs a 3-node JetStream cluster, in one run.

Prints committed tx/s of a single node (local ordering) and of a 3-node cluster (3 NATS servers,
stream R3 with fsync on every write) at every node; commit latency p50/p99 of single envelopes
on both; and how fast a node that missed N transactions catches up from the stream. Every
figure is measured through real HTTP against real processes on this machine.

    .venv/bin/python bench/cluster.py [--quick] [--txs N] [--missed N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.common import figure, lift_write_budget  # noqa: E402
from ledger import envelopes, line, percentile  # noqa: E402
from tests.support.nodes import Server, free_port  # noqa: E402

from careledger.cluster.local import LocalCluster, NodeProcess  # noqa: E402
from careledger.keyfile import read_key_file  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402

BATCH = 2000
# issue 20: the cluster at >= 60% of the single node (an earlier issue asked 50%)
TARGET_SHARE = 0.60
BENCH = "cluster"
SINGLE = "single node (local ordering), same run"
SIGNERS = ("st-mary-admin", "acme-admin")


def log_size(url: str) -> int:
    try:
        return int(httpx.get(f"{url}/healthz", timeout=5).json()["log_size"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


def submit_all(urls: list[str], halves: list[list[dict[str, Any]]]) -> None:
    """Each half through its own node, batches of 2,000, wait=true, one client thread each."""
    failures: list[str] = []

    def client(url: str, envs: list[dict[str, Any]]) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for i in range(0, len(envs), BATCH):
                r = http.post(
                    "/v1/tx",
                    content=orjson.dumps(envs[i : i + BATCH]),
                    params={"wait": "true"},
                    headers={"content-type": "application/json"},
                )
                if r.status_code != 200:
                    failures.append(r.text[:300])
                    return

    threads = [
        threading.Thread(target=client, args=(url, half))
        for url, half in zip(urls, halves, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"submission failed: {failures[0]}")


def workload(keys_dir: Path, chain: str, n: int, tag: str, nonce0: int) -> list[list[Any]]:
    """Half the transactions per signer. Nonces start above any the SDK drew (it uses the
    clock in microseconds), ``nonce0`` apart between workloads."""
    nonce0 += time.time_ns() // 1000
    return [
        envelopes(read_key_file(keys_dir / f"{signer}.key")[1], chain, n // 2, f"{tag}{i}-", nonce0)
        for i, signer in enumerate(SIGNERS)
    ]


def latency(url: str, keys_dir: Path, chain: str, n: int, nonce0: int) -> list[float]:
    nonce0 += time.time_ns() // 1000
    envs = envelopes(read_key_file(keys_dir / "st-mary-admin.key")[1], chain, n, "lat", nonce0)
    out = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for env in envs:
            start = time.perf_counter()
            r = http.post(
                "/v1/tx",
                content=orjson.dumps(env),
                params={"wait": "true"},
                headers={"content-type": "application/json"},
            )
            out.append((time.perf_counter() - start) * 1000)
            r.raise_for_status()
            time.sleep(0.005)  # ~100-150/s offered: latency, not throughput
    return out


def single_node(workdir: Path, n: int) -> tuple[float, list[float]]:
    data = workdir / "single"
    init_demo(data, with_records=False, with_supply=False).store.close()
    lift_write_budget(data)
    server = Server(data, free_port(), workdir / "single.log")
    server.start()
    try:
        chain = httpx.get(f"{server.url}/healthz").json()["chain"]
        halves = workload(data / "keys", chain, n, "s", 10_000)
        base = log_size(server.url)
        start = time.perf_counter()
        submit_all([server.url, server.url], halves)
        elapsed = time.perf_counter() - start
        assert log_size(server.url) >= base + n
        lat = latency(server.url, data / "keys", chain, 300, 1_000_000)
    finally:
        server.stop()
    return n / elapsed, lat


def wait_all(nodes: list[NodeProcess], target: int, start: float, timeout: float) -> list[float]:
    """Seconds from ``start`` until each node's log reached ``target`` leaves."""
    reached: list[float | None] = [None] * len(nodes)
    deadline = time.perf_counter() + timeout
    while None in reached and time.perf_counter() < deadline:
        for i, node in enumerate(nodes):
            if reached[i] is None and log_size(node.url) >= target:
                reached[i] = time.perf_counter() - start
        time.sleep(0.05)
    if None in reached:
        raise SystemExit(f"nodes did not converge: {[log_size(n.url) for n in nodes]}")
    return [float(r) for r in reached if r is not None]


def cluster_run(workdir: Path, n: int, missed: int) -> dict[str, Any]:
    cluster = LocalCluster.create(workdir / "cluster", 3, with_demo_data=False)
    for node in cluster.nodes:
        lift_write_budget(node.dir)  # two members sign everything here, as fast as they can
    cluster.start()
    try:
        n1, n2, n3 = cluster.nodes
        keys = n1.dir / "keys"
        chain = httpx.get(f"{n1.url}/healthz").json()["chain"]
        halves = workload(keys, chain, n, "c", 10_000)
        base = log_size(n1.url)
        start = time.perf_counter()
        submit_all([n1.url, n2.url], halves)
        acked = time.perf_counter() - start
        times = wait_all(cluster.nodes, base + n, start, 300)
        lat = latency(n1.url, keys, chain, 300, 1_000_000)
        # catch-up: node 3 misses `missed` transactions, then replays them from the stream
        n3.stop()
        lagging = workload(keys, chain, missed, "m", 2_000_000)
        base = log_size(n1.url)
        submit_all([n1.url, n2.url], lagging)
        target = base + missed
        restart = time.perf_counter()
        n3.start()
        n3.wait_ready()
        ready = time.perf_counter() - restart
        (caught,) = wait_all([n3], target, restart, 600)
        heads = {httpx.get(f"{x.url}/v1/head").json()["hash"] for x in cluster.nodes}
        return {
            "acked_rate": n / acked,
            "node_rates": [n / t for t in times],
            "latency": lat,
            "catchup_s": caught,
            "catchup_ready_s": ready,
            "converged": len(heads) == 1,
        }
    finally:
        cluster.stop()


def report(
    single_rate: float, single_lat: list[float], result: dict[str, Any], missed: int
) -> None:
    """The printed figures, for bench/all.py; the cluster's beside the single node's."""
    figure(BENCH, "single node: committed tx/s", single_rate, "tx/s")
    for p in (50, 99):
        figure(BENCH, f"single node: commit latency p{p}", percentile(single_lat, p), "ms")
    for i, rate in enumerate(result["node_rates"]):
        figure(
            BENCH,
            f"3-node cluster: committed tx/s at node {i + 1}",
            rate,
            "tx/s",
            baseline=SINGLE,
            baseline_value=single_rate,
        )
    figure(
        BENCH,
        "3-node cluster: committed tx/s at the slowest node",
        min(result["node_rates"]),
        "tx/s",
        baseline=SINGLE,
        baseline_value=single_rate,
        note=f"target >= {TARGET_SHARE:.0%} of the single node (issue 20)",
    )
    figure(
        BENCH,
        "3-node cluster: acknowledged tx/s",
        result["acked_rate"],
        "tx/s",
        baseline=SINGLE,
        baseline_value=single_rate,
    )
    for p in (50, 99):
        figure(
            BENCH,
            f"3-node cluster: commit latency p{p}",
            percentile(result["latency"], p),
            "ms",
            baseline=f"single node p{p}",
            baseline_value=percentile(single_lat, p),
        )
    figure(
        BENCH,
        f"catch-up of a node that missed {missed:,} transactions",
        missed / result["catchup_s"],
        "tx/s",
        note=f"{result['catchup_s']:.1f} s from restart ({result['catchup_ready_s']:.1f} s to serve)",
    )
    figure(BENCH, "heads identical at the end", bool(result["converged"]), "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10,000 txs, 20,000 missed")
    parser.add_argument("--txs", type=int, default=60_000)
    parser.add_argument("--missed", type=int, default=100_000)
    args = parser.parse_args()
    n, missed = (10_000, 20_000) if args.quick else (args.txs, args.missed)
    workdir = Path(tempfile.mkdtemp(prefix="careledger-bench-cluster-"))
    try:
        print(f"cluster bench: {n:,} transactions (identity.add_member), batches of {BATCH:,}")
        single_rate, single_lat = single_node(workdir, n)
        line("single node (local ordering): committed", f"{single_rate:,.0f} tx/s")
        line(
            "single node: commit latency",
            f"p50 {percentile(single_lat, 50):.1f} ms",
            f"p99 {percentile(single_lat, 99):.1f} ms",
        )
        result = cluster_run(workdir, n, missed)
        for i, rate in enumerate(result["node_rates"]):
            line(f"3-node cluster: committed at node {i + 1}", f"{rate:,.0f} tx/s")
        slowest = min(result["node_rates"])
        line("3-node cluster: acknowledged to clients", f"{result['acked_rate']:,.0f} tx/s")
        lat = result["latency"]
        line(
            "3-node cluster: commit latency",
            f"p50 {percentile(lat, 50):.1f} ms",
            f"p99 {percentile(lat, 99):.1f} ms",
        )
        ratio = slowest / single_rate
        line(
            "cluster / single node (slowest node)",
            f"{ratio:.0%}",
            f"target >= {TARGET_SHARE:.0%} " + ("MET" if ratio >= TARGET_SHARE else "MISSED"),
        )
        line(
            f"catch-up of a node that missed {missed:,}",
            f"{missed / result['catchup_s']:,.0f} tx/s",
            f"{result['catchup_s']:.1f} s from restart ({result['catchup_ready_s']:.1f} s to serve)",
        )
        line("heads identical at the end", str(result["converged"]))
        report(single_rate, single_lat, result, missed)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
