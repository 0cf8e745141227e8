"""The health links store's and the health cards issuer key's checkers on a real demo node: a
node whose patient made, opened, revoked and used up links (and got a card) passes, whole; one
change, deletion or insertion in either table, or in the issuer key file, is named by store and
table; no difference carries a patient, a label, a token hash, a passcode or the issuer's key."""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from careledger import store_mac
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.contracts.links import NAMESPACE as LINKS
from careledger.fhir.extract import patient_id
from careledger.health.health_cards import ISSUER_FILE, HealthCards
from careledger.health.service import HealthRecords
from careledger.health.share_links import LINKS_FILE, Selection, ShareLinks, WrongPasscode
from careledger.health_links.link import parse_uri
from careledger.keyfile import read_key_file
from careledger.node import Node
from careledger.node_audit import Difference, NodeContext, audit_node, links_store
from careledger.node_audit.links_store import IssuerKeyCheck, LinksStoreCheck
from careledger.storage.sqlite import SQLiteStore
from careledger.vault.at_rest import AtRest
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration
ORIGIN = "https://node.example"
PASSCODE = "harbour-lights-7"
LABEL = "For Dr Jones, urgent care"
FOREIGN_ORG = "northside-clinic"


@dataclass(frozen=True)
class Made:
    """What the pristine node's patient did, by name."""

    data: Path
    patient: str
    other: str  # another patient of the node
    links: dict[str, str]  # name -> link id
    expires: int  # the guarded link's expiry (seconds)
    later_record: str  # a Condition of the patient anchored after the plain link was made
    erased_file: tuple[Any, ...]  # a file row of the "erased" link, as it was before a shred


def patient_caller(patient: str, org: str) -> Caller:
    roles = frozenset({"patient"})
    return Caller(patient, org, roles, parse_scopes(default_scopes(roles)))


def clinician() -> Caller:
    roles = frozenset({"clinician"})
    return Caller("dr-ana-silva", "st-mary", roles, parse_scopes(default_scopes(roles)))


