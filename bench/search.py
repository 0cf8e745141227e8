"""FHIR search figures (issue 16), in process on a real node (vault file, ledger, blind index).

Prints, for a 10-entry page of a patient's Observations with 10, 1,000 and 10,000 of them: search
latency p50/p99 and records decrypted per search, each search committing its access event; the
same page answered the old way (decrypt every record of the patient, then filter) as the
baseline measured in the same run; and `Patient?identifier=` over 100,000 patients.

    .venv/bin/python bench/search.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BATCH,
    CALLER,
    figure,
    lift_write_budget,
    observation,
    pct,
    write,
)

from careledger.config import Settings  # noqa: E402
from careledger.core.keys import KeyPair  # noqa: E402
from careledger.fhir.extract import patient_id  # noqa: E402
from careledger.fhir.search import matches, parse_search  # noqa: E402
from careledger.health.search import SearchResult, search_org, search_patient  # noqa: E402
from careledger.health.service import HealthRecords  # noqa: E402
from careledger.node import Node  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402

NOW = datetime.now(UTC)
BENCH = "search"


def timed(runs: int, task: Callable[[], SearchResult | int]) -> tuple[list[float], Any]:
    times, last = [], None
    for _ in range(runs):
        started = time.perf_counter()
        last = task()
        times.append((time.perf_counter() - started) * 1000)
    return times, last


def line(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44} {value:>26}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: CI checks it runs")
    args = parser.parse_args()
    sizes = (10, 40) if args.smoke else (10, 300, 1_000) if args.quick else (10, 1_000, 10_000)
    patients_n = 50 if args.smoke else 2_000 if args.quick else 100_000
    runs = 3 if args.smoke else 10 if args.quick else 30
    workdir = Path(tempfile.mkdtemp(prefix="careledger-search-bench-"))
    print(f"CareLedger search bench — pages of 10; patients with {sizes} Observations")
    try:
        data = workdir / "node"
        init_demo(data, with_records=False, with_supply=False).store.close()
        lift_write_budget(data)
        node = Node(Settings.load(data))
        node.start()
        records = HealthRecords.for_node(node)
        try:
            figures: dict[int, tuple[float, float, int, float, float, int]] = {}
            for size in sizes:
                pid = records.create(
                    CALLER, {"resourceType": "Patient", "gender": "female"}, patient_of=patient_id
                ).record_id
                write(records, [(observation(pid, i), f"o{size}-{i}", 1, pid) for i in range(size)])
                query = [("patient", pid), ("_count", "10")]
                request = parse_search("Observation", query)

                def page(request: Any = request, pid: str = pid) -> SearchResult:
                    return search_patient(
                        records, CALLER, request, pid, purpose="TREAT", base_url="", now=NOW,
                        implied=request.criteria[0],
                    )  # fmt: skip

                def old_way(request: Any = request, pid: str = pid) -> int:
                    found = records.everything(CALLER, pid, types={"Observation"})
                    hits = [s for s in found if matches(s.resource, request, now=NOW)]
                    return len(hits[:10])

                times, result = timed(runs, page)
                # the old way names every record in one access event: past a few thousand it
                # cannot answer at all (an envelope is at most 64 KiB)
                base, _ = timed(max(3, runs // 3), old_way) if size <= 2_000 else ([0.0], None)
                figures[size] = (
                    pct(times, 50), pct(times, 99), result.decrypted,
                    pct(base, 50), pct(base, 99), size,
                )  # fmt: skip
                coded = parse_search("Observation", [*query, ("code", "http://loinc.org|4548-4")])
                ctimes, cresult = timed(
                    runs,
                    lambda coded=coded, pid=pid: search_patient(
                        records,
                        CALLER,
                        coded,
                        pid,
                        purpose="TREAT",
                        base_url="",
                        now=NOW,
                        implied=coded.criteria[0],
                    ),
                )
                line(
                    f"{size:>6,} Observations: 10-entry page",
                    f"p50 {pct(times, 50):.1f} ms  p99 {pct(times, 99):.1f} ms",
                    f"decrypted {result.decrypted}; old way (decrypt all) "
                    + (
                        f"p50 {pct(base, 50):.1f} ms, p99 {pct(base, 99):.1f} ms"
                        if size <= 2_000
                        else "cannot answer (one access event over 64 KiB)"
                    ),
                )
                line(
                    f"{size:>6,} Observations: code=, page of 10",
                    f"p50 {pct(ctimes, 50):.1f} ms  p99 {pct(ctimes, 99):.1f} ms",
                    f"decrypted {cresult.decrypted} of {cresult.total} matches",
                )
                answered = size <= 2_000
                for p in (50, 99):
                    figure(
                        BENCH,
                        f"{size:,} Observations: 10-entry page p{p}",
                        pct(times, p),
                        "ms",
                        baseline=f"old way (decrypt all) p{p}"
                        if answered
                        else "old way cannot answer (one access event over 64 KiB)",
                        baseline_value=pct(base, p) if answered else None,
                        note=f"decrypted {result.decrypted}",
                    )
                for p in (50, 99):
                    figure(
                        BENCH,
                        f"{size:,} Observations: code=, page of 10, p{p}",
                        pct(ctimes, p),
                        "ms",
                        note=f"decrypted {cresult.decrypted} of {cresult.total} matches",
                    )
            # The target: the 1,000-Observation page within 2x of the 10-Observation
            # page. Larger patients are printed beside it, with no target.
            small = figures[sizes[0]]
            for size in sizes[1:]:
                big = figures[size]
                note = "target: within 2x" if size == 1_000 else "no target"
                line(
                    f"page at {size:,} vs {sizes[0]} Observations",
                    f"{big[0] / small[0]:.2f}x (p50)",
                    note,
                )
                figure(
                    BENCH,
                    f"10-entry page p50: {size:,} vs {sizes[0]} Observations",
                    big[0],
                    "ms",
                    baseline=f"the same page at {sizes[0]} Observations p50",
                    baseline_value=small[0],
                    note=note,
                )

            started = time.perf_counter()
            people = []
            for i in range(patients_n):
                mrn = {"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN-{i:07d}"}
                people.append(
                    (
                        {"resourceType": "Patient", "identifier": [mrn], "gender": "male"},
                        f"pb-{i:07d}",
                        1,
                        f"pb-{i:07d}",
                    )
                )
            for start in range(0, len(people), BATCH):
                chunk = people[start : start + BATCH]
                members = [
                    ("identity", "add_member", {
                        "id": pid, "name": pid, "roles": ["patient"],
                        "public_key": KeyPair.from_seed(os.urandom(32)).public_b64,
                    })
                    for _, pid, _, _ in chunk
                ]  # fmt: skip
                receipts = node.execute(members)
                assert all(r["result"] == "accepted" for r in receipts), receipts[0]
                records.write_all(CALLER, chunk)
            loaded = time.perf_counter() - started
            line(f"{patients_n:,} Patients written", f"{patients_n / loaded:,.0f}/s", "")
            figure(BENCH, f"{patients_n:,} Patients written", patients_n / loaded, "/s")
            lookups = [
                parse_search(
                    "Patient",
                    [
                        (
                            "identifier",
                            f"urn:oid:2.16.840.1.113883.19.5|MRN-{(i * 7919) % patients_n:07d}",
                        )
                    ],
                )
                for i in range(runs)
            ]
            ltimes = []
            for lookup in lookups:
                began = time.perf_counter()
                found = search_org(records, CALLER, lookup, purpose="TREAT", base_url="", now=NOW)
                ltimes.append((time.perf_counter() - began) * 1000)
                assert found.total == 1, found.total
            line(
                f"Patient?identifier= over {patients_n:,} patients",
                f"p50 {pct(ltimes, 50):.1f} ms  p99 {pct(ltimes, 99):.1f} ms",
                f"decrypted {found.decrypted} per search",
            )
            for p in (50, 99):
                figure(
                    BENCH,
                    f"Patient?identifier= over {patients_n:,} patients p{p}",
                    pct(ltimes, p),
                    "ms",
                    note=f"decrypted {found.decrypted} per search",
                )
        finally:
            records.close()
            node.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
