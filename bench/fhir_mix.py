"""A realistic FHIR mix over HTTP (issue 20), with a plain FastAPI + SQLite server as the baseline.

The mix is 60% read (Observation or Patient by id), 20% search (a patient's Observations by LOINC
code, 10 a page, or the newest one), 15% create (an Observation), 5% update (PUT of an existing
Observation with If-Match). Every CareLedger interaction commits its access event (and a write
its anchor) durably on the ledger before it answers. A demo node is served by `careledger serve`,
seeded with N patients of M Observations each through the API (untimed), then driven by C
concurrent clients (one keep-alive connection each) for a fixed time, closed loop, for each C;
then open loop at half the best rate measured, to give the p99 at half load. The baseline, a
FastAPI + SQLite server with the same routes and JSON (bench/plain_fhir_server.py: WAL,
synchronous=FULL, one commit per write, no token, signature, encryption, consent or ledger), is
seeded and driven the same way in the same run.

The load generator is a minimal HTTP/1.1 client on asyncio streams in this process (httpx would
cost several times the CPU per request on a 2-core machine shared with the server); its own CPU
share is printed. Also printed: the server's CPU seconds per interaction (from /proc/PID/stat,
with its child processes), and its resident memory after each phase (VmHWM, the peak, and
VmRSS, now) with the interactions served so far, so growth with requests shows. Any answer that
is not 2xx fails the bench.

    .venv/bin/python bench/fhir_mix.py [--clients 16,64] [--seconds 20] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import figure, lift_write_budget, pct  # noqa: E402
from tests.support.nodes import Server, demo_node, free_port  # noqa: E402

from careledger.keyfile import read_key_file  # noqa: E402
from careledger.sdk import Client  # noqa: E402

BENCH = "fhir_mix"
TARGET_RATE = 1_300.0  # interactions/s, issue 20
TARGET_P99_MS = 50.0  # at half that load
KINDS = ("read", "search", "create", "update")
MIX = {"read": 60, "search": 20, "create": 15, "update": 5}
LOINC = "http://loinc.org"
CODES = [  # (code, display, unit, low, high): vital signs, as a ward charts them
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 160),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 100),
    ("8310-5", "Body temperature", "Cel", 36, 39),
    ("9279-1", "Respiratory rate", "/min", 12, 24),
    ("29463-7", "Body weight", "kg", 50, 110),
]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def observation(patient: str, rng: random.Random) -> dict[str, Any]:
    code, display, unit, low, high = rng.choice(CODES)
    day, hour = rng.randrange(1, 29), rng.randrange(24)
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
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": f"2026-11-{day:02d}T{hour:02d}:{rng.randrange(60):02d}:00Z",
        "valueQuantity": {
            "value": rng.randrange(low, high),
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


# -- a minimal HTTP/1.1 keep-alive client ---------------------------------------------------


def header(head: bytes, name: bytes) -> bytes:
    """The value of header ``name`` (lower case) in a response head, b"" if absent."""
    start = head.lower().find(b"\r\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 3
    return head[start : head.index(b"\r\n", start)].strip()


class Connection:
    """One keep-alive connection; one request at a time on it, as one FHIR client sends."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def exchange(self, raw: bytes) -> tuple[int, bytes, bytes]:
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = header(head, b"content-length")
        if length:
            body = await self.reader.readexactly(int(length))
        elif header(head, b"transfer-encoding").lower() == b"chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            await self.reader.readuntil(b"\r\n")
            body = b"".join(parts)
        else:
            body = b""
        return status, head, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


# -- the mix ----------------------------------------------------------------------------------


@dataclass
class Op:
    kind: str
    raw: bytes
    target: str = ""  # the Observation an update is of
    patient: str = ""


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: list[tuple[str, int, bytes]] = field(default_factory=list)
    answered: int = 0  # every answer, the warm-up's too

    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def all(self) -> list[float]:
        return [x for v in self.latencies.values() for x in v]