def token_of(made: dict[str, Any]) -> str:
    return str(parse_uri(made["shlink"]).url.rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """The demo node, its first patient's links made through ``ShareLinks`` (with its commit
    listener, as the app runs it) and a health card through ``HealthCards``."""
    data = tmp_path_factory.mktemp("links-audit") / "node"
    demo_node(data, with_supply=False)
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    links = ShareLinks(records, data)
    node.ledger.commit_listeners.append(links.on_commit)
    cards = HealthCards(records, data)
    patient, other = sorted(p.stem for p in (data / "keys" / "patients").glob("*.key"))[:2]
    caller = patient_caller(patient, records.org)
    ids: dict[str, str] = {}

    def make(name: str, selection: Selection, flags: str = "", **kw: Any) -> dict[str, Any]:
        made = links.create(caller, patient, origin=ORIGIN, selection=selection, flags=flags,
                            passcode=kw.pop("passcode", None), expires=kw.pop("expires", None),
                            label=kw.pop("label", None), **kw)  # fmt: skip
        ids[name] = str(made["id"])
        return made

    def located(made: dict[str, Any], passcode: str | None = None) -> None:
        body = {"recipient": "Dr Jones", "embeddedLengthMax": 0, "passcode": passcode}
        answer = links.manifest(token_of(made), body, ORIGIN)
        assert "location" in answer["files"][0]

    def wrong(made: dict[str, Any]) -> None:
        with pytest.raises(WrongPasscode):
            links.manifest(token_of(made), {"recipient": "Guesser", "passcode": "nope-nope"},
                           ORIGIN)  # fmt: skip

    try:
        conditions = Selection(("Condition", "Observation"))
        make("plain", conditions, label=LABEL)
        time.sleep(2.1)  # the next record is anchored well after the plain link was made
        later = records.create(clinician(), {"resourceType": "Condition",
                                             "subject": {"reference": f"Patient/{patient}"},
                                             "code": {"text": "later"}},
                               patient_of=patient_id)  # fmt: skip
        erased = make("erased", conditions)
        located(erased)
        with closing(store_mac.connect(data / LINKS_FILE)) as conn:
            erased_file = conn.execute("SELECT token_hash, link, jwe, expires FROM file WHERE link = ?",
                                       (ids["erased"],)).fetchone()  # fmt: skip
        time.sleep(2.1)  # the shred comes well after the file was made
        records.shred(caller, later.record_id)  # the listener deletes the patient's files
        expires = int(time.time()) + 7 * 86_400
        guarded = make("guarded", conditions, "P", passcode=PASSCODE, expires=expires)
        wrong(guarded)
        located(guarded, PASSCODE)
        make("following", Selection((), summary=True), "L")
        make("direct", Selection(("Condition",)), "U")
        revoked = make("revoked", conditions)
        located(revoked)
        links.revoke(caller, patient, ids["revoked"])
        disabled = make("disabled", Selection(("Condition",)), "P", passcode=PASSCODE)
        for _ in range(5):
            wrong(disabled)
        key = records.custodial_key(patient)
        (foreign,) = node.execute(
            [(LINKS, "create", {"custodian": FOREIGN_ORG, "types": ["Condition"]})], keypair=key
        )
        assert foreign["result"] == "accepted"
        ids["foreign"] = str(foreign["tx_id"])
        cards.issue(caller, patient, "immunizations", ORIGIN)
    finally:
        links.close()
        records.close()
        node.stop()
    with closing(store_mac.connect(data / LINKS_FILE)) as conn:
        files = dict(conn.execute("SELECT link, COUNT(*) FROM file GROUP BY link").fetchall())
        left = dict(conn.execute("SELECT id, attempts_left FROM link").fetchall())
    assert files == {ids["guarded"]: 1}  # the revoked and erased links' files are gone
    assert left[ids["guarded"]] == 4 and left[ids["disabled"]] == 0
    return Made(data, patient, other, ids, expires, later.record_id, erased_file)


@pytest.fixture
def made(pristine: Made, tmp_path: Path) -> Made:
    copy = tmp_path / "node"
    shutil.copytree(pristine.data, copy)
    return Made(copy, pristine.patient, pristine.other, pristine.links, pristine.expires,
                pristine.later_record, pristine.erased_file)  # fmt: skip


def context_of(data: Path, store: SQLiteStore) -> NodeContext:
    settings = Settings.load(data)
    key = read_key_file(settings.node_key_file)[1]
    return NodeContext(data, store, key, settings.node_name, settings.org)


def audit(data: Path) -> list[Difference]:
    store = SQLiteStore(Settings.load(data).store_path, readonly=True)
    try:
        context = context_of(data, store)
        found: list[Difference] = []
        for check in (LinksStoreCheck(), IssuerKeyCheck()):
            done: list[int] = []
            found += list(check.check(context, done.append))
            assert sum(done) == check.size(context)  # the progress bar ends full
        return found
    finally:
        store.close()


def secrets_of(data: Path) -> list[str]:
    """What no difference may carry: patients, labels, token hashes, the issuer's key."""
    out = [LABEL, PASSCODE, "Dr Jones"]
    out += [p.stem for p in (data / "keys" / "patients").glob("*.key")]
    with closing(store_mac.connect(data / LINKS_FILE)) as conn:
        out += [str(t) for (t,) in conn.execute("SELECT token_hash FROM link")]
        out += [str(t) for (t,) in conn.execute("SELECT token_hash FROM file")]
        out += [bytes(k).hex()[:16] for (k,) in conn.execute("SELECT wrapped_key FROM link")]
    issuer = orjson.loads((data / ISSUER_FILE).read_bytes())
    return [*out, issuer["rid_secret"], issuer["jwk"]["d"]]


Tamper = Callable[[Made, sqlite3.Connection, AtRest], object]


def tamper(made: Made, change: Tamper) -> None:
    sealed = AtRest.for_node(read_key_file(Settings.load(made.data).node_key_file)[1],
                             "health links")  # fmt: skip
    with closing(store_mac.connect(made.data / LINKS_FILE)) as conn:
        change(made, conn, sealed)
        conn.commit()


def sql(statement: str, *names: str) -> Tamper:
    """A statement whose parameters are the links named (or literal values)."""

    def change(made: Made, conn: sqlite3.Connection, _: AtRest) -> None:
        conn.execute(statement, [made.links.get(n, n) for n in names])

    return change


def flip(column: str, link: str) -> Tamper:
    def change(made: Made, conn: sqlite3.Connection, _: AtRest) -> None:
        (value,) = conn.execute(f"SELECT {column} FROM link WHERE id = ?",
                                (made.links[link],)).fetchone()  # fmt: skip
        changed = bytearray(value)
        changed[-1] ^= 1
        conn.execute(f"UPDATE link SET {column} = ? WHERE id = ?", (bytes(changed),
                                                                    made.links[link]))  # fmt: skip

    return change


def resealed(link: str, edit: Callable[[Made, dict[str, Any]], object]) -> Tamper:
    """The link's sealed part changed and sealed again with the node's own key (someone
    holding it)."""

    def change(made: Made, conn: sqlite3.Connection, sealed: AtRest) -> None:
        link_id = made.links[link]
        (blob,) = conn.execute("SELECT sealed FROM link WHERE id = ?", (link_id,)).fetchone()
        private = orjson.loads(sealed.open(blob, link_id))
        edit(made, private)
        blob = sealed.seal(orjson.dumps(private), link_id)
        conn.execute("UPDATE link SET sealed = ? WHERE id = ?", (blob, link_id))

    return change


def another_patients_record(made: Made, private: dict[str, Any]) -> None:
    store = SQLiteStore(Settings.load(made.data).store_path, readonly=True)
    try:
        key = store.state_keys("records", f"patient/{made.other}/", 1)[0]
    finally:
        store.close()
    private["frozen"].append([key.rsplit("/", 1)[1], 1])


def file_of(link: str, **changes: object) -> Tamper:
    """A file of ``link``: the guarded link's file copied, with ``changes``."""

    def change(made: Made, conn: sqlite3.Connection, _: AtRest) -> None:
        _token, _link, jwe, expires = conn.execute(
            "SELECT token_hash, link, jwe, expires FROM file"
        ).fetchone()
        row = {"token_hash": secrets.token_hex(32), "link": made.links.get(link, link),
               "jwe": jwe, "expires": expires, **changes}  # fmt: skip
        conn.execute("INSERT INTO file(token_hash, link, jwe, expires) VALUES(?, ?, ?, ?)",
                     (row["token_hash"], row["link"], row["jwe"], row["expires"]))  # fmt: skip

    return change


def set_file(column: str, value: Callable[[Made], object]) -> Tamper:
    def change(made: Made, conn: sqlite3.Connection, _: AtRest) -> None:
        conn.execute(f"UPDATE file SET {column} = ?", (value(made),))

    return change


def swap_index_roots(made: Made, conn: sqlite3.Connection, _: AtRest) -> None:
    """Each of the link table's two indexes pointed at the other's b-tree: the schema's text
    is unchanged, its pages no longer agree (what a torn write or a hand edit leaves)."""
    roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_master WHERE tbl_name = 'link'"
                              " AND type = 'index'").fetchall())  # fmt: skip
    first, second = sorted(roots)
    conn.execute("PRAGMA writable_schema = ON")
    for name, root in ((first, roots[second]), (second, roots[first])):
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = ?", (root, name))


