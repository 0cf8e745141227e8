"""The architecture holds: the pure core stays pure (no I/O, clock, randomness or adapter imports
in core and contracts), imports go down the layers (docs/architecture.md), no import cycles."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
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


# -- the node reads rules, never copies them (issue 14) ----------------------------------------
#
# A contract's state layout (its namespace, its keys) belongs to the contract module, which
# exports pure views over it (``monitoring.device_of``, ``trials.unanswered_queries`` ...). Code
# outside ``contracts/`` calls those views: a ``.state("...", ...)``, ``state_keys(...)`` or
# ``get_state(...)`` call given a string literal or f-string as its namespace or key is a copy of
# the rule that will drift from it.

STATE_READS = frozenset({"state", "state_keys", "get_state"})
NODE_SOURCES = sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] != "contracts")

def _builds_a_string(node: ast.expr) -> bool:
    """A string literal, an f-string, or a string made from one ("a/" + x, "a/%s" % x,
    "a/{}".format(x))."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return _builds_a_string(node.left) or _builds_a_string(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "format" and _builds_a_string(node.func.value)
    return False


def literal_state_reads(path: Path) -> list[str]:
    """``line: call`` of each state read whose namespace or key is spelled out as a string."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in STATE_READS:
            continue
        # (namespace, key or prefix, ...): the first two, however they are passed
        named = [k.value for k in node.keywords if k.arg in {"namespace", "key", "prefix"}]
        if any(_builds_a_string(arg) for arg in [*node.args[:2], *named]):
            found.append((node.lineno, ast.unparse(node)))
    return [f"{line}: {call}" for line, call in sorted(found)]


def _name(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def test_node_reads_contract_state_through_views() -> None:
    offenders = {
        _name(path): reads
        for path in NODE_SOURCES
        if (reads := literal_state_reads(path))
    }
    assert not offenders, (
        "state read with a literal namespace or key outside contracts/ (call the owning "
        f"contract's view instead): {offenders}"
    )


def test_the_state_check_sees_the_node() -> None:
    names = {_name(p) for p in NODE_SOURCES}
    assert {"monitoring/ingest.py", "web/routes.py", "node.py", "cli.py"} <= names
    assert not any(n.startswith("contracts/") for n in names)


def test_literal_state_read_is_caught(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "ledger.state(MONITORING, f'device/{d}')\n"
        "ledger.state('identity', member_key(m))\n"
        "ledger.store.state_keys(NS, 'alert/', 10)\n"
        "context.get_state(NS, 'window/' + d)\n"
        "state(NS, key='rules/{}'.format(d))\n"
        "ledger.state(MONITORING, device_key(d))\n"
        "ledger.store.state_keys(NS, prefix, 10)\n"
        "device_of(ledger.state, d)\n"
        "request.state.thing\n"
    )
    assert [line.split(":")[0] for line in literal_state_reads(sample)] == [
        "1", "2", "3", "4", "5"
    ]  # fmt: skip


# -- roles: defined once, in the ruleset ----------------------------------------------------


def _role_sets() -> dict[str, frozenset[str]]:
    """Every module-level ``*_ROLES`` set of the code, by ``module.NAME``: the roles a rule or
    a page names."""
    import importlib

    found: dict[str, frozenset[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names = [
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name) and t.id.endswith("_ROLES")
        ]
        if not names:
            continue
        module = "careledger." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        loaded = importlib.import_module(module)
        for name in names:
            value = getattr(loaded, name)
            if isinstance(value, frozenset | set) and all(isinstance(v, str) for v in value):
                found[f"{module}.{name}"] = frozenset(value)
    return found


def role_literals(path: Path) -> list[tuple[str, str]]:
    """``(line, role)`` for each role named as a string literal in a check:
    ``x.has_role("...")`` and ``"..." in x.roles`` / ``"..." not in x.roles``."""
    found: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "has_role"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((str(node.lineno), node.args[0].value))
        elif (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
            and len(node.ops) == 1
            and isinstance(node.ops[0], ast.In | ast.NotIn)
            and isinstance(node.comparators[0], ast.Attribute)
            and node.comparators[0].attr == "roles"
        ):
            found.append((str(node.lineno), node.left.value))
    return sorted(found, key=lambda entry: int(entry[0]))


TEMPLATE_ROLE = re.compile(r"[\"']([a-z_]+)[\"'] (?:not )?in me\.roles")


def test_every_role_named_anywhere_is_one_the_ruleset_grants() -> None:
    from careledger.callers.caller import SYSTEM
    from careledger.callers.scopes import DEFAULT_SCOPES
    from careledger.contracts.registry import default_registry

    rules = default_registry().latest
    roles = set(rules.roles)
    assert rules.kind_roles is not None
    grantable = set().union(*rules.kind_roles.values())
    assert roles <= grantable, f"roles no organisation kind may hold: {roles - grantable}"
    sets = _role_sets()
    assert len(sets) >= 10  # the check sees the contracts' and the node's role sets
    unknown = {name: sorted(v - roles - {SYSTEM}) for name, v in sets.items() if v - roles - {SYSTEM}}
    assert not unknown, f"roles that no ruleset grants: {unknown}"
    assert set(DEFAULT_SCOPES) == roles, "scope defaults for a role no ruleset grants, or none"
    named = [
        (f"{_name(path)}:{line}", role)
        for path in sorted(SRC.rglob("*.py"))
        for line, role in role_literals(path)
    ]
    assert len(named) >= 40  # the check sees the contracts' has_role and the node's checks
    assert {role for _, role in named} >= {"patient", "node", "admin", "sponsor", "investigator"}
    pages = [
        (_name(path), match.group(1))
        for path in sorted(SRC.joinpath("web", "templates").rglob("*.html"))
        for match in TEMPLATE_ROLE.finditer(path.read_text())
    ]
    assert len(pages) >= 5  # the check sees the pages' menus
    unknown_literals = [(where, role) for where, role in named + pages if role not in roles]
    assert not unknown_literals, f"roles checked that no ruleset grants: {unknown_literals}"


def test_a_misspelt_role_check_is_caught(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "ctx.signer.has_role('clincian')\n"
        "if 'pateint' in caller.roles: pass\n"
        "if 'admn' not in claims.roles: pass\n"
        "has_role(role)\n"
        "'patient' in roles\n"
        "caller.roles <= {'patient'}\n"
    )
    assert role_literals(sample) == [("1", "clincian"), ("2", "pateint"), ("3", "admn")]
    assert TEMPLATE_ROLE.findall('{% if me and "nures" in me.roles %}') == ["nures"]


# -- purposes of use: defined once, in the consent contract ---------------------------------

TEMPLATE_PURPOSE = re.compile(r'name="purpose" value="([A-Z]+)"')


def test_every_purpose_the_portal_names_is_a_contract_purpose_and_each_has_words() -> None:
    from careledger.contracts.consent import PURPOSES
    from careledger.web.access_words import PURPOSES as WORDS
    from careledger.web.routes import CONSENT_PURPOSES

    assert set(WORDS) == PURPOSES, "purposes of use without plain words, or words for none"
    assert all(WORDS.values()), "a purpose of use whose words are empty"
    offered = set(CONSENT_PURPOSES)
    assert offered <= PURPOSES, f"the portal offers purposes no contract knows: {offered}"
    fixed = {  # a form's purpose written into a page (the research-contact button)
        f"{_name(path)}: {match.group(1)}"
        for path in sorted(SRC.joinpath("web", "templates").rglob("*.html"))
        for match in TEMPLATE_PURPOSE.finditer(path.read_text())
    }
    assert fixed, "the check sees the purpose a page fixes"
    bad = {where for where in fixed if where.rsplit(" ", 1)[1] not in offered}
    assert not bad, f"a page posts a purpose the consent form refuses: {bad}"


# -- no import cycles -------------------------------------------------------------------------


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    """Every import counts, as for the layers: at load, inside a function, under
    ``if TYPE_CHECKING:``. A cycle closed in a function or by a type annotation still ties its
    modules together: none can be understood, tested or moved without the others."""
    graph = full_import_graph()
    assert len(graph) > 100 and "careledger.health.service" in graph
    # the check sees imports run late: in a function, and under TYPE_CHECKING
    assert "careledger.cluster.catchup" in graph["careledger.ordering.jetstream"]
    assert "careledger.core.tx" in graph["careledger.ledger.ports"]
    known = {module: deps & graph.keys() for module, deps in graph.items()}
    found = cycles(known)
    assert not found, f"modules that import each other: {found}"


def test_a_cycle_is_caught(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    # the import that closes a cycle may run late (in a function) or never (for a type); a
    # package's __init__ is a module of its own
    sources = {
        "__init__": "def checks():\n    from careledger.pkg import one\n",
        "one": "from careledger.pkg import Difference\n",
        "low": "from careledger.pkg.mid import helper\n",
        "mid": "def helper():\n    from careledger.pkg.low import x\n",
        "top": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .side import Side\n",
        "side": "from careledger.pkg import top\n",
        "alone": "def later():\n    from careledger.pkg import low\n",
    }
    package = tmp_path / "careledger" / "pkg"
    package.mkdir(parents=True)
    modules = {
        name: "careledger.pkg" + ("" if name == "__init__" else f".{name}") for name in sources
    }
    graph = {}
    for name, text in sources.items():
        package.joinpath(f"{name}.py").write_text(text)
        graph[modules[name]] = all_imports(
            package / f"{name}.py", modules[name], set(modules.values())
        )
    assert graph["careledger.pkg.mid"] == {"careledger.pkg.low"}  # in a function
    assert graph["careledger.pkg.top"] == {"careledger.pkg.side"}  # under TYPE_CHECKING
    assert cycles(graph) == [
        ["careledger.pkg", "careledger.pkg.one"],
        ["careledger.pkg.low", "careledger.pkg.mid"],
        ["careledger.pkg.side", "careledger.pkg.top"],
    ]


# -- layers: an allow-list (issue 14) ---------------------------------------------------------
#
# Every module of src/careledger sits in exactly one layer, and imports (at load, inside a
# function or under ``if TYPE_CHECKING:``: every import counts) only from its own layer or a
# layer below. Layers on one row are independent: neither imports the other. docs/architecture.md
# says what each layer is for.

LAYERS: tuple[tuple[str, ...], ...] = (  # top to bottom
    ("edges",),
    ("services",),
    ("node",),
    ("ledger",),
    ("support", "callers"),
    ("sources",),
    ("rules",),
    ("core",),
)
# "x.*" is the module or package x and everything under it; "x" is that one module. A package
# that mixes layers lists its modules one by one, so a new module in it has to be placed.
MEMBERS: dict[str, tuple[str, ...]] = {
    # pure primitives: canonical JSON, hashes, keys, tx, blocks, Merkle log, checkpoints
    "core": ("errors", "core.*"),
    # pure domain rules and formats: contracts, FHIR, GS1/EPCIS, Health Links, record encryption
    "rules": (
        "contracts.*",
        "fhir.*",
        "health_links.*",
        "supply.cbv",
        "supply.epcis_build",
        "supply.epcis_ops",
        "supply.epcis_validate",
        "supply.event_hash",
        "supply.identifiers",
        "supply.verdict",
        "supply.verification",
        "vault.crypto",
        "vault.blind_index",
        "monitoring.device",
        "trials.registration",
    ),
    # the clock and randomness the services are given (protocols and the system's own)
    "sources": ("clock", "entropy"),
    # who is calling and with what rights: Caller, SMART scopes, bearer tokens
    "callers": ("callers.*",),
    # the node's local I/O helpers: settings, key files, SQLite threads and integrity codes,
    # sealing, nonces, write budgets, the vault's stores; and the client SDK, whose verifiers
    # the services reuse
    "support": (
        "config",
        "jsonio",
        "keyfile",
        "nonces",
        "sealing",
        "sqlite_threads",
        "store_mac",
        "write_budget",
        "vault",
        "vault.at_rest",
        "vault.opened",
        "vault.ports",
        "vault.service",
        "vault.store",
        "sdk",
    ),
    # the engine and its adapters: admission, execution, proofs, storage, ordering, the
    # consortium's catch-up, NATS server and cosigning witness
    "ledger": (
        "ledger.*",
        "storage.*",
        "ordering.*",
        "cluster",
        "cluster.catchup",
        "cluster.natsd",
        "cluster.witness",
    ),
    # one node: the ledger with its store, orderer, keys and commit workers
    "node": ("node", "commit_worker"),
    # what the node offers: records, SMART apps, monitoring, trials, supply, verify
    "services": (
        "health.*",
        "smart.*",
        "node_audit.*",
        "patient_signing",
        "monitoring",
        "monitoring.audit",
        "monitoring.batches",
        "monitoring.ingest",
        "monitoring.mimic",
        "monitoring.readings",
        "monitoring.service",
        "monitoring.simulate",
        "monitoring.store",
        "monitoring.ticker",
        "monitoring.visits",
        "supply",
        "supply.access",
        "supply.alerts",
        "supply.repository",
        "supply.service",
        "supply.supply_service",
        "supply.verification_log",
        "trials",
        "trials.audit",
        "trials.consent_records",
        "trials.recruitment",
        "trials.service",
    ),
    # the ways in: HTTP API, portal, CLI, demo data, node directories, local clusters
    "edges": ("__init__", "api.*", "web.*", "cli", "demo", "nodedir", "cluster.local", "wiring"),
}
# (importer, imported) pairs allowed against the layers, each with the reason it is not fixed.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _short(module: str) -> str:
    return "__init__" if module == "careledger" else module.removeprefix("careledger.")


def _matches(pattern: str, module: str) -> bool:
    name = _short(module)
    if pattern.endswith(".*"):
        return name == pattern[:-2] or name.startswith(pattern[:-1])
    return name == pattern


def layers_of(module: str, members: dict[str, tuple[str, ...]] = MEMBERS) -> list[str]:
    """The layers whose patterns match ``module`` (one pattern a match)."""
    return [layer for layer, pats in members.items() for p in pats if _matches(p, module)]


def all_imports(path: Path, own: str, modules: set[str]) -> set[str]:
    """The careledger modules that ``path`` (module ``own``) imports anywhere in it (at load,
    in functions, under TYPE_CHECKING); ``from a.b import c`` names a.b.c if that is a module,
    else a.b. A name that is no module of ``modules`` is kept as written: a dangling import."""
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "careledger")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] == "careledger":
                found.update(
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                )
    return found - {own}


def full_import_graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in SRC.rglob("*.py")}
    return {name: all_imports(path, name, set(paths)) for name, path in paths.items()}


def layer_violations(
    graph: dict[str, set[str]],
    layers: tuple[tuple[str, ...], ...] = LAYERS,
    members: dict[str, tuple[str, ...]] = MEMBERS,
    exceptions: Iterable[tuple[str, str]] = LAYER_EXCEPTIONS,
) -> list[str]:
    """``importer (layer) -> imported (layer)`` for each import that is neither within a layer
    nor down to a lower row, and not a listed exception; and each import of a careledger
    module that does not exist (an old path left behind by a move)."""
    row = {layer: i for i, names in enumerate(layers) for layer in names}
    allowed = set(exceptions)
    out = []
    for importer, imported in sorted((a, b) for a, deps in graph.items() for b in deps):
        if imported not in graph:
            out.append(f"{_short(importer)} -> {_short(imported)} (no such module)")
            continue
        (upper,), (lower,) = layers_of(importer, members), layers_of(imported, members)
        if upper == lower or row[lower] > row[upper]:
            continue
        if (_short(importer), _short(imported)) not in allowed:
            out.append(f"{_short(importer)} ({upper}) -> {_short(imported)} ({lower})")
    return out


def test_every_module_is_in_exactly_one_layer() -> None:
    assert sorted(MEMBERS) == sorted(layer for row in LAYERS for layer in row)
    graph = full_import_graph()
    placed = {module: layers_of(module) for module in graph}
    wrong = {_short(m): found for m, found in placed.items() if len(found) != 1}
    assert not wrong, f"modules in no layer, or in more than one: {wrong}"
    patterns = [p for pats in MEMBERS.values() for p in pats]
    unused = [p for p in patterns if not any(_matches(p, m) for m in graph)]
    assert not unused, f"layer entries that match no module: {unused}"


def test_imports_go_down_the_layers() -> None:
    graph = full_import_graph()
    assert len(graph) > 100 and "careledger.callers.caller" in graph["careledger.health.access"]
    bad = layer_violations(graph)
    assert not bad, "imports against the layers (see LAYERS):\n" + "\n".join(bad)


def test_every_layer_exception_is_still_needed() -> None:
    graph = full_import_graph()
    unneeded = [
        pair
        for pair in LAYER_EXCEPTIONS
        if f"careledger.{pair[1]}" not in graph.get(f"careledger.{pair[0]}", set())
        or not layer_violations(graph, exceptions=set(LAYER_EXCEPTIONS) - {pair})
    ]
    assert not unneeded, f"exceptions nothing needs any more: {unneeded}"


def test_the_pure_modules_are_in_the_pure_layers() -> None:
    pure_layers = {"core", "rules"}
    assert {p.name for p in PURE} and all(
        set(layers_of(_module(p))) <= pure_layers for p in PURE
    )


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    sample = tmp_path / "careledger" / "contracts" / "bad.py"
    sample.parent.mkdir(parents=True)
    sample.write_text(
        "from careledger.core.keys import KeyPair\n"
        "def later():\n"
        "    from careledger.node import Node\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import careledger.api.deps\n"
        "from .. import sdk\n"
        "from careledger.core.gone import thing\n"
    )
    modules = {"careledger.core.keys", "careledger.node", "careledger.api.deps", "careledger.sdk"}
    found = all_imports(sample, "careledger.contracts.bad", modules)
    assert found == modules | {"careledger.core.gone"}
    graph = {
        "careledger.contracts.bad": found,
        "careledger.callers.tokens": {"careledger.sdk"},
        **{m: set() for m in modules},
    }
    assert layer_violations(graph) == [
        "callers.tokens (callers) -> sdk (support)",  # independent layers of one row
        "contracts.bad (rules) -> api.deps (edges)",
        "contracts.bad -> core.gone (no such module)",
        "contracts.bad (rules) -> node (node)",
        "contracts.bad (rules) -> sdk (support)",
    ]
    assert "contracts.bad (rules) -> node (node)" not in layer_violations(
        graph, exceptions=[("contracts.bad", "node")]
    )


# -- commit listeners (ledger/ports.py CommitListener) ------------------------------------------
#
# Whatever the node registers on ``commit_listeners`` is called as ``listener(executed)`` and
# MUST NOT commit or submit (the ledger and the orderers refuse it at run time with
# LISTENER_REENTRY; this catches it when the code is written).

REENTRY = {"submit", "execute", "execute_explained", "act_for", "commit", "admit", "admit_all"}
WRITERS = {"node", "ledger", "orderer", "_node", "_ledger", "_orderer"}


def registered_listeners(path: Path) -> set[str]:
    """Names of the callables ``commit_listeners.append(x.name)`` / ``.extend([...])`` adds."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in {"append", "extend"}
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "commit_listeners"
        ):
            continue
        for arg in node.args:
            items = arg.elts if isinstance(arg, ast.List | ast.Tuple) else [arg]
            names.update(i.attr for i in items if isinstance(i, ast.Attribute))
    return names


