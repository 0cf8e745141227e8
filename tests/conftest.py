"""The order test modules are handed to the two xdist workers in: the longest first.

`make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`: whole modules go to whichever
worker is free, in collection order (xdist would otherwise order them by their number of tests,
which put the one-test README walk-through and the benches last). A long module collected last
leaves one worker running it alone while the other idles, so the modules that take longest
(measured with `--durations`, 2026-12) are collected first and the many short ones fill in
behind them. This changes only the order; no test depends on another.
"""

from __future__ import annotations

import pytest

LONGEST_FIRST = (
    "tests/integration/test_cluster.py",
    "tests/integration/test_bench_smoke.py",
    "tests/e2e/test_portal.py",
    "tests/integration/test_smart.py",
    "tests/integration/test_bulk_export.py",
    "tests/integration/test_readme.py",
    "tests/integration/test_api_fuzz.py",
    "tests/integration/test_verify_node.py",
    "tests/integration/test_org_records.py",
    "tests/integration/test_cli_errors.py",
    "tests/integration/test_verify_tamper.py",
    "tests/integration/test_health_links.py",
    "tests/integration/test_cli_init.py",
    "tests/integration/test_fhir_import.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        return rank.get(item.nodeid.split("::", 1)[0], len(rank))

    items.sort(key=key)  # stable: within a module, and among the rest, the order is kept