UNKNOWN = "ab" * 32
CASES: list[tuple[str, str, str, Tamper]] = [
    ("link", "an id the ledger does not know", "ledger does not know",
     sql("UPDATE link SET id = ? WHERE id = ?", UNKNOWN, "plain")),
    ("link", "another patient", "patient is not the ledger's",
     lambda m, c, s: c.execute("UPDATE link SET patient = ? WHERE id = ?",
                               (m.other, m.links["plain"]))),
    ("link", "a copy of another organisation's link", "another organisation to serve",
     # another first hex digit: token_hash is unique (an 'f' there would copy it whole)
     sql("INSERT INTO link SELECT ?, patient, CASE substr(token_hash, 1, 1) WHEN 'f' THEN 'e'"
         " ELSE 'f' END || substr(token_hash, 2), wrapped_key,"
         " passcode, attempts_left, sealed, created FROM link WHERE id = ?", "foreign", "plain")),
    ("link", "a token hash not in hex", "token_hash is not",
     sql("UPDATE link SET token_hash = 'not-hex' WHERE id = ?", "plain")),
    ("link", "a wrapped key cut short", "wrapped_key is not",
     sql("UPDATE link SET wrapped_key = substr(wrapped_key, 2) WHERE id = ?", "plain")),
    ("link", "a passcode hash cut short", "passcode is not a salt",
     sql("UPDATE link SET passcode = substr(passcode, 2) WHERE id = ?", "guarded")),
    ("link", "the passcode removed from a P link", "flags have P",
     sql("UPDATE link SET passcode = NULL WHERE id = ?", "guarded")),
    ("link", "a passcode added to a link without P", "flags lack P",
     sql("UPDATE link SET passcode = (SELECT passcode FROM link WHERE id = ?) WHERE id = ?",
         "guarded", "plain")),
    ("link", "attempts above the limit", "attempts_left is not",
     sql("UPDATE link SET attempts_left = 6 WHERE id = ?", "guarded")),
    ("link", "attempts counted on a link without passcode", "counted down on a link without",
     sql("UPDATE link SET attempts_left = 3 WHERE id = ?", "plain")),
    ("link", "attempts given back to a disabled link", "attempts are left",
     sql("UPDATE link SET attempts_left = 5 WHERE id = ?", "disabled")),
    ("link", "attempts spent on an active link", "links.disable never committed",
     sql("UPDATE link SET attempts_left = 0 WHERE id = ?", "guarded")),
    ("link", "a sealed byte changed", "does not open", flip("sealed", "plain")),
    ("link", "the sealed part moved from another link", "does not open",
     sql("UPDATE link SET sealed = (SELECT sealed FROM link WHERE id = ?) WHERE id = ?",
         "following", "plain")),
    ("link", "the sealed part in clear", "held in clear",
     sql("UPDATE link SET sealed = '{\"selection\": {}}' WHERE id = ?", "plain")),
    ("link", "sealed: a label too long", "the label is not",
     resealed("plain", lambda m, p: p.update(label="x" * 81))),
    ("link", "sealed: wider than the ledger's types", "record types it reaches",
     resealed("plain", lambda m, p: p["selection"]["types"].append("Claim"))),
    ("link", "sealed: versions dropped from a link without L", "lack L",
     resealed("plain", lambda m, p: p.update(frozen=None))),
    ("link", "sealed: versions added to an L link", "have L",
     resealed("following", lambda m, p: p.update(frozen=[]))),
    ("link", "sealed: another patient's record", "not the link's patient's",
     resealed("plain", another_patients_record)),
    ("link", "created moved by a day", "created is not within",
     sql("UPDATE link SET created = created - 86400 WHERE id = ?", "plain")),
    ("link", "deleted (made with the key this node holds)", "its row is not held",
     sql("DELETE FROM link WHERE id = ?", "plain")),
    ("link", "the table's indexes no longer agree", "integrity check fails", swap_index_roots),
    ("link", "a trigger added", "creates no trigger",
     sql("CREATE TRIGGER t AFTER INSERT ON link BEGIN SELECT 1; END")),
    ("file", "of a link the store does not hold", "this store does not hold", file_of(UNKNOWN)),
    ("file", "of another organisation's link", "another organisation's link",
     file_of("foreign")),
    ("file", "of a revoked link", "link revoked", file_of("revoked")),
    ("file", "of a disabled link", "link disabled", file_of("disabled")),
    ("file", "of a direct-file link", "direct-file", file_of("direct")),
    ("file", "a token hash not in hex", "token_hash is not",
     set_file("token_hash", lambda m: "xyz")),
    ("file", "not a JWE", "not a compact JWE", set_file("jwe", lambda m: b"\x00" * 64)),
    ("file", "a JWE with another header", "not a compact JWE",
     set_file("jwe", lambda m: b"e30.." + b"A" * 16 + b".x." + b"A" * 22)),
    ("file", "made after the link expired", "after the link expired",
     set_file("expires", lambda m: m.expires + 3600 + 2 * links_store.CLOCK_WINDOW)),
    ("file", "made before the link was on the ledger", "before the link was on the ledger",
     set_file("expires", lambda m: int(time.time()) - 86_400)),
    ("file", "expires not a time", "expires is not a time",
     set_file("expires", lambda m: "soon")),
    ("file", "the table dropped", "lacks it", sql("DROP TABLE file")),
]  # fmt: skip