def listener_faults(path: Path, names: set[str]) -> list[str]:
    """``line: why`` for each function named in ``names`` that is not shaped as a listener
    (one positional parameter after self, or *args) or calls a writer's submit/commit."""
    faults: list[str] = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(fn, ast.FunctionDef) or fn.name not in names:
            continue
        positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args] if a.arg != "self"]
        required = len(positional) - len(fn.args.defaults)
        if not (required <= 1 and (len(positional) >= 1 or fn.args.vararg is not None)):
            faults.append(f"{fn.lineno}: {fn.name} does not take (executed)")
        for call in ast.walk(fn):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in REENTRY
                and isinstance(call.func.value, ast.Attribute | ast.Name)
                and (getattr(call.func.value, "attr", None) or getattr(call.func.value, "id", ""))
                in WRITERS
            ):
                faults.append(f"{call.lineno}: {fn.name} calls {ast.unparse(call.func)}")
    return faults


def test_commit_listeners_take_the_block_and_never_write() -> None:
    sources = sorted(SRC.rglob("*.py"))
    names = set().union(*(registered_listeners(p) for p in sources))
    assert {"on_commit", "pulse_threadsafe"} <= names  # the check sees the node's listeners
    faults = {_name(p): f for p in sources if (f := listener_faults(p, names))}
    assert not faults, f"commit listeners that are not CommitListeners: {faults}"