class Mix:
    """What the clients ask, against the resources the target holds (ids it assigned)."""

    def __init__(
        self, host: str, port: int, token: str, rng: random.Random, weights: dict[str, int]
    ) -> None:
        self.rng = rng
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.prefix = f"Host: {host}:{port}\r\n{auth}Accept: application/fhir+json\r\n"
        self.patients: list[str] = []
        self.observations: list[tuple[str, str]] = []  # (id, patient)
        self.versions: dict[str, int] = {}
        self.updating: set[str] = set()
        self.kinds = [k for k, weight in weights.items() for _ in range(weight)]

    def get(self, path: str) -> bytes:
        return f"GET {path} HTTP/1.1\r\n{self.prefix}\r\n".encode()

    def send(self, method: str, path: str, body: bytes, extra: str = "") -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\n{self.prefix}{extra}"
            f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def create_patient(self) -> Op:
        body = {"resourceType": "Patient", "gender": self.rng.choice(["female", "male"])}
        return Op("create", self.send("POST", "/fhir/Patient", orjson.dumps(body)), "Patient")

    def create(self, patient: str | None = None) -> Op:
        patient = patient or self.rng.choice(self.patients)
        raw = self.send("POST", "/fhir/Observation", orjson.dumps(observation(patient, self.rng)))
        return Op("create", raw, patient=patient)

    def next(self) -> Op:
        kind = self.rng.choice(self.kinds)
        rng = self.rng
        if kind == "read":
            if rng.random() < 0.8:
                return Op(kind, self.get(f"/fhir/Observation/{rng.choice(self.observations)[0]}"))
            return Op(kind, self.get(f"/fhir/Patient/{rng.choice(self.patients)}"))
        if kind == "search":
            patient = rng.choice(self.patients)
            if rng.random() < 0.5:
                code = rng.choice(CODES)[0]
                query = f"patient={patient}&code={LOINC}|{code}&_count=10"
            else:
                query = f"patient={patient}&_sort=-date&_count=1"
            return Op(kind, self.get(f"/fhir/Observation?{query}"))
        if kind == "update":
            for _ in range(20):
                record, patient = rng.choice(self.observations)
                if record not in self.updating:
                    break
            else:
                return self.create()
            self.updating.add(record)
            resource = {**observation(patient, rng), "id": record}
            raw = self.send(
                "PUT",
                f"/fhir/Observation/{record}",
                orjson.dumps(resource),
                f'If-Match: W/"{self.versions[record]}"\r\n',
            )
            return Op(kind, raw, record, patient)
        return self.create()

    def done(self, op: Op, status: int, head: bytes) -> None:
        if op.kind == "update":
            self.updating.discard(op.target)
        if not 200 <= status < 300 or op.kind not in ("create", "update"):
            return
        # Location: <base>/fhir/<Type>/<id>/_history/<version>
        parts = header(head, b"location").decode().split("/")
        record, version = parts[-3], int(parts[-1])
        if op.target == "Patient":
            self.patients.append(record)
            return
        if op.kind == "create":
            self.observations.append((record, op.patient))
        self.versions[record] = version


# -- load ------------------------------------------------------------------------------------


async def connections(host: str, port: int, n: int) -> list[Connection]:
    conns = [Connection(host, port) for _ in range(n)]
    await asyncio.gather(*(c.open() for c in conns))
    return conns


async def run_ops(host: str, port: int, mix: Mix, ops: list[Op], clients: int) -> Stats:
    """Send ``ops`` over ``clients`` connections (the seeding: untimed, but checked)."""
    stats = Stats()
    conns = await connections(host, port, clients)
    queue = list(reversed(ops))

    async def client(conn: Connection) -> None:
        while queue:
            op = queue.pop()
            status, head, body = await conn.exchange(op.raw)
            mix.done(op, status, head)
            stats.answered += 1
            if not 200 <= status < 300:
                stats.errors.append((op.kind, status, body[:300]))

    await asyncio.gather(*(client(c) for c in conns))
    await asyncio.gather(*(c.close() for c in conns))
    return stats


async def closed_loop(
    host: str, port: int, mix: Mix, clients: int, seconds: float, warmup: float
) -> tuple[Stats, float]:
    """``clients`` clients, each sending its next request as soon as it has its answer."""
    stats = Stats()
    conns = await connections(host, port, clients)
    clock = time.perf_counter
    start = clock()
    measured_from, end = start + warmup, start + warmup + seconds

    async def client(conn: Connection) -> None:
        while (sent := clock()) < end:
            op = mix.next()
            status, head, body = await conn.exchange(op.raw)
            now = clock()
            mix.done(op, status, head)
            stats.answered += 1
            if not 200 <= status < 300:
                stats.errors.append((op.kind, status, body[:300]))
            elif sent >= measured_from:
                stats.latencies[op.kind].append((now - sent) * 1000)

    await asyncio.gather(*(client(c) for c in conns))
    elapsed = clock() - measured_from
    await asyncio.gather(*(c.close() for c in conns))
    return stats, elapsed