def test_a_clean_node_has_no_difference(made: Made) -> None:
    assert audit(made.data) == []


def test_a_clean_node_verifies_whole(made: Made) -> None:
    """Every checker, as ``careledger verify`` runs them: the links and cards made through the
    node's own paths leave no store out of step."""
    store = SQLiteStore(Settings.load(made.data).store_path, readonly=True)
    try:
        assert audit_node(context_of(made.data, store)) == []
    finally:
        store.close()


@pytest.mark.parametrize(("table", "how", "says", "change"), CASES,
                         ids=[f"{t}: {h}" for t, h, _, _ in CASES])  # fmt: skip
def test_a_tampered_table_is_named(
    made: Made, table: str, how: str, says: str, change: Tamper
) -> None:
    never = secrets_of(made.data)
    tamper(made, change)
    found = audit(made.data)
    assert any(d.store == LINKS_FILE and d.table == table and says in d.problem
               for d in found), found  # fmt: skip
    for d in found:
        for secret in never:
            assert secret not in d.row + d.problem, (secret, d)
        assert "sqlite_autoindex" not in d.problem  # SQLite's own messages are not repeated


def test_each_check_says_what_it_found(made: Made) -> None:
    """The differences are the ones meant, not any: a few cases, word for word enough."""
    tamper(made, sql("UPDATE link SET attempts_left = 5 WHERE id = ?", "disabled"))
    (found,) = audit(made.data)
    assert (found.table, found.row) == ("link", made.links["disabled"])
    assert "disabled" in found.problem and "attempts are left" in found.problem


