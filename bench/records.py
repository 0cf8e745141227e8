"""Health-records figures (issue 4), printed in one run with a no-ledger baseline.

Prints: FHIR create and read throughput and latency over HTTP (each create seals the resource in
the vault and commits its anchor and an access event; each read commits an access event before
it decrypts); `$everything` latency for a patient with 1,000 resources; in-process import rate;
and the same creates and reads against plain SQLite (JSON documents, no ledger, no encryption,
same fsync policy) as the baseline.

    .venv/bin/python bench/records.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import figure, pct  # noqa: E402
from tests.support.nodes import Server, free_port, run_cli  # noqa: E402

from careledger.keyfile import read_key_file  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402
from careledger.sdk import Client  # noqa: E402

HAPI_CREATE_MEAN_MS = 100.0
BENCH = "records"
SYNTHEA = ROOT / "src" / "careledger" / "demo_data" / "synthea"


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<50} {value:>18}  {note}")


def observation(patient: str, i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
        },
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": f"2026-11-{1 + i % 28:02d}T10:00:00Z",
        "valueQuantity": {
            "value": 60 + i % 40,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def run_parallel(n: int, workers: int, task: Callable[[int], None]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        t = time.perf_counter()
        task(i)
        with lock:
            latencies.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - t0), latencies


def baseline(n: int, workdir: Path, workers: int) -> tuple[float, float]:
    """The same creates and reads as JSON rows in SQLite (WAL, synchronous=FULL), no ledger."""
    path = workdir / "baseline.sqlite"
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE resources(id TEXT PRIMARY KEY, type TEXT, patient TEXT, body BLOB)")
    setup.commit()
    setup.close()
    local = threading.local()
    write_lock = threading.Lock()

    def conn() -> sqlite3.Connection:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = sqlite3.connect(path, check_same_thread=False)
            c.execute("PRAGMA synchronous=FULL")
        return c

    ids = [str(uuid.uuid4()) for _ in range(n)]

    def create(i: int) -> None:
        body = orjson.dumps(observation("p1", i))
        with write_lock:
            c = conn()
            c.execute("INSERT INTO resources VALUES(?,?,?,?)", (ids[i], "Observation", "p1", body))
            c.commit()

    def read(i: int) -> None:
        (body,) = conn().execute("SELECT body FROM resources WHERE id = ?", (ids[i],)).fetchone()
        orjson.loads(body)

    create_rate, _ = run_parallel(n, workers, create)
    read_rate, _ = run_parallel(n, workers, read)
    return create_rate, read_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: CI checks it runs")
    args = parser.parse_args()
    n = 30 if args.smoke else 300 if args.quick else 2_000
    everything_size = 20 if args.smoke else 200 if args.quick else 1_000
    workers = 16
    workdir = Path(tempfile.mkdtemp(prefix="careledger-records-bench-"))
    print(f"CareLedger health-records bench — {n} creates/reads, {workers} concurrent clients")
    try:
        data = workdir / "node"
        init_demo(data, with_records=False).store.close()
        server = Server(data, free_port(), workdir / "server.log")
        server.start()
        try:
            key = read_key_file(data / "keys" / "dr-ana-silva.key")[1]
            with Client(server.url, keypair=key) as c:
                token = c.login()
            headers = {"authorization": f"Bearer {token}", "content-type": "application/fhir+json"}
            http = httpx.Client(
                base_url=server.url,
                headers=headers,
                timeout=60,
                limits=httpx.Limits(max_connections=64),
            )
            patient = http.post(
                "/fhir/Patient", content=json.dumps({"resourceType": "Patient", "gender": "female"})
            ).json()["id"]
            created: list[str] = [""] * n

            def create(i: int) -> None:
                r = http.post("/fhir/Observation", content=orjson.dumps(observation(patient, i)))
                r.raise_for_status()
                created[i] = r.json()["id"]

            def read(i: int) -> None:
                http.get(f"/fhir/Observation/{created[i]}").raise_for_status()

            print(
                "\n[1] FHIR over HTTP (vault + anchor + access event per create; access event per read)"
            )
            create_rate, create_lat = run_parallel(n, workers, create)
            read_rate, read_lat = run_parallel(n, workers, read)
            single = []
            for i in range(min(50, n)):  # one client, no concurrency: the latency a user sees
                t = time.perf_counter()
                create(i)
                single.append((time.perf_counter() - t) * 1000)
            base_create, base_read = baseline(n, workdir, workers)
            line(
                "create resources/s",
                f"{create_rate:,.0f}",
                f"baseline SQLite {base_create:,.0f}/s -> {create_rate / base_create:.0%} (target >= 40%)",
            )
            line(
                "read resources/s",
                f"{read_rate:,.0f}",
                f"baseline SQLite {base_read:,.0f}/s -> {read_rate / base_read:.0%}",
            )
            line(
                "create latency under load p50 / p99",
                f"{pct(create_lat, 50):.1f} / {pct(create_lat, 99):.1f} ms",
            )
            line(
                "read latency under load p50 / p99",
                f"{pct(read_lat, 50):.1f} / {pct(read_lat, 99):.1f} ms",
            )
            mean = statistics.mean(single)
            line(
                "create latency, one client: mean",
                f"{mean:.1f} ms",
                f"HAPI FHIR published ~100 ms: {HAPI_CREATE_MEAN_MS / mean:.0f}x faster (target 10x)",
            )
            figure(
                BENCH,
                "FHIR create over HTTP: resources/s",
                create_rate,
                "/s",
                baseline="plain SQLite JSON rows",
                baseline_value=base_create,
                note="target >= 40% of the baseline",
            )
            figure(
                BENCH,
                "FHIR read over HTTP: resources/s",
                read_rate,
                "/s",
                baseline="plain SQLite JSON rows",
                baseline_value=base_read,
            )
            for kind, lat in (("create", create_lat), ("read", read_lat)):
                for p in (50, 99):
                    figure(BENCH, f"{kind} latency under load p{p}", pct(lat, p), "ms")
            figure(
                BENCH,
                "create latency, one client: mean",
                mean,
                "ms",
                note=f"HAPI FHIR published ~100 ms: {HAPI_CREATE_MEAN_MS / mean:.0f}x faster (target 10x)",
            )

            print(f"\n[2] $everything for a patient with {everything_size:,} resources")
            big = http.post(
                "/fhir/Patient", content=json.dumps({"resourceType": "Patient"})
            ).json()["id"]
            for start in range(0, everything_size, 250):
                entries = [
                    {
                        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": observation(big, i),
                        "request": {"method": "POST", "url": "Observation"},
                    }
                    for i in range(start, min(everything_size, start + 250))
                ]
                http.post(
                    "/fhir",
                    content=orjson.dumps(
                        {"resourceType": "Bundle", "type": "transaction", "entry": entries}
                    ),
                ).raise_for_status()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                bundle = http.get(f"/fhir/Patient/{big}/$everything").json()
                times.append((time.perf_counter() - t) * 1000)
            assert bundle["total"] == everything_size + 1, bundle["total"]
            line(
                "$everything latency p50 / max",
                f"{pct(times, 50):.0f} / {max(times):.0f} ms",
                f"{everything_size + 1} resources decrypted and hash-checked",
            )
            note = f"{everything_size + 1} resources decrypted and hash-checked"
            label = f"$everything, patient with {everything_size:,} resources"
            figure(BENCH, f"{label}: latency p50", pct(times, 50), "ms", note=note)
            figure(BENCH, f"{label}: latency max", max(times), "ms", note=note)
            http.close()
        finally:
            server.stop()

        print("\n[3] Import (careledger fhir import, in-process, the three Synthea patients)")
        files = [str(p) for p in sorted(SYNTHEA.glob("*.json"))]
        t = time.perf_counter()
        result = run_cli("fhir", "import", str(data), *files, "--json", check=True)
        elapsed = time.perf_counter() - t
        report = json.loads(result.stdout)
        count = sum(report["created"].values())
        line(
            "import resources/s (incl. process start)",
            f"{count / elapsed:,.0f}",
            f"{count} resources in {elapsed:.1f} s",
        )
        figure(
            BENCH,
            "fhir import (Synthea): resources/s, incl. process start",
            count / elapsed,
            "/s",
            note=f"{count} resources in {elapsed:.1f} s",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