async def open_loop(
    host: str, port: int, mix: Mix, rate: float, clients: int, seconds: float, warmup: float
) -> tuple[Stats, float]:
    """Requests sent at ``rate`` a second, evenly spaced, whatever the answers' pace, over up to
    ``clients`` connections; a latency runs from when the request was due (so time queued
    behind a slow answer counts: no coordinated omission)."""
    stats = Stats()
    conns = await connections(host, port, clients)
    clock = time.perf_counter
    due: asyncio.Queue[float | None] = asyncio.Queue()
    start = clock()
    measured_from, end = start + warmup, start + warmup + seconds

    async def client(conn: Connection) -> None:
        while (at := await due.get()) is not None:
            op = mix.next()
            status, head, body = await conn.exchange(op.raw)
            now = clock()
            mix.done(op, status, head)
            stats.answered += 1
            if not 200 <= status < 300:
                stats.errors.append((op.kind, status, body[:300]))
            elif at >= measured_from:
                stats.latencies[op.kind].append((now - at) * 1000)

    workers = [asyncio.create_task(client(c)) for c in conns]
    sent = 0
    while (now := clock()) < end:
        while start + sent / rate <= now:
            due.put_nowait(start + sent / rate)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - clock()))
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = clock() - measured_from
    await asyncio.gather(*(c.close() for c in conns))
    return stats, elapsed


# -- the server's process ------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += descendants(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live child processes (the node's verify pool)."""
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of ``pid`` in MiB: the peak resident set so far, and now."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (
        int(status["VmHWM"].split()[0]) / 1024,
        int(status["VmRSS"].split()[0]) / 1024,
    )


