"""The EPCIS repository's audit (issue 14): a clean demo node has no difference; one changed
value, one deleted row or one added row in any table of epcis.sqlite is named by store and
table (captures, events, event_epcs, alerts, alert_meta, verifications, sqlite_sequence and
the schema itself)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from careledger import store_mac
from careledger.config import EPCIS_FILE, Settings
from careledger.keyfile import read_key_file
from careledger.node_audit import Difference, NodeContext
from careledger.node_audit.epcis_store import EpcisStoreCheck
from careledger.storage.sqlite import SQLiteStore
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration

FIRST_CAPTURE = "(SELECT capture FROM events ORDER BY seq LIMIT 1)"
LAST_EVENT = "(SELECT max(seq) FROM events)"
REFUSED_CAPTURE = "(SELECT id FROM captures WHERE status = 'failed' AND tx_id IS NOT NULL)"
REFUSAL_ALERT = "(SELECT min(seq) FROM alerts WHERE kind = 'dispensed_twice')"
NO_HASH = "'ni:///sha-256;" + "0" * 64 + "?ver=CBV2.0'"


def _add_supply_activity(data: Path) -> None:
    """What the API adds to the demo: an alert store and a verification log, fed by an
    observed unknown serial, a capture the ledger refuses, a refused dispense, an
    illegitimate determination and three verifications (one of a dispensed unit)."""
    from careledger import demo
    from careledger.callers.caller import Caller
    from careledger.callers.scopes import default_scopes, parse_scopes
    from careledger.errors import Rejected
    from careledger.node import Node
    from careledger.supply import epcis_build as b
    from careledger.supply.alerts import AlertStore, AlertWatcher
    from careledger.supply.repository import EpcisRepository
    from careledger.supply.service import EpcisService
    from careledger.supply.supply_service import SupplyService
    from careledger.supply.verification_log import VerificationLog

    roles = {m: (o, frozenset(r)) for m, _, o, r in demo.DEMO_MEMBERS}

    def caller(member: str) -> Caller:
        org, member_roles = roles[member]
        return Caller(member, org, member_roles, parse_scopes(default_scopes(member_roles)))

    node = Node(Settings.load(data))
    node.start()
    repository = EpcisRepository(data / EPCIS_FILE)
    alerts = AlertStore(data / EPCIS_FILE)
    log = VerificationLog(data / EPCIS_FILE)
    watcher = AlertWatcher(node.ledger, alerts)
    watcher.attach()
    epcis = EpcisService(node, repository)
    supply = SupplyService(node, alerts, log)
    try:
        plen = len(demo.DEMO_PREFIX)
        (amox, amox_lot, _, _), (metformin, met_lot, _, _) = demo.DEMO_PRODUCTS
        gln = demo.DEMO_LOCATIONS["ph-chen-li"][0]
        pharmacy = b.sgln_urn(gln, plen)
        pharmacist = caller("ph-chen-li")

        def document(step: str, epc: str, minute: int) -> dict[str, object]:
            when = f"2026-11-01T10:{minute:02d}:00.000Z"
            event = b.object_event(
                time=when, biz_step=step, action="OBSERVE", epcs=[epc], location=pharmacy
            )
            return b.document([event], when)

        unknown = document("inspecting", b.sgtin_urn(amox, "NOPE0001", plen), 0)
        assert epcis.capture(pharmacist, unknown)["success"]  # a never_commissioned alert
        assert not epcis.capture(pharmacist, unknown)["success"]  # refused by the store
        dispensed = b.sgtin_urn(amox, f"{amox_lot}0001", plen)
        refused = epcis.capture(pharmacist, document("dispensing", dispensed, 5))
        assert refused["errors"][0]["code"] == "ALREADY_DISPENSED", refused
        assert refused["ledgerTransaction"] is not None
        with pytest.raises(Rejected):
            node.act_for(
                "supply",
                "ph-chen-li",
                "dispense",
                {"gtin": amox, "serial": f"{amox_lot}0001", "location": gln},
            )
        node.act_for(
            "supply",
            "ph-chen-li",
            "determine",
            {"gtin": metformin, "serial": f"{met_lot}0005", "determination": "illegitimate"},
        )
        request = {"gtin": amox, "serialNumber": f"{amox_lot}0001", "lotNumber": amox_lot,
                   "expirationDate": "271130", "requestorGLN": gln, "corrUUID": "c0ffee"}  # fmt: skip
        supply.verify(pharmacist, request)  # dispensed: verified_after_decommission
        supply.verify(None, {"gtin": metformin, "serialNumber": f"{met_lot}0009",
                             "lotNumber": met_lot, "expirationDate": "280229"})  # fmt: skip
        supply.verify(None, {"gtin": metformin, "serialNumber": "NOSUCH"})
    finally:
        watcher.detach()
        alerts.close()
        log.close()
        repository.close()
        node.stop()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("epcis-audit") / "node"
    demo_node(data, with_records=False)
    _add_supply_activity(data)
    with store_mac.connect(data / EPCIS_FILE) as conn:
        kinds = {k for (k,) in conn.execute("SELECT kind FROM alerts")}
        statuses = {s for (s,) in conn.execute("SELECT status FROM captures")}
    conn.close()
    assert kinds == {"never_commissioned", "dispensed_twice", "illegitimate",
                     "verified_after_decommission"}  # fmt: skip
    assert statuses == {"succeeded", "failed"}
    return data


@pytest.fixture(scope="module")
def pristine_r2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chain on r2: the ledger anchors each event's hash, type and unit operation only."""
    data = tmp_path_factory.mktemp("epcis-audit-r2") / "node"
    demo_node(data, with_records=False, ruleset="r2")
    return data


