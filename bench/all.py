"""Run every bench, one after another, and write one markdown table of all their figures (issue 20).

Each bench reports its figures through bench.common.figure, which appends JSON lines to the file
$CARELEDGER_BENCH_OUT names; this script sets it per bench, collects the lines and writes the
date, the machine, the commit, one table (bench, path, value, baseline measured in the same run,
ratio, note) and the command line of every bench. A bench that fails (or reports no figure) is
listed with its exit code and the tail of its stderr; the others still run, and the exit status
is 1 at the end.

    .venv/bin/python bench/all.py                       # FULL sizes, into docs/bench.md
    .venv/bin/python bench/all.py --quick               # CI's smoke sizes (about 2 minutes)
    .venv/bin/python bench/all.py --only links,ledger --out /tmp/bench.md

`make bench` runs the first (`make bench BENCH_ARGS=--quick` the second): about 15 minutes on
2 cores, since FULL is every bench's own defaults, the sizes the figures in docs/ and the issue
notes were measured at.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import BENCH_OUT  # noqa: E402

# Scripts in bench/ that are not benches.
HELPERS = frozenset({"__init__", "all", "common", "plain_fhir_server"})

# The sizes tests/integration/test_bench_smoke.py runs in CI (a test checks they stay equal).
QUICK: dict[str, list[str]] = {
    "ledger": ["--smoke"],
    "links": ["--smoke"],
    "cluster": ["--txs", "200", "--missed", "200"],
    "records": ["--smoke"],
    "search": ["--smoke"],
    "smart": ["--smoke"],
    "supply": ["--units", "500", "--workers", "1"],
    "trials": ["--patients", "40", "--workers", "2"],
    "monitoring": ["--devices", "2", "--batches", "3", "--per-batch", "10", "--workers", "2"],
    "fhir_mix": ["--smoke"],
}

# `make bench`: every bench at its own defaults, the sizes docs/ quotes. Seconds on 2 cores in
# the run that wrote docs/bench.md: search 160, trials 143, cluster 142, monitoring 131,
# ledger 114, supply 99, links 71, records 38, smart 27; 15.4 minutes in all. Options added
# here shrink a bench (and show in the report's command lines).
# fhir_mix, added since, takes about 150 s (two servers seeded, three phases of 22 s each).
FULL: dict[str, list[str]] = {
    "ledger": [],
    "links": [],
    "cluster": [],
    "records": [],
    "search": [],
    "smart": [],
    "supply": [],
    "trials": [],
    "monitoring": [],
    "fhir_mix": [],
}

STDERR_TAIL = 3_000  # characters of a failed bench's stderr kept in the report


@dataclass
class Run:
    """One bench's run: its command, how it ended, and the figures it reported."""

    name: str
    command: list[str]
    seconds: float = 0.0
    returncode: int | None = None  # None: killed at the timeout
    stderr_tail: str = ""
    figures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.figures)

    @property
    def outcome(self) -> str:
        if self.returncode is None:
            return f"failed: timed out after {self.seconds:,.0f} s"
        if self.returncode != 0:
            return f"failed: exit code {self.returncode}"
        if not self.figures:
            return "failed: exit code 0 but no figure reported"
        return f"ok, {len(self.figures)} figures"


def benches() -> list[str]:
    """Every bench script in bench/ (the same list the smoke test runs)."""
    return sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in HELPERS)


def run_bench(name: str, args: list[str], scratch: Path, timeout: float) -> Run:
    """Run one bench in its own process group (its servers die with it on a timeout)."""
    command = [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args]
    run = Run(name, command)
    figures = scratch / f"{name}.jsonl"
    stderr = scratch / f"{name}.stderr"
    print(f"\n=== {name}: {shown(command)}", flush=True)
    started = time.perf_counter()
    with stderr.open("w+b") as err:
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, BENCH_OUT: str(figures)},
            stderr=err,
            start_new_session=True,
        )
        try:
            run.returncode = child.wait(timeout)
        except subprocess.TimeoutExpired:
            stop(child)
        except BaseException:  # Ctrl-C: take the bench and its servers down too
            stop(child)
            raise
        finally:
            run.seconds = time.perf_counter() - started
    if figures.exists():
        run.figures = [orjson.loads(x) for x in figures.read_bytes().splitlines() if x.strip()]
    if not run.ok:
        run.stderr_tail = stderr.read_text(errors="replace")[-STDERR_TAIL:]
        print(f"=== {name}: {run.outcome}\n{run.stderr_tail}", file=sys.stderr, flush=True)
    else:
        print(f"=== {name}: {run.outcome} in {run.seconds:,.0f} s", flush=True)
    return run


