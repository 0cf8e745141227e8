"""Ruleset r6: apps registered on the ledger, and access events that name the app behind them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.errors import BatchRefused
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, genesis

HASH = "ab" * 32
JWK = {"kty": "EC", "crv": "P-384", "kid": "k1", "x": "AAAA", "y": "BBBB"}
CHARTING = {
    "client_id": "acme-charting",
    "name": "Acme Charting",
    "kind": "public",
    "redirect_uris": ["https://app.example/cb", "http://127.0.0.1:9999/cb"],
    "scopes": "launch/patient openid fhirUser offline_access patient/*.rs user/Observation.rs",
}
PIPELINE = {
    "client_id": "hosp-analytics",
    "name": "Hospital analytics",
    "kind": "backend",
    "scopes": "system/*.rs",
    "jwks": {"keys": [JWK]},
}


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore(), ruleset="r6")


def apps(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
    return chain.run(signer, method, args, contract="apps")


def app_state(chain: TestChain, client_id: str) -> Any:
    raw = chain.store.get_state("apps", f"app/{client_id}")
    return None if raw is None else orjson.loads(raw)


def test_an_admin_registers_an_app_that_every_node_then_knows(chain: TestChain) -> None:
    assert apps(chain, "hosp-admin", "register", CHARTING)["result"] == "accepted"
    app = app_state(chain, "acme-charting")
    assert app["org"] == "hosp" and app["status"] == "active" and app["kind"] == "public"
    assert app["redirect_uris"] == CHARTING["redirect_uris"]
    assert apps(chain, "hosp-admin", "register", CHARTING)["code"] == "APP_EXISTS"
    assert apps(chain, "dr-a", "register", {**CHARTING, "client_id": "x-app"})["code"] == (
        "NOT_AUTHORISED"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"redirect_uris": ["http://app.example/cb"]},  # http off loopback
        {"redirect_uris": ["https://app.example/cb#frag"]},
        {"redirect_uris": ["https://[bad/cb"]},  # was a contract fault, not a refusal
        {"redirect_uris": ["https://app.example:99999/cb"]},
        {"redirect_uris": []},
        {"scopes": "patient/*.read nonsense"},
        {"scopes": "patient/Observation."},  # no action
        {"scopes": "patient/*.rs?category=laboratory"},  # a restriction names one type
        {"scopes": "patient/Observation.read?category=laboratory"},  # v2 syntax only
        {"scopes": "patient/Observation.rs?=x"},
        {"scopes": "system/*.rs"},  # system scopes are for backend apps
        {"kind": "robot"},
        {"client_id": "a"},
        {"jwks": {"keys": [JWK]}},  # a public app has no keys
        {"name": "\x00bad"},
    ],
)
def test_a_bad_registration_is_refused_with_bad_args(
    chain: TestChain, change: dict[str, Any]
) -> None:
    receipt = apps(chain, "hosp-admin", "register", {**CHARTING, **change})
    assert receipt["result"] == "rejected" and receipt["code"] == "BAD_ARGS"
    assert app_state(chain, CHARTING["client_id"]) is None


@pytest.mark.parametrize(
    "change",
    [
        {"jwks": None},
        {"jwks": {"keys": [{**JWK, "d": "secret"}]}},  # a private key would be published
        {"jwks": {"keys": [JWK, JWK]}},
        {"redirect_uris": ["https://x.example/cb"]},
        {"scopes": "patient/*.rs"},
    ],
)
def test_a_backend_app_has_public_keys_and_system_scopes_only(
    chain: TestChain, change: dict[str, Any]
) -> None:
    args = {k: v for k, v in {**PIPELINE, **change}.items() if v is not None}
    assert apps(chain, "hosp-admin", "register", args)["code"] == "BAD_ARGS"


def test_only_the_owning_organisation_suspends_and_resumes(chain: TestChain) -> None:
    apps(chain, "hosp-admin", "register", CHARTING)
    suspend = {"client_id": "acme-charting", "reason": "leaked tokens"}
    assert apps(chain, "pharm-admin", "suspend", suspend)["code"] == "NOT_AUTHORISED"
    assert apps(chain, "hosp-admin", "suspend", suspend)["result"] == "accepted"
    assert app_state(chain, "acme-charting")["status"] == "suspended"
    assert apps(chain, "hosp-admin", "suspend", suspend)["code"] == "APP_SUSPENDED"
    assert apps(chain, "hosp-admin", "resume", {"client_id": "acme-charting"})["result"] == (
        "accepted"
    )
    update = {"client_id": "acme-charting", "redirect_uris": ["https://new.example/cb"]}
    assert apps(chain, "hosp-admin", "update", update)["result"] == "accepted"
    assert app_state(chain, "acme-charting")["redirect_uris"] == ["https://new.example/cb"]
    assert apps(chain, "hosp-admin", "update", {"client_id": "nope-app"})["code"] == "UNKNOWN_APP"


def test_apps_do_not_exist_before_r6() -> None:
    old = TestChain(MemoryStore(), genesis_doc=genesis("r5"))
    with pytest.raises(BatchRefused, match="no contract named 'apps'"):
        old.run("hosp-admin", "register", CHARTING, contract="apps")


# -- access events name the app -------------------------------------------------------------


def anchor(chain: TestChain) -> None:
    args = {"record": "obs-1", "type": "Observation", "patient": "patient-1", "hash": HASH,
            "version": 1}  # fmt: skip
    assert chain.run("dr-a", "anchor", args, contract="records")["result"] == "accepted"


def access(chain: TestChain, accessor: str, org: str, basis: dict[str, Any], **kw: Any) -> dict:
    args = {
        "patient": "patient-1",
        "accessor": accessor,
        "accessor_org": org,
        "records": ["obs-1"],
        "action": kw.pop("action", "read"),
        "purpose": kw.pop("purpose", "TREAT"),
        "basis": basis,
        **kw,
    }
    return chain.run("hosp-node", "access", args, contract="audit")


def logged(chain: TestChain) -> list[Any]:
    return [
        orjson.loads(v)
        for ns, k, v in chain.store.state_items()
        if ns == "audit" and k.startswith("access/patient-1/")
    ]


def consent_ids(chain: TestChain) -> list[str]:
    return [k.rsplit("/", 1)[1] for k in chain.store.state_keys("consent", "by-patient/", 100)]


def test_an_access_through_an_app_names_it_and_a_suspended_app_is_refused(
    chain: TestChain,
) -> None:
    anchor(chain)
    apps(chain, "hosp-admin", "register", CHARTING)
    receipt = access(chain, "dr-a", "hosp", {"kind": "custodian"}, app="acme-charting")
    assert receipt["result"] == "accepted"
    assert logged(chain)[-1]["app"] == "acme-charting"
    assert access(chain, "dr-a", "hosp", {"kind": "custodian"}, app="nope-app")["code"] == (
        "UNKNOWN_APP"
    )
    apps(chain, "hosp-admin", "suspend", {"client_id": "acme-charting"})
    refused = access(chain, "dr-a", "hosp", {"kind": "custodian"}, app="acme-charting")
    assert refused["code"] == "APP_SUSPENDED"
    assert [e["app"] for e in logged(chain)] == ["acme-charting"]


def test_a_backend_app_reads_as_its_organisation_never_as_a_person(chain: TestChain) -> None:
    anchor(chain)
    apps(chain, "hosp-admin", "register", PIPELINE)
    own = access(chain, "hosp-analytics", "hosp", {"kind": "custodian"}, app="hosp-analytics",
                 action="export", purpose="HOPERAT")  # fmt: skip
    assert own["result"] == "accepted"
    # never another accessor's name, never "self", never outside the custodian's purposes
    assert access(chain, "dr-a", "hosp", {"kind": "custodian"}, app="hosp-analytics")["code"] == (
        "UNKNOWN_MEMBER"
    )
    assert (
        access(chain, "hosp-analytics", "hosp", {"kind": "self"}, app="hosp-analytics")["code"]
        == "NO_CONSENT"
    )
    assert access(chain, "hosp-analytics", "hosp", {"kind": "custodian"}, app="hosp-analytics",
                  purpose="HRESCH")["code"] == "NO_CONSENT"  # fmt: skip
    # without the app, the client id is no member at all
    assert access(chain, "hosp-analytics", "hosp", {"kind": "custodian"})["code"] == (
        "UNKNOWN_MEMBER"
    )


def test_a_backend_app_of_another_org_needs_a_consent_to_that_org(chain: TestChain) -> None:
    anchor(chain)
    # a client id is never a person's member id: a consent to a person cannot reach an app
    taken = {**PIPELINE, "client_id": "pharm-admin"}
    assert apps(chain, "pharm-admin", "register", taken)["code"] == "APP_EXISTS"
    pharm_pipeline = {**PIPELINE, "client_id": "pharm-sync"}
    assert apps(chain, "pharm-admin", "register", pharm_pipeline)["result"] == "accepted"
    kw = {"app": "pharm-sync"}
    assert access(chain, "pharm-sync", "pharm", {"kind": "custodian"}, **kw)["code"] == (
        "NO_CONSENT"
    )
    to_person = {"grantee": {"member": "pharm-admin"}, "actions": ["read"],
                 "resource_types": ["Observation"], "purposes": ["TREAT"]}  # fmt: skip
    assert chain.run("patient-1", "grant", to_person, contract="consent")["result"] == "accepted"
    (person,) = consent_ids(chain)
    basis = {"kind": "consent", "id": person}
    assert access(chain, "pharm-sync", "pharm", basis, **kw)["code"] == "NO_CONSENT"
    assert access(chain, "pharm-admin", "pharm", basis)["result"] == "accepted"  # the person
    to_org = {**to_person, "grantee": {"org": "pharm"}}
    assert chain.run("patient-1", "grant", to_org, contract="consent")["result"] == "accepted"
    (org_consent,) = set(consent_ids(chain)) - {person}
    basis = {"kind": "consent", "id": org_consent}
    assert access(chain, "pharm-sync", "pharm", basis, **kw)["result"] == "accepted"
    assert logged(chain)[-1]["app"] == "pharm-sync"


def test_r7_access_events_say_their_interaction() -> None:
    chain = TestChain(MemoryStore(), ruleset="r7")
    anchor(chain)
    assert access(chain, "dr-a", "hosp", {"kind": "custodian"}, interaction="search")["result"] == (
        "accepted"
    )
    assert logged(chain)[-1]["interaction"] == "search"
    mismatch = access(chain, "dr-a", "hosp", {"kind": "custodian"}, interaction="create")
    assert mismatch["code"] == "BAD_ARGS"  # a read is not a create
    assert access(chain, "dr-a", "hosp", {"kind": "custodian"}, interaction="x")["code"] == (
        "BAD_ARGS"
    )
    older = TestChain(MemoryStore(), ruleset="r6")
    anchor(older)
    assert access(older, "dr-a", "hosp", {"kind": "custodian"}, interaction="read")["code"] == (
        "BAD_ARGS"
    )
