"""Every bench runs, at tiny sizes, so that none rots (ground rule 4): a bench nobody runs breaks
(bench/ledger.py once failed on main for weeks). These check that each one runs to the end and
prints its figures, never how fast: figures are for the benches' own output and the notes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

SMOKES = {
    "ledger": (["--smoke"], "Inclusion-proof latency"),
    "links": (["--smoke"], "open: International Patient Summary"),
    "cluster": (["--txs", "200", "--missed", "200"], "catch-up"),
    "records": (["--smoke"], "create resources/s"),
    "search": (["--smoke"], "Patient?identifier="),
    "smart": (["--smoke"], "client_credentials (ES384 assertion)"),
    "supply": (["--units", "500", "--workers", "1"], "capture: whole flow"),
    "trials": (["--patients", "40", "--workers", "2"], "recruitment query"),
    "monitoring": (
        ["--devices", "2", "--batches", "3", "--per-batch", "10", "--workers", "2"],
        "readings/s",
    ),
}


def test_every_bench_has_a_smoke() -> None:
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"common", "__init__"}
    assert scripts == set(SMOKES)


def run(bench: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    args, _ = SMOKES[bench]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{bench}.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return bench, done


def test_every_bench_runs_and_prints_its_figures() -> None:
    """Three at a time (the machine has two cores; they wait on disk and sockets too)."""
    with ThreadPoolExecutor(3) as pool:
        finished = dict(pool.map(run, sorted(SMOKES)))
    for bench, done in sorted(finished.items()):
        figure = SMOKES[bench][1]
        assert done.returncode == 0, (bench, done.stderr[-2000:])
        assert figure in done.stdout, (bench, done.stdout[-2000:])
