"""Clinical-trial figures (issue 8), each beside a no-ledger baseline measured in the same run.

On one node with embedded SQLite and its vault:

  * a site with N patients (Patient, a Condition for a third of them, an HbA1c Observation),
    sealed in the vault and anchored;
  * recruitment: one feasibility query evaluated over every patient's records at the site
    (decrypt, check against the ledger anchor, evaluate, disclosure check, answer on the
    ledger) — baseline: the same evaluation over the plaintext JSON in a plain SQLite table;
  * enrolment of N participants (investigator) and N e-consents, each signed by the
    participant's own key — baseline: one plain SQLite row per participant;
  * capture of 10 CRF entries (QuestionnaireResponse) per participant through the trials
    service: dry run, vault seal, record anchors and access event, trial anchor — baseline:
    the same JSON inserted into plain SQLite with the same fsync policy;
  * payments: attestations then visit payments from the study escrow — baseline: a balance
    update in plain SQLite per payment.

    .venv/bin/python bench/trials.py [--quick] [--patients N] [--workers W]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Chain, figure, pct, plain_db, rate  # noqa: E402

from careledger.callers.caller import Caller  # noqa: E402
from careledger.callers.scopes import default_scopes, parse_scopes  # noqa: E402
from careledger.config import Settings  # noqa: E402
from careledger.core.eligibility import eligible, gather, parse_criteria  # noqa: E402
from careledger.health.service import HealthRecords  # noqa: E402
from careledger.keyfile import generate_keypair, read_key_file  # noqa: E402
from careledger.node import Node  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402
from careledger.sealing import open_sealed  # noqa: E402
from careledger.trials.recruitment import (  # noqa: E402
    TRIALS_FILE,
    RecruitmentResponder,
    RecruitmentStore,
)
from careledger.trials.service import TrialsService  # noqa: E402

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CRITERIA = {
    "age": [40, 80],
    "conditions": [{"system": "icd10", "code": "E11"}],
    "labs": [{"code": "4548-4", "min": 7.0, "max": 11.0, "unit": "%"}],
}
ENTRIES_PER_VISIT = 10
BENCH = "trials"


def patient_resources(pid: str, rng: random.Random) -> list[dict[str, Any]]:
    born = f"{rng.randint(1930, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    out: list[dict[str, Any]] = [
        {"resourceType": "Patient", "birthDate": born, "gender": rng.choice(["female", "male"])}
    ]
    if rng.random() < 0.33:
        out.append(
            {
                "resourceType": "Condition",
                "subject": {"reference": f"Patient/{pid}"},
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "code": {"coding": [{"system": ICD10, "code": rng.choice(["E11.9", "E11.65"])}]},
            }
        )
    out.append(
        {
            "resourceType": "Observation",
            "status": "final",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "effectiveDateTime": "2026-06-01",
            "valueQuantity": {"value": round(rng.uniform(5.0, 12.0), 1), "unit": "%", "code": "%"},
        }
    )
    return out


def crf(pid: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        "item": [{"linkId": f"q{n}", "answer": [{"valueInteger": n}]}],
    }


def timed(label: str, work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - started
    print(f"  {label}: {elapsed:.2f} s", flush=True)
    return elapsed, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1,000 patients")
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16, help="concurrent API callers")
    opts = parser.parse_args()
    n = 1_000 if opts.quick else opts.patients
    rng = random.Random(8)
    work = Path(tempfile.mkdtemp(prefix="careledger-bench-trials-"))
    figures: dict[str, str] = {}
    try:
        data = work / "node"
        init_demo(data, with_records=False, with_supply=False).store.close()
        keys = data / "keys"
        admin = read_key_file(keys / "st-mary-admin.key")[1]
        sponsor_key = read_key_file(keys / "trialco-admin.key")[1]
        node = Node(Settings.load(data))
        node.start()
        records = HealthRecords.for_node(node)
        store = RecruitmentStore(data / TRIALS_FILE)
        responder = RecruitmentResponder(records, store)
        service = TrialsService(node, records, store)
        chain = Chain(node)
        investigator = Caller(
            "dr-ana-silva",
            "st-mary",
            frozenset({"clinician", "investigator"}),
            parse_scopes(default_scopes({"clinician", "investigator"})),
        )
        print(f"CareLedger trials bench: {n:,} patients, {n * ENTRIES_PER_VISIT:,} CRF entries")

        # -- the site's patients -----------------------------------------------------------
        patients = [f"pt-{i:06d}" for i in range(n)]
        patient_keys = {p: generate_keypair() for p in patients}
        resources = {p: patient_resources(p, rng) for p in patients}
        members = [
            chain.envelope(
                admin,
                "identity",
                "add_member",
                {
                    "id": p,
                    "name": p,
                    "roles": ["patient"],
                    "public_key": patient_keys[p].public_b64,
                },
            )
            for p in patients
        ]
        timed("register patients", lambda: chain.commit(members))
        caller = records.node_caller()

        def seal(group: Sequence[str]) -> None:
            writes = [
                (r, p if r["resourceType"] == "Patient" else f"r{p}-{k}", 1, p)
                for p in group
                for k, r in enumerate(resources[p])
            ]
            records.write_all(caller, writes)

        groups = [patients[i : i + 80] for i in range(0, n, 80)]
        with ThreadPoolExecutor(4) as pool:
            timed("seal and anchor their records", lambda: list(pool.map(seal, groups)))
        total_records = sum(len(r) for r in resources.values())

        # -- recruitment ---------------------------------------------------------------------
        sponsor = chain.envelope(
            sponsor_key, "trials", "feasibility", {"criteria": CRITERIA, "sites": ["st-mary"]}
        )
        chain.commit([sponsor])
        query = node.ledger.state("trials", f"query/{sponsor_id(sponsor)}")
        seconds, answer = timed("recruitment query", lambda: responder.answer(query["id"]))
        plain = plain_db(work / "plain.sqlite")
        plain.execute("CREATE TABLE res(patient TEXT, body BLOB)")
        plain.execute("BEGIN")
        plain.executemany(
            "INSERT INTO res VALUES(?,?)",
            [(p, orjson.dumps(r)) for p in patients for r in resources[p]],
        )
        plain.execute("COMMIT")
        criteria = parse_criteria(CRITERIA)

        def baseline_query() -> int:
            rows = plain.execute("SELECT patient, body FROM res ORDER BY patient").fetchall()
            by: dict[str, list[dict[str, Any]]] = {}
            for p, body in rows:
                by.setdefault(p, []).append(orjson.loads(body))
            return sum(eligible(criteria, gather(r), date(2026, 11, 24)) for r in by.values())

        base_seconds, base_count = timed("baseline query (plain SQLite, no vault)", baseline_query)
        if "sealed" in answer:  # r5: the count is sealed for the sponsor and this node, with noise
            seed = node.ledger.node_key.seed
            answer = orjson.loads(open_sealed(answer["sealed"], node.settings.node_name, seed))
        figures["recruitment query"] = (
            f"{seconds * 1000:,.0f} ms over {n:,} patients ({total_records:,} records);"
            f" noisy count {answer['count']} (exact baseline {base_count});"
            f" baseline {base_seconds * 1000:,.0f}"
            f" ms; ratio {base_seconds / seconds:.1%}"
        )
        figure(
            BENCH,
            f"recruitment query over {n:,} patients",
            seconds * 1000,
            "ms",
            baseline="the same evaluation over plain SQLite, no vault",
            baseline_value=base_seconds * 1000,
            note=f"{total_records:,} records; noisy count {answer['count']} (exact {base_count})",
        )

        # -- study, enrolment, consent -------------------------------------------------------
        registration = {
            "study": "BENCH-1",
            "registry_id": "NCT00000000",
            "title": "Bench",
            "protocol_hash": "1" * 64,
            "sap_hash": "2" * 64,
            "primary": ["HbA1c"],
            "secondary": [],
            "eligibility": CRITERIA,
            "visits": [{"id": "baseline", "day": 0, "window": 30}],
            "sites": ["st-mary"],
        }
        payments_setup = [
            ("trials", "register", registration),
            ("payments", "deposit", {"credits": 100 * n, "reference": "bench"}),
            ("payments", "open_study", {"study": "BENCH-1", "schedule": {"baseline": 50}}),
            ("payments", "fund", {"study": "BENCH-1", "credits": 50 * n}),
        ]
        assert chain.commit([chain.envelope(sponsor_key, *c) for c in payments_setup]) == 0
        inv_key = read_key_file(keys / "dr-ana-silva.key")[1]
        enrol = [
            chain.envelope(inv_key, "trials", "enrol", {"study": "BENCH-1", "participant": p})
            for p in patients
        ]
        seconds, refused = timed("enrol", lambda: chain.commit(enrol))
        assert refused == 0
        figures["enrol"] = rate(n, seconds)
        enrol_seconds = seconds
        consent = [
            chain.envelope(patient_keys[p], "trials", "consent", {"study": "BENCH-1", "version": 1})
            for p in patients
        ]
        seconds, refused = timed(
            "e-consent (participants' own keys)", lambda: chain.commit(consent)
        )
        assert refused == 0
        figures["e-consent"] = rate(n, seconds)
        consent_seconds = seconds
        base = plain_db(work / "enrol.sqlite")
        base.execute("CREATE TABLE participants(study TEXT, patient TEXT, status TEXT)")

        def baseline_enrol() -> None:
            for p in patients:
                base.execute("INSERT INTO participants VALUES('BENCH-1', ?, 'enrolled')", (p,))

        base_seconds, _ = timed("baseline enrol (one plain SQLite row each)", baseline_enrol)
        figures["enrol baseline"] = rate(n, base_seconds)
        figure(
            BENCH,
            "enrol",
            n / enrol_seconds,
            "tx/s",
            baseline="one plain SQLite row per participant",
            baseline_value=n / base_seconds,
        )
        figure(BENCH, "e-consent (participants' own keys)", n / consent_seconds, "tx/s")

        # -- CRF capture --------------------------------------------------------------------
        latencies: list[float] = []

        def capture(p: str) -> None:
            started = time.perf_counter()
            service.capture(
                investigator,
                "BENCH-1",
                p,
                "baseline",
                [crf(p, k) for k in range(ENTRIES_PER_VISIT)],
            )
            latencies.append(time.perf_counter() - started)

        with ThreadPoolExecutor(opts.workers) as pool:
            seconds, _ = timed("capture", lambda: list(pool.map(capture, patients)))
        entries = n * ENTRIES_PER_VISIT
        crf_db = plain_db(work / "crf.sqlite")
        crf_db.execute("CREATE TABLE crf(patient TEXT, visit TEXT, body BLOB)")

        def baseline_capture() -> None:
            for p in patients:
                crf_db.execute("BEGIN")
                crf_db.executemany(
                    "INSERT INTO crf VALUES(?, 'baseline', ?)",
                    [(p, orjson.dumps(crf(p, k))) for k in range(ENTRIES_PER_VISIT)],
                )
                crf_db.execute("COMMIT")

        base_seconds, _ = timed(
            "baseline capture (plain SQLite, no vault, no ledger)", baseline_capture
        )
        figures["CRF capture"] = (
            f"{rate(entries, seconds)} entries ({entries:,} in {seconds:.1f} s);"
            f" per visit call p50 {pct(latencies, 50) * 1000:.1f} ms,"
            f" p99 {pct(latencies, 99) * 1000:.1f} ms; baseline {rate(entries, base_seconds)};"
            f" ratio {base_seconds / seconds:.1%}"
        )
        figure(
            BENCH,
            "CRF capture",
            entries / seconds,
            "entries/s",
            baseline="the same JSON into plain SQLite, no vault, no ledger",
            baseline_value=entries / base_seconds,
            note=f"{entries:,} entries in {seconds:.1f} s, {opts.workers} callers",
        )
        for p in (50, 99):
            figure(BENCH, f"CRF capture: per visit call p{p}", pct(latencies, p) * 1000, "ms")

        # -- payments -----------------------------------------------------------------------
        attest = [
            chain.envelope(
                inv_key,
                "trials",
                "attest",
                {"study": "BENCH-1", "participant": p, "visit": "baseline"},
            )
            for p in patients
        ]
        seconds, refused = timed("attest visits", lambda: chain.commit(attest))
        assert refused == 0
        figures["attest"] = rate(n, seconds)
        figure(BENCH, "attest visits", n / seconds, "tx/s")
        pay = [
            chain.envelope(
                inv_key,
                "payments",
                "pay_visit",
                {"study": "BENCH-1", "participant": p, "visit": "baseline"},
            )
            for p in patients
        ]
        seconds, refused = timed("pay visits", lambda: chain.commit(pay))
        assert refused == 0
        paid = records.ledger.state("payments", f"balance/{patients[0]}")
        balances = plain_db(work / "pay.sqlite")
        balances.execute("CREATE TABLE balance(account TEXT PRIMARY KEY, credits INTEGER)")
        balances.executemany("INSERT INTO balance VALUES(?, 0)", [(p,) for p in patients])
        balances.execute("INSERT INTO balance VALUES('escrow', ?)", (50 * n,))

        def baseline_pay() -> None:
            for p in patients:
                balances.execute("BEGIN")
                balances.execute("UPDATE balance SET credits = credits - 50 WHERE account='escrow'")
                balances.execute("UPDATE balance SET credits = credits + 50 WHERE account=?", (p,))
                balances.execute("COMMIT")

        base_seconds, _ = timed("baseline payments (plain SQLite)", baseline_pay)
        figures["visit payments"] = (
            f"{rate(n, seconds)} (participant balance {paid}); baseline {rate(n, base_seconds)};"
            f" ratio {base_seconds / seconds:.1%}"
        )
        figure(
            BENCH,
            "visit payments",
            n / seconds,
            "tx/s",
            baseline="a balance update in plain SQLite",
            baseline_value=n / base_seconds,
            note=f"participant balance {paid}",
        )
        ledger_file = data / "ledger.sqlite"
        figures["ledger size"] = (
            f"{ledger_file.stat().st_size / 2**20:,.1f} MiB after the run"
            if ledger_file.exists()
            else "n/a"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures["peak RSS"] = f"{peak:,.0f} MiB"
        if ledger_file.exists():
            figure(BENCH, "ledger size after the run", ledger_file.stat().st_size / 2**20, "MiB")
        figure(BENCH, "peak RSS of the bench process", peak, "MiB", peak_rss_mib=peak)
        records.close()
        store.close()
        node.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")


def sponsor_id(envelope: dict[str, Any]) -> str:
    from careledger.core.tx import decode_envelope

    return decode_envelope(envelope).tx_id


if __name__ == "__main__":
    main()