def test_a_file_made_before_a_shred_of_the_patients_record_is_named(
    made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erased link's file, as it was before the patient shredded a record (the node
    deleted it then), put back."""
    monkeypatch.setattr(links_store, "CLOCK_WINDOW", 1)

    def put_back(m: Made, conn: sqlite3.Connection, _: AtRest) -> None:
        conn.execute("INSERT INTO file VALUES(?, ?, ?, ?)", m.erased_file)

    assert not [d for d in audit(made.data) if d.table == "file"]
    tamper(made, put_back)
    (found,) = [d for d in audit(made.data) if d.table == "file"]
    assert found.row.startswith(made.links["erased"]) and "shredded" in found.problem


def test_a_version_anchored_after_the_link_was_made_is_named(
    made: Made, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(links_store, "CLOCK_WINDOW", 1)
    tamper(made, resealed("plain", lambda m, p: p["frozen"].append([m.later_record, 1])))
    assert any(
        d.table == "link" and d.row == made.links["plain"] and "anchored after" in d.problem
        for d in audit(made.data)
    )


def without_custodial_key(made: Made) -> None:
    """The patient's key gone from the node: only the ledger's openings and disablings can
    then say the node held a link."""
    (made.data / "keys" / "patients" / f"{made.patient}.key").unlink()


def test_a_deleted_link_this_node_served_is_named(made: Made) -> None:
    without_custodial_key(made)
    assert audit(made.data) == []
    tamper(made, sql("DELETE FROM link WHERE id = ?", "guarded"))
    found = [d for d in audit(made.data) if d.row == made.links["guarded"] and d.table == "link"]
    assert any("served an opening" in d.problem for d in found), found


def test_a_deleted_link_this_node_disabled_is_named(made: Made) -> None:
    without_custodial_key(made)
    tamper(made, sql("DELETE FROM link WHERE id = ?", "disabled"))
    (found,) = audit(made.data)
    assert (found.table, found.row) == ("link", made.links["disabled"])
    assert "disabled" in found.problem


def test_a_deleted_link_nobody_here_made_or_served_is_no_difference(made: Made) -> None:
    """The limit the module states: a patient may sign links.create themselves."""
    without_custodial_key(made)
    tamper(made, sql("DELETE FROM link WHERE id = ?", "plain"))
    assert audit(made.data) == []


def test_a_missing_store_is_named_by_the_links_this_node_made(made: Made) -> None:
    (made.data / LINKS_FILE).unlink()
    found = audit(made.data)
    named = {d.row for d in found if d.store == LINKS_FILE and d.table == "link"}
    assert named == {made.links[n] for n in made.links if n != "foreign"}


def new_issuer_key() -> dict[str, Any]:
    private = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
    return dict(private.as_dict(private=True))


ISSUER_CASES: list[tuple[str, str, Callable[[dict[str, Any]], object]]] = [
    ("jwk", "another key", lambda doc: doc.update(jwk=new_issuer_key())),
    ("jwk", "a public key only", lambda doc: doc["jwk"].pop("d")),
    ("rid_secret", "another secret", lambda doc: doc.update(rid_secret=secrets.token_urlsafe(32))),
    ("rid_secret", "a short secret", lambda doc: doc.update(rid_secret="c2hvcnQ")),
]


@pytest.mark.parametrize(("part", "how", "edit"), ISSUER_CASES,
                         ids=[f"{p}: {h}" for p, h, _ in ISSUER_CASES])  # fmt: skip
def test_a_changed_issuer_key_file_is_named(
    made: Made, part: str, how: str, edit: Callable[[dict[str, Any]], object]
) -> None:
    never = secrets_of(made.data)
    path = made.data / ISSUER_FILE
    doc = orjson.loads(path.read_bytes())
    edit(doc)
    path.write_bytes(orjson.dumps(doc))
    found = audit(made.data)
    assert [(d.store, d.table) for d in found] == [(ISSUER_FILE, part)], found
    for d in found:
        for secret in never:
            assert secret not in d.row + d.problem


@pytest.mark.parametrize("damage", ["delete", "garbage", "directory"])
def test_a_missing_or_damaged_issuer_key_file_is_named(made: Made, damage: str) -> None:
    path = made.data / ISSUER_FILE
    path.unlink()
    if damage == "garbage":
        path.write_bytes(b"{not json")
    elif damage == "directory":
        path.mkdir()
    found = audit(made.data)
    assert found and {(d.store, d.table) for d in found} == {(ISSUER_FILE, "(file)")}, found
