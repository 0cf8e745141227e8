"""Remote-monitoring figures (issue 9), each beside a no-ledger baseline in the same run.

D devices, each bound to its own patient with an SpO2 < 90 rule, send signed compact batches
(B readings each: heart rate, SpO2, respiratory rate and blood pressure per second). Every
batch is verified (Ed25519 against the ledger's device key), checked against the binding,
sealed (AES-256-GCM, key wrapped for patient and node), digested into the device's window, run
through the patient's rules; windows are anchored on the ledger (one transaction per window).
Some batches hold an SpO2 dip, so alerts fire; their latency is measured from the batch's
arrival to the commit of the window that carries the alert.

Two ways in: in-process (the ingestion service called from W threads) and over HTTP (a real
node served by uvicorn, W client threads POSTing batches). Baseline: the same batches' JSON
inserted into plain SQLite, one transaction each (same fsync policy): no signature check, no
encryption, no ledger. Griggs et al. (2018) put each reading through an Ethereum contract: our
measured Ethereum baseline is ~40 tx/s, printed as the ratio of readings/s to 40.

    .venv/bin/python bench/monitoring.py [--quick] [--devices D] [--batches N] [--per-batch B]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Chain, figure, pct, plain_db, rate  # noqa: E402
from tests.support.nodes import Server, free_port  # noqa: E402

from careledger.config import Settings  # noqa: E402
from careledger.keyfile import generate_keypair, read_key_file  # noqa: E402
from careledger.monitoring.device import sign_batch  # noqa: E402
from careledger.monitoring.ingest import Ingestor  # noqa: E402
from careledger.monitoring.store import MONITORING_FILE, ClosedWindow, ReadingsStore  # noqa: E402
from careledger.node import Node  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402

ETHEREUM_TX_PER_S = 40.0
SPO2_LOW = {"id": "spo2-low", "kind": "threshold", "code": "59408-5", "op": "<", "value": 90}
CODES = ["8867-4", "59408-5", "9279-1", "85354-9"]
DIP_EVERY = 25  # one batch in this many carries an SpO2 dip (an alert)
BENCH = "monitoring"
PLAIN = "the same batches into plain SQLite"


def compact(t0: int, rows: int, dip: bool) -> dict[str, Any]:
    out = []
    for i in range(rows):
        spo2 = 86.0 if dip and i == rows // 2 else 97.0 - (i % 3)
        out.append([i * 1000, 70 + i % 7, spo2, 16 + i % 3, [118 + i % 5, 76 + i % 4]])
    return {"t0": t0, "codes": CODES, "rows": out}


def setup(data: Path, devices: int) -> tuple[list[tuple[str, Any]], int]:
    """Devices registered and bound (one patient each), rules set; (device, key) and t0."""
    init_demo(data, with_records=False, with_supply=False).store.close()
    keys = data / "keys"
    admin = read_key_file(keys / "st-mary-admin.key")[1]
    nurse = read_key_file(keys / "dr-ana-silva.key")[1]
    node = Node(Settings.load(data))
    node.start()
    try:
        chain = Chain(node)
        device_keys = [(f"dev-{i:04d}", generate_keypair()) for i in range(devices)]
        patient_keys = [(f"pt-{i:04d}", generate_keypair()) for i in range(devices)]
        steps = [
            chain.envelope(
                admin,
                "identity",
                "add_member",
                {"id": p, "name": p, "roles": ["patient"], "public_key": k.public_b64},
            )
            for p, k in patient_keys
        ]
        steps += [
            chain.envelope(
                admin,
                "monitoring",
                "register_device",
                {"id": d, "model": "bench", "public_key": k.public_b64},
            )
            for d, k in device_keys
        ]
        assert chain.commit(steps) == 0
        binds = [
            chain.envelope(pk, "monitoring", "bind", {"device": d})
            for (d, _), (_, pk) in zip(device_keys, patient_keys, strict=True)
        ]
        assert chain.commit(binds) == 0
        rules = [
            chain.envelope(
                nurse,
                "monitoring",
                "set_rules",
                {"patient": p, "device": d, "rules": [SPO2_LOW]},
            )
            for (d, _), (p, _) in zip(device_keys, patient_keys, strict=True)
        ]
        assert chain.commit(rules) == 0
        t0 = node.ledger.head.time + 1000
    finally:
        node.stop()
    return device_keys, t0


def batches_for(
    device_keys: list[tuple[str, Any]], t0: int, n: int, per_batch: int, first_seq: int
) -> list[list[dict[str, Any]]]:
    """Pre-signed batches, per device (signing is the device's cost, not the node's)."""
    out = []
    for d, key in device_keys:
        mine = []
        for b in range(n):
            body = compact(t0 + b * per_batch * 1000, per_batch, dip=b % DIP_EVERY == DIP_EVERY - 1)
            mine.append(sign_batch(key, {"device": d, "seq": first_seq + b, "compact": body}))
        out.append(mine)
    return out


def readings_in(batch: dict[str, Any]) -> int:
    return sum(1 for row in batch["batch"]["compact"]["rows"] for v in row[1:] if v is not None)


def in_process(data: Path, signed: list[list[dict[str, Any]]], workers: int) -> dict[str, Any]:
    node = Node(Settings.load(data))
    node.start()
    store = ReadingsStore.for_node(data / MONITORING_FILE, node.ledger.node_key)
    ingest = Ingestor(node, store)
    arrivals: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def anchored(window: ClosedWindow, receipt: dict[str, Any]) -> None:
        if window.alerts:
            with lock:
                arrived = arrivals.pop((window.device, window.window), None)
            if arrived is not None:
                latencies.append(time.monotonic() - arrived)

    ingest.on_anchored.append(anchored)
    ingest.start()
    ledger_file = data / "ledger.sqlite"
    size_before = ledger_file.stat().st_size + _wal(ledger_file)

    def run_device(batches: list[dict[str, Any]]) -> int:
        n = 0
        for envelope in batches:
            arrived = time.monotonic()
            ack = ingest.accept(envelope["batch"]["device"], envelope, received=arrived)
            n += ack.readings
            if ack.alerts:
                with lock:
                    arrivals[(ack.device, ack.window)] = arrived
        return n

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(run_device, signed))
    accepted = time.perf_counter() - started
    ingest.flush()
    ingest.stop()
    anchored_at = time.perf_counter() - started
    windows = sum(1 for k in node.ledger.store.state_keys("monitoring", "window/", 10_000_000))
    node.stop()
    store.close()
    size_after = ledger_file.stat().st_size + _wal(ledger_file)
    return {
        "readings": total,
        "accept_seconds": accepted,
        "anchored_seconds": anchored_at,
        "latencies": latencies,
        "windows": windows,
        "ledger_bytes": size_after - size_before,
        "store_bytes": (data / MONITORING_FILE).stat().st_size,
    }


def _wal(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def over_http(data: Path, signed: list[list[dict[str, Any]]], workers: int) -> dict[str, Any]:
    server = Server(data, free_port(), data.parent / "server.log")
    server.start()
    try:
        bodies = [[orjson.dumps(e) for e in batches] for batches in signed]

        def run_device(batches: list[bytes]) -> tuple[int, list[float]]:
            n, took = 0, []
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for body in batches:
                    device = json.loads(body)["batch"]["device"]
                    sent = time.perf_counter()
                    answer = client.post(
                        f"/v1/devices/{device}/readings",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    took.append(time.perf_counter() - sent)
                    if answer.status_code != 202:
                        raise RuntimeError(answer.text)
                    n += answer.json()["readings"]
            return n, took

        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run_device, bodies))
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    return {
        "readings": sum(n for n, _ in results),
        "seconds": seconds,
        "request_latency": [t for _, took in results for t in took],
    }


def baseline(path: Path, signed: list[list[dict[str, Any]]]) -> tuple[int, float]:
    conn = plain_db(path)
    conn.execute("CREATE TABLE readings(device TEXT, seq INTEGER, body BLOB)")
    flat = [e for batches in signed for e in batches]
    started = time.perf_counter()
    total = 0
    for envelope in flat:
        batch = envelope["batch"]
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO readings VALUES(?,?,?)",
            (batch["device"], batch["seq"], orjson.dumps(batch["compact"])),
        )
        conn.execute("COMMIT")
        total += readings_in(envelope)
    return total, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20 devices x 25 batches")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--batches", type=int, default=100, help="batches per device")
    parser.add_argument("--per-batch", type=int, default=60, help="rows (seconds) per batch")
    parser.add_argument("--workers", type=int, default=8)
    opts = parser.parse_args()
    devices, n = (20, 25) if opts.quick else (opts.devices, opts.batches)
    work = Path(tempfile.mkdtemp(prefix="careledger-bench-monitoring-"))
    figures: dict[str, str] = {}
    try:
        print(
            f"CareLedger monitoring bench: {devices} devices x {n} batches x {opts.per_batch} rows"
        )
        data_a, data_b = work / "a" / "node", work / "b" / "node"
        keys_a, t0_a = setup(data_a, devices)
        keys_b, t0_b = setup(data_b, devices)
        signed_a = batches_for(keys_a, t0_a, n, opts.per_batch, 1)
        signed_b = batches_for(keys_b, t0_b, n, opts.per_batch, 1)

        result = in_process(data_a, signed_a, opts.workers)
        total = result["readings"]
        per_s = total / result["accept_seconds"]
        lat = result["latencies"]
        figures["in-process ingest"] = (
            f"{rate(total, result['accept_seconds'])} readings ({total:,} in"
            f" {result['accept_seconds']:.1f} s; all anchored after {result['anchored_seconds']:.1f} s,"
            f" {result['windows']:,} windows)"
        )
        figures["alert latency"] = (
            f"p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms,"
            f" max {max(lat, default=0) * 1000:.0f} ms ({len(lat)} alerts; arrival to commit)"
        )
        figures["ledger bytes/reading"] = (
            f"{result['ledger_bytes'] / total:.2f} (ledger grew {result['ledger_bytes'] / 2**20:.1f} MiB);"
            f" off-ledger store {result['store_bytes'] / total:.1f} bytes/reading"
        )
        http = over_http(data_b, signed_b, opts.workers)
        figures["HTTP ingest"] = (
            f"{rate(http['readings'], http['seconds'])} readings; per batch request p50"
            f" {pct(http['request_latency'], 50) * 1000:.1f} ms, p99"
            f" {pct(http['request_latency'], 99) * 1000:.1f} ms"
        )
        base_total, base_seconds = baseline(work / "plain.sqlite", signed_a)
        figures["baseline (plain SQLite)"] = (
            f"{rate(base_total, base_seconds)} readings; in-process ingest is"
            f" {per_s / (base_total / base_seconds):.0%} of it"
        )
        figures["vs Ethereum (~40 tx/s)"] = f"{per_s / ETHEREUM_TX_PER_S:,.0f}x"
        figures["target"] = "20,000 readings/s: " + ("MET" if per_s >= 20_000 else "MISSED")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures["peak RSS"] = f"{peak:,.0f} MiB"
        base_rate = base_total / base_seconds
        figure(
            BENCH,
            "in-process ingest",
            per_s,
            "readings/s",
            baseline=PLAIN,
            baseline_value=base_rate,
            note=f"{total:,} readings; {per_s / ETHEREUM_TX_PER_S:,.0f}x Ethereum (~40 tx/s);"
            " target 20,000 readings/s",
        )
        for p in (50, 99):
            figure(BENCH, f"alert latency p{p} (arrival to commit)", pct(lat, p) * 1000, "ms")
        figure(
            BENCH,
            "alert latency max (arrival to commit)",
            max(lat, default=0) * 1000,
            "ms",
            note=f"{len(lat)} alerts",
        )
        figure(BENCH, "ledger bytes per reading", result["ledger_bytes"] / total, "bytes")
        figure(BENCH, "off-ledger store bytes per reading", result["store_bytes"] / total, "bytes")
        figure(
            BENCH,
            "HTTP ingest",
            http["readings"] / http["seconds"],
            "readings/s",
            baseline=PLAIN,
            baseline_value=base_rate,
        )
        for p in (50, 99):
            figure(
                BENCH,
                f"HTTP ingest: per batch request p{p}",
                pct(http["request_latency"], p) * 1000,
                "ms",
            )
        figure(BENCH, "peak RSS of the bench process", peak, "MiB", peak_rss_mib=peak)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
