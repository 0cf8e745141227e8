"""Issue 14, must hold: "a byte changed in any table of any store is caught" (ADR 0019).

One node holds every store a node keeps beside its ledger, each written by the node's own code
(the demo's vault, EPCIS, monitoring and visits stores; a health link and its location file;
SMART grants, codes, a launch and an assertion; a finished bulk export; a study's consent record
and the site's pseudonym key; a federation nonce; a patient's erasure of their readings). Every
SQLite file it holds is the ledger or a store the audit checks. Then, in every table of every
store (its ``integrity`` table too), for every column of a few rows: one byte changed by someone
without the node's key (the row's code left as it was, as an edit of the file would) is named by
the audit with its store, table and row. So is a row deleted, a row copied in under another key,
and a row written with the node's own key after a digest trigger was dropped. And the review's
proofs of concept against the codes (a trigger planted as an oracle, a store stripped and
re-coded), each on a copy of the node.

Each change is made in a transaction the audit reads before it is rolled back, so one node
serves every case.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from careledger import store_mac
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import EPCIS_FILE, STORE_FILE, VAULT_FILE, Settings
from careledger.core.keys import KeyPair, b64url_encode
from careledger.errors import StorageError
from careledger.health.bulk_export import EXPORT_FILE, ExportJobs, ExportRequest
from careledger.health.federation import FEDERATION_NONCES_FILE
from careledger.health.replay_guard import ReplayGuard
from careledger.health.service import HealthRecords
from careledger.health.share_links import LINKS_FILE, Selection, ShareLinks
from careledger.health_links.link import parse_uri
from careledger.keyfile import read_key_file
from careledger.monitoring.readings import ReadingsService
from careledger.monitoring.store import MONITORING_FILE, ReadingsStore
from careledger.monitoring.visits import VISITS_FILE
from careledger.node import Node
from careledger.node_audit import Difference, NodeContext, checks
from careledger.node_audit.federation_store import FederationStoreCheck
from careledger.node_audit.integrity import ROW_CHANGED, ROWS_CHANGED, IntegrityCheck
from careledger.smart.grants import SMART_FILE, Grant, GrantStore, PendingCode
from careledger.storage.sqlite import SQLiteStore
from careledger.store_mac import INTEGRITY, RawText, StoreKeys
from careledger.supply.alerts import SCHEMA as ALERTS_SCHEMA
from careledger.supply.alerts import AlertStore, AlertWatcher
from careledger.supply.repository import SCHEMA as REPOSITORY_SCHEMA
from careledger.supply.supply_service import SupplyService
from careledger.supply.verification_log import SCHEMA as VERIFICATIONS_SCHEMA
from careledger.supply.verification_log import VerificationLog
from careledger.trials.consent_records import ConsentRecorder
from careledger.trials.recruitment import TRIALS_FILE, RecruitmentStore
from careledger.vault.store import VaultStore
from tests.support.forgery import forger
from tests.support.nodes import demo_node, run_cli

pytestmark = pytest.mark.integration
STORES = (VAULT_FILE, EPCIS_FILE, MONITORING_FILE, VISITS_FILE, LINKS_FILE, SMART_FILE,
          EXPORT_FILE, TRIALS_FILE, FEDERATION_NONCES_FILE)  # fmt: skip
ORIGIN = "https://node.example"
APP, EXPORTER, STUDY = "st-mary-portal", "st-mary-export", "INTEGRITY-1"
KEY = ec.generate_private_key(ec.SECP384R1())
PUBLIC = {**json.loads(jwt.get_algorithm_by_name("ES384").to_jwk(KEY.public_key())), "kid": "k1"}
ROWS_SAMPLED = 2  # the first and the last of each table


@dataclass(frozen=True)
class Made:
    data: Path
    node_key: KeyPair

    def keys(self, store: str) -> StoreKeys:
        return StoreKeys.for_node(self.node_key, store)


def caller(member: str, role: str, scopes: str | None = None, app: str | None = None) -> Caller:
    roles = frozenset({role})
    return Caller(member, "st-mary", roles, parse_scopes(scopes or default_scopes(roles)), app=app)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    data = tmp_path_factory.mktemp("store-integrity") / "node"
    demo_node(data)
    keys = data / "keys"
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    links, jobs = ShareLinks(records, data), ExportJobs(records, data)
    recorder = ConsentRecorder(records, data / TRIALS_FILE)
    recruitment = RecruitmentStore(data / TRIALS_FILE)
    grants = GrantStore(data / SMART_FILE)
    nonces = ReplayGuard(data / FEDERATION_NONCES_FILE, keep_ms=120_000)
    readings_store = ReadingsStore.for_node(data / MONITORING_FILE, node.ledger.node_key)
    readings = ReadingsService(records, readings_store)
    node.ledger.commit_listeners.append(readings.on_commit)  # as the node's services wire it
    alert_store, verifications = AlertStore(data / EPCIS_FILE), VerificationLog(data / EPCIS_FILE)
    watcher = AlertWatcher(node.ledger, alert_store)
    watcher.attach()  # catches up on the demo's blocks: the height reached
    supply = SupplyService(node, alert_store, verifications)
    try:
        admin = read_key_file(keys / "st-mary-admin.key")[1]
        (app_made,) = node.execute([("apps", "register", {
            "client_id": EXPORTER, "name": "Export", "kind": "backend", "scopes": "system/*.rs",
            "jwks": {"keys": [PUBLIC]}})], keypair=admin)  # fmt: skip
        (study,) = node.execute([("trials", "register", {
            "study": STUDY, "registry_id": "NCT7", "title": "t", "protocol_hash": "5" * 64,
            "sap_hash": "6" * 64, "primary": ["p"], "secondary": [],
            "eligibility": {"age": [0, 150]},
            "visits": [{"id": "baseline", "day": 0, "window": 3}], "sites": ["st-mary"]})],
            keypair=read_key_file(keys / "trialco-admin.key")[1])  # fmt: skip
        assert app_made["result"] == study["result"] == "accepted", (app_made, study)
        patient = sorted(p.stem for p in (keys / "patients").glob("*.key"))[0]
        # a health link and its location file
        link = links.create(caller(patient, "patient"), patient, origin=ORIGIN,
                            selection=Selection(("Condition", "Observation")), flags="",
                            passcode=None, expires=None, label="for Dr Jones")  # fmt: skip
        token = parse_uri(link["shlink"]).url.rsplit("/", 1)[1]
        links.manifest(token, {"recipient": "Dr Jones", "embeddedLengthMax": 0}, ORIGIN)
        # a bulk export
        request = ExportRequest("system", frozenset({"Condition"}), None, {},
                                f"{ORIGIN}/fhir/$export?_type=Condition", "HOPERAT", ORIGIN)  # fmt: skip
        app = caller(EXPORTER, "system", "system/*.rs", app=EXPORTER)
        job = jobs.start(app, request)
        for _ in range(600):
            if jobs.status(app, job)[0] not in ("accepted", "in-progress"):
                break
            time.sleep(0.05)
        # a study's participant and their consent record; the site's pseudonym key
        enrolled = node.execute([("trials", "enrol", {"study": STUDY, "participant": patient})],
                                keypair=read_key_file(keys / "dr-ana-silva.key")[1])  # fmt: skip
        assert enrolled[0]["result"] == "accepted", enrolled
        own = records.custodial_key(patient)
        (consent,) = node.execute([("trials", "consent", {"study": STUDY, "version": 1})],
                                  keypair=own)  # fmt: skip
        assert consent["result"] == "accepted", consent
        assert recorder.sync(STUDY, patient) is not None
        # SMART grants, codes, a launch, an assertion
        member, user = read_key_file(keys / "dr-ana-silva.key")
        now = int(time.time())
        grant = Grant(grants.new_family(), APP, member, user.public_b64,
                      "patient/*.rs offline_access", patient, now + 3600)  # fmt: skip
        grants.redeem_refresh(grants.issue_refresh(grant, now), APP, now)
        grants.issue_refresh(grant, now)
        grants.revoke_family(grants.new_family(), now + 60)
        pending = PendingCode(APP, "https://portal.example/cb", b64url_encode(bytes(32)), member,
                              user.public_b64, "patient/*.rs openid", patient, ORIGIN, "n-1",
                              now + 60)  # fmt: skip
        grants.issue_code(pending, now)
        grants.redeem_code(grants.issue_code(pending, now), grants.new_family(), now)
        grants.create_launch(member, APP, patient, now + 60, now)
        grants.first_assertion(APP, "jti-1", now + 240, now)
        grants.revoke_token(b64url_encode(bytes(12)), now + 3600)
        nonces.first_use("nonce-1", now * 1000)
        # a patient's erasure of their readings (none are held here): recorded as applied
        (erased,) = node.execute([("monitoring", "erase_readings", {"patient": patient})],
                                 keypair=own)  # fmt: skip
        assert erased["result"] == "accepted", erased
        assert readings_store.erasure_applied(patient) == erased["height"]
        # a pharmacist verifying a pack the demo dispensed: logged, and alerted
        units = [json.loads(node.ledger.store.get_state("supply", k) or b"null")
                 for k in node.ledger.store.state_keys("supply", "unit/", 1000)]  # fmt: skip
        pack = next(u for u in units if u["status"] == "dispensed")
        pharmacist = Caller("ph-chen-li", "city-pharmacy", frozenset({"pharmacist"}), ())
        request = {"gtin": pack["gtin"], "serialNumber": pack["serial"],
                   "lotNumber": pack["lot"], "expirationDate": pack["expiry"]}  # fmt: skip
        supply.verify(pharmacist, request)
        alerts, _ = alert_store.list(org=None)
        assert [a["kind"] for a in alerts] == ["verified_after_decommission"], alerts
    finally:
        node.ledger.commit_listeners.remove(readings.on_commit)
        watcher.detach()
        for closing_store in (readings_store, alert_store, verifications, nonces, grants,
                              recruitment, jobs, links):  # fmt: skip
            closing_store.close()
        recorder.detach()
        records.close()
        node.stop()
    # rows of the trials tables no flow of this ruleset makes (populations released before r5,
    # invitations of a site's run), written as the node writes
    with closing(store_mac.connect(data / TRIALS_FILE)) as conn:
        conn.execute("INSERT INTO released VALUES('q-1', 'st-mary', 2, zeroblob(16))")
        conn.execute("INSERT INTO invitations VALUES('00112233445566778899aabb', "
                     "'site-0011223344556677', ?, 'st-mary', ?, 1, 'open', NULL)",
                     (STUDY, patient))  # fmt: skip
        conn.commit()
    return Made(data, read_key_file(Settings.load(data).node_key_file)[1])


def audit(made: Made, store: str, conn: sqlite3.Connection, table: str) -> list[Difference]:
    """The store's integrity check, the rows of ``table`` only (all of them for ``integrity``,
    whose rows are the other tables' digests)."""
    only = None if table == INTEGRITY else {table}
    found = list(IntegrityCheck(store).check_connection(conn, made.keys(store), lambda n: None,
                                                        tables=only))  # fmt: skip
    conn.text_factory = str
    return found


