"""The pure core stays pure: no I/O, clock, randomness or adapter imports in core and contracts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "careledger"
PURE = sorted(
    [
        *SRC.joinpath("core").glob("*.py"),
        *SRC.joinpath("contracts").glob("*.py"),
        SRC / "vault" / "crypto.py",
        SRC / "supply" / "identifiers.py",
        SRC / "supply" / "event_hash.py",
        SRC / "supply" / "epcis_ops.py",
        SRC / "supply" / "cbv.py",
        SRC / "supply" / "verification.py",
        SRC / "health_links" / "link.py",
        SRC / "health_links" / "jwe.py",
        SRC / "health_links" / "card.py",
    ]
)
FORBIDDEN = {
    "careledger.storage",
    "careledger.ordering",
    "careledger.api",
    "careledger.web",
    "careledger.ledger",
    "careledger.cli",
    "careledger.node",
    "careledger.keyfile",
    "careledger.sdk",
    "careledger.config",
    "fastapi",
    "starlette",
    "httpx",
    "sqlite3",
    "uvicorn",
    "os",
    "time",
    "random",
    "secrets",
    "socket",
    "subprocess",
    "threading",
    "asyncio",
    "pathlib",
    "io",
    "uuid",
    "logging",
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_import_no_io(path: Path) -> None:
    bad = {
        name
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


CLOCK_CALLS = {"now", "utcnow", "today"}


def clock_calls(path: Path) -> set[str]:
    """datetime may parse and format timestamps in pure code; it may not read the clock."""
    return {
        node.func.attr
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_CALLS
    }


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_modules_do_not_read_the_clock(path: Path) -> None:
    assert not clock_calls(path), f"{path.name} reads the clock"


def test_the_check_sees_every_pure_module() -> None:
    assert {"canonical.py", "keys.py", "merkle.py", "checkpoint.py", "tx.py", "block.py"} <= {
        p.name for p in PURE
    }
    assert {"base.py", "identity.py", "registry.py"} <= {p.name for p in PURE}


def test_forbidden_import_is_caught(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "import time\nfrom careledger.storage.sqlite import SQLiteStore\n"
        "from datetime import datetime\nstamp = datetime.now()\n"
    )
    assert {"time", "careledger.storage.sqlite"} <= imported_modules(sample)
    assert clock_calls(sample) == {"now"}