def stop(child: subprocess.Popen[bytes]) -> None:
    """SIGINT first, so the bench's own clean-up stops the servers and clusters it started
    (some in sessions of their own); then SIGKILL whatever is left of its process group."""
    os.killpg(child.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


# -- the report ---------------------------------------------------------------------------


def shown(command: list[str]) -> str:
    """A command as someone would type it from the repository's root."""
    python = Path(command[0])
    parts = [str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else "python"]
    parts += [str(Path(c).relative_to(ROOT)) if c.startswith(str(ROOT)) else c for c in command[1:]]
    return " ".join(parts)


def number(value: float) -> str:
    """A figure with as many digits as it deserves."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}" if value else "0"


def with_unit(value: float, unit: str) -> str:
    if not unit:
        return number(value)
    return f"{number(value)}{'' if unit.startswith('/') else ' '}{unit}"


def cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [x for x in cpuinfo.read_text().splitlines() if x.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() + ", " if names else ""
    return (
        f"{model}{os.cpu_count()} cores, {memory:,.1f} GiB memory, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"`{head}`" + (" with uncommitted changes" if dirty else "")


def render(runs: list[Run], *, quick: bool, started: datetime, seconds: float) -> str:
    failed = [r for r in runs if not r.ok]
    out = [
        "# Bench figures",
        "",
        "Written by `bench/all.py` (`make bench`): regenerate it rather than edit it.",
        "",
    ]
    if quick:
        out += [
            "> **Smoke sizes.** These figures come from `bench/all.py --quick`, the tiny sizes CI",
            "> runs to check every bench still works: they show the shape of the table, not",
            "> figures to quote. Regenerate at full sizes with `make bench`.",
            "",
        ]
    out += [
        f"- date: {started:%Y-%m-%d %H:%M} UTC ({seconds / 60:,.1f} minutes for the whole run)",
        f"- machine: {machine()}",
        f"- commit: {commit()}",
        f"- sizes: {'`--quick` (CI smoke sizes)' if quick else '`FULL` in bench/all.py'}"
        + ("" if quick or any(FULL.values()) else ", every bench's own defaults")
        + (f"; {len(failed)} of {len(runs)} benches FAILED (below)" if failed else ""),
        "",
        "A baseline is measured in the same run on the same machine (plain SQLite with the",
        "node's fsync policy, the HTTP floor, one thread, the small size of an O(log n)",
        "comparison). Ratio is value / baseline in the value's unit: below 1 for a rate means",
        "slower than the baseline, above 1 for a latency means slower. Published figures of",
        "other systems and the issues' targets are in the notes.",
        "",
        "## Figures",
        "",
        "| bench | path | value | baseline (same run) | ratio | note |",
        "|---|---|---:|---|---:|---|",
    ]
    for run in runs:
        for f in run.figures:
            baseline = f["baseline"] or ""
            if f["baseline_value"] is not None:
                baseline += f": {with_unit(f['baseline_value'], f['unit'])}"
            ratio = f"{number(f['ratio'])}x" if f["ratio"] is not None else ""
            out.append(
                f"| {run.name} | {cell(f['path'])} | {with_unit(f['value'], f['unit'])} "
                f"| {cell(baseline)} | {ratio} | {cell(f['note'])} |"
            )
        if not run.ok:
            out.append(f"| {run.name} | **{run.outcome}** | | | | see Failures |")
    out += [
        "",
        "## Commands",
        "",
        "`make bench` runs every bench at the sizes in `FULL` (bench/all.py) and writes this file;",
        "`make bench BENCH_ARGS=--quick` runs CI's smoke sizes; `bench/all.py --only links,ledger",
        "--out FILE` runs some of them into another file. Each bench can also be run alone with",
        "the command below, from the repository's root: it prints its own, more detailed table.",
        "",
        "| bench | command | seconds | peak RSS reported | result |",
        "|---|---|---:|---:|---|",
    ]
    for run in runs:
        rss = [f["peak_rss_mib"] for f in run.figures if f.get("peak_rss_mib") is not None]
        peak = f"{max(rss):,.0f} MiB" if rss else ""
        out.append(
            f"| {run.name} | `{shown(run.command)}` | {run.seconds:,.0f} | {peak} | {run.outcome} |"
        )
    if failed:
        out += ["", "## Failures"]
        for run in failed:
            out += [
                "",
                f"### {run.name}: {run.outcome}",
                "",
                "Tail of its stderr:",
                "",
                "```",
                run.stderr_tail.rstrip() or "(empty)",
                "```",
            ]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI's smoke sizes")
    parser.add_argument("--only", help="comma-separated benches, e.g. links,ledger")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench.md")
    parser.add_argument("--timeout", type=float, default=1_800, help="seconds per bench")
    args = parser.parse_args()
    known = benches()
    chosen = known
    if args.only:
        chosen = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            parser.error(f"no such bench: {', '.join(unknown)} (benches: {', '.join(known)})")
    sizes = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    clock = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="careledger-bench-all-") as scratch:
        for name in chosen:
            if name not in sizes:
                missing = Run(name, [sys.executable, str(ROOT / "bench" / f"{name}.py")])
                missing.returncode = 2
                missing.stderr_tail = (
                    f"bench/all.py has no sizes for {name}: add it to QUICK and FULL"
                )
                runs.append(missing)
                continue
            runs.append(run_bench(name, sizes[name], Path(scratch), args.timeout))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        render(runs, quick=args.quick, started=started, seconds=time.perf_counter() - clock)
    )
    failed = [r.name for r in runs if not r.ok]
    print(f"\nwrote {args.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
