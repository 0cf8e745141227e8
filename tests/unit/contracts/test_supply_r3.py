"""Ruleset r3: the ledger reads each EPCIS event itself. Every node recomputes the CBV 2.0 hash
and the unit operations from the event, and only the organisation at whose location the event
happened may anchor it. Replays the two supply attacks of the outside review."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from careledger.contracts.supply import unit_key
from careledger.storage.memory import MemoryStore
from careledger.supply.event_hash import event_hash_id
from tests.support.chain import TestChain
from tests.unit.contracts.test_supply import (
    GTIN,
    HOSP_GLN,
    MAKER_GLN,
    PHARM_GLN,
    PREFIX,
    cd,
    code,
    ok,
    run,
    state,
    unit,
)
from tests.unit.contracts.test_supply_epcis import (
    anchors,
    commissioning,
    object_event,
    sgln,
    sgtin,
    shipping,
)

CONTEXT = ["https://ref.gs1.org/standards/epcis/epcis-context.jsonld"]
_captures = itertools.count(1)


@pytest.fixture
def chain() -> TestChain:
    c = TestChain(MemoryStore(), ruleset="r3")
    # The shared test GLNs all lie under the maker's prefix: the others claim theirs first.
    ok(run(c, "hosp-admin", "register_location", {"gln": HOSP_GLN, "name": "Hospital DC"}))
    ok(run(c, "pharm-admin", "register_location", {"gln": PHARM_GLN, "name": "Pharmacy"}))
    ok(run(c, "maker-admin", "register_prefix", {"prefix": PREFIX}))
    ok(run(c, "maker-admin", "register_location", {"gln": MAKER_GLN, "name": "Plant"}))
    return c


def capture(chain: TestChain, signer: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    args = {"capture": f"r3-{next(_captures)}", "events": events, "context": CONTEXT}
    return run(chain, signer, "anchor_events", args)


def test_events_are_hashed_and_applied_by_the_ledger(chain: TestChain) -> None:
    event = commissioning(["A1", "A2"])
    receipt = ok(capture(chain, "maker-admin", [event]))
    hash_id = event_hash_id(event, CONTEXT)
    anchored = state(chain, f"event/{hash_id.split(';', 1)[1][:64]}")
    assert anchored == {
        "capture": anchored["capture"],
        "index": 0,
        "type": "ObjectEvent",
        "org": "maker",
    }
    assert unit(chain, "A1")["status"] == "commissioned" and receipt["result"] == "accepted"
    ok(capture(chain, "maker-admin", [shipping([sgtin("A1")], MAKER_GLN, PHARM_GLN)]))
    assert unit(chain, "A1")["status"] == "shipped"


def test_a_partner_cannot_pre_anchor_another_partys_event(chain: TestChain) -> None:
    """The attack: a distributor anchored the hash of the manufacturer's next event, so the
    manufacturer's own capture failed DUPLICATE_EVENT and the event was credited to it."""
    event = commissioning(["B1"])
    stolen = capture(chain, "hosp-admin", [event])  # the hospital's distributor arm, say
    assert code(stolen) == "NOT_A_PARTY"
    hash_only = run(
        chain, "hosp-admin", "anchor_events", {"capture": "r3-hash", "events": anchors([event])}
    )
    assert code(hash_only) == "BAD_EVENT"  # a bare hash is no longer an event
    ok(capture(chain, "maker-admin", [event]))  # the real capture goes through
    hash_id = event_hash_id(event, CONTEXT)
    assert state(chain, f"event/{hash_id.split(';', 1)[1][:64]}")["org"] == "maker"


def test_an_observation_at_another_organisations_site_is_refused(chain: TestChain) -> None:
    """The attack: a made-up observe event naming another organisation's pack."""
    ok(capture(chain, "maker-admin", [commissioning(["C1"])]))
    made_up = object_event("inspecting", "OBSERVE", [sgtin("C1")], MAKER_GLN)
    assert code(capture(chain, "pharm-admin", [made_up])) == "NOT_A_PARTY"
    nowhere = object_event("inspecting", "OBSERVE", [sgtin("C1")], None)
    assert code(capture(chain, "pharm-admin", [nowhere])) == "NOT_A_PARTY"
    # An observation at one's own site is the party's to record (and raises the alert it should).
    seen_here = object_event("inspecting", "OBSERVE", [sgtin("C1")], PHARM_GLN)
    receipt = ok(capture(chain, "pharm-admin", [seen_here]))
    events = chain.store.block_events(receipt["height"])
    assert [e.type for e in events] == ["supply.alert", "supply.captured"]


