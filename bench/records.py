"""Health-records figures (issue 4), printed in one run with a no-ledger baseline.

Prints: FHIR create and read throughput and latency over HTTP (each create seals the resource in
the vault and commits its anchor and an access event; each read commits an access event before
it decrypts); `$everything` latency for a patient with 1,000 resources; transaction-Bundle import
through POST /fhir (the Synthea patients, one client and four, and the Observation Bundles
`$everything` is filled with: resources/s, against issue 20's target of >= 1,000/s); import rate
of `careledger fhir import`; and the same creates, reads and Bundles against plain SQLite (JSON
documents, no ledger, no encryption, same fsync policy) as the baseline.

    .venv/bin/python bench/records.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import json
import re
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

from bench.common import figure, pct, plain_db  # noqa: E402
from tests.support.nodes import Server, free_port, run_cli  # noqa: E402

from careledger.keyfile import read_key_file  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402
from careledger.sdk import Client  # noqa: E402

HAPI_CREATE_MEAN_MS = 100.0
BENCH = "records"
SYNTHEA = ROOT / "src" / "careledger" / "demo_data" / "synthea"
BUNDLE_TARGET = "target >= 1,000 resources/s (issue 20)"
BUNDLE_CLIENTS = 4
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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


def synthea_transactions() -> list[dict[str, Any]]:
    """The Synthea patients as FHIR transaction Bundles: each entry a POST of its resource type,
    its ``fullUrl`` (a urn:uuid: the other entries refer to it by) kept, so that the server
    resolves the references between entries, as a transaction does. The files may be
    ``collection`` or ``transaction`` Bundles; any ``request`` they carry (an ``ifNoneExist``
    would match the first round's Organization on every later round: 200, not a creation) is
    replaced by the plain POST."""
    bundles = []
    for path in sorted(SYNTHEA.glob("*.json")):
        entries = []
        for entry in orjson.loads(path.read_bytes())["entry"]:
            resource = entry["resource"]
            request = {"method": "POST", "url": resource["resourceType"]}
            kept = {"fullUrl": entry["fullUrl"]} if "fullUrl" in entry else {}
            entries.append({**kept, "resource": resource, "request": request})
        bundles.append({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return bundles


def fresh(body: bytes) -> bytes:
    """One posting of a Bundle as a new patient: every UUID in it (the fullUrls' urn:uuids and
    the references to them, the patient's Synthea and record-number identifiers, the claims'
    ids) replaced by a fresh one, the same one wherever it occurs. The server accepts the same
    Bundle posted again (urn:uuids are local to a Bundle, it assigns the ids), but then every
    round would add another patient with the same identifiers: N patients imported, not one N
    times."""
    ids: dict[bytes, bytes] = {}
    return UUID.sub(lambda m: ids.setdefault(m.group(), str(uuid.uuid4()).encode()), body)


def post_transaction(http: httpx.Client, body: bytes, entries: int) -> int:
    """POST one transaction Bundle; the resources its transaction-response says were created
    (every entry must be: 201 Created)."""
    r = http.post("/fhir", content=body)
    r.raise_for_status()
    response = r.json()
    assert response["type"] == "transaction-response", response["type"]
    statuses: list[str] = [e["response"]["status"] for e in response["entry"]]
    created = sum(s.startswith("201") for s in statuses)
    assert created == entries == len(statuses), (entries, sorted(set(statuses)))
    return created


def post_all(
    http: httpx.Client, postings: list[tuple[bytes, int]], clients: int
) -> tuple[float, list[float], int]:
    """POST every (Bundle, entries) from ``clients`` threads: resources created per second,
    each Bundle's latency in ms, and the resources created."""
    created = [0] * len(postings)

    def post(i: int) -> None:
        created[i] = post_transaction(http, *postings[i])

    bundle_rate, latencies = run_parallel(len(postings), clients, post)
    return sum(created) / len(postings) * bundle_rate, latencies, sum(created)


def bundle_baseline(bodies: list[bytes], workdir: Path) -> float:
    """The same Bundles' resources as JSON rows in plain SQLite (WAL, synchronous=FULL, no
    ledger), one commit per Bundle: resources/s, the Bundle parsed and each resource
    serialised as the server would."""
    db = plain_db(workdir / f"bundles-{uuid.uuid4().hex}.sqlite")
    db.execute("CREATE TABLE resources(id TEXT PRIMARY KEY, type TEXT, body BLOB)")
    count = 0
    t = time.perf_counter()
    for body in bodies:
        rows = [
            (str(uuid.uuid4()), e["resource"]["resourceType"], orjson.dumps(e["resource"]))
            for e in orjson.loads(body)["entry"]
        ]
        db.execute("BEGIN")
        db.executemany("INSERT INTO resources VALUES(?,?,?)", rows)
        db.execute("COMMIT")
        count += len(rows)
    elapsed = time.perf_counter() - t
    db.close()
    return count / elapsed


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
    # Synthea patients posted by one client, then by four: the three in turn, a new patient each
    # time (about 12 s each on 2 cores at full size).
    postings_per_run = 2 if args.smoke else 12 if args.quick else 36
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
            observation_bundles: list[bytes] = []
            observation_sizes: list[int] = []
            observation_lat: list[float] = []
            for start in range(0, everything_size, 250):
                entries = [
                    {
                        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": observation(big, i),
                        "request": {"method": "POST", "url": "Observation"},
                    }
                    for i in range(start, min(everything_size, start + 250))
                ]
                body = orjson.dumps(
                    {"resourceType": "Bundle", "type": "transaction", "entry": entries}
                )
                t = time.perf_counter()
                post_transaction(http, body, len(entries))
                observation_lat.append((time.perf_counter() - t) * 1000)
                observation_bundles.append(body)
                observation_sizes.append(len(entries))
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

            print("\n[3] Transaction bundles through POST /fhir (one ledger transaction each)")
            base_observations = bundle_baseline(observation_bundles, workdir)
            observation_rate = sum(observation_sizes) / (sum(observation_lat) / 1000)
            plural = "s" if len(observation_sizes) > 1 else ""
            sizes = (
                f"{len(observation_sizes)} Bundle{plural} of {max(observation_sizes)} Observations"
            )
            line(
                "Observation Bundles, one client: resources/s",
                f"{observation_rate:,.0f}",
                f"{sizes} (filling [2]'s patient); SQLite, a commit per Bundle"
                f" {base_observations:,.0f}/s, a commit per resource ([1]) {base_create:,.0f}/s",
            )
            figure(
                BENCH,
                "transaction Bundles of Observations over HTTP, one client: resources/s",
                observation_rate,
                "/s",
                baseline="plain SQLite JSON rows, one commit per Bundle",
                baseline_value=base_observations,
                note=f"{sizes}, p50 {pct(observation_lat, 50):.0f} ms per Bundle; {BUNDLE_TARGET}",
            )
            synthea = [(orjson.dumps(b), len(b["entry"])) for b in synthea_transactions()]
            turns = [synthea[i % len(synthea)] for i in range(postings_per_run)]
            sizes = "/".join(str(n) for _, n in turns[: len(synthea)])
            print(f"  Synthea patients: Bundles of {sizes} entries, {postings_per_run} per run")
            if not args.smoke:  # warm-up, untimed: the first of these types the server sees
                post_transaction(http, fresh(synthea[0][0]), synthea[0][1])
            # Made before the clock starts: every posting a new patient (see fresh).
            postings = {
                clients: [(fresh(body), n) for body, n in turns] for clients in (1, BUNDLE_CLIENTS)
            }
            base_synthea = bundle_baseline([body for body, _ in postings[1]], workdir)
            for clients in (1, BUNDLE_CLIENTS):
                resource_rate, lat, made = post_all(http, postings[clients], clients)
                who = "one client" if clients == 1 else f"{clients} concurrent clients"
                line(
                    f"Synthea Bundles, {who}: resources/s",
                    f"{resource_rate:,.0f}",
                    f"{made} created; SQLite, a commit per Bundle {base_synthea:,.0f}/s"
                    f" -> {resource_rate / base_synthea:.1%}; {BUNDLE_TARGET}",
                )
                line(
                    f"Synthea Bundle latency, {who}: p50 / p99",
                    f"{pct(lat, 50):.0f} / {pct(lat, 99):.0f} ms",
                    f"Bundles of {sizes} entries",
                )
                label = f"transaction Bundles (Synthea patients) over HTTP, {who}"
                figure(
                    BENCH,
                    f"{label}: resources/s",
                    resource_rate,
                    "/s",
                    baseline="plain SQLite JSON rows, one commit per Bundle",
                    baseline_value=base_synthea,
                    note=f"{len(postings[clients])} Bundles of {sizes} entries; {BUNDLE_TARGET}",
                )
                for p in (50, 99):
                    figure(
                        BENCH,
                        f"{label}: latency per Bundle p{p}",
                        pct(lat, p),
                        "ms",
                        note=f"Bundles of {sizes} entries",
                    )
            http.close()
        finally:
            server.stop()

        print("\n[4] Import (careledger fhir import, in-process, the three Synthea patients)")
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
