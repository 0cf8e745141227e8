"""The ``careledger`` command. Thin: each command parses, calls one function, shows the result."""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from careledger.errors import CareLedgerError, Rejected, ValidationError, VerificationError

app = typer.Typer(
    help="CareLedger: a permissioned, provable ledger for health data.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold keys
)
proof_app = typer.Typer(help="Fetch and verify proofs from a node.", no_args_is_help=True)
app.add_typer(proof_app, name="proof")
out = Console()
err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
DirArg = Annotated[Path, typer.Argument(help="the node directory", file_okay=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
UrlOpt = Annotated[str, typer.Option("--url", envvar="CARELEDGER_URL", help="the node's base URL")]
KeyOpt = Annotated[Path, typer.Option("--key", help="the member's key file (signs the login)")]


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _fail(exc: CareLedgerError) -> typer.Exit:
    err.print(f"[red]error[/red] {exc.code}: {exc.message}")
    return typer.Exit(2)


def _progress(label: str, unit: str, *, quiet: bool) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    )


def _share_passcode() -> str:
    """A link's passcode: from CARELEDGER_SHARE_PASSCODE, else typed twice, unseen."""
    given = os.environ.get("CARELEDGER_SHARE_PASSCODE")
    if given is None:
        given = getpass.getpass("passcode for the link: ")
        if getpass.getpass("the same passcode again: ") != given:
            raise _fail(ValidationError("the two passcodes differ", code="BAD_PASSCODE"))
    if not given:
        raise _fail(ValidationError("a passcode is not empty", code="BAD_PASSCODE"))
    return given


def _passphrase(ask: bool) -> str | None:
    env = os.environ.get("CARELEDGER_KEY_PASSPHRASE")
    if env:
        return env
    return getpass.getpass("passphrase: ") if ask else None


@app.command()
def keygen(
    path: Annotated[Path, typer.Argument(help="key file to create")],
    name: Annotated[str, typer.Option(help="the key's name (member id)")] = "",
    passphrase: Annotated[
        bool, typer.Option("--passphrase", help="encrypt with a passphrase")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create an Ed25519 key file and print its public key."""
    from careledger.keyfile import generate_keypair, write_key_file

    if path.exists():
        raise _fail(
            ValidationError(f"{path} exists; refusing to overwrite a key", code="KEY_EXISTS")
        )
    keypair = generate_keypair()
    try:
        write_key_file(path, keypair, name=name or path.stem, passphrase=_passphrase(passphrase))
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(
            {"name": name or path.stem, "public_key": keypair.public_b64, "file": str(path)}
        )
    else:
        out.print(keypair.public_b64)


@app.command()
def init(
    data_dir: DirArg,
    demo: Annotated[bool, typer.Option("--demo", help="create the demo consortium")] = False,
    genesis: Annotated[Path | None, typer.Option(help="genesis document (JSON)")] = None,
    node_key: Annotated[Path | None, typer.Option(help="the node's key file")] = None,
    node_name: Annotated[str, typer.Option(help="the node's name in checkpoints")] = "",
    org: Annotated[str, typer.Option(help="the node's organisation id")] = "",
    ruleset: Annotated[
        str | None, typer.Option(help="the demo chain's first ruleset (default: the newest)")
    ] = None,
) -> None:
    """Create a node directory with its store and genesis block."""
    from careledger.nodedir import init_demo, init_node, load_genesis

    try:
        if demo:
            ledger = init_demo(data_dir, ruleset=ruleset)
        else:
            if genesis is None or node_key is None or not node_name or not org:
                raise ValidationError(
                    "give --demo, or --genesis, --node-key, --node-name and --org",
                    code="MISSING_OPTION",
                )
            ledger = init_node(
                data_dir,
                genesis=load_genesis(genesis),
                node_name=node_name,
                org=org,
                node_key_file=node_key,
            )
    except CareLedgerError as exc:
        raise _fail(exc) from None
    head = ledger.head
    out.print(
        f"created chain [bold]{ledger.chain}[/bold] in {data_dir}: "
        f"height {head.height}, {head.log_size} transactions"
    )
    ledger.store.close()


@app.command()
def serve(
    data_dir: DirArg,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve a node's API (OpenAPI docs at /docs)."""
    import uvicorn

    from careledger.api.app import create_app
    from careledger.config import Settings
    from careledger.node import preflight

    try:
        settings = Settings.load(data_dir, host=host, port=port)
        preflight(settings.data_dir)
        application = create_app(settings)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    out.print(f"serving {data_dir} on http://{host}:{port} (API docs at /docs)")
    # open streams (event feeds, video visits) are closed after 5 s: a node always stops
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        proxy_headers=False,  # believed from trusted_proxies only: api/forwarded.py
    )


@app.command()
def submit(
    key: Annotated[Path, typer.Option(help="the signer's key file")],
    contract: Annotated[str, typer.Argument()],
    method: Annotated[str, typer.Argument()],
    args: Annotated[str, typer.Argument(help="arguments as a JSON object")] = "{}",
    url: UrlOpt = DEFAULT_URL,
    wait: Annotated[bool, typer.Option(help="wait for the commit")] = True,
    force: Annotated[
        bool, typer.Option("--force", help="submit even if the dry run says it would be refused")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Sign a transaction and submit it to a node. A dry run first: a transaction the node
    would refuse is not submitted (a refused one stays on the ledger for good) unless --force."""
    from careledger.keyfile import read_key_file
    from careledger.sdk import Client

    try:
        parsed = orjson.loads(args)
    except orjson.JSONDecodeError:
        raise _fail(ValidationError("args must be a JSON object", code="BAD_ARGS")) from None
    try:
        _, keypair = read_key_file(key, passphrase=os.environ.get("CARELEDGER_KEY_PASSPHRASE"))
        with Client(url, keypair=keypair) as client:
            if not force:
                dry = client.check(contract, method, parsed)
                if dry["result"] != "would_accept":
                    raise Rejected(
                        dry["code"],
                        f"{dry['message'] or dry['code']} (nothing was submitted: fix it, or"
                        " --force to record the refusal on the ledger)",
                    )
            result = client.call(contract, method, parsed, wait=wait)
    except CareLedgerError as exc:
        if json_out and hasattr(exc, "body"):
            _print_json(exc.body)
        raise _fail(exc) from None
    if json_out:
        _print_json(result)
    elif wait:
        out.print(
            f"committed at height {result['height']}: {result['result']} (tx {result['tx_id']})"
        )
    else:
        out.print(f"queued: {result}")


@app.command()
def status(url: UrlOpt = DEFAULT_URL, json_out: JsonOpt = False) -> None:
    """Show a node's head and checkpoint."""
    from careledger.sdk import Client

    try:
        with Client(url) as client:
            head = client.head()
            note = client.checkpoint()
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({**head, "checkpoint": note})
        return
    table = Table(show_header=False)
    header = head["header"]
    for label, value in [
        ("chain", header["chain"]),
        ("height", header["height"]),
        ("head hash", head["hash"]),
        ("log size", header["log_size"]),
        ("log root", header["log_root"]),
        ("state digest", header["state_digest"]),
    ]:
        table.add_row(label, str(value))
    out.print(table)
    out.print(note)


def _trusted_keys(client: Any, keys_file: Path | None) -> list[str]:
    if keys_file is not None:
        return [line for line in keys_file.read_text().splitlines() if line.strip()]
    err.print(
        "[yellow]warning[/yellow] trusting the node's own verifier keys (use --keys to pin them)"
    )
    keys: list[str] = client.verifier_keys()
    return keys


@proof_app.command("inclusion")
def proof_inclusion(
    tx_id: Annotated[str, typer.Argument()],
    url: UrlOpt = DEFAULT_URL,
    keys: Annotated[Path | None, typer.Option(help="file of trusted note verifier keys")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fetch a transaction's receipt and verify its inclusion proof and checkpoint locally."""
    from careledger.sdk import Client, verify_tx_proof

    try:
        with Client(url) as client:
            answer = client.tx(tx_id)
            verified = verify_tx_proof(answer, _trusted_keys(client, keys))
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({**answer, "verified": True, "signers": list(verified.signers)})
        return
    receipt = verified.receipt
    out.print(
        f"[green]verified[/green] tx {tx_id} is leaf {verified.leaf_index} of a tree of "
        f"{verified.checkpoint.size}, {receipt['result']} at height {receipt['height']}, "
        f"checkpoint signed by {', '.join(verified.signers)}"
    )


@proof_app.command("consistency")
def proof_consistency(
    first: Annotated[int, typer.Argument()],
    second: Annotated[int, typer.Argument()],
    url: UrlOpt = DEFAULT_URL,
    keys: Annotated[Path | None, typer.Option(help="file of trusted note verifier keys")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify that the log of size SECOND extends the log of size FIRST."""
    from careledger.sdk import Client

    try:
        with Client(url) as client:
            trusted = _trusted_keys(client, keys)
            old, new = client.checkpoint(first), client.checkpoint(second)
            client.verified_consistency(old, new, trusted)
            answer = client.consistency(first, second)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({**answer, "verified": True})
    else:
        out.print(
            f"[green]verified[/green] the log of size {second} extends the log of size {first}"
        )


@app.command()
def verify(
    data_dir: DirArg,
    reexecute: Annotated[
        bool, typer.Option("--reexecute", help="also re-run every transaction through its contract")
    ] = False,
    ledger_only: Annotated[
        bool, typer.Option("--ledger-only", help="the ledger alone, not the node's other stores")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Replay the whole store offline, then check every other store of the node (vault, EPCIS,
    monitoring, visits, links, SMART, export, trials, federation) against the ledger and against
    its integrity codes; exit 1 naming the first bad height, or the store, table and row of each
    difference."""
    from concurrent.futures import ProcessPoolExecutor

    from careledger.config import Settings
    from careledger.ledger.verify import verify_store
    from careledger.storage.sqlite import SQLiteStore

    try:
        settings = Settings.load(data_dir)
        store = SQLiteStore(settings.store_path, readonly=True)
        head_height = store.head_height()
    except CareLedgerError as exc:
        raise _fail(exc) from None
    total = head_height + 1
    with (
        ProcessPoolExecutor(2) as pool,
        _progress("verifying", "blocks", quiet=json_out) as bar,
    ):
        task = bar.add_task("verify", total=total)
        report = verify_store(
            store, pool=pool, progress=lambda h, n: bar.advance(task), reexecute=reexecute
        )
    differences: list[Any] = []
    coded: list[Any] = []  # each store's enrolment: since when coded, rows taken as found
    if report.ok and not ledger_only:
        try:
            differences, coded = _audit_stores(settings, store, json_out)
        except CareLedgerError as exc:
            store.close()
            raise _fail(exc) from None
    store.close()
    if json_out:
        _print_json({**report.to_json(), "stores_checked": not ledger_only,
                     "differences": [d.to_json() for d in differences],
                     "stores": [e.to_json() for e in coded],
                     "ok": report.ok and not differences})  # fmt: skip
    elif not report.ok:
        err.print(f"[red]FAILED[/red] at height {report.height}: {report.problem}")
    elif differences:
        table = Table("store", "table", "row", "problem", title="the node's stores differ")
        for d in differences:  # as plain text: a store's content is no markup or escape
            table.add_row(*(Text(_printable(x)) for x in (d.store, d.table, d.row, d.problem)))
        err.print(table)
        err.print(_coded_table(coded))
        err.print(f"[red]FAILED[/red]: {len(differences)} difference(s) between the node's "
                  "stores and its ledger")  # fmt: skip
    else:
        stores = "" if ledger_only else (
            "; the node's other stores match it and their integrity codes"
        )
        if coded:
            out.print(_coded_table(coded))
        out.print(
            f"[green]ok[/green] {report.blocks} blocks, {report.transactions} transactions "
            f"verified{stores}"
        )
    if not report.ok or differences:
        raise typer.Exit(1)


def _printable(text: str) -> str:
    """Control characters shown as escapes, never sent to the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _coded_table(coded: list[Any]) -> Table:
    """Each store's integrity codes: since when, and how many rows were then taken as found
    (a store coded again after its codes were removed shows a recent ``since``)."""
    table = Table("store", "coded since", "rows vouched for", title="integrity codes")
    for e in coded:
        since = "-" if e.since is None else _printable(e.since)
        vouched = "-" if e.vouched is None else str(e.vouched)
        table.add_row(Text(e.store), Text(since), Text(vouched))
    return table


def _audit_stores(settings: Any, store: Any, quiet: bool) -> tuple[list[Any], list[Any]]:
    """Every store beside the ledger, checked against it (node_audit), with a progress bar; and
    each store's enrolment (``since``, ``vouched``)."""
    from careledger.keyfile import read_key_file
    from careledger.node_audit import NodeContext, audit_node, checks, store_size
    from careledger.node_audit.integrity import IntegrityCheck, enrolment

    _, key = read_key_file(settings.node_key_file, passphrase=_passphrase(False))
    context = NodeContext(settings.data_dir, store, key, settings.node_name, settings.org)
    total = sum(store_size(check, context) for check in checks())
    with _progress("checking stores", "rows", quiet=quiet) as bar:
        task = bar.add_task("stores", total=total)
        found = audit_node(context, lambda n: bar.advance(task, n))
    coded = [enrolment(context, c.store) for c in checks() if isinstance(c, IntegrityCheck)]
    return found, [e for e in coded if e is not None]


@app.command()
def members(data_dir: DirArg, json_out: JsonOpt = False) -> None:
    """List the chain's members: name, organisation, roles and public key."""
    from careledger.config import Settings
    from careledger.keyfile import read_key_file
    from careledger.ledger.engine import Ledger
    from careledger.ledger.views import members_view
    from careledger.storage.sqlite import SQLiteStore

    try:
        settings = Settings.load(data_dir)
        store = SQLiteStore(settings.store_path, readonly=True)
        _, node_key = read_key_file(settings.node_key_file, passphrase=_passphrase(False))
        view = members_view(Ledger(store, node_name=settings.node_name, node_key=node_key))
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(view["members"])
        return
    table = Table("member", "name", "organisation", "roles", "key", "public key")
    for m in view["members"]:
        table.add_row(
            m["id"], m["name"], m["org"], ", ".join(m["roles"]), m["key_status"], m["public_key"]
        )
    out.print(table)


@app.command()
def token(
    data_dir: DirArg,
    name: Annotated[
        str,
        typer.Argument(help="member id: DIR/keys/NAME.key, or a patient's or device's key there"),
    ],
    ttl: Annotated[int, typer.Option(help="lifetime in seconds")] = 900,
) -> None:
    """Print a short-lived bearer token for a member whose key is in DIR (for scripts)."""
    from careledger.config import KEYS_DIR, Settings
    from careledger.keyfile import read_key_file
    from careledger.ledger.engine import Ledger
    from careledger.storage.sqlite import SQLiteStore
    from careledger.wiring import token_issuer

    try:
        settings = Settings.load(data_dir)
        # staff keys, then the keys the node holds for patients and devices
        places = [
            data_dir / KEYS_DIR,
            data_dir / KEYS_DIR / "patients",
            data_dir / KEYS_DIR / "devices",
        ]
        found = [p / f"{name}.key" for p in places if (p / f"{name}.key").is_file()]
        if not found or "/" in name or name.startswith("."):
            raise ValidationError(
                f"no key file for {name!r} in {data_dir / KEYS_DIR} (or its patients/ and"
                " devices/)",
                code="NO_KEY",
            )
        key_file = found[0]
        _, member_key = read_key_file(key_file, passphrase=_passphrase(False))
        _, node_key = read_key_file(settings.node_key_file, passphrase=_passphrase(False))
        # read-only: the ledger alone (no node, no services) names the signer and the chain
        store = SQLiteStore(settings.store_path, readonly=True)
        ledger = Ledger(store, node_name=settings.node_name, node_key=node_key)
        signer = ledger.signer(member_key.public_b64)
        issuer = token_issuer(ledger.chain, settings, node_key, ttl_seconds=ttl)
        value, _ = issuer.issue(signer)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    sys.stdout.write(value + "\n")


fhir_app = typer.Typer(help="Load and export FHIR data.", no_args_is_help=True)
app.add_typer(fhir_app, name="fhir")


def _read_bundles(files: list[Path]) -> list[Any]:
    from careledger.jsonio import loads

    bundles = []
    for path in files:
        try:
            bundles.append(loads(path.read_bytes()))
        except OSError as exc:
            raise ValidationError(f"cannot read {path}: {exc.strerror}", code="BAD_FILE") from None
    return bundles


@fhir_app.command("import")
def fhir_import(
    data_dir: DirArg,
    files: Annotated[list[Path], typer.Argument(help="FHIR Bundle files (JSON)")],
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Load FHIR Bundles into the node at DIR as its organisation.

    In-process when the node is not running; through its API (at --url) when it is.
    """
    from careledger.config import Settings
    from careledger.health.importer import bundle_entries, import_bundles
    from careledger.health.service_sink import ServiceSink
    from careledger.keyfile import read_key_file
    from careledger.node import Node
    from careledger.sdk import Client
    from careledger.wiring import records_session

    try:
        settings = Settings.load(data_dir)
        bundles = _read_bundles(files)
        total = sum(len(bundle_entries(b)) for b in bundles)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    with _progress("importing", "entries", quiet=json_out) as bar:
        task = bar.add_task("import", total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        try:
            node = Node(settings)
        except CareLedgerError as exc:
            if exc.code != "NODE_BUSY":
                raise _fail(exc) from None
            node = None
        try:
            if node is not None:
                node.start()
                try:
                    with records_session(node) as records:
                        report = import_bundles(
                            bundles, ServiceSink(records, records.node_caller()), progress=advance
                        )
                finally:
                    node.stop()
            else:
                _, key = read_key_file(settings.node_key_file, passphrase=_passphrase(False))
                with Client(url, keypair=key) as client:
                    client.login()
                    report = import_bundles(bundles, client, progress=advance)
        except CareLedgerError as exc:
            raise _fail(exc) from None
    if json_out:
        _print_json(report.to_json())
    else:
        table = Table("resource type", "created", "already here", "skipped")
        for kind in sorted(set(report.created) | set(report.existing) | set(report.skipped)):
            table.add_row(
                kind,
                str(report.created.get(kind, 0)),
                str(report.existing.get(kind, 0)),
                str(report.skipped.get(kind, 0)),
            )
        out.print(table)
        out.print(f"{len(report.patients)} patients; {len(report.failed)} entries failed")
        for entry, code in report.failed[:20]:
            err.print(f"[red]failed[/red] {entry}: {code}")
    if report.failed:
        raise typer.Exit(1)


trial_app = typer.Typer(help="Clinical trials on the ledger.", no_args_is_help=True)
app.add_typer(trial_app, name="trial")


@trial_app.command("audit")
def trial_audit(
    data_dir: DirArg,
    study: Annotated[str, typer.Argument(help="the study id")],
    out_file: Annotated[Path, typer.Option("--out", help="where to write the HTML report")] = Path(
        "trial-audit.html"
    ),
    pdf_file: Annotated[
        Path | None, typer.Option("--pdf", help="also print it to this PDF (headless Chromium)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write a trial's audit report (HTML, and PDF with --pdf): registration proof, consents,
    data anchors, lock root, endpoints."""
    from careledger.config import Settings
    from careledger.keyfile import read_key_file
    from careledger.ledger.engine import Ledger
    from careledger.storage.sqlite import SQLiteStore
    from careledger.trials.audit import audit, render, to_pdf

    try:
        settings = Settings.load(data_dir)
        store = SQLiteStore(settings.store_path, readonly=True)
        _, node_key = read_key_file(settings.node_key_file, passphrase=_passphrase(False))
        result = audit(Ledger(store, node_name=settings.node_name, node_key=node_key), study)
        out_file.write_text(render(result), encoding="utf-8")
        if pdf_file is not None:
            to_pdf(out_file, pdf_file)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        error = ValidationError(f"cannot write {out_file}: {exc.strerror}", code="BAD_FILE")
        raise _fail(error) from None
    summary = {
        "study": study,
        "report": str(out_file),
        "registration_verified": result["registration_proof"]["verified"],
        "lock_matches": result["lock_matches"],
        "outcome_switching": bool((result["report"] or {}).get("outcome_switching")),
    }
    if pdf_file is not None:
        summary["pdf"] = str(pdf_file)
    if json_out:
        _print_json(summary)
    else:
        out.print(f"wrote {out_file}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


def _read_json_file(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", code="BAD_FILE") from None
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not JSON: {exc}", code="BAD_JSON") from None


@trial_app.command("register")
def trial_register(
    file: Annotated[
        Path,
        typer.Argument(
            help="registration args (JSON), a ClinicalTrials.gov v2 record or a ResearchStudy"
        ),
    ],
    key: KeyOpt,
    study: Annotated[
        str | None, typer.Option("--study", help="the study id (for a published record)")
    ] = None,
    sites: Annotated[
        str, typer.Option("--sites", help="enrolling organisations, comma-separated")
    ] = "",
    visits_file: Annotated[
        Path | None, typer.Option("--visits", help="JSON list of {id, day, window}")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Register a study as the sponsor, before any enrolment (its block proves the protocol)."""
    try:
        document = _read_json_file(file)
        if not isinstance(document, dict):
            raise ValidationError(f"{file} holds no JSON object", code="BAD_STUDY")
        if "protocolSection" in document or document.get("resourceType") == "ResearchStudy":
            field = "ctgov" if "protocolSection" in document else "researchStudy"
            body: dict[str, Any] = {
                field: document,
                "study": study,
                "sites": [s for s in sites.split(",") if s],
                "visits": _read_json_file(visits_file) if visits_file else [],
            }
        else:
            body = {"registration": document}
        with _logged_in(url, key) as client:
            result = client.trial_register(body)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(result)
    else:
        receipt = result["receipt"]
        out.print(
            f"[green]registered[/green] {result['study']} at height {receipt['height']}"
            f" (transaction {receipt['tx_id']})"
        )


@trial_app.command("feasibility")
def trial_feasibility(
    key: KeyOpt,
    criteria_file: Annotated[
        Path | None, typer.Option("--criteria", help="eligibility criteria (JSON)")
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="use this registered study's criteria")
    ] = None,
    sites: Annotated[str, typer.Option("--sites", help="organisations, comma-separated")] = "",
    invite: Annotated[
        bool, typer.Option("--invite", help="invite opted-in patients (needs --study)")
    ] = False,
    wait: Annotated[float, typer.Option("--wait", help="seconds to wait for the sites")] = 30.0,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Eligible patients per site, counted where the data lives (small cells withheld)."""
    try:
        body: dict[str, Any] = {}
        if criteria_file is not None:
            body["criteria"] = _read_json_file(criteria_file)
        if study is not None:
            body["study"] = study
        if sites:
            body["sites"] = [s for s in sites.split(",") if s]
        if invite:
            body["invite"] = True
        with _logged_in(url, key) as client, err.status("asking the sites…") as status:

            def show(answer: dict[str, Any], left: float) -> None:
                done = len(answer["sites"]) - len(answer["pending"])
                status.update(
                    f"{done} of {len(answer['sites'])} sites answered; waiting for"
                    f" {', '.join(answer['pending'])} ({left:.0f} s left, --wait to change)"
                )

            result = client.feasibility(body, wait=wait, progress=None if json_out else show)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(result)
        return
    private = any(a.get("private") for a in result["answers"].values())
    heading = "eligible patients (with noise)" if private else "eligible patients"
    table = Table("site", heading, title=f"query {result['id'][:16]}…")
    for site in result["sites"]:
        answer = result["answers"].get(site)
        if answer is None:
            table.add_row(site, f"[yellow]no answer within {wait:g} s[/yellow]")
        elif answer["count"] is None:
            table.add_row(site, f"withheld ({answer['reason']})")
        else:
            table.add_row(site, str(answer["count"]))
    out.print(table)
    out.print(f"total released: {result['total_released']}")
    if private:
        out.print(
            "Each count carries random noise and small ones are withheld, so that no answer"
            " reveals anything about one patient (see `careledger trial budget`)."
        )


@trial_app.command("budget")
def trial_budget(
    key: KeyOpt,
    sponsor: Annotated[
        str | None, typer.Option("--sponsor", help="set this sponsor's budget (with --epsilon)")
    ] = None,
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", help="the total epsilon it may spend here")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """What each sponsor has spent of its privacy budget at your site (admins set it)."""
    try:
        if (sponsor is None) != (epsilon is None):
            raise ValidationError("--sponsor and --epsilon go together", code="BAD_ARGS")
        with _logged_in(url, key) as client:
            if sponsor is not None:
                client.set_privacy_budget(sponsor, epsilon)
            items = client.privacy_budgets()
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({"items": items})
        return
    table = Table("sponsor", "queries", "epsilon spent", "limit", title="privacy budgets")
    for item in items:
        table.add_row(
            item["sponsor"],
            str(item["queries"]),
            f"{item['epsilon_spent']:g}",
            f"{item['epsilon_limit']:g}",
        )
    out.print(table)


export_app = typer.Typer(help="FHIR bulk exports ($export).", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("verify")
def export_verify(
    manifest: Annotated[Path, typer.Argument(help="the export's manifest (JSON, as polled)")],
    files: Annotated[list[Path], typer.Argument(help="every NDJSON file of the export")],
    node_key: Annotated[
        list[str] | None,
        typer.Option("--node-key", help="the node verifier key you trust (repeatable)"),
    ] = None,
    allow_unproven: Annotated[
        bool,
        typer.Option("--allow-unproven", help="check an export that proves no holdings"),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check a bulk export offline: the node's signature on its manifest, every file's hash and
    count, every record against the salted hash its anchoring transaction holds, and that no
    record the ledger says was held for an exported patient is missing. Exits 1 when anything
    differs."""
    from careledger.health.export_proof import verify_export

    try:
        document = _read_json_file(manifest)
        if not isinstance(document, dict):
            raise ValidationError(f"{manifest} is not an export manifest", code="BAD_FILE")
        for path in files:
            if not path.is_file():
                raise ValidationError(f"cannot read {path}", code="IO_ERROR")
        report = verify_export(document, files, node_key or (), allow_unproven=allow_unproven)
    except VerificationError as exc:
        err.print(f"error {exc.code}: {exc.message}")
        raise typer.Exit(1) from None
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({"ok": True, "signer": report.signer, "trusted": report.trusted,
                     "height": report.height, "records": report.records,
                     "holdings": report.holdings, "withheld": report.withheld,
                     "unproven": report.unproven, "excused": report.excused,
                     "complete": report.complete,
                     "attested_heights": report.attested_heights,
                     "group": report.group, "members": report.members,
                     "files": [{"name": n, "lines": c} for n, c in report.files]})  # fmt: skip
        return
    table = Table("file", "lines", title=f"export at ledger height {report.height}")
    for name, lines in report.files:
        table.add_row(name, str(lines))
    out.print(table)
    who = "a node you trust" if report.trusted else "a node you did not name (give --node-key)"
    out.print(f"verified: {report.records} records, signed by {report.signer} ({who})")
    if report.group is not None:
        out.print(f"Group {report.group}: its {report.members} members, as the ledger held it, "
                  "are the export's patients")  # fmt: skip
    if report.complete:
        low, high = report.attested_heights or (report.height, report.height)
        out.print(
            f"complete: every record the ledger held for the {report.holdings} patient-and-type "
            f"holdings attested (blocks {low} to {high}) is here"
            + (f" ({report.withheld} left out by _typeFilter)" if report.withheld else "")
        )
    elif report.holdings:
        out.print(f"{report.holdings} patient-and-type holdings proven complete; not proven:")
        if report.excused:
            out.print(f"  {report.excused} requested types excused on the node's word "
                      "(the app's scopes or the patient's consent)")  # fmt: skip
        if report.unproven:
            out.print(f"  {report.unproven} exported records anchored before holdings were kept")
    else:
        out.print("completeness not proven: the export attests no holdings")


@app.command("verify-access")
def verify_access(
    file: Annotated[Path, typer.Argument(help="the access proof file (access-proof-ID.json)")],
    node_key: Annotated[
        list[str] | None,
        typer.Option("--node-key", help="a node verifier key you trust (repeatable)"),
    ] = None,
    min_signatures: Annotated[
        int, typer.Option("--min-signatures", min=1, help="how many named nodes must sign")
    ] = 1,
    json_out: JsonOpt = False,
) -> None:
    """Check a patient's "who saw my data" file offline: the checkpoint is signed by the nodes
    you name, every access event is in it, accepted, to this patient's data, and says what the
    readable list says. Exits 1 when anything differs."""
    from careledger.health.access_proof import FORMAT, verify_access_proof

    try:
        document = _read_json_file(file)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValidationError(
                f"{file} is not an access proof (download one from "
                "GET /v1/patients/ID/access-log/proof)",
                code="BAD_FILE",
            )
        report = verify_access_proof(document, node_key or (), min_signatures)
    except VerificationError as exc:
        err.print(f"error {exc.code}: {exc.message}")
        raise typer.Exit(1) from None
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(report.to_json())
        return
    table = Table(
        "when", "who", "what", "purpose", "basis", title=f"who saw {report.patient}'s data"
    )
    for a in report.accesses:
        who = f"{a['accessor']} ({a['accessor_org']})" + (f" via {a['app']}" if a["app"] else "")
        count = len(a["records"]) + len(a["windows"])
        what = f"{a['action']} {count} record{'s' if count != 1 else ''}"
        basis = a["basis"]["kind"] + (" [bold]BREAK-GLASS[/bold]" if a["break_glass"] else "")
        table.add_row(str(a["created"]), who, what, str(a["purpose"]), basis)
    out.print(table)
    out.print(
        f"verified: {len(report.accesses)} accesses, checkpoint of size {report.tree_size} "
        f"signed by {', '.join(report.signers)}"
    )
    out.print("each access listed is on the ledger; that none is missing is the node's word")


share_app = typer.Typer(help="SMART Health Links: share your records.", no_args_is_help=True)
app.add_typer(share_app, name="share")


def _patient_of(key: Path) -> str:
    from careledger.keyfile import read_key_file

    try:
        return read_key_file(key, passphrase=_passphrase(False))[0]
    except OSError as exc:
        raise ValidationError(f"cannot read {key}: {exc.strerror}", code="BAD_FILE") from None


@share_app.command("make")
def share_make(
    key: KeyOpt,
    types: Annotated[
        list[str] | None, typer.Option("--type", help="a FHIR record type (repeat for more)")
    ] = None,
    summary: Annotated[
        bool, typer.Option("--summary", help="a summary of your health instead")
    ] = False,
    days: Annotated[int, typer.Option("--days", help="days until it expires (1-366)")] = 7,
    passcode: Annotated[
        bool,
        typer.Option(
            "--passcode",
            help="ask for a passcode the recipient must give (typed unseen, or from "
            "CARELEDGER_SHARE_PASSCODE): never on the command line, where `ps` shows it",
        ),
    ] = False,
    label: Annotated[str | None, typer.Option("--label", help="what the recipient sees")] = None,
    long_term: Annotated[
        bool, typer.Option("--long-term", help="also share records you get later")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Make a SMART Health Link to some of your records: prints the link (shown only now) and
    its QR code. Signed with your key, or by the node that holds it for you."""
    if not 1 <= days <= 366:
        raise _fail(ValidationError("--days: 1 to 366", code="BAD_EXPIRY"))
    body: dict[str, Any] = {"types": types or [], "summary": summary, "long_term": long_term,
                            "expires": int(time.time()) + days * 86_400}  # fmt: skip
    if passcode:
        body["passcode"] = _share_passcode()
    if label:
        body["label"] = label
    try:
        patient = _patient_of(key)
        with _logged_in(url, key) as client:
            made = client.make_link(patient, body)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({k: v for k, v in made.items() if k != "qr_svg"})
        return
    import segno

    segno.make(made["shlink"], error="m", micro=False).terminal(compact=True)
    also = " and the passcode" if passcode else ""
    out.print(f"[bold]Your link[/bold] (shown only now; whoever has it{also} can open it "
              f"for {days} days):")  # fmt: skip
    print(made["shlink"])
    out.print(f"link id {made['id']}: `careledger share revoke {made['id']}` ends it at once")


@share_app.command("list")
def share_list(key: KeyOpt, url: UrlOpt = DEFAULT_URL, json_out: JsonOpt = False) -> None:
    """Your SMART Health Links: what each shares, until when, and how often it was opened."""
    try:
        patient = _patient_of(key)
        with _logged_in(url, key) as client:
            items = client.links(patient)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({"items": items})
        return
    table = Table("id", "label", "shares", "until", "status", "opened", title="your links")
    for item in items:
        shares = "a summary" if item["selection"]["summary"] else ", ".join(
            item["selection"]["types"])  # fmt: skip
        expires = item["expires"]
        until = time.strftime("%d %b %Y", time.gmtime(expires)) if expires else ""
        table.add_row(item["id"], item["label"] or "", shares, until, item["status"],
                      str(item["opened"]))  # fmt: skip
    out.print(table)


@share_app.command("revoke")
def share_revoke(
    key: KeyOpt,
    link: Annotated[str, typer.Argument(help="the link's id (64 hex digits)")],
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """End a link at once: from the next block it opens nothing."""
    try:
        patient = _patient_of(key)
        with _logged_in(url, key) as client:
            done = client.revoke_link(patient, link)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(done)
        return
    out.print(f"{link[:12]}: revoked")


apps_app = typer.Typer(help="SMART on FHIR apps registered on the ledger.", no_args_is_help=True)
app.add_typer(apps_app, name="apps")


@apps_app.command("list")
def apps_list(
    key: KeyOpt,
    org: Annotated[str | None, typer.Option("--org", help="only this organisation's")] = None,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """The apps on the ledger: who registered them, what they may ask for, and their status."""
    try:
        with _logged_in(url, key) as client:
            items = client.apps(org)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json({"items": items})
        return
    table = Table("client id", "name", "org", "kind", "status", "scopes", title="apps")
    for item in items:
        table.add_row(
            item["client_id"], item["name"], item["org"], item["kind"], item["status"],
            item["scopes"],
        )  # fmt: skip
    out.print(table)


@apps_app.command("register")
def apps_register(
    key: KeyOpt,
    client_id: Annotated[
        str, typer.Argument(help="the app's client id (3-64 letters, digits, . _ -)")
    ],
    name: Annotated[str, typer.Option("--name", help="the name users see when they approve it")],
    scopes: Annotated[str, typer.Option("--scopes", help="the SMART scopes it may ask for")],
    kind: Annotated[str, typer.Option("--kind", help="public, confidential or backend")] = "public",
    redirect: Annotated[
        list[str] | None, typer.Option("--redirect", help="a redirect URI (repeat for more)")
    ] = None,
    jwks: Annotated[
        Path | None, typer.Option("--jwks", help="a JSON file of its public keys (JWKS)")
    ] = None,
    launch_uri: Annotated[
        str | None, typer.Option("--launch-uri", help="where an EHR launch opens it")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Register an app for your organisation (admins). A confidential app without --jwks gets a
    client secret, printed once: the ledger keeps only its hash."""
    body: dict[str, Any] = {"client_id": client_id, "name": name, "kind": kind, "scopes": scopes}
    try:
        if redirect:
            body["redirect_uris"] = redirect
        if jwks is not None:
            body["jwks"] = _read_json_file(jwks)
        if launch_uri:
            body["launch_uri"] = launch_uri
        with _logged_in(url, key) as client:
            done = client.register_app(body)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(done)
        return
    out.print(f"registered [bold]{client_id}[/bold] for {done['app']['org']} ({kind})")
    if "client_secret" in done:
        out.print(f"client secret (shown once, keep it safe): {done['client_secret']}")


@apps_app.command("suspend")
def apps_suspend(
    key: KeyOpt,
    client_id: Annotated[str, typer.Argument(help="the app's client id")],
    reason: Annotated[str | None, typer.Option("--reason", help="why, for the record")] = None,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Suspend an app: from the next block no node honours its tokens or issues new ones."""
    _app_step(key, client_id, "suspend", reason, url, json_out)


@apps_app.command("resume")
def apps_resume(
    key: KeyOpt,
    client_id: Annotated[str, typer.Argument(help="the app's client id")],
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Let a suspended app connect again."""
    _app_step(key, client_id, "resume", None, url, json_out)


def _app_step(
    key: Path, client_id: str, step: str, reason: str | None, url: str, json_out: bool
) -> None:
    try:
        with _logged_in(url, key) as client:
            done = client.app_step(client_id, step, reason)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(done)
        return
    out.print(f"{client_id}: {done['status']}")


devices_app = typer.Typer(help="Remote-monitoring devices.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")


@devices_app.command("simulate")
def devices_simulate(
    files: Annotated[
        list[Path], typer.Argument(help="MIMIC-II numerics CSV files, replayed in order")
    ],
    device: Annotated[
        str | None, typer.Option("--device", help="the device id (with --key)")
    ] = None,
    key: Annotated[Path | None, typer.Option("--key", help="the device's key file")] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option("--keys-dir", help="many devices: DIR/<device id>.key, one per device"),
    ] = None,
    devices: Annotated[int, typer.Option("--devices", min=1, help="how many of --keys-dir")] = 1,
    speed: Annotated[
        float, typer.Option("--speed", min=0, help="times real time (0: as fast as possible)")
    ] = 60.0,
    per_batch: Annotated[int, typer.Option("--per-batch", min=1, help="minutes per batch")] = 10,
    websocket: Annotated[bool, typer.Option("--ws", help="stream over a WebSocket")] = False,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Replay bedside numerics as signed device batches (each device must be registered and
    bound to a patient). Exit 1 if any batch was refused."""
    import threading
    import time as clock

    from careledger.keyfile import read_key_file
    from careledger.monitoring.simulate import Totals, count_batches, run_device

    try:
        for path in files:
            if not path.is_file():
                raise ValidationError(f"no such file {path}", code="BAD_FILE")
        if keys_dir is not None:
            key_files = sorted(keys_dir.glob("*.key"))[:devices]
            if len(key_files) < devices:
                raise ValidationError(f"{keys_dir} holds {len(key_files)} keys", code="BAD_FILE")
            chosen = [(k.stem, read_key_file(k)[1]) for k in key_files]
        elif device is not None and key is not None:
            chosen = [(device, read_key_file(key)[1])]
        else:
            raise ValidationError("give --device and --key, or --keys-dir", code="BAD_ARGS")
        total = count_batches(files, per_batch) * len(chosen)  # reads every file: checked now
    except (CareLedgerError, OSError) as exc:
        error = (
            exc if isinstance(exc, CareLedgerError) else ValidationError(str(exc), code="BAD_FILE")
        )
        raise _fail(error) from None
    totals = Totals()
    first_seq = clock.time_ns() // 1000
    with _progress("sending batches", "batches", quiet=json_out) as bar:
        task = bar.add_task("sending batches", total=total)
        threads = [
            threading.Thread(
                target=run_device,
                args=(url, dev, dev_key, files),
                kwargs={
                    "speed": speed,
                    "per_batch": per_batch,
                    "first_seq": first_seq,
                    "totals": totals,
                    "websocket": websocket,
                    "progress": lambda: bar.advance(task),
                },
            )
            for dev, dev_key in chosen
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    summary = totals.as_json()
    already = totals.already()
    for dev, windows in already.items():
        err.print(
            f"note: {dev} already had {windows} windows of readings on the ledger; these rows"
            " were added beside them as new readings stamped from now, not merged"
        )
    if json_out:
        _print_json({**summary, **({"already": already} if already else {})})
    else:
        out.print(
            f"sent {summary['batches']} batches ({summary['readings']} readings) from"
            f" {len(chosen)} device(s); {summary['alerts']} alerts raised"
        )
        for code, n in summary["refused"].items():
            err.print(f"refused {n} batches: {code}")
    if summary["refused"]:
        raise typer.Exit(1)


@devices_app.command("audit")
def devices_audit(
    data_dir: DirArg,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="only these devices (repeatable)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Re-judge the readings this node holds: do the ledger's alerts follow from them under the
    rules then in force? Exit 1 on any difference."""
    from careledger.config import Settings
    from careledger.keyfile import read_key_file
    from careledger.ledger.engine import Ledger
    from careledger.monitoring.audit import audit_devices
    from careledger.monitoring.store import MONITORING_FILE, ReadingsStore
    from careledger.storage.sqlite import SQLiteStore

    try:
        settings = Settings.load(data_dir)
        if not (data_dir / MONITORING_FILE).exists():
            raise ValidationError("this node holds no device readings", code="NO_READINGS")
        ledger_store = SQLiteStore(settings.store_path, readonly=True)
        _, node_key = read_key_file(settings.node_key_file, passphrase=_passphrase(False))
        ledger = Ledger(ledger_store, node_name=settings.node_name, node_key=node_key)
        readings = ReadingsStore.for_node(data_dir / MONITORING_FILE, node_key)
        try:
            reports = audit_devices(ledger, readings, device or readings.devices())
        finally:
            readings.close()
            ledger_store.close()
    except CareLedgerError as exc:
        raise _fail(exc) from None
    results = [r.as_json() for r in reports]
    if json_out:
        _print_json(results)
    else:
        table = Table("device", "windows", "alerts", "verdict", title="alerts re-judged")
        for r in results:
            verdict = (
                "[green]as recorded[/green]"
                if r["ok"]
                else f"[red]{len(r['mismatches'])} differ[/red]"
            )
            table.add_row(r["device"], str(r["windows"]), str(r["alerts"]), verdict)
        out.print(table)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


cluster_app = typer.Typer(
    help="A consortium on this machine: NATS JetStream servers and one node per organisation.",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("up")
def cluster_up(
    directory: Annotated[Path, typer.Argument(help="where the cluster lives", file_okay=False)],
    nodes: Annotated[int, typer.Option("--nodes", help="nodes (and NATS servers), 1..6")] = 3,
    demo_data: Annotated[
        bool, typer.Option("--demo-data/--no-demo-data", help="demo records and supply chain")
    ] = True,
    ruleset: Annotated[
        str | None, typer.Option(help="the chain's first ruleset (default: the newest)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Start N NATS servers (Raft, fsync always) and N nodes on 127.0.0.1; they keep running."""
    from careledger.cluster.local import LocalCluster, status

    try:
        cluster = LocalCluster.create(directory, nodes, with_demo_data=demo_data, ruleset=ruleset)
        with err.status(f"starting {nodes} NATS servers and {nodes} nodes"):
            cluster.start()
        rows = status(directory)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    _print_cluster(rows, json_out)


@cluster_app.command("status")
def cluster_status(
    directory: Annotated[Path, typer.Argument(help="the cluster's directory", file_okay=False)],
    json_out: JsonOpt = False,
) -> None:
    """Each node: URL, head, checkpoint, signatures, alarms. Exit 1 if a node is down or forked."""
    from careledger.cluster.local import status

    try:
        rows = status(directory)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    _print_cluster(rows, json_out)
    heads = {r.get("head") for r in rows if r["up"]}
    alarms = [a for r in rows for a in r.get("cluster", {}).get("alarms", [])]
    if not all(r["up"] for r in rows) or len(heads) > 1 or alarms:
        raise typer.Exit(1)


@cluster_app.command("down")
def cluster_down(
    directory: Annotated[Path, typer.Argument(help="the cluster's directory", file_okay=False)],
) -> None:
    """Stop every node and NATS server of the cluster (their data stays)."""
    from careledger.cluster.local import stop_recorded

    try:
        stopped = stop_recorded(directory)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    out.print(f"stopped {stopped} processes")


def _print_cluster(rows: list[dict[str, Any]], json_out: bool) -> None:
    if json_out:
        _print_json(rows)
        return
    table = Table("node", "org", "url", "height", "head", "signatures", "alarms")
    for row in rows:
        info = row.get("cluster", {})
        table.add_row(
            row["name"],
            row["org"],
            row["url"],
            str(row.get("height", "down")),
            str(row.get("head", ""))[:16],
            str(info.get("head_signatures", "")),
            str(len(info.get("alarms", []))),
        )
    out.print(table)


epcis_app = typer.Typer(help="Capture EPCIS 2.0 supply-chain events.", no_args_is_help=True)
app.add_typer(epcis_app, name="epcis")
product_app = typer.Typer(help="Check drug packs (DSCSA verification).", no_args_is_help=True)
app.add_typer(product_app, name="product")


def _logged_in(url: str, key_file: Path | None) -> Any:
    from careledger.keyfile import read_key_file
    from careledger.sdk import Client

    if key_file is None:
        return Client(url)
    try:
        _, keypair = read_key_file(key_file, passphrase=_passphrase(False))
    except OSError as exc:
        raise ValidationError(f"cannot read {key_file}: {exc.strerror}", code="BAD_FILE") from None
    client = Client(url, keypair=keypair)
    try:
        client.login()
    except BaseException:
        client.close()
        raise
    return client


@epcis_app.command("capture")
def epcis_capture(
    file: Annotated[Path, typer.Argument(help="an EPCIS 2.0 JSON or JSON-LD document")],
    key: KeyOpt,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
) -> None:
    """Capture a document as the key's member: all of its events, or none (exit 1)."""
    try:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise ValidationError(f"cannot read {file}: {exc.strerror}", code="BAD_FILE") from None
        with _logged_in(url, key) as client:
            result = client.epcis_capture(raw)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    if json_out:
        _print_json(result)
    elif result["success"]:
        out.print(
            f"[green]captured[/green] {result['events']} events as {result['captureID']}"
            f" (ledger transaction {result['ledgerTransaction']})"
        )
    else:
        table = Table("event", "code", "where", "message", title=f"{result['captureID']} refused")
        for error in result["errors"]:
            where = str(error.get("path") or "")
            table.add_row(str(error.get("index", "-")), error["code"], where, error["message"])
        out.print(table)
    if not result["success"]:
        raise typer.Exit(1)


@product_app.command("verify")
def product_verify(
    link: Annotated[
        str, typer.Argument(help="GS1 Digital Link, e.g. https://id.gs1.org/01/…/21/…")
    ],
    url: UrlOpt = DEFAULT_URL,
    key: Annotated[
        Path | None, typer.Option("--key", help="verify as this member (else anonymously)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """May this pack be dispensed? Exit 0: OK to dispense; 1: do not dispense (unknown,
    mismatched, recalled, suspect, illegitimate, expired, already dispensed or out of
    circulation); 2: a bad link or an error."""
    try:
        with _logged_in(url, key) as client:
            result = client.verify_product(link, explain=True)
    except CareLedgerError as exc:
        raise _fail(exc) from None
    verdict = result["verdict"]
    if json_out:
        _print_json(result)
    else:
        colour = "green" if verdict["dispense"] else "red"
        out.print(f"[{colour}]{verdict['headline'].upper()}[/{colour}]: {verdict['reason']}")
        out.print(verdict["action"])
        data = result["data"]
        details = [data.get("verificationFailureReason"), data.get("additionalInfo")]
        standard = "verified" if data["verified"] else "not verified"
        out.print(f"LMS answer: {' '.join([standard, *(d for d in details if d)])}")
        if "responderGLN" in result:
            out.print(
                f"answered for GLN {result['responderGLN']} at {result['verificationTimestamp']}"
            )
    if not verdict["dispense"]:
        raise typer.Exit(1)


def main() -> None:
    # Node files hold keys, PHI (sealed) and metadata about patients: owner-only, always.
    os.umask(0o077)
    try:
        app()
    except CareLedgerError as exc:  # a command that did not catch its own: same words, same exit
        raise _fail(exc) from None
    except OSError as exc:  # a file or directory that is not there, not writable, ...
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"[red]error[/red] IO_ERROR: {exc.strerror or exc}{where}")
        raise SystemExit(2) from None
    except Exception as exc:
        if os.environ.get("CARELEDGER_DEBUG"):
            raise
        err.print(
            f"[red]error[/red] INTERNAL_ERROR: {type(exc).__name__} (a fault in careledger:"
            " run again with CARELEDGER_DEBUG=1 for the traceback, and report it)"
        )
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
