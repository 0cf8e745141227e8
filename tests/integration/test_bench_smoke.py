"""Every bench runs, at tiny sizes, so that none rots (ground rule 4): a bench nobody runs breaks
(bench/ledger.py once failed on main for weeks). These check that each one runs to the end and
prints its figures, never how fast: figures are for the benches' own output and the notes."""

from __future__ import annotations

import importlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
    "fhir_mix": (["--smoke"], "mix, open loop at half the peak rate"),
}


# Scripts in bench/ that are not benches: shared helpers, the runner of them all, and the plain
# FastAPI + SQLite server bench/fhir_mix.py measures as its baseline.
HELPERS = {"common", "all", "__init__", "plain_fhir_server"}


def test_every_bench_has_a_smoke() -> None:
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - HELPERS
    assert scripts == set(SMOKES)


def test_make_bench_runs_every_bench_and_quick_means_these_smokes() -> None:
    runner = importlib.import_module("bench.all")  # imported, not run
    assert set(runner.HELPERS) == HELPERS
    assert runner.benches() == sorted(SMOKES)
    assert {bench: args for bench, (args, _) in SMOKES.items()} == runner.QUICK
    assert set(runner.FULL) == set(SMOKES)


# The two benches `make bench`'s runner is tried on (below); they run through it, not alone.
THROUGH_RUNNER = ("ledger", "links")


def run(bench: str, out: Path) -> tuple[str, subprocess.CompletedProcess[str]]:
    if bench == "all":
        only = ",".join(THROUGH_RUNNER)
        command = [str(ROOT / "bench" / "all.py"), "--quick", "--only", only, "--out", str(out)]
    else:
        command = [str(ROOT / "bench" / f"{bench}.py"), *SMOKES[bench][0]]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return bench, done


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Every bench once, three at a time (the machine has two cores; they wait on disk and
    sockets too): the runner on two of them, the others alone."""
    out = tmp_path_factory.mktemp("bench") / "bench.md"
    jobs = ["all", *sorted(set(SMOKES) - set(THROUGH_RUNNER))]
    with ThreadPoolExecutor(3) as pool:
        finished = dict(pool.map(lambda bench: run(bench, out), jobs))
    return finished, out


def test_every_bench_runs_and_prints_its_figures(runs: tuple[dict[str, Any], Path]) -> None:
    finished, _ = runs
    for bench in sorted(SMOKES):
        done = finished["all" if bench in THROUGH_RUNNER else bench]
        figure = SMOKES[bench][1]
        assert done.returncode == 0, (bench, done.stderr[-2000:])
        assert figure in done.stdout, (bench, done.stdout[-2000:])


def table(text: str, header: str) -> dict[tuple[str, str], list[str]]:
    """The rows of the markdown table under ``header``, by (bench, path)."""
    lines = text.split(header + "\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    return {(row[0], row[1]): row for row in rows}


def test_bench_all_writes_one_table_with_baselines(runs: tuple[dict[str, Any], Path]) -> None:
    """`make bench`'s runner, on two benches at smoke sizes: one markdown table of their
    figures, the baseline column filled where the bench measures one in the same run."""
    finished, out = runs
    done = finished["all"]
    assert done.returncode == 0, done.stderr[-2000:]
    for bench in THROUGH_RUNNER:  # the benches' own tables still reach the console
        assert SMOKES[bench][1] in done.stdout
    text = out.read_text()
    assert "Smoke sizes" in text
    assert "- machine: " in text and " cores, " in text and "- commit: " in text
    rows = table(text, "| bench | path | value | baseline (same run) | ratio | note |")
    assert {bench for bench, _ in rows} == {"ledger", "links"}
    committed = rows[("ledger", "in-process commit: committed tx/s")]
    assert committed[2].endswith(" tx/s"), committed
    assert committed[3].startswith("plain SQLite insert of the envelopes: "), committed
    assert committed[4].endswith("x"), committed
    opened = rows[("links", "open: International Patient Summary p50")]
    assert opened[3].startswith("HTTP floor (GET /healthz) p50: "), opened
    assert opened[4].endswith("x"), opened
    commands = table(text, "| bench | command | seconds | peak RSS reported | result |")
    for bench in ("ledger", "links"):
        (row,) = [row for (name, _), row in commands.items() if name == bench]
        assert row[1].endswith(f"bench/{bench}.py --smoke`"), row
        assert row[4].startswith("ok, "), row