class PlainServer:
    """bench/plain_fhir_server.py in a process of its own, as `careledger serve` runs."""

    def __init__(self, db: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db, self.log = db, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = ROOT / "bench" / "plain_fhir_server.py"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(self.db), str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"baseline server exited:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"baseline server did not come up:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- one target, every phase ---------------------------------------------------------------


@dataclass
class Phase:
    name: str
    clients: int
    rate: float  # interactions/s achieved
    stats: Stats
    server_cpu: float  # server CPU seconds per interaction
    load_cpu: float  # the load generator's CPU seconds per wall second
    hwm: float
    rss: float
    served: int  # interactions served since the start (seeding included)


def fail_on_errors(target: str, phase: str, stats: Stats) -> None:
    if not stats.errors:
        return
    print(f"\n!! {target} {phase}: {len(stats.errors)} answers were not 2xx", file=sys.stderr)
    for kind, status, body in stats.errors[:10]:
        print(f"   {kind}: {status} {body.decode(errors='replace')}", file=sys.stderr)
    raise SystemExit(f"{target} {phase}: {len(stats.errors)} errors (every answer must be 2xx)")


def drive(target: str, url: str, pid: int, token: str, args: argparse.Namespace) -> list[Phase]:
    """Seed a server, then every closed-loop phase and the open loop at half the best rate."""
    host, port = url.removeprefix("http://").split(":")
    mix = Mix(host, int(port), token, random.Random(20), args.mix)
    phases: list[Phase] = []
    served = 0

    def measure(name: str, clients: int, run: Callable[[], Any]) -> Phase:
        nonlocal served
        cpu0, load0, wall0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
        stats, elapsed = asyncio.run(run())
        wall = time.perf_counter() - wall0
        cpu, load = cpu_seconds(pid) - cpu0, time.process_time() - load0
        fail_on_errors(target, name, stats)
        served += stats.answered
        hwm, rss = memory_mib(pid)
        # the server's CPU over the whole phase, warm-up included, so per answer of the phase
        phase = Phase(
            name, clients, stats.total() / elapsed, stats, cpu / max(1, stats.answered),
            load / wall, hwm, rss, served,
        )  # fmt: skip
        phases.append(phase)
        show(target, phase)
        return phase

    hwm, rss = memory_mib(pid)
    print(f"  {target:<11} {'start':<22} {'':>50}  RSS peak {hwm:5.0f} MiB, now {rss:5.0f} MiB")
    seed_start = time.perf_counter()
    asyncio.run(
        run_ops(host, int(port), mix, [mix.create_patient() for _ in range(args.patients)], 8)
    )
    seeding = [mix.create(p) for p in mix.patients for _ in range(args.observations)]
    seeded = asyncio.run(run_ops(host, int(port), mix, seeding, 16))
    fail_on_errors(target, "seeding", seeded)
    served += args.patients + len(seeding)
    hwm, rss = memory_mib(pid)
    took = time.perf_counter() - seed_start
    seeded_what = f"{args.patients:,} patients, {len(seeding):,} Observations in {took:.1f} s"
    print(
        f"  {target:<11} {'seeded':<22} {seeded_what:>50}  RSS peak {hwm:5.0f} MiB, "
        f"now {rss:5.0f} MiB"
    )
    for clients in args.clients:
        measure(
            f"closed loop, C={clients}",
            clients,
            functools.partial(
                closed_loop, host, int(port), mix, clients, args.seconds, args.warmup
            ),
        )
    half = max(p.rate for p in phases) / 2
    measure(
        f"open loop at {half:,.0f}/s",
        max(args.clients),
        functools.partial(
            open_loop, host, int(port), mix, half, max(args.clients), args.seconds, args.warmup
        ),
    )
    return phases


def show(target: str, phase: Phase) -> None:
    lat = phase.stats.all()
    print(
        f"  {target:<11} {phase.name:<22} {phase.rate:7,.0f}/s  p50 {pct(lat, 50):6.1f} ms  "
        f"p99 {pct(lat, 99):6.1f} ms  server CPU {phase.server_cpu * 1e3:5.2f} ms/interaction  "
        f"load-gen CPU {phase.load_cpu:4.0%}  RSS peak {phase.hwm:5.0f} MiB, now "
        f"{phase.rss:5.0f} MiB after {phase.served:,} served"
    )
    for kind in KINDS:
        values = phase.stats.latencies[kind]
        if not values:
            continue
        print(
            f"  {'':<11}   {kind:<20} {len(values) / max(1e-9, phase_seconds(phase)):7,.0f}/s  "
            f"p50 {pct(values, 50):6.1f} ms  p99 {pct(values, 99):6.1f} ms  ({len(values):,})"
        )


def phase_seconds(phase: Phase) -> float:
    return phase.stats.total() / phase.rate if phase.rate else 0.0


def login(url: str, key_file: Path) -> str:
    with Client(url, keypair=read_key_file(key_file)[1]) as c:
        token: str = c.login()
    return token


def report(node: list[Phase], plain: list[Phase], mix: str) -> None:
    print("\nCareLedger / baseline")
    for ours, base in zip(node, plain, strict=True):
        lat, blat = ours.stats.all(), base.stats.all()
        name = ours.name.split(" at ")[0] if ours.name.startswith("open") else ours.name
        p99 = pct(lat, 99)
        if name.startswith("open"):
            label = "mix, open loop at half the peak rate"
            print(
                f"  {label:<44} CareLedger {ours.rate:,.0f}/s p99 {p99:.1f} ms; baseline "
                f"{base.rate:,.0f}/s p99 {pct(blat, 99):.1f} ms  (target p99 <= "
                f"{TARGET_P99_MS:.0f} ms at {TARGET_RATE / 2:,.0f}/s)"
            )
            figure(BENCH, f"{label}: rate", ours.rate, "/s", baseline="plain FastAPI + SQLite, "
                   "at half its own peak", baseline_value=base.rate)  # fmt: skip
            for p in (50, 99):
                figure(
                    BENCH, f"{label}: latency p{p}", pct(lat, p), "ms",
                    baseline="plain FastAPI + SQLite, at half its own peak",
                    baseline_value=pct(blat, p),
                    note=f"target p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_RATE / 2:,.0f}/s"
                    if p == 99 else None,
                )  # fmt: skip
            continue
        print(
            f"  {'mix, ' + name + ': interactions/s':<44} CareLedger {ours.rate:,.0f}/s, baseline "
            f"{base.rate:,.0f}/s -> {ours.rate / base.rate:.0%}  (target >= {TARGET_RATE:,.0f}/s)"
        )
        note = (
            f"{mix}; target >= {TARGET_RATE:,.0f}/s; "
            f"server CPU {ours.server_cpu * 1e3:.2f} ms/interaction (baseline "
            f"{base.server_cpu * 1e3:.2f}); load generator {ours.load_cpu:.0%} of a core"
        )
        figure(BENCH, f"mix, {name}: interactions/s", ours.rate, "/s",
               baseline="plain FastAPI + SQLite", baseline_value=base.rate, note=note)  # fmt: skip
        for kind in (None, *(k for k in KINDS if ours.stats.latencies[k])):
            values = ours.stats.all() if kind is None else ours.stats.latencies[kind]
            bvalues = base.stats.all() if kind is None else base.stats.latencies[kind]
            what = "all kinds" if kind is None else kind
            print(
                f"  {'mix, ' + name + ', ' + what + ': p50 / p99':<44} CareLedger "
                f"{pct(values, 50):.1f} / {pct(values, 99):.1f} ms, baseline "
                f"{pct(bvalues, 50):.1f} / {pct(bvalues, 99):.1f} ms"
            )
            for p in (50, 99) if kind is None else (99,):
                figure(BENCH, f"mix, {name}, {what}: latency p{p}", pct(values, p), "ms",
                       baseline="plain FastAPI + SQLite", baseline_value=pct(bvalues, p))  # fmt: skip
        figure(BENCH, f"mix, {name}: server CPU per interaction", ours.server_cpu * 1e3, "ms",
               baseline="plain FastAPI + SQLite", baseline_value=base.server_cpu * 1e3)  # fmt: skip


def shares(weights: dict[str, int]) -> str:
    total = sum(weights.values())
    return ", ".join(f"{weights[k] / total:.0%} {k}" for k in KINDS if weights[k])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="16,64", help="comma-separated concurrencies")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured, per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured, per phase")
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--observations", type=int, default=20, help="per patient")
    parser.add_argument(
        "--mix",
        default=",".join(str(MIX[k]) for k in KINDS),
        help="weights of read,search,create,update (e.g. 100,0,0,0: reads alone, to profile)",
    )
    parser.add_argument("--only", choices=("careledger", "baseline"), help="one target alone")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: CI checks it runs")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress, as it goes
    if args.smoke:
        args.clients, args.seconds, args.warmup = "4", 1.0, 0.2
        args.patients, args.observations = 1, 5
    args.clients = [int(c) for c in str(args.clients).split(",")]
    args.mix = dict(zip(KINDS, (int(w) for w in args.mix.split(",")), strict=True))
    workdir = Path(tempfile.mkdtemp(prefix="careledger-fhir-mix-"))
    print(
        f"CareLedger FHIR mix bench — {shares(args.mix)}; clients {args.clients}, "
        f"{args.seconds:g} s a phase (+{args.warmup:g} s warm-up); {args.patients} patients x "
        f"{args.observations} Observations seeded; {os.cpu_count()} cores, load generator in "
        "this process (figures are noisy on a shared machine)\n"
    )
    node: list[Phase] = []
    plain: list[Phase] = []
    try:
        if args.only != "baseline":
            data = workdir / "node"
            demo_node(data, with_records=False, with_supply=False)
            lift_write_budget(data)
            server = Server(data, free_port(), workdir / "server.log")
            server.start()
            try:
                assert server.proc is not None
                token = login(server.url, data / "keys" / "dr-ana-silva.key")
                if args.only:  # alone, for a profiler: say where the server is
                    print(f"  CareLedger server pid {server.proc.pid} at {server.url}", flush=True)
                node = drive("CareLedger", server.url, server.proc.pid, token, args)
                hwm, _ = memory_mib(server.proc.pid)
                figure(BENCH, "CareLedger server: peak RSS (VmHWM)", hwm, "MiB",
                       peak_rss_mib=hwm,
                       note=f"after {node[-1].served:,} interactions")  # fmt: skip
                grown = node[-1].rss - node[0].rss
                between = node[-1].served - node[0].served
                per = grown * 1024 / (between / 1000) if between else 0.0
                print(
                    f"  {'CareLedger':<11} RSS {node[0].rss:,.0f} -> {node[-1].rss:,.0f} MiB over "
                    f"the {between:,} interactions after the first phase: {per:+.1f} KiB per "
                    "1,000 interactions"
                )
                figure(BENCH, "CareLedger server: RSS growth per 1,000 interactions", per, "KiB",
                       note=f"VmRSS after the first phase to after the last, {between:,} "
                       "interactions apart")  # fmt: skip
            finally:
                server.stop()
        if args.only != "careledger":
            print()
            base = PlainServer(workdir / "plain.sqlite", workdir / "plain.log")
            base.start()
            try:
                assert base.proc is not None
                plain = drive("baseline", base.url, base.proc.pid, "", args)
            finally:
                base.stop()
        if node and plain:
            report(node, plain, shares(args.mix))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