def _audit(data: Path) -> tuple[list[Difference], int]:
    settings = Settings.load(data)
    store = SQLiteStore(settings.store_path, readonly=True)
    key = read_key_file(settings.node_key_file)[1]
    context = NodeContext(data, store, key, settings.node_name, settings.org)
    seen: list[int] = []
    try:
        found = list(EpcisStoreCheck().check(context, seen.append))
        assert EpcisStoreCheck().size(context) == sum(seen)
    finally:
        store.close()
    return found, sum(seen)


@pytest.fixture
def node_copy(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "node"
    shutil.copytree(pristine, copy)
    return copy


def _tamper(data: Path, sql: str) -> None:
    conn = store_mac.connect(data / EPCIS_FILE)
    try:
        changed = conn.execute(sql).rowcount
        conn.commit()
    finally:
        conn.close()
    assert changed != 0, f"the tampering changed nothing: {sql}"


def test_a_clean_node_has_no_difference(pristine: Path) -> None:
    found, progressed = _audit(pristine)
    assert found == []
    with store_mac.connect(pristine / EPCIS_FILE) as conn:
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
    conn.close()
    assert progressed == events > 0


def test_a_clean_r2_node_has_no_difference(pristine_r2: Path) -> None:
    assert _audit(pristine_r2)[0] == []


CASES = [
    # captures
    ("captures", "update org", f"UPDATE captures SET org = 'medline-dist' WHERE id = {FIRST_CAPTURE}"),
    ("captures", "update tx_id", "UPDATE captures SET tx_id = (SELECT tx_id FROM captures"
     f" WHERE status = 'succeeded' AND id != {FIRST_CAPTURE} LIMIT 1) WHERE id = {FIRST_CAPTURE}"),
    ("captures", "update events", f"UPDATE captures SET events = events + 1 WHERE id = {FIRST_CAPTURE}"),
    ("captures", "update status", f"UPDATE captures SET status = 'failed' WHERE id = {FIRST_CAPTURE}"),
    ("captures", "left staged", "UPDATE captures SET status = 'running', tx_id = NULL,"
     f" errors = NULL WHERE id = {FIRST_CAPTURE}"),
    ("captures", "update created", "UPDATE captures SET created = '2099-01-01T00:00:00Z'"
     f" WHERE id = {FIRST_CAPTURE}"),
    ("captures", "update errors", "UPDATE captures SET errors = '[{\"code\":\"OTHER\"}]'"
     f" WHERE id = {REFUSED_CAPTURE}"),
    ("captures", "delete", f"DELETE FROM captures WHERE id = {FIRST_CAPTURE}"),
    ("captures", "delete refused", f"DELETE FROM captures WHERE id = {REFUSED_CAPTURE}"),
    ("captures", "insert", "INSERT INTO captures VALUES('cap-000000000000000000000000',"
     " 'city-pharmacy', 'succeeded', '2026-01-01T00:00:00Z', 0, NULL, '[]')"),
    # events
    ("events", "update body", "UPDATE events SET body = CAST(replace(CAST(body AS TEXT),"
     f" 'OBSERVE', 'DELETE') AS BLOB) WHERE seq = {LAST_EVENT}"),
    ("events", "update eventID", "UPDATE events SET body = CAST(json_set(CAST(body AS TEXT),"
     f" '$.eventID', 'urn:uuid:0') AS BLOB) WHERE seq = {LAST_EVENT}"),
    ("events", "update biz_step", "UPDATE events SET biz_step = 'receiving' WHERE seq = 1"),
    ("events", "update event_time", "UPDATE events SET event_time = '2026-11-01T09:10:00.001Z'"
     " WHERE seq = 1"),
    ("events", "update capture", f"UPDATE events SET capture = (SELECT capture FROM events"
     f" WHERE seq = {LAST_EVENT}) WHERE seq = 1"),
    ("events", "update hash", f"UPDATE events SET hash = {NO_HASH} WHERE seq = 1"),
    ("events", "delete", "DELETE FROM events WHERE seq = 3"),
    ("events", "insert", "INSERT INTO events(hash, capture, type, event_time, biz_step,"
     f" disposition, biz_location, body) SELECT {NO_HASH}, capture, type, event_time, biz_step,"
     " disposition, biz_location, body FROM events WHERE seq = 1"),
    # event_epcs
    ("event_epcs", "update epc", "UPDATE event_epcs SET epc = epc || '9'"
     " WHERE (seq, epc) = (SELECT seq, epc FROM event_epcs ORDER BY seq, epc LIMIT 1)"),
    ("event_epcs", "update role", "UPDATE event_epcs SET role = 'child'"
     " WHERE (seq, epc) = (SELECT seq, epc FROM event_epcs ORDER BY seq, epc LIMIT 1)"),
    ("event_epcs", "update seq", "UPDATE event_epcs SET seq = 2"
     " WHERE (seq, epc) = (SELECT seq, epc FROM event_epcs ORDER BY seq, epc LIMIT 1)"),
    ("event_epcs", "delete", "DELETE FROM event_epcs"
     " WHERE (seq, epc) = (SELECT seq, epc FROM event_epcs ORDER BY seq DESC, epc LIMIT 1)"),
    ("event_epcs", "insert", "INSERT INTO event_epcs VALUES(1,"
     " 'https://id.gs1.org/01/00312345100018/21/FORGED', 'epc')"),
    ("event_epcs", "insert stray", "INSERT INTO event_epcs VALUES(9999,"
     " 'https://id.gs1.org/01/00312345100018/21/AMX26010001', 'epc')"),
    # alerts
    ("alerts", "update location", "UPDATE alerts SET location = '0312345000011'"
     " WHERE kind = 'never_commissioned'"),
    ("alerts", "update time", f"UPDATE alerts SET time = time + 1 WHERE seq = {REFUSAL_ALERT}"),
    ("alerts", "update detail", "UPDATE alerts SET detail = '{}' WHERE kind = 'illegitimate'"),
    ("alerts", "update org", f"UPDATE alerts SET org = 'medline-dist' WHERE seq = {REFUSAL_ALERT}"),
    ("alerts", "update serial", "UPDATE alerts SET serial = 'AMX26010002'"
     " WHERE kind = 'verified_after_decommission'"),
    ("alerts", "delete", "DELETE FROM alerts WHERE kind = 'never_commissioned'"),
    ("alerts", "delete refusal", f"DELETE FROM alerts WHERE seq = {REFUSAL_ALERT}"),
    ("alerts", "insert", "INSERT INTO alerts(kind, code, gtin, serial, location, org,"
     " brand_owner, height, tx_id, time, detail) SELECT 'never_commissioned', NULL, gtin,"
     " 'FORGED', location, org, brand_owner, height, tx_id, time, detail FROM alerts"
     " WHERE kind = 'never_commissioned'"),
    # alert_meta
    ("alert_meta", "update", "UPDATE alert_meta SET value = value + 1000"),
    ("alert_meta", "delete", "DELETE FROM alert_meta"),
    ("alert_meta", "insert", "INSERT INTO alert_meta VALUES('other', 1)"),
    # verifications
    ("verifications", "update verified", "UPDATE verifications SET verified = 1 WHERE seq = 1"),
    ("verifications", "update response", "UPDATE verifications SET response = CAST(replace("
     "CAST(response AS TEXT), 'true', 'false') AS BLOB) WHERE seq = 2"),
    ("verifications", "update requester", "UPDATE verifications SET requester_org ="
     " 'medline-dist' WHERE seq = 1"),
    ("verifications", "update brand", "UPDATE verifications SET brand_owner = 'medline-dist'"
     " WHERE seq = 3"),
    ("verifications", "update lot", "UPDATE verifications SET lot = 'OTHER' WHERE seq = 2"),
    ("verifications", "delete", "DELETE FROM verifications WHERE seq = 2"),
    ("verifications", "delete last", "DELETE FROM verifications WHERE seq = 3"),
    ("verifications", "insert", "INSERT INTO verifications(time, requester, requester_org,"
     " gtin, serial, verified, response) SELECT time, 'intruder', 'medline-dist', gtin, serial,"
     " verified, response FROM verifications WHERE seq = 3"),
    # sqlite_sequence
    ("sqlite_sequence", "update", "UPDATE sqlite_sequence SET seq = 1 WHERE name = 'events'"),
    ("sqlite_sequence", "delete", "DELETE FROM sqlite_sequence WHERE name = 'alerts'"),
    ("sqlite_sequence", "insert", "INSERT INTO sqlite_sequence VALUES('captures', 7)"),
    # the schema
    ("sqlite_master", "drop index", "DROP INDEX events_time"),
    ("sqlite_master", "add index", "CREATE INDEX captures_org ON captures(org)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("table", "sql"), [(t, s) for t, _, s in CASES], ids=[f"{t}-{n}" for t, n, _ in CASES]
)
def test_one_tampering_is_named_by_store_and_table(node_copy: Path, table: str, sql: str) -> None:
    if sql.startswith(("DROP", "CREATE")):
        conn = store_mac.connect(node_copy / EPCIS_FILE)
        conn.execute(sql)
        conn.close()
    else:
        _tamper(node_copy, sql)
    found, _ = _audit(node_copy)
    assert found, "the tampering went unnoticed"
    assert {d.store for d in found} == {"epcis.sqlite"}
    assert table in {d.table for d in found}, found


def test_a_capture_left_staged_is_reported_as_such(node_copy: Path) -> None:
    _tamper(node_copy, "UPDATE captures SET status = 'running', tx_id = NULL, errors = NULL"
                       f" WHERE id = {FIRST_CAPTURE}")  # fmt: skip
    found, _ = _audit(node_copy)
    assert [d.table for d in found] == ["captures"]
    assert "left staged" in found[0].problem and "anchored it" in found[0].problem


def test_a_recovered_capture_without_its_transaction_id_is_legitimate(node_copy: Path) -> None:
    """``EpcisService.recover`` publishes an anchored capture with no tx_id."""
    _tamper(node_copy, f"UPDATE captures SET tx_id = NULL WHERE id = {FIRST_CAPTURE}")
    assert _audit(node_copy)[0] == []


def test_a_difference_names_the_row(node_copy: Path) -> None:
    with store_mac.connect(node_copy / EPCIS_FILE) as conn:
        (hash_id,) = conn.execute(f"SELECT hash FROM events WHERE seq = {LAST_EVENT}").fetchone()
    conn.close()
    _tamper(node_copy, "UPDATE events SET biz_step = 'receiving'"
                       f" WHERE seq = {LAST_EVENT}")  # fmt: skip
    found, _ = _audit(node_copy)
    assert [(d.table, d.row) for d in found] == [("events", hash_id)]
    assert "biz_step" in found[0].problem


def test_a_changed_body_on_r2_is_caught_by_its_hash(pristine_r2: Path, tmp_path: Path) -> None:
    copy = tmp_path / "node"
    shutil.copytree(pristine_r2, copy)
    _tamper(copy, "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), 'OBSERVE',"
                  f" 'DELETE') AS BLOB) WHERE seq = {LAST_EVENT}")  # fmt: skip
    found, _ = _audit(copy)
    assert found and {d.table for d in found} == {"events"}
    assert any("hashes to" in d.problem for d in found)


def test_a_node_without_the_store_has_nothing_to_check(pristine: Path, tmp_path: Path) -> None:
    copy = tmp_path / "node"
    shutil.copytree(pristine, copy)
    (copy / EPCIS_FILE).unlink()
    assert _audit(copy) == ([], 0)
