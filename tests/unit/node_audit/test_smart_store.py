"""The SMART grant store's checker on a real demo node: grants made, rotated and revoked, codes
issued and redeemed, a launch, an assertion and a revoked access token (all through
``GrantStore``) pass, whole; one change in any table is named by its table; no difference
carries a hash, a grant id, a member or a patient."""

from __future__ import annotations

import secrets
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from careledger import store_mac
from careledger.config import Settings
from careledger.core.keys import b64url_encode
from careledger.keyfile import read_key_file
from careledger.node import Node
from careledger.node_audit import checks
from careledger.node_audit.smart_store import SmartStoreCheck
from careledger.smart.grants import SMART_FILE, Grant, GrantStore, PendingCode
from careledger.smart.oauth import CODE_TTL, LAUNCH_TTL, OFFLINE_SECONDS, ONLINE_SECONDS
from tests.support.nodes import demo_node
from tests.unit.node_audit.stores import audit, copy_of, leaked, run_sql

pytestmark = pytest.mark.integration
APP = "st-mary-portal"
REDIRECT = "https://portal.example/callback"


@dataclass(frozen=True)
class Made:
    data: Path
    secrets: list[str]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Made:
    data = tmp_path_factory.mktemp("smart-audit") / "node"
    demo_node(data, with_records=False, with_supply=False)
    node = Node(Settings.load(data))
    node.start()
    try:
        admin = read_key_file(data / "keys" / "st-mary-admin.key")[1]
        (receipt,) = node.execute([("apps", "register", {
            "client_id": APP, "name": "Portal", "kind": "public", "redirect_uris": [REDIRECT],
            "scopes": "patient/*.rs offline_access online_access openid fhirUser launch"})],
            keypair=admin)  # fmt: skip
        assert receipt["result"] == "accepted", receipt
    finally:
        node.stop()
    member, user = read_key_file(data / "keys" / "dr-ana-silva.key")
    patient = read_key_file(data / "keys" / "patient-0001.key")[0]
    grants = GrantStore(data / SMART_FILE)
    now = int(time.time())
    try:
        offline = Grant(grants.new_family(), APP, member, user.public_b64,
                        "patient/*.rs offline_access", patient, now + OFFLINE_SECONDS)  # fmt: skip
        first = grants.issue_refresh(offline, now)
        assert grants.redeem_refresh(first, APP, now) is not None  # rotated: used
        grants.issue_refresh(offline, now)
        online = Grant(grants.new_family(), APP, member, user.public_b64,
                       "patient/*.rs online_access", None, now + ONLINE_SECONDS)  # fmt: skip
        grants.issue_refresh(online, now)
        grants.revoke_family(online.family, online.expires)
        challenge = b64url_encode(secrets.token_bytes(32))
        pending = PendingCode(APP, REDIRECT, challenge, member, user.public_b64,
                              "patient/*.rs openid", patient, "https://node.example/fhir",
                              "n-1", now + CODE_TTL)  # fmt: skip
        grants.issue_code(pending, now)
        spent = grants.issue_code(pending, now)
        assert grants.redeem_code(spent, grants.new_family(), now) is not None
        grants.create_launch(member, APP, patient, now + LAUNCH_TTL, now)
        assert grants.first_assertion(APP, "assertion-jti-1", now + 240, now)
        grants.revoke_token(b64url_encode(secrets.token_bytes(12)), now + 3600)
    finally:
        grants.close()
    with closing(store_mac.connect(data / SMART_FILE)) as conn:
        hidden = [str(v) for table, column in (("refresh", "hash"), ("refresh", "family"),
                  ("auth_code", "hash"), ("spent_code", "hash"), ("launch", "hash"),
                  ("revoked_token", "jti"), ("assertion", "jti"))
                  for (v,) in conn.execute(f"SELECT {column} FROM {table}")]  # fmt: skip
    return Made(data, [*hidden, member, patient, user.public_b64, challenge])


def test_the_checker_is_registered() -> None:
    assert any(isinstance(c, SmartStoreCheck) for c in checks())


def test_a_clean_store_passes_whole(pristine: Made) -> None:
    assert audit(pristine.data, SmartStoreCheck()) == []


@pytest.mark.parametrize(
    ("table", "statement"),
    [
        ("refresh", "UPDATE refresh SET client_id = 'no-such-app' WHERE rowid = 1"),
        ("refresh", "UPDATE refresh SET member = 'dr-ben-okafor' WHERE rowid = 1"),
        ("refresh", "UPDATE refresh SET expires = expires + 86400"),
        ("refresh", "UPDATE refresh SET expires = expires + 86400 WHERE rowid = 2"),
        ("refresh", "UPDATE refresh SET state = 'active' WHERE state = 'used'"),
        ("refresh", "UPDATE refresh SET hash = substr(hash, 2) WHERE rowid = 1"),
        ("refresh", "UPDATE refresh SET scope = 'patient/*.rs' WHERE state = 'revoked'"),
        ("refresh", "DELETE FROM revoked_family"),
        ("assertion", "UPDATE assertion SET client_id = 'ghost-app'"),
        ("revoked_family", "UPDATE revoked_family SET until = 'later'"),
        ("revoked_token", "UPDATE revoked_token SET jti = jti || 'x'"),
        ("auth_code", "UPDATE auth_code SET redirect_uri = 'https://evil.example/cb'"),
        ("auth_code", "UPDATE auth_code SET expires = expires + 86400"),
        ("auth_code", "UPDATE auth_code SET public_key = (SELECT public_key FROM refresh) || 'x'"),
        ("spent_code", "UPDATE spent_code SET hash = upper(hash)"),
        ("launch", "UPDATE launch SET member = 'nobody-here'"),
        ("launch", "CREATE INDEX launch_member ON launch(member)"),
    ],
)
def test_a_change_in_any_table_is_named(
    pristine: Made, tmp_path: Path, table: str, statement: str
) -> None:
    data = copy_of(pristine.data, tmp_path)
    run_sql(data / SMART_FILE, statement)
    found = audit(data, SmartStoreCheck())
    assert {(d.store, d.table) for d in found} >= {(SMART_FILE, table)}, found
    assert leaked(found, pristine.secrets) == []


def test_a_damaged_file_is_said_without_its_content(pristine: Made, tmp_path: Path) -> None:
    data = copy_of(pristine.data, tmp_path)
    (data / SMART_FILE).write_bytes(b"not a database " * 100)
    found = audit(data, SmartStoreCheck())
    assert found and all(d.store == SMART_FILE for d in found)


def test_no_store_is_no_difference(pristine: Made, tmp_path: Path) -> None:
    data = copy_of(pristine.data, tmp_path)
    (data / SMART_FILE).unlink()
    assert audit(data, SmartStoreCheck()) == []
