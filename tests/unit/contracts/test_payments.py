"""Payments: credits are conserved, never negative, and a visit is paid once (state machine)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("payments", k)
    return None if raw is None else orjson.loads(raw)


def setup_chain() -> TestChain:
    chain = TestChain(MemoryStore())
    people = [
        ("sponsor-1", ["sponsor"]),
        ("site-inv", ["investigator"]),
        ("patient-2", ["patient"]),
    ]
    for member, roles in people:
        args = {"id": member, "name": member, "roles": roles, "public_key": key(member).public_b64}
        signer = "hosp-node" if roles == ["patient"] else "hosp-admin"
        assert chain.run(signer, "add_member", args)["result"] == "accepted"
    return chain


def trial(chain: TestChain, study: str, visits: list[str]) -> None:
    """A trials study whose participant patient-2 completed ``visits``, attested by the site."""
    registration = {
        "study": study,
        "registry_id": "NCT1",
        "title": "t",
        "protocol_hash": "a" * 64,
        "sap_hash": "b" * 64,
        "primary": ["p"],
        "secondary": [],
        "eligibility": {"age": [18, 80]},
        "visits": [{"id": v, "day": 0, "window": 5} for v in visits],
        "sites": ["hosp"],
    }
    steps = [
        ("sponsor-1", "register", registration),
        ("site-inv", "enrol", {"study": study, "participant": "patient-2"}),
        ("patient-2", "consent", {"study": study, "version": 1}),
    ]
    for n, v in enumerate(visits):
        visit = {"study": study, "participant": "patient-2", "visit": v}
        steps += [
            ("site-inv", "capture", {**visit, "hash": f"{n:064x}"}),
            ("site-inv", "attest", visit),
        ]
    for signer, method, args in steps:
        assert chain.run(signer, method, args, contract="trials")["result"] == "accepted", method


def pay(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
    return chain.run(signer, method, args, contract="payments")


def code(receipt: dict[str, Any]) -> str | None:
    return receipt.get("code")


def test_a_study_pays_each_visit_once_from_its_escrow() -> None:
    chain = setup_chain()
    assert code(pay(chain, "hosp-admin", "deposit", {"credits": 100, "reference": "x"})) == (
        "NOT_AUTHORISED"  # a hospital admin is not a sponsor
    )
    assert (
        code(pay(chain, "sponsor-1", "deposit", {"credits": 1000, "reference": "wire 1"})) is None
    )
    schedule = {"screening": 50, "week-4": 100}
    assert (
        code(pay(chain, "sponsor-1", "open_study", {"study": "NCT1", "schedule": schedule})) is None
    )
    assert code(pay(chain, "sponsor-1", "fund", {"study": "NCT1", "credits": 120})) is None
    visit = {"study": "NCT1", "participant": "patient-2", "visit": "screening"}
    assert code(pay(chain, "site-inv", "pay_visit", visit)) == "NOT_ATTESTED"
    trial(chain, "NCT1", ["screening", "week-4"])
    assert code(pay(chain, "patient-2", "pay_visit", visit)) is None  # anyone may trigger it
    assert code(pay(chain, "site-inv", "pay_visit", visit)) == "ALREADY_PAID"
    assert (
        code(pay(chain, "site-inv", "pay_visit", {**visit, "visit": "week-9"})) == "UNKNOWN_VISIT"
    )
    # 70 left in escrow: week-4 pays 100
    assert code(pay(chain, "site-inv", "pay_visit", {**visit, "visit": "week-4"})) == (
        "INSUFFICIENT_FUNDS"
    )
    assert state(chain, "balance/patient-2") == 50
    assert state(chain, "balance/escrow:NCT1") == 70
    assert state(chain, "balance/org:hosp") == 880  # sponsor-1 is a member of hosp here
    assert code(pay(chain, "patient-2", "transfer", {"to": "dr-a", "credits": 20})) is None
    assert code(pay(chain, "patient-2", "withdraw", {"credits": 31})) == "INSUFFICIENT_FUNDS"
    assert code(pay(chain, "patient-2", "withdraw", {"credits": 30})) is None
    assert state(chain, "total") == 970


class Ledger(RuleBasedStateMachine):
    """Random deposits, fundings, payments, transfers and withdrawals, valid or not."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = setup_chain()
        self.paid: set[str] = set()
        trial(self.chain, "S", ["v1", "v2", "v3"])
        pay(self.chain, "sponsor-1", "open_study", {"study": "S", "schedule": {"v1": 7, "v2": 40}})

    amounts = st.integers(min_value=-5, max_value=300)
    members = st.sampled_from(["sponsor-1", "site-inv", "patient-2", "dr-a", "hosp-admin"])

    @rule(credits=amounts)
    def deposit(self, credits: int) -> None:
        pay(self.chain, "sponsor-1", "deposit", {"credits": credits, "reference": "r"})

    @rule(credits=amounts)
    def fund(self, credits: int) -> None:
        pay(self.chain, "sponsor-1", "fund", {"study": "S", "credits": credits})

    @rule(visit=st.sampled_from(["v1", "v2", "v3"]))
    def pay_visit(self, visit: str) -> None:
        receipt = pay(
            self.chain,
            "site-inv",
            "pay_visit",
            {"study": "S", "participant": "patient-2", "visit": visit},
        )
        if receipt["result"] == "accepted":
            assert visit not in self.paid, "a visit was paid twice"
            self.paid.add(visit)

    @rule(sender=members, receiver=members, credits=amounts)
    def transfer(self, sender: str, receiver: str, credits: int) -> None:
        pay(self.chain, sender, "transfer", {"to": receiver, "credits": credits})

    @rule(member=members, credits=amounts)
    def withdraw(self, member: str, credits: int) -> None:
        pay(self.chain, member, "withdraw", {"credits": credits})

    @invariant()
    def conserved_and_never_negative(self) -> None:
        accounts = state(self.chain, "accounts") or []
        balances = [state(self.chain, f"balance/{a}") or 0 for a in accounts]
        assert all(b >= 0 for b in balances)
        assert sum(balances) == (state(self.chain, "total") or 0)


Ledger.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_payments_state_machine = Ledger.TestCase


def test_a_research_grant_of_data_is_paid_once_to_the_patient() -> None:
    chain = setup_chain()
    assert code(pay(chain, "sponsor-1", "deposit", {"credits": 500, "reference": "w"})) is None

    def grant(purposes: list[str]) -> str:
        args = {
            "grantee": {"org": "hosp"},
            "actions": ["read"],
            "resource_types": ["*"],
            "purposes": purposes,
        }
        receipt = chain.run("patient-2", "grant", args, contract="consent")
        assert receipt["result"] == "accepted"
        return str(receipt["tx_id"])

    research, treatment = grant(["HRESCH"]), grant(["TREAT"])
    assert code(pay(chain, "site-inv", "pay_data_use", {"consent": research, "credits": 25})) == (
        "NOT_AUTHORISED"
    )
    assert code(pay(chain, "sponsor-1", "pay_data_use", {"consent": treatment, "credits": 25})) == (
        "NOT_RESEARCH"
    )
    assert code(pay(chain, "sponsor-1", "pay_data_use", {"consent": "0" * 64, "credits": 25})) == (
        "UNKNOWN_CONSENT"
    )
    assert (
        code(pay(chain, "sponsor-1", "pay_data_use", {"consent": research, "credits": 25})) is None
    )
    assert code(pay(chain, "sponsor-1", "pay_data_use", {"consent": research, "credits": 25})) == (
        "ALREADY_PAID"
    )
    assert state(chain, "balance/patient-2") == 25 and state(chain, "balance/org:hosp") == 475