@contextmanager
def changing(path: Path, code: bytes = bytes(32)) -> Iterator[sqlite3.Connection]:
    """A forger's connection in a transaction, rolled back after."""
    conn = forger(path, code)
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def tables_of(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [*store_mac.coded_tables(conn), INTEGRITY]


def bindable(value: Any) -> Any:
    return bytes(value).decode() if isinstance(value, RawText) else value


@dataclass(frozen=True)
class Row:
    where: str
    params: list[Any]
    keys: list[str]  # ["rowid"], or the key columns of a table without rowids
    values: dict[str, Any]  # every column, text as RawText, and mac


def sampled(path: Path, table: str) -> list[Row]:
    """The first and the last row of ``table``."""
    with closing(sqlite3.connect(path)) as conn:
        conn.text_factory = RawText
        rowid = store_mac.has_rowid(conn, table)
        keys = ["rowid"] if rowid else store_mac.key_columns(conn, table)
        order = ", ".join(q(k) for k in keys)
        ids = conn.execute(f"SELECT {order} FROM {q(table)} ORDER BY {order}").fetchall()
        where = " AND ".join(f"{q(k)} = ?" for k in keys)
        rows = []
        for found in dict.fromkeys([ids[0], ids[-1]]):
            params = [bindable(v) for v in found]
            cursor = conn.execute(f"SELECT * FROM {q(table)} WHERE {where}", params)
            names = [d[0] for d in cursor.description]
            rows.append(Row(where, params, keys, dict(zip(names, cursor.fetchone(), strict=True))))
        return rows


def changed(value: Any) -> Any:
    """The value with one byte changed (a value where there was none, for NULL)."""
    if value is None:
        return 0
    if isinstance(value, RawText):  # the last byte's low bit: still UTF-8, another text
        raw = bytes(value) or b"w"
        return (raw[:-1] + bytes([raw[-1] ^ 1])).decode()
    if isinstance(value, bytes):
        raw = bytearray(value or b"\x00")
        raw[len(raw) // 2] ^= 1
        return bytes(raw)
    if isinstance(value, int):
        return value ^ (1 << 40)
    (bits,) = struct.unpack(">q", struct.pack(">d", value))
    return struct.unpack(">d", struct.pack(">q", bits ^ 1))[0]


def rowid_alias(path: Path, table: str) -> str | None:
    """The table's INTEGER PRIMARY KEY column, which is its rowid."""
    with closing(sqlite3.connect(path)) as conn:
        info = conn.execute(f"PRAGMA table_info({q(table)})").fetchall()
    keyed = [r for r in info if r[5] > 0]
    if len(keyed) == 1 and str(keyed[0][2]).upper() == "INTEGER":
        return str(keyed[0][1])
    return None


def name_after(row: Row, column: str, value: Any, alias: str | None) -> str:
    """How the audit names the row once ``column`` holds ``value``."""
    if row.keys == ["rowid"]:
        return f"rowid {value if column == alias else row.params[0]}"
    parts = []
    for key, held in zip(row.keys, row.params, strict=True):
        now = bindable(value) if key == column else held
        if isinstance(now, str | int | float):
            parts.append(f"{key}={now}")
    return ", ".join(parts)


def unique_columns(path: Path, table: str) -> set[str]:
    """Columns of any unique index of ``table`` (its key among them)."""
    with closing(sqlite3.connect(path)) as conn:
        found: set[str] = set()
        for index in conn.execute(f"PRAGMA index_list({q(table)})").fetchall():
            if index[2]:
                found |= {str(r[2]) for r in conn.execute(f"PRAGMA index_info({q(index[1])})")}
        return found


def test_every_sqlite_file_of_the_node_is_the_ledger_or_a_store_the_audit_checks(
    made: Made,
) -> None:
    """A store added without a checker (and its integrity codes) fails here, whatever its file
    is called."""
    coded = {c.store for c in checks() if isinstance(c, IntegrityCheck)}
    assert coded == set(STORES)
    assert {c.store for c in checks() if c.store.endswith(".sqlite")} == coded
    sqlite_files = set()
    for path in made.data.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                if f.read(16) == b"SQLite format 3\0":
                    sqlite_files.add(path.relative_to(made.data).as_posix())
    assert {f for f in sqlite_files if f.endswith(".sqlite")} == sqlite_files
    assert sqlite_files == coded | {STORE_FILE}


def tables_created_by(*scripts: str) -> set[str]:
    with closing(sqlite3.connect(":memory:")) as conn:
        for script in scripts:
            conn.executescript(script)
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(r[0]) for r in rows} - {"sqlite_sequence"}


def test_the_node_holds_every_store_each_table_with_rows_and_all_pass(made: Made) -> None:
    # the EPCIS store's alert and verification tables too (made when the node's supply services
    # start, not with the store), so that they are among the tables changed below
    epcis = tables_created_by(REPOSITORY_SCHEMA, ALERTS_SCHEMA, VERIFICATIONS_SCHEMA)
    assert epcis <= set(tables_of(made.data / EPCIS_FILE)), epcis
    for store in STORES:
        path = made.data / store
        assert path.exists(), store
        with closing(sqlite3.connect(path)) as conn:
            for table in tables_of(path):
                (n,) = conn.execute(f"SELECT COUNT(*) FROM {q(table)}").fetchone()
                assert n > 0, (store, table)
            keys = made.keys(store)
            found = list(IntegrityCheck(store).check_connection(conn, keys, lambda n: None))
            assert found == [], found


@pytest.mark.parametrize("store", STORES)
def test_one_byte_changed_in_any_column_of_any_row_is_named(made: Made, store: str) -> None:
    path = made.data / store
    misses: list[str] = []
    cases = 0
    for table in tables_of(path):
        alias = rowid_alias(path, table)
        for row in sampled(path, table):
            for column in [c for c in row.values if c != store_mac.MAC]:
                cases += 1
                value = changed(row.values[column])
                with changing(path, row.values.get(store_mac.MAC) or bytes(32)) as conn:
                    conn.execute(f"UPDATE {q(table)} SET {q(column)} = ? WHERE {row.where}",
                                 [value, *row.params])  # fmt: skip
                    found = audit(made, store, conn, table)
                name = name_after(row, column, value, alias)
                if table == INTEGRITY:
                    if not found:  # the digests and the record of coded tables are keyed
                        misses.append(f"{table}.{column} of {name}")
                elif Difference(store, table, name, ROW_CHANGED) not in found:
                    misses.append(f"{table}.{column} of {name}: {found}")
    assert cases and not misses, misses


@pytest.mark.parametrize("store", STORES)
def test_a_row_deleted_copied_in_or_written_past_a_dropped_trigger_is_named(
    made: Made, store: str
) -> None:
    path = made.data / store
    misses: list[str] = []
    for table in tables_of(path)[:-1]:  # integrity's rows are the digests: above
        row = sampled(path, table)[0]
        with changing(path) as conn:
            conn.execute(f"DELETE FROM {q(table)} WHERE {row.where}", row.params)
            if audit(made, store, conn, table) != [Difference(store, table, "-", ROWS_CHANGED)]:
                misses.append(f"{table}: a deleted row")
        # a copy under another key (and other unique values), keeping its code
        alias, unique = rowid_alias(path, table), unique_columns(path, table)
        columns = [c for c in row.values if c != store_mac.MAC]
        varied = [
            "NULL" if c == alias else
            f"CASE typeof({q(c)}) WHEN 'integer' THEN {q(c)} + 1000003 WHEN 'text' THEN "
            f"{q(c)} || 'x' WHEN 'blob' THEN CAST({q(c)} || 'x' AS BLOB) ELSE {q(c)} END"
            if c in unique else q(c)
            for c in columns
        ]  # fmt: skip
        copy = (f"INSERT INTO {q(table)}({', '.join(q(c) for c in columns)}) "
                f"SELECT {', '.join(varied)} FROM {q(table)} WHERE {row.where}")  # fmt: skip
        with changing(path, row.values[store_mac.MAC]) as conn:
            new = conn.execute(copy, row.params).lastrowid
            found = audit(made, store, conn, table)
            named = [d for d in found if d.problem == ROW_CHANGED]
            if Difference(store, table, "-", ROWS_CHANGED) not in found or len(named) != 1 or (
                row.keys == ["rowid"] and named[0].row != f"rowid {new}"
            ):
                misses.append(f"{table}: a copied row: {found}")
        # the insert trigger dropped, then a row written with the node's own key
        with changing(path) as conn:
            made.keys(store).attach(conn)
            conn.execute(f"DROP TRIGGER {q('integrity_' + table + '_insert')}")
            conn.execute(copy, row.params)
            if audit(made, store, conn, table) != [Difference(store, table, "-", ROWS_CHANGED)]:
                misses.append(f"{table}: a write past a dropped trigger")
    assert not misses, misses


def test_the_federation_store_has_a_checker_of_its_own(made: Made, tmp_path: Path) -> None:
    """Its schema and rows' form; written with the node's key, a time that is no time is still
    named (its code holds)."""
    assert any(isinstance(c, FederationStoreCheck) for c in checks())
    settings = Settings.load(made.data)
    copy = tmp_path / "node"
    copy.mkdir()
    shutil.copy(made.data / FEDERATION_NONCES_FILE, copy)
    shutil.copy(made.data / "node.json", copy)
    store = SQLiteStore(settings.store_path, readonly=True)
    try:
        key = read_key_file(settings.node_key_file)[1]
        context = NodeContext(copy, store, key, settings.node_name, settings.org)
        assert list(FederationStoreCheck().check(context, lambda n: None)) == []
        with closing(sqlite3.connect(copy / FEDERATION_NONCES_FILE)) as conn:
            made.keys(FEDERATION_NONCES_FILE).attach(conn)
            conn.execute("UPDATE seen SET at = 'yesterday'")
            conn.commit()
        found = list(FederationStoreCheck().check(context, lambda n: None))
        assert found == [Difference(FEDERATION_NONCES_FILE, "seen", "rowid 1",
                                    "not a nonce and its time")]  # fmt: skip
        assert list(IntegrityCheck(FEDERATION_NONCES_FILE).check(context, lambda n: None)) == []
    finally:
        store.close()


# -- the review's proofs of concept, on a copy of the node (ADR 0019, "Review") -----------------


def node_copy(made: Made, tmp_path: Path) -> Path:
    target = tmp_path / "node"
    shutil.copytree(made.data, target)
    (target / "node.lock").unlink(missing_ok=True)
    return target


def test_a_trigger_planted_in_one_store_forges_nothing_in_another(
    made: Made, tmp_path: Path
) -> None:
    """H1 (poc_trigger_oracle.py): with the node's nonce store open, someone without the key
    plants a trigger there to have the node's next nonce compute a vault row's code and digest
    elements. The node's next write refuses the store (its schema moved, the trigger is not the
    node's); the vault's codes are under another key anyway; and the vault, planted with a view,
    is refused at its open, by the node and by a repair connection alike."""
    data = node_copy(made, tmp_path)
    fed, vault = data / FEDERATION_NONCES_FILE, data / VAULT_FILE
    guard = ReplayGuard(fed, keep_ms=600_000)
    try:
        with closing(sqlite3.connect(fed, isolation_level=None)) as attacker:
            attacker.execute("CREATE TABLE loot(k TEXT, v BLOB)")
            attacker.execute(
                "CREATE TRIGGER zz_loot AFTER INSERT ON seen BEGIN INSERT INTO loot VALUES("
                "'new_mac', careledger_row_mac('vault.sqlite', 'wrapped_keys', 'text', x'00')); "
                "END"
            )
            with pytest.raises(StorageError, match="'loot', which no module of the node creates"):
                guard.first_use("nonce-2", int(time.time() * 1000))
            assert attacker.execute("SELECT COUNT(*) FROM loot").fetchone() == (0,)
            with closing(store_mac.connect(vault)) as conn:  # the vault's own: other keys
                (code,) = conn.execute("SELECT careledger_row_mac('vault.sqlite', "
                                       "'wrapped_keys', 'text', x'00')").fetchone()  # fmt: skip
            fed_keys = made.keys(FEDERATION_NONCES_FILE)
            assert code != fed_keys.row_mac(VAULT_FILE, "wrapped_keys", [RawText(b"\0")])
    finally:
        guard.close()
    with closing(sqlite3.connect(vault)) as attacker:
        attacker.execute("CREATE VIEW zz_view AS SELECT 1")
        attacker.commit()
    for opening in (lambda: VaultStore(vault).close(), lambda: store_mac.connect(vault).close()):
        with pytest.raises(StorageError, match="'zz_view'"):
            opening()


def test_a_stripped_store_is_refused_and_verify_shows_a_re_enrolment(
    made: Made, tmp_path: Path
) -> None:
    """H3 (poc_strip_revouch.py): the SMART store's integrity table and triggers dropped and a
    revocation deleted: the node refuses it; once re-coded by hand, ``careledger verify`` finds
    its codes whole but shows the store's new ``since`` and the rows it vouched for. (This
    node's SMART rows name an app its ledger does not hold: those differences stay.)"""
    data = node_copy(made, tmp_path)
    smart = data / SMART_FILE

    def verify() -> tuple[dict[str, dict[str, Any]], list[dict[str, str]]]:
        done = run_cli("verify", str(data), "--json")
        report = json.loads(done.stdout)
        return {s["store"]: s for s in report["stores"]}, report["differences"]

    with closing(sqlite3.connect(smart)) as conn:
        (since,) = conn.execute("SELECT since FROM integrity WHERE tbl = ''").fetchone()
    with closing(sqlite3.connect(smart, isolation_level=None)) as attacker:
        for (name,) in attacker.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                        ).fetchall():  # fmt: skip
            attacker.execute(f"DROP TRIGGER {q(name)}")
        attacker.execute("DELETE FROM revoked_token")
        attacker.execute("DROP TABLE integrity")
    with pytest.raises(StorageError, match="integrity codes were removed"):
        GrantStore(smart)
    time.sleep(1.1)  # a later second
    counts = store_mac.enrol(smart, write=True)
    shown, differences = verify()
    assert set(shown) == set(STORES)
    assert not [d for d in differences if d["problem"] in (ROW_CHANGED, ROWS_CHANGED)
                or d["table"] == INTEGRITY]  # fmt: skip
    assert shown[SMART_FILE]["since"] > since and shown[VAULT_FILE]["vouched"] == 0
    assert shown[SMART_FILE]["vouched"] == sum(counts.values()) > 0
    table = run_cli("verify", str(data))
    assert "rows vouched for" in table.stdout + table.stderr
    GrantStore(smart).close()  # the node opens it again
