"""r9: SMART Health Links and Cards on the ledger. A patient makes and revokes links; each
opening is an access on the ``link`` basis, accepted only while the link serves; cards and the
issuer's revocation list."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.contracts.links import card_key, crl_counter_key, link_key, revoked_rid_key
from careledger.errors import BatchRefused
from careledger.sealing import open_sealed, seal
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key

HASH = "ab" * 32
KID = "k" * 43


@pytest.fixture
def chain() -> TestChain:
    c = TestChain(MemoryStore(), ruleset="r9")
    for record, kind in (("obs-1", "Observation"), ("cond-1", "Condition")):
        args = {"record": record, "type": kind, "patient": "patient-1", "hash": HASH,
                "version": 1}  # fmt: skip
        assert c.run("dr-a", "anchor", args, contract="records")["result"] == "accepted"
    return c


def create(chain: TestChain, signer: str = "patient-1", **overrides: Any) -> dict:
    args = {"custodian": "hosp", "flags": "LP", "types": ["Observation"],
            "exp": chain.time + 60_000, **overrides}  # fmt: skip
    return chain.run(signer, "create", args, contract="links")


def recipient() -> dict[str, Any]:
    publics = {m: key(m).public_key for m in ("patient-1", "hosp-node")}
    return seal(b"Dr Jones, Urgent Care", publics)


def opening(chain: TestChain, link: str, records: list[str] | None = None, **kw: Any) -> dict:
    args = {"patient": "patient-1", "accessor": link, "accessor_org": "hosp",
            "records": records or ["obs-1"], "action": "read", "purpose": "PATRQT",
            "basis": {"kind": "link", "id": link}, "recipient": recipient(), **kw}  # fmt: skip
    return chain.run("hosp-node", "access", args, contract="audit")


def state(chain: TestChain, namespace: str, k: str) -> Any:
    raw = chain.store.get_state(namespace, k)
    return None if raw is None else orjson.loads(raw)


def test_a_patient_makes_a_link_and_each_opening_is_an_access_while_it_serves(
    chain: TestChain,
) -> None:
    made = create(chain)
    assert made["result"] == "accepted"
    link = made["tx_id"]
    held = state(chain, "links", link_key(link))
    assert held["patient"] == "patient-1" and held["flags"] == "LP" and held["status"] == "active"
    assert opening(chain, link)["result"] == "accepted"
    (entry,) = [
        orjson.loads(v) for ns, k, v in chain.store.state_items()
        if ns == "audit" and k.startswith("access/patient-1/")
    ]  # fmt: skip
    assert entry["basis"] == {"kind": "link", "id": link} and entry["accessor"] == link
    # the recipient's name: sealed, readable by the patient, not on the ledger in the clear
    assert b"Jones" not in orjson.dumps(entry)
    seed = key("patient-1").seed
    assert open_sealed(entry["recipient"], "patient-1", seed).strip() == b"Dr Jones, Urgent Care"
    # a type the link does not reach, another purpose, no recipient, a recipient elsewhere
    assert opening(chain, link, ["cond-1"])["code"] == "NO_CONSENT"
    assert opening(chain, link, purpose="TREAT")["code"] == "NO_CONSENT"
    assert opening(chain, link, accessor="dr-a")["code"] == "NO_CONSENT"
    no_name = {"patient": "patient-1", "accessor": link, "accessor_org": "hosp",
               "records": ["obs-1"], "action": "read", "purpose": "PATRQT",
               "basis": {"kind": "link", "id": link}}  # fmt: skip
    assert chain.run("hosp-node", "access", no_name, contract="audit")["code"] == "BAD_ARGS"
    custodian = {**no_name, "accessor": "dr-a", "purpose": "TREAT",
                 "basis": {"kind": "custodian"}, "recipient": recipient()}  # fmt: skip
    assert chain.run("hosp-node", "access", custodian, contract="audit")["code"] == "BAD_ARGS"
    del custodian["recipient"]
    assert chain.run("hosp-node", "access", custodian, contract="audit")["result"] == "accepted"
    # revoked: nothing more from the next block on; only the patient revokes
    assert chain.run("dr-a", "revoke", {"link": link}, contract="links")["code"] == (
        "NOT_AUTHORISED"
    )
    assert chain.run("patient-1", "revoke", {"link": link}, contract="links")["result"] == (
        "accepted"
    )
    assert opening(chain, link)["code"] == "LINK_INACTIVE"
    assert chain.run("patient-1", "revoke", {"link": link}, contract="links")["code"] == (
        "LINK_INACTIVE"
    )
    assert opening(chain, "f" * 64)["code"] == "UNKNOWN_LINK"


def test_links_expire_and_the_serving_node_disables_one_guessed_at(chain: TestChain) -> None:
    short = create(chain, exp=chain.time + 2_500)["tx_id"]
    assert opening(chain, short)["result"] == "accepted"
    assert opening(chain, short)["code"] == "LINK_EXPIRED"  # the chain's clock moved on
    guessed = create(chain, types=["*"])["tx_id"]
    assert opening(chain, guessed, ["cond-1", "obs-1"])["result"] == "accepted"
    reason = {"link": guessed, "reason": "passcode_attempts"}
    assert chain.run("dr-a", "disable", reason, contract="links")["code"] == "NOT_AUTHORISED"
    assert chain.run("hosp-node", "disable", {**reason, "reason": "x"}, contract="links")[
        "code"
    ] == "BAD_ARGS"
    assert chain.run("hosp-node", "disable", reason, contract="links")["result"] == "accepted"
    assert state(chain, "links", link_key(guessed))["status"] == "disabled"
    assert opening(chain, guessed)["code"] == "LINK_INACTIVE"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"flags": "PU"}, "BAD_ARGS"),  # the spec: U never with P
        ({"flags": "PL"}, "BAD_ARGS"),
        ({"flags": "X"}, "BAD_ARGS"),
        ({"exp": 1}, "BAD_ARGS"),
        ({"types": []}, "BAD_ARGS"),
        ({"types": ["not a type"]}, "BAD_ARGS"),
        ({"custodian": "nowhere"}, "UNKNOWN_ORG"),
        ({"label": "for Dr Jones"}, "BAD_ARGS"),  # labels stay off the ledger
    ],
)
def test_bad_links_are_refused(chain: TestChain, overrides: dict, code: str) -> None:
    assert create(chain, **overrides)["code"] == code


def test_only_the_patient_or_a_delegate_makes_a_link(chain: TestChain) -> None:
    assert create(chain, "dr-a", patient="patient-1")["code"] == "NOT_AUTHORISED"
    assert create(chain, patient="dr-a")["code"] == "UNKNOWN_PATIENT"


def test_cards_and_the_issuers_revocation_list(chain: TestChain) -> None:
    card = {"card": "c" * 32, "patient": "patient-1", "kid": KID, "rid": "r1d",
            "types": ["Observation"]}  # fmt: skip
    assert chain.run("dr-a", "issue_card", card, contract="links")["code"] == "NOT_AUTHORISED"
    # an issuer vouches only for what it holds: no Immunization of this patient is anchored
    unheld = {**card, "types": ["Immunization"]}
    assert chain.run("hosp-node", "issue_card", unheld, contract="links")["code"] == (
        "NOT_CUSTODIAN"
    )
    assert chain.run("hosp-node", "issue_card", {**card, "types": ["Condition"]},
                     contract="links")["code"] == "BAD_ARGS"  # fmt: skip
    assert chain.run("hosp-node", "issue_card", card, contract="links")["result"] == "accepted"
    assert chain.run("hosp-node", "issue_card", card, contract="links")["code"] == "CARD_EXISTS"
    assert state(chain, "links", card_key("c" * 32))["issuer"] == "hosp"
    revoke = {"card": "c" * 32}
    assert chain.run("pharm-admin", "revoke_card", revoke, contract="links")["code"] == (
        "NOT_AUTHORISED"
    )
    assert chain.run("patient-1", "revoke_card", revoke, contract="links")["result"] == "accepted"
    assert state(chain, "links", revoked_rid_key("hosp", KID, "r1d")) is not None
    assert state(chain, "links", crl_counter_key("hosp", KID)) == 1
    assert chain.run("hosp-node", "revoke_card", revoke, contract="links")["code"] == (
        "CARD_REVOKED"
    )


def test_at_most_fifty_active_links(chain: TestChain) -> None:
    made = [create(chain) for _ in range(50)]
    assert all(m["result"] == "accepted" for m in made)
    assert create(chain)["code"] == "TOO_MANY_LINKS"
    assert chain.run("patient-1", "revoke", {"link": made[0]["tx_id"]}, contract="links")[
        "result"
    ] == "accepted"
    assert create(chain)["result"] == "accepted"


def test_before_r9_there_are_no_links() -> None:
    older = TestChain(MemoryStore(), ruleset="r8")
    with pytest.raises(BatchRefused):
        create(older)


def test_at_most_twenty_active_cards_per_patient_and_issuer(chain: TestChain) -> None:
    def issue(n: int) -> dict:
        card = {"card": f"{n:032x}", "patient": "patient-1", "kid": KID, "rid": f"r{n}",
                "types": ["Observation"]}  # fmt: skip
        return chain.run("hosp-node", "issue_card", card, contract="links")

    assert all(issue(n)["result"] == "accepted" for n in range(20))
    assert issue(20)["code"] == "TOO_MANY_CARDS"
    revoke = {"card": f"{0:032x}"}
    assert chain.run("patient-1", "revoke_card", revoke, contract="links")["result"] == "accepted"
    assert issue(21)["result"] == "accepted"
