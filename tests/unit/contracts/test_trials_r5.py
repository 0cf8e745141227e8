"""Ruleset r5's recruitment: a privacy budget per sponsor and site charged on the ledger, and
answers sealed for the sponsor and the site only."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from careledger.contracts.trials import answer_readers, privacy_budget
from careledger.core.keys import decode_public_key
from careledger.core.privacy import DEFAULT_BUDGET_MILLI, EPSILON_MILLI
from careledger.errors import ValidationError
from careledger.sealing import open_sealed, seal
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, genesis, key

DIABETES = {"conditions": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11"}]}


def r5_genesis() -> dict[str, Any]:
    doc = copy.deepcopy(genesis("r5"))
    doc["orgs"] += [
        {"id": "spon", "name": "Sponsor", "kind": "sponsor", "served_by": "hosp"},
        {"id": "clinic", "name": "Clinic", "kind": "clinic"},
    ]
    for member, org, roles in (
        ("spon-admin", "spon", ["admin"]),
        ("clinic-admin", "clinic", ["admin"]),
        ("clinic-node", "clinic", ["node"]),
    ):
        doc["members"].append(
            {"id": member, "name": member, "org": org, "roles": roles,
             "public_key": key(member).public_b64}
        )  # fmt: skip
    return doc


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore(), genesis_doc=r5_genesis())


def run(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
    return chain.run(signer, method, args, contract="trials")


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("trials", k)
    return None if raw is None else orjson.loads(raw)


def read(chain: TestChain) -> Any:
    return lambda ns, k: (lambda raw: None if raw is None else orjson.loads(raw))(
        chain.store.get_state(ns, k)
    )


def ask(chain: TestChain, sites: list[str]) -> dict[str, Any]:
    return run(chain, "spon-admin", "feasibility", {"criteria": DIABETES, "sites": sites})


def sealed_answer(chain: TestChain, query: str, node: str, said: dict[str, Any]) -> dict[str, Any]:
    readers = answer_readers(read(chain), state(chain, f"query/{query}"), "hosp", node)
    return seal(orjson.dumps(said), {m: decode_public_key(k) for m, k in readers.items()})


def test_each_query_is_charged_to_the_sponsors_budget_at_each_site(chain: TestChain) -> None:
    made = ask(chain, ["hosp", "clinic"])
    assert made["result"] == "accepted", made
    for site in ("hosp", "clinic"):
        budget = privacy_budget(read(chain), site, "spon")
        assert budget == {"spent": EPSILON_MILLI, "limit": DEFAULT_BUDGET_MILLI, "queries": 1}
    query = state(chain, f"query/{made['tx_id']}")
    assert query["epsilon_milli"] == EPSILON_MILLI and query["asked_by"] == "spon-admin"


def test_a_spent_budget_refuses_the_query_until_the_site_raises_it(chain: TestChain) -> None:
    for _ in range(DEFAULT_BUDGET_MILLI // EPSILON_MILLI):
        assert ask(chain, ["hosp"])["result"] == "accepted"
    refused = ask(chain, ["hosp", "clinic"])
    assert refused["code"] == "PRIVACY_BUDGET_SPENT"
    assert privacy_budget(read(chain), "clinic", "spon")["spent"] == 0  # nothing half-charged
    assert ask(chain, ["clinic"])["result"] == "accepted"  # another site's budget is its own
    # only the site's admin sets the site's budget
    wrong = run(chain, "clinic-admin", "set_privacy_budget", {"sponsor": "spon", "limit_milli": 0})
    assert wrong["result"] == "accepted"  # ...for the clinic, not for hosp
    assert ask(chain, ["clinic"])["code"] == "PRIVACY_BUDGET_SPENT"
    not_admin = run(chain, "dr-a", "set_privacy_budget", {"sponsor": "spon", "limit_milli": 20_000})
    assert not_admin["code"] == "NOT_AUTHORISED"
    too_big = {"sponsor": "spon", "limit_milli": 10**12}
    assert run(chain, "hosp-admin", "set_privacy_budget", too_big)["code"] == "BAD_ARGS"
    raised = run(
        chain, "hosp-admin", "set_privacy_budget", {"sponsor": "spon", "limit_milli": 20_000}
    )
    assert raised["result"] == "accepted"
    assert ask(chain, ["hosp"])["result"] == "accepted"


def test_answers_are_sealed_for_the_sponsor_and_the_site_only(chain: TestChain) -> None:
    query = ask(chain, ["hosp"])["tx_id"]
    clear = run(chain, "hosp-node", "answer", {"query": query, "count": 12, "reason": None})
    assert clear["code"] == "BAD_ARGS"  # no count in the clear any more
    # sealed for someone else as well: refused
    readers = answer_readers(read(chain), state(chain, f"query/{query}"), "hosp", "hosp-node")
    assert set(readers) == {"hosp-node", "spon-admin"}  # spon is served by hosp's node
    nosy = {
        **{m: decode_public_key(k) for m, k in readers.items()},
        "clinic-node": key("clinic-node").public_key,
    }
    leaked = seal(b'{"count": 12}', nosy)
    assert run(chain, "hosp-node", "answer", {"query": query, "sealed": leaked})["code"] == (
        "NOT_A_RECIPIENT"
    )
    # not sealed for the sponsor who asked: refused
    own_only = seal(b'{"count": 12}', {"hosp-node": key("hosp-node").public_key})
    assert run(chain, "hosp-node", "answer", {"query": query, "sealed": own_only})["code"] == (
        "BAD_ARGS"
    )
    # another site's node cannot answer for hosp
    sealed = sealed_answer(chain, query, "hosp-node", {"count": 14, "status": "released"})
    assert run(chain, "clinic-node", "answer", {"query": query, "sealed": sealed})["code"] == (
        "NOT_AUTHORISED"
    )
    done = run(chain, "hosp-node", "answer", {"query": query, "sealed": sealed})
    assert done["result"] == "accepted", done
    stored = state(chain, f"answer/{query}/hosp")
    assert set(stored) == {"sealed", "height"}  # the ledger holds ciphertext only
    # (base64 ciphertext may hold the digits "14" by chance: look for the clear JSON instead)
    assert b"count" not in orjson.dumps(stored) and b"released" not in orjson.dumps(stored)
    opened = orjson.loads(open_sealed(stored["sealed"], "spon-admin", key("spon-admin").seed))
    assert opened == {"count": 14, "status": "released"}
    with pytest.raises(ValidationError):
        open_sealed(stored["sealed"], "clinic-node", key("clinic-node").seed)
    again = run(chain, "hosp-node", "answer", {"query": query, "sealed": sealed})
    assert again["code"] == "ALREADY_ANSWERED"


def test_sealed_answers_do_not_show_their_size(chain: TestChain) -> None:
    released = seal(b'{"count":1234,"status":"released"}', {"a": key("a").public_key})
    withheld = seal(b'{"count":null,"status":"withheld"}', {"a": key("a").public_key})
    assert len(released["box"]) == len(withheld["box"])


def test_a_sponsors_query_cannot_invite(chain: TestChain) -> None:
    """Invitations sent in answer to a query would show on the ledger whether its noisy count
    was released and how many opted-in patients matched: from r5 a site invites on its own."""
    from tests.unit.contracts.test_trials import REGISTRATION

    registered = run(chain, "spon-admin", "register", REGISTRATION)
    assert registered["result"] == "accepted", registered
    refused = run(chain, "spon-admin", "feasibility", {"study": "CARDIO-1", "invite": True})
    assert refused["code"] == "INVITE_BY_SITE"
    assert run(chain, "spon-admin", "feasibility", {"study": "CARDIO-1"})["result"] == "accepted"
