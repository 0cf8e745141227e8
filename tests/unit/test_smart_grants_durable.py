"""Authorization codes and EHR launches in the SMART grant store (issue 17): kept by hash only,
redeemed exactly once (across threads, store objects and reopenings of the file), a reused code
revoking the family it started, expired rows refused and swept in bounded batches, and an
existing smart.sqlite from before these tables opening unchanged."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from careledger.smart import grants as grants_module
from careledger.smart.grants import (
    SMART_FILE,
    Grant,
    GrantStore,
    PendingCode,
    ReusedCode,
    token_hash,
)

NOW = 1_750_000_000
PENDING = PendingCode(
    client_id="acme-charting",
    redirect_uri="https://app.example/cb",
    code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    member="dr-ana-silva",
    public_key="ed25519:AAAA",
    scope="launch openid fhirUser patient/*.rs",
    patient="pat-1",
    aud="https://node.example/fhir",
    nonce="n-0S6_WzA2Mj",
    expires=NOW + 60,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / SMART_FILE


@pytest.fixture
def store(path: Path) -> Iterator[GrantStore]:
    opened = GrantStore(path)
    yield opened
    opened.close()


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def test_a_code_gives_back_everything_the_exchange_needs(store: GrantStore) -> None:
    code = store.issue_code(PENDING, NOW)
    assert store.redeem_code(code, "fam-1", NOW + 1) == PENDING
    bare = replace(PENDING, patient=None, nonce=None)
    assert store.redeem_code(store.issue_code(bare, NOW), "fam-2", NOW) == bare


def test_only_a_hash_of_codes_and_launches_is_stored(store: GrantStore, path: Path) -> None:
    code = store.issue_code(PENDING, NOW)
    launch = store.create_launch("dr-ana-silva", "acme-charting", "pat-1", NOW + 300, NOW)
    spent = store.issue_code(PENDING, NOW)
    store.redeem_code(spent, "fam-1", NOW)
    assert rows(path, "SELECT hash FROM auth_code") == [(token_hash(code),)]
    assert rows(path, "SELECT hash FROM launch") == [(token_hash(launch),)]
    assert rows(path, "SELECT hash, family FROM spent_code") == [(token_hash(spent), "fam-1")]
    with closing(sqlite3.connect(path)) as conn:
        dump = "\n".join(conn.iterdump())
    for secret in (code, launch, spent):
        assert secret not in dump


def test_a_code_is_redeemed_once_and_reuse_revokes_its_family(store: GrantStore) -> None:
    code = store.issue_code(PENDING, NOW)
    assert store.redeem_code(code, "fam-1", NOW) is not None
    assert not store.family_revoked("fam-1")
    with pytest.raises(ReusedCode) as reused:
        store.redeem_code(code, "fam-2", NOW + 5)
    assert reused.value.family == "fam-1" and reused.value.until > NOW
    assert store.family_revoked("fam-1") and not store.family_revoked("fam-2")
    assert "fam-1" in store.revoked_families(NOW + 5)
    with pytest.raises(ReusedCode):  # and a third time too
        store.redeem_code(code, "fam-3", NOW + 6)


def test_unknown_and_expired_codes_give_nothing(store: GrantStore) -> None:
    assert store.redeem_code("no-such-code", "fam-1", NOW) is None
    code = store.issue_code(PENDING, NOW)
    assert store.redeem_code(code, "fam-1", PENDING.expires) is None
    assert store.redeem_code(code, "fam-2", PENDING.expires + 1) is None  # not a "reuse"
    assert not store.family_revoked("fam-1") and not store.family_revoked("fam-2")


def test_codes_and_spent_codes_survive_reopening_the_file(path: Path) -> None:
    first = GrantStore(path)
    waiting = first.issue_code(PENDING, NOW)
    spent = first.issue_code(PENDING, NOW)
    assert first.redeem_code(spent, "fam-1", NOW) is not None
    first.close()
    second = GrantStore(path)
    try:
        assert second.redeem_code(waiting, "fam-2", NOW + 10) == PENDING
        with pytest.raises(ReusedCode):
            second.redeem_code(waiting, "fam-3", NOW + 11)
        with pytest.raises(ReusedCode) as reused:
            second.redeem_code(spent, "fam-4", NOW + 12)
        assert reused.value.family == "fam-1" and second.family_revoked("fam-1")
    finally:
        second.close()


def race(stores: list[GrantStore], code: str, threads: int = 16) -> tuple[list[str], list[str]]:
    """``threads`` redeems of ``code`` released at once, spread over ``stores``: the families
    that won, and those named by ReusedCode."""
    start = threading.Barrier(threads)
    won: list[str] = []
    reused: list[str] = []
    failed: list[BaseException] = []

    def redeem(store: GrantStore, family: str) -> None:
        start.wait()
        try:
            if store.redeem_code(code, family, NOW) is not None:
                won.append(family)
        except ReusedCode as exc:
            reused.append(exc.family)
        except BaseException as exc:
            failed.append(exc)

    running = [
        threading.Thread(target=redeem, args=(stores[i % len(stores)], f"fam-{i}"))
        for i in range(threads)
    ]
    for t in running:
        t.start()
    for t in running:
        t.join(30)
    assert failed == []
    return won, reused


def test_concurrent_redeems_across_store_objects_give_the_code_once(path: Path) -> None:
    """Two store objects over one file (as two processes would have), eight threads each, all
    released at once on the same code: exactly one redeem wins; every other one is a reuse."""
    stores = [GrantStore(path), GrantStore(path)]
    try:
        for _ in range(5):
            won, reused = race(stores, stores[0].issue_code(PENDING, NOW))
            assert len(won) == 1, won
            assert reused == won * 15  # every loser names the winner's family
            assert stores[1].family_revoked(won[0])
    finally:
        for s in stores:
            s.close()


def test_launches_resolve_until_they_expire_and_after_reopening(path: Path) -> None:
    first = GrantStore(path)
    launch = first.create_launch("dr-ana-silva", "ehr-app", "pat-1", NOW + 300, NOW)
    standalone = first.create_launch("dr-ana-silva", "ehr-app", None, NOW + 300, NOW)
    first.close()
    second = GrantStore(path)
    try:
        found = second.launch(launch, NOW + 299)
        assert found is not None
        assert (found.member, found.client_id, found.patient) == (
            "dr-ana-silva",
            "ehr-app",
            "pat-1",
        )
        assert second.launch(launch, NOW + 299) == found  # read more than once
        assert second.launch(launch, NOW + 300) is None
        nobody = second.launch(standalone, NOW)
        assert nobody is not None and nobody.patient is None
        assert second.launch("no-such-launch", NOW) is None
    finally:
        second.close()


def test_expired_rows_are_swept_a_bounded_batch_at_a_time(
    store: GrantStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grants_module, "SWEEP_BATCH", 4)
    for _ in range(10):
        store.issue_code(PENDING, NOW)
        store.create_launch("dr-ana-silva", "ehr-app", "pat-1", NOW + 300, NOW)
    live = replace(PENDING, expires=PENDING.expires + 10_000)
    later = PENDING.expires + 1
    store.issue_code(live, later)  # sweeps 4 of the 10 expired codes, not all of them
    assert rows(path, "SELECT count(*) FROM auth_code") == [(7,)]
    store.issue_code(live, later)
    assert rows(path, "SELECT count(*) FROM auth_code") == [(4,)]  # 2 expired + 2 live
    store.issue_code(live, later)
    assert rows(path, "SELECT count(*) FROM auth_code") == [(3,)]  # the 3 live ones
    store.create_launch("dr-ana-silva", "ehr-app", "pat-1", NOW + 10_000, NOW + 301)
    assert rows(path, "SELECT count(*) FROM launch") == [(7,)]
    # spent codes are swept when other codes are redeemed, once their watch is over
    spent = store.issue_code(live, later)
    store.redeem_code(spent, "fam-1", later)
    gone = later + grants_module.SPENT_CODE_SECONDS
    store.redeem_code(store.issue_code(replace(live, expires=gone + 60), gone), "fam-2", gone)
    assert rows(path, "SELECT family FROM spent_code") == [("fam-2",)]


def test_pending_rows_are_capped(
    store: GrantStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grants_module, "MAX_PENDING", 5)
    codes = [store.issue_code(PENDING, NOW) for _ in range(8)]
    assert rows(path, "SELECT count(*) FROM auth_code") == [(5,)]
    for oldest in codes[:3]:  # went first
        assert store.redeem_code(oldest, "fam-1", NOW) is None
    assert store.redeem_code(codes[-1], "fam-2", NOW) == PENDING


def test_an_existing_smart_file_gains_the_new_tables(path: Path) -> None:
    """A smart.sqlite made before codes were stored: its refresh grants keep working."""
    old_schema = (
        """CREATE TABLE refresh(
            hash TEXT PRIMARY KEY, family TEXT NOT NULL, client_id TEXT NOT NULL,
            member TEXT NOT NULL, public_key TEXT NOT NULL, scope TEXT NOT NULL, patient TEXT,
            created INTEGER NOT NULL,
            expires INTEGER NOT NULL, state TEXT NOT NULL)""",
        "CREATE INDEX refresh_family ON refresh(family)",
        """CREATE TABLE assertion(
            client_id TEXT NOT NULL, jti TEXT NOT NULL, expires INTEGER NOT NULL,
            PRIMARY KEY(client_id, jti))""",
        "CREATE TABLE revoked_family(family TEXT PRIMARY KEY, until INTEGER NOT NULL)",
        "CREATE TABLE revoked_token(jti TEXT PRIMARY KEY, until INTEGER NOT NULL)",
    )
    with sqlite3.connect(path) as conn:
        for statement in old_schema:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO refresh VALUES(?,?,?,?,?,?,?,?,?, 'active')",
            (token_hash("old-refresh"), "fam-old", "acme-charting", "pat-1", "ed25519:AAAA",
             "patient/*.rs", "pat-1", NOW, NOW + 3600),
        )  # fmt: skip
    conn.close()
    for _ in range(2):  # and opening it again changes nothing
        store = GrantStore(path)
        try:
            code = store.issue_code(PENDING, NOW)
            assert store.redeem_code(code, "fam-new", NOW) == PENDING
        finally:
            store.close()
    store = GrantStore(path)
    try:
        grant = store.redeem_refresh("old-refresh", "acme-charting", NOW)
        assert grant == Grant(
            "fam-old", "acme-charting", "pat-1", "ed25519:AAAA", "patient/*.rs", "pat-1", NOW + 3600
        )
    finally:
        store.close()