def test_a_capture_whose_operations_do_not_match_its_events_is_refused(
    chain: TestChain,
) -> None:
    """Under r2 a node sent its own ``op`` beside a hash; under r3 an op is not accepted at all:
    the ledger derives it, so a node claiming one thing and applying another is refused."""
    event = commissioning(["D1"])
    forged = anchors([event])
    forged[0]["op"] = {**forged[0]["op"], "units": [{"gtin": "x", "serial": "y"}]}
    refused = run(chain, "maker-admin", "anchor_events", {"capture": "r3-forged", "events": forged})
    assert code(refused) == "BAD_EVENT"
    with_op = {**event, "op": {"op": "destroy"}}  # an event smuggling an op field
    assert code(capture(chain, "maker-admin", [with_op])) == "BAD_EVENT"
    ok(capture(chain, "maker-admin", [event]))
    assert unit(chain, "D1")["status"] == "commissioned"  # what the event says, nothing else


def test_a_location_under_another_organisations_prefix_cannot_be_claimed(
    chain: TestChain,
) -> None:
    """Otherwise a partner could register the manufacturer's plant GLN and become 'a party'."""
    plant_2 = cd(PREFIX + "00009")  # under the maker's prefix, not yet registered
    claim = {"gln": plant_2, "name": "Not mine"}
    assert code(run(chain, "pharm-admin", "register_location", claim)) == "GLN_TAKEN"
    ok(run(chain, "maker-admin", "register_location", claim))


# -- the issue's rule: "only a party the event names may anchor it: the owner of the identifiers
# commissioned, the source or destination of a shipment, the holder at the read point" ---------


def test_a_partner_cannot_commission_the_makers_identifiers_at_its_own_site(
    chain: TestChain,
) -> None:
    """The site is the pharmacy's, so it is a party to the event; the identifiers are not its."""
    at_pharmacy = {**commissioning(["E1"]), "bizLocation": {"id": sgln(PHARM_GLN)}}
    assert code(capture(chain, "pharm-admin", [at_pharmacy])) == "NOT_PREFIX_OWNER"
    assert state(chain, unit_key(GTIN, "E1")) is None
    ok(capture(chain, "maker-admin", [commissioning(["E1"])]))  # nothing was claimed
    assert unit(chain, "E1")["owner"] == "maker"


def test_a_shipment_at_another_organisations_site_is_not_a_partners_to_anchor(
    chain: TestChain,
) -> None:
    """A shipping event happens at its source: neither a bystander nor (under r3) its
    destination anchors it; the source does."""
    ok(capture(chain, "maker-admin", [commissioning(["F1"])]))
    elsewhere = shipping([sgtin("F1")], MAKER_GLN, HOSP_GLN)
    assert code(capture(chain, "pharm-admin", [elsewhere])) == "NOT_A_PARTY"
    to_pharmacy = shipping([sgtin("F1")], MAKER_GLN, PHARM_GLN)
    assert code(capture(chain, "pharm-admin", [to_pharmacy])) == "NOT_A_PARTY"
    assert unit(chain, "F1")["status"] == "commissioned"
    ok(capture(chain, "maker-admin", [to_pharmacy]))
    assert unit(chain, "F1")["status"] == "shipped"


def test_a_partner_cannot_ship_the_makers_unit_from_its_own_site(chain: TestChain) -> None:
    """The site is the hospital's; the unit is not (its owner is the maker, and it is held at
    the maker's plant)."""
    ok(capture(chain, "maker-admin", [commissioning(["G1"])]))
    from_hospital = shipping([sgtin("G1")], HOSP_GLN, PHARM_GLN)
    assert code(capture(chain, "hosp-admin", [from_hospital])) == "NOT_OWNER"
    held = unit(chain, "G1")
    assert (held["owner"], held["status"], held["holder_location"]) == (
        "maker",
        "commissioned",
        MAKER_GLN,
    )