def test_a_writing_listener_is_caught(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "ledger.commit_listeners.extend([self.on_commit, signal.pulse])\n"
        "class A:\n"
        "    def on_commit(self, executed):\n"
        "        self.node.execute([])\n"
        "        self.ledger.commit([], 0)\n"
        "    def pulse(self):\n"
        "        pass\n"
    )
    names = registered_listeners(sample)
    assert names == {"on_commit", "pulse"}
    assert sorted(f.split(":")[0] for f in listener_faults(sample, names)) == ["4", "5", "6"]


# -- one place wires a node (issue 14) -----------------------------------------------------------
#
# The services a node serves are constructed in ``careledger/wiring.py`` only (tests and bench/
# build them directly to measure or test one): the HTTP app, the CLI and the demo loader go
# through ``NodeServices`` or one of its named parts, so start/stop order and the clock and
# randomness they are given are decided in one place.

WIRED = frozenset(
    {
        "HealthRecords.for_node",
        "FederationClient",
        "FederationServer",
        "ReplayGuard",
        "ExportJobs",
        "ShareLinks",
        "HealthCards",
        "EpcisService",
        "AlertWatcher",
        "SupplyService",
        "RecruitmentResponder",
        "ConsentRecorder",
        "TrialsService",
        "Ingestor",
        "ReadingsService",
        "MonitoringService",
        "Ticker",
        "VisitsService",
        "TokenIssuer",
        "GrantStore",
        "AuthorizationServer",
        "AppsService",
    }
)


def wired_constructions(path: Path) -> list[str]:
    """``line: name`` of each call to a wired constructor (``Name(...)`` or ``Name.for_node``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            name = func.id
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            name = f"{func.value.id}.{func.attr}"
        else:
            continue
        if name in WIRED:
            found.append(f"{node.lineno}: {name}")
    return found


def test_only_the_wiring_constructs_the_node_services() -> None:
    sources = sorted(p for p in SRC.rglob("*.py") if p != SRC / "wiring.py")
    found = {_name(p): f for p in sources if (f := wired_constructions(p))}
    assert not found, f"services built outside careledger/wiring.py: {found}"
    assert len(wired_constructions(SRC / "wiring.py")) >= len(WIRED)  # the check sees them


def test_a_service_built_by_hand_is_caught(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "records = HealthRecords.for_node(node)\n"
        "issuer = TokenIssuer(chain=c, node_name=n, node_key=k, ttl_seconds=1)\n"
        "other = Something(records)\n"
    )
    assert wired_constructions(sample) == ["1: HealthRecords.for_node", "2: TokenIssuer"]
