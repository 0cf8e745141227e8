"""EPCIS events drive unit state: commissioning to dispensing through anchor_events, all or nothing.

Events are written as EPCIS 2.0 JSON, hashed and mapped (supply_op) exactly as the node does;
the contract then applies them. Also: nested logistic units, stock counters, the suspect
workflow, on-behalf calls and what ``Ledger.explain`` recovers from a refusal.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from careledger.core.tx import decode_envelope
from careledger.supply.epcis_ops import supply_op
from careledger.supply.event_hash import event_hash_id
from careledger.supply.identifiers import SGLN, SGTIN, SSCC, to_epc_urn
from tests.support.chain import TestChain
from tests.unit.contracts.test_supply import (
    EXPIRY,
    GTIN,
    HOSP_GLN,
    LOT,
    MAKER_GLN,
    PHARM_GLN,
    PREFIX,
    cd,
    code,
    commission,
    ok,
    run,
    state,
    unit,
)

CASE1 = cd("0" + PREFIX + "000000011")
CASE2 = cd("0" + PREFIX + "000000012")
PALLET = cd("0" + PREFIX + "000000013")
UNTRACKED_GTIN = cd("0" + "9520123" + "00001")
_times = itertools.count(1)


def sgtin(serial: str, gtin: str = GTIN, prefix_len: int = len(PREFIX)) -> str:
    return to_epc_urn(SGTIN(gtin, serial), prefix_len)


def sscc(value: str) -> str:
    return to_epc_urn(SSCC(value), len(PREFIX))


def sgln(gln: str) -> str:
    return to_epc_urn(SGLN(gln), len(PREFIX))


def object_event(
    step: str, action: str, epcs: list[str], location: str | None, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventTime": f"2026-11-0{1 + next(_times) % 9}T10:00:{next(_times) % 60:02d}.000Z",
        "eventTimeZoneOffset": "+00:00",
        "epcList": epcs,
        "action": action,
        "bizStep": step,
        **extra,
    }
    if location is not None:
        event["bizLocation"] = {"id": sgln(location)}
    return event


def pack(parent: str, children: list[str], location: str, action: str = "ADD") -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "AggregationEvent",
        "eventTime": f"2026-11-01T11:{next(_times) % 60:02d}:00.000Z",
        "eventTimeZoneOffset": "+00:00",
        "parentID": sscc(parent),
        "action": action,
        "bizStep": "packing" if action == "ADD" else "unpacking",
        "bizLocation": {"id": sgln(location)},
    }
    if children:
        event["childEPCs"] = children
    return event


def commissioning(serials: list[str], lot: str = LOT, gtin: str = GTIN) -> dict[str, Any]:
    ilmd = {"cbvmda:lotNumber": lot, "cbvmda:itemExpirationDate": "2027-12-31"}
    return object_event(
        "commissioning", "ADD", [sgtin(s, gtin) for s in serials], MAKER_GLN, ilmd=ilmd
    )


def shipping(epcs: list[str], origin: str, destination: str) -> dict[str, Any]:
    dest = [{"type": "location", "destination": sgln(destination)}]
    return object_event("shipping", "OBSERVE", epcs, origin, destinationList=dest)


_captures = itertools.count(1)


def anchors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        hash_id = event_hash_id(event)
        anchor: dict[str, Any] = {"hash": hash_id, "type": event["type"]}
        op = supply_op(event, hash_id)
        if op is not None:
            anchor["op"] = op
        out.append(anchor)
    return out


def capture(
    chain: TestChain, signer: str, events: list[dict[str, Any]], actor: str | None = None
) -> dict[str, Any]:
    args: dict[str, Any] = {"capture": f"cap-{next(_captures)}", "events": anchors(events)}
    if actor is not None:
        args["actor"] = actor
    return run(chain, signer, "anchor_events", args)


def explain(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> Any:
    tx = decode_envelope(chain.envelope(signer, method, args, contract="supply"))
    return chain.ledger.explain(tx)


def stock(chain: TestChain, gln: str, gtin: str = GTIN) -> int:
    entry = state(chain, f"stock/{gtin}/{gln}")
    return 0 if entry is None else int(entry["quantity"])


# ------------------------------------------------------------------------------------------


def test_epcis_flow_commission_pack_ship_receive_unpack_dispense(chain: TestChain) -> None:
    serials = [f"E{i}" for i in range(6)]
    ok(capture(chain, "maker-admin", [commissioning(serials)]))
    assert unit(chain, "E0")["lot"] == LOT and unit(chain, "E0")["expiry"] == EXPIRY
    assert stock(chain, MAKER_GLN) == 6
    # cases of three, both cases on one pallet, in one document
    ok(
        capture(
            chain,
            "maker-admin",
            [
                pack(CASE1, [sgtin(s) for s in serials[:3]], MAKER_GLN),
                pack(CASE2, [sgtin(s) for s in serials[3:]], MAKER_GLN),
                pack(PALLET, [sscc(CASE1), sscc(CASE2)], MAKER_GLN),
            ],
        )
    )
    assert state(chain, f"sscc/{PALLET}")["ssccs"] == [CASE1, CASE2]
    assert state(chain, f"sscc/{CASE1}")["parent"] == PALLET
    # A case on a pallet cannot leave alone.
    alone = capture(chain, "maker-admin", [shipping([sscc(CASE1)], MAKER_GLN, PHARM_GLN)])
    assert code(alone) == "AGGREGATED"
    ok(capture(chain, "maker-admin", [shipping([sscc(PALLET)], MAKER_GLN, PHARM_GLN)]))
    assert stock(chain, MAKER_GLN) == 0
    assert {unit(chain, s)["status"] for s in serials} == {"shipped"}
    # The pharmacy receives the pallet (a node captures for its member), unpacks, dispenses.
    receiving = object_event("receiving", "OBSERVE", [sscc(PALLET)], PHARM_GLN)
    ok(capture(chain, "hosp-node", [receiving], actor="pharm-admin"))
    assert {unit(chain, s)["owner"] for s in serials} == {"pharm"}
    assert stock(chain, PHARM_GLN) == 6
    dispensing = object_event("dispensing", "OBSERVE", [sgtin("E0")], PHARM_GLN)
    assert code(capture(chain, "pharm-admin", [dispensing])) == "AGGREGATED"
    unpack = [pack(PALLET, [], PHARM_GLN, "DELETE"), pack(CASE1, [], PHARM_GLN, "DELETE")]
    ok(capture(chain, "pharm-admin", [*unpack, dispensing]))
    assert unit(chain, "E0")["status"] == "dispensed"
    assert state(chain, f"sscc/{PALLET}") is None
    assert state(chain, f"sscc/{CASE2}")["parent"] is None
    assert stock(chain, PHARM_GLN) == 5


def test_a_refused_event_refuses_the_document_and_names_the_event(chain: TestChain) -> None:
    ok(capture(chain, "maker-admin", [commissioning(["D1"])]))
    ship = shipping([sgtin("D1")], MAKER_GLN, PHARM_GLN)
    receive = object_event("receiving", "OBSERVE", [sgtin("D1")], PHARM_GLN)
    ok(capture(chain, "maker-admin", [ship]))
    ok(capture(chain, "pharm-admin", [receive]))
    dispense = object_event("dispensing", "OBSERVE", [sgtin("D1")], PHARM_GLN)
    ok(capture(chain, "pharm-admin", [dispense]))
    again = object_event("dispensing", "OBSERVE", [sgtin("D1")], PHARM_GLN)
    observed = object_event("storing", "OBSERVE", [sgtin("D1")], PHARM_GLN)
    events = [observed, again]
    args = {"capture": "cap-twice", "events": anchors(events)}
    assert code(run(chain, "pharm-admin", "anchor_events", args)) == "ALREADY_DISPENSED"
    why = explain(chain, "pharm-admin", "anchor_events", args)
    assert why.code == "ALREADY_DISPENSED" and why.message.startswith("event 1: ")
    assert why.detail == {"event": 1, "gtin": GTIN, "serial": "D1", "location": PHARM_GLN}
    # nothing of the refused document was kept: its first event's hash is not anchored
    assert state(chain, f"event/{args['events'][0]['hash'].split(';')[1][:64]}") is None
    assert state(chain, "capture/cap-twice") is None


def test_ownership_is_the_capturing_members(chain: TestChain) -> None:
    ok(capture(chain, "maker-admin", [commissioning(["O1"])]))
    # The hospital cannot ship the maker's unit, directly or through the node.
    ship = shipping([sgtin("O1")], HOSP_GLN, PHARM_GLN)
    assert code(capture(chain, "hosp-admin", [ship])) == "NOT_OWNER"
    assert code(capture(chain, "hosp-node", [ship], actor="hosp-admin")) == "NOT_OWNER"
    # Only a node captures for someone else, and only for a known member.
    assert code(capture(chain, "maker-admin", [ship], actor="hosp-admin")) == "NOT_AUTHORISED"
    assert code(capture(chain, "hosp-node", [ship], actor="nobody")) == "UNKNOWN_MEMBER"
    # A receipt needs the whole open shipment, at the receiver.
    ok(capture(chain, "maker-admin", [commissioning(["O2"])]))
    ok(capture(chain, "maker-admin", [shipping([sgtin("O1"), sgtin("O2")], MAKER_GLN, PHARM_GLN)]))
    partial = object_event("receiving", "OBSERVE", [sgtin("O1")], PHARM_GLN)
    assert code(capture(chain, "pharm-admin", [partial])) == "NO_MATCHING_SHIPMENT"
    whole = object_event("receiving", "OBSERVE", [sgtin("O1"), sgtin("O2")], PHARM_GLN)
    assert code(capture(chain, "hosp-admin", [whole])) == "NO_MATCHING_SHIPMENT"
    ok(capture(chain, "pharm-admin", [whole]))
    # Commissioning under another organisation's prefix is refused.
    fake = commissioning(["FAKE"])
    fake["bizLocation"] = {"id": sgln(PHARM_GLN)}
    assert code(capture(chain, "pharm-admin", [fake])) == "NOT_PREFIX_OWNER"


def test_untracked_prefixes_are_anchored_without_state(chain: TestChain) -> None:
    foreign = commissioning(["U1"], gtin=UNTRACKED_GTIN)
    foreign["epcList"] = [sgtin("U1", UNTRACKED_GTIN, 7)]
    ok(capture(chain, "maker-admin", [foreign]))
    assert state(chain, f"unit/{UNTRACKED_GTIN}/U1") is None


def test_observations_raise_alerts(chain: TestChain) -> None:
    ok(capture(chain, "maker-admin", [commissioning(["A1"])]))
    seen_far = object_event("inspecting", "OBSERVE", [sgtin("A1")], HOSP_GLN)
    seen_home = object_event("inspecting", "OBSERVE", [sgtin("A1")], MAKER_GLN)
    ghost = object_event("inspecting", "OBSERVE", [sgtin("GHOST")], HOSP_GLN)
    executed = chain.commit(
        chain.envelope(
            "hosp-admin",
            "anchor_events",
            {"capture": "cap-obs", "events": anchors([seen_far, seen_home, ghost])},
            contract="supply",
        )
    )
    ok(next(iter(executed.receipts.values())))
    alerts = [orjson.loads(e.data) for e in executed.block.events if e.type == "supply.alert"]
    assert [(a["kind"], a["serial"], a["location"]) for a in alerts] == [
        ("unexplained_location", "A1", HOSP_GLN),
        ("never_commissioned", "GHOST", HOSP_GLN),
    ]
    # En route, the destination explains the sighting.
    ok(capture(chain, "maker-admin", [shipping([sgtin("A1")], MAKER_GLN, HOSP_GLN)]))
    at_dock = object_event("arriving", "OBSERVE", [sgtin("A1")], HOSP_GLN)
    executed = chain.commit(
        chain.envelope(
            "hosp-admin",
            "anchor_events",
            {"capture": "cap-dock", "events": anchors([at_dock])},
            contract="supply",
        )
    )
    assert [e for e in executed.block.events if e.type == "supply.alert"] == []


def test_stock_follows_every_move(chain: TestChain) -> None:
    ok(commission(chain, "K1", "K2", "K3"))
    assert stock(chain, MAKER_GLN) == 3
    ok(
        run(
            chain,
            "maker-admin",
            "decommission",
            {"gtin": GTIN, "serial": "K1", "reason": "damaged"},
        )
    )
    ok(run(chain, "maker-admin", "destroy", {"gtin": GTIN, "serial": "K1"}))  # no double count
    assert stock(chain, MAKER_GLN) == 2
    ok(run(chain, "maker-admin", "destroy", {"gtin": GTIN, "serial": "K2"}))
    ok(run(chain, "maker-admin", "destroy", {"gtin": GTIN, "serial": "K3"}))
    assert state(chain, f"stock/{GTIN}/{MAKER_GLN}") is None  # zero rows are removed


def test_lot_index_spans_chunks_and_recall_reaches_every_serial(chain: TestChain) -> None:
    serials = [f"C{i:04d}" for i in range(1200)]
    for start in range(0, 1200, 400):  # three commissions of 400: chunks of 500, 500, 200
        ok(commission(chain, *serials[start : start + 400]))
    assert state(chain, f"lotunits/{GTIN}/{LOT}") == {"count": 1200, "chunks": 3}
    assert [len(state(chain, f"lotchunk/{GTIN}/{LOT}/{i}")) for i in range(3)] == [500, 500, 200]
    args = {"gtin": GTIN, "lots": [LOT], "reason": "sterility"}
    receipt = ok(run(chain, "maker-admin", "recall", args))
    assert state(chain, f"recall/{receipt['tx_id']}")["units"] == 1200
    assert "recalled" in unit(chain, "C1199")["flags"]


def test_lots_with_slashes_do_not_collide(chain: TestChain) -> None:
    ok(commission(chain, "S1", lot="A/B"))
    ok(commission(chain, "S2", lot="A%2FB"))
    assert state(chain, f"lotchunk/{GTIN}/A%2FB/0") == ["S1"]
    assert state(chain, f"lotchunk/{GTIN}/A%252FB/0") == ["S2"]


def test_suspect_case_investigation_determination_notification(chain: TestChain) -> None:
    ok(commission(chain, "Q1", "Q2"))
    key = f"suspect/{GTIN}/Q1"
    case_args = {"gtin": GTIN, "serial": "Q1"}
    assert code(run(chain, "maker-admin", "investigate", {**case_args, "note": "x"})) == (
        "NOT_SUSPECT"
    )
    ok(run(chain, "maker-admin", "flag_suspect", {**case_args, "reason": "torn seal"}))
    assert state(chain, key)["stage"] == "quarantined"
    ok(run(chain, "maker-admin", "investigate", {**case_args, "note": "lab ref 42"}))
    assert state(chain, key)["stage"] == "investigating"
    assert state(chain, key)["notes"][0]["note"] == "lab ref 42"
    assert code(run(chain, "pharm-admin", "investigate", {**case_args, "note": "y"})) == (
        "NOT_AUTHORISED"
    )
    assert code(run(chain, "maker-admin", "notify", {**case_args, "reference": "r"})) == (
        "NOT_ILLEGITIMATE"
    )
    ok(run(chain, "maker-admin", "determine", {**case_args, "determination": "illegitimate"}))
    case = state(chain, key)
    assert case["stage"] == "illegitimate"
    assert case["determination"]["notify_by"] == case["determination"]["time"] + 86_400_000
    ok(run(chain, "maker-admin", "notify", {**case_args, "reference": "FDA-3911-0001"}))
    case = state(chain, key)
    assert case["stage"] == "closed" and case["notified"]["late"] is False
    assert code(run(chain, "maker-admin", "notify", {**case_args, "reference": "again"})) == (
        "ALREADY_NOTIFIED"
    )
    # a legitimate determination closes the case and lifts the quarantine
    ok(run(chain, "maker-admin", "flag_suspect", {"gtin": GTIN, "serial": "Q2", "reason": "odd"}))
    ok(
        run(
            chain,
            "maker-admin",
            "determine",
            {"gtin": GTIN, "serial": "Q2", "determination": "legitimate"},
        )
    )
    assert state(chain, f"suspect/{GTIN}/Q2")["stage"] == "closed"
    assert "suspect" not in unit(chain, "Q2")["flags"]


def test_notification_after_the_deadline_is_recorded_late(chain: TestChain) -> None:
    ok(commission(chain, "L1"))
    args = {"gtin": GTIN, "serial": "L1"}
    ok(run(chain, "maker-admin", "determine", {**args, "determination": "illegitimate"}))
    chain.time += 86_400_000 + 1
    ok(run(chain, "maker-admin", "notify", {**args, "reference": "late"}))
    assert state(chain, f"suspect/{GTIN}/L1")["notified"]["late"] is True


def test_on_behalf_runs_a_method_as_the_member(chain: TestChain) -> None:
    ok(commission(chain, "B1"))
    call = {
        "actor": "maker-admin",
        "method": "flag_suspect",
        "args": {"gtin": GTIN, "serial": "B1", "reason": "r"},
    }
    ok(run(chain, "hosp-node", "on_behalf", call))
    assert state(chain, f"suspect/{GTIN}/B1")["opened_by"] == "maker"
    assert code(run(chain, "maker-admin", "on_behalf", call)) == "NOT_AUTHORISED"
    assert code(run(chain, "hosp-node", "on_behalf", {**call, "method": "anchor_events"})) == (
        "BAD_ARGS"
    )
    as_pharm = {**call, "actor": "pharm-admin", "args": {**call["args"], "serial": "B1"}}
    assert code(run(chain, "hosp-node", "on_behalf", as_pharm)) == "NOT_AUTHORISED"


@pytest.mark.parametrize(
    ("step", "action", "op"),
    [
        ("commissioning", "ADD", "commission"),
        ("shipping", "OBSERVE", "ship"),
        ("receiving", "OBSERVE", "receive"),
        ("accepting", "OBSERVE", "receive"),
        ("dispensing", "OBSERVE", "dispense"),
        ("decommissioning", "DELETE", "decommission"),
        ("destroying", "OBSERVE", "destroy"),
        ("storing", "OBSERVE", "observe"),
        ("https://ref.gs1.org/cbv/BizStep-shipping", "OBSERVE", "ship"),
        ("urn:epcglobal:cbv:bizstep:receiving", "OBSERVE", "receive"),
    ],
)
def test_bizstep_maps_to_op(step: str, action: str, op: str) -> None:
    event = object_event(step, action, [sgtin("M1")], MAKER_GLN)
    assert supply_op(event, event_hash_id(event))["op"] == op  # type: ignore[index]


# ------------------------------------------------------------------------------------------
# review findings: who a node may act for, distributor logistic units, final determinations


def test_node_members_come_only_from_genesis_or_a_vote(chain: TestChain) -> None:
    from tests.support.chain import key

    bot = {"id": "pharm-bot", "name": "bot", "roles": ["node"], "public_key": key("bot").public_b64}
    assert code(chain.run("pharm-admin", "add_member", bot)) == "NOT_AUTHORISED"
    assert (
        code(
            chain.run(
                "pharm-admin", "set_roles", {"member": "pharm-admin", "roles": ["admin", "node"]}
            )
        )
        == "NOT_AUTHORISED"
    )


def test_a_node_acts_only_for_orgs_without_their_own_node(chain: TestChain) -> None:
    ok(commission(chain, "N1"))
    call = {
        "actor": "maker-admin",
        "method": "flag_suspect",
        "args": {"gtin": GTIN, "serial": "N1", "reason": "r"},
    }
    # maker runs no node of its own yet: the shared (hospital) node may act for its admin
    ok(run(chain, "hosp-node", "on_behalf", call))
    from tests.support.chain import key

    proposal = {
        "org": {"id": "lab", "name": "Lab", "kind": "other"},
        "admin": {"id": "lab-admin", "name": "L", "public_key": key("lab-admin").public_b64},
        "node": {
            "id": "lab-node",
            "name": "N",
            "public_key": key("lab-node").public_b64,
            "endpoint": "http://lab:1",
        },
    }
    receipt = ok(chain.run("hosp-admin", "propose_org", proposal))
    ok(chain.run("pharm-admin", "vote", {"proposal": receipt["tx_id"], "approve": True}))
    # lab registered its node: the hospital's node may no longer act for lab's members
    lab_call = {
        "actor": "lab-admin",
        "method": "register_location",
        "args": {"gln": cd("4000000" + "00001"), "name": "x"},
    }
    assert code(run(chain, "hosp-node", "on_behalf", lab_call)) == "NOT_AUTHORISED"
    ok(run(chain, "lab-node", "on_behalf", lab_call))


def test_a_distributors_own_logistic_units_move_by_epcis(chain: TestChain) -> None:
    ok(capture(chain, "maker-admin", [commissioning(["W1", "W2"])]))
    both = [sgtin("W1"), sgtin("W2")]
    ok(capture(chain, "maker-admin", [shipping(both, MAKER_GLN, HOSP_GLN)]))
    ok(capture(chain, "hosp-admin", [object_event("receiving", "OBSERVE", both, HOSP_GLN)]))
    own_case = cd("0" + "0888888" + "000000001")  # under a prefix nobody registered
    ok(capture(chain, "hosp-admin", [pack(own_case, both, HOSP_GLN)]))
    case_epc = to_epc_urn(SSCC(own_case), 7)
    ok(capture(chain, "hosp-admin", [shipping([case_epc], HOSP_GLN, PHARM_GLN)]))
    assert unit(chain, "W1")["status"] == "shipped"
    ok(capture(chain, "pharm-admin", [object_event("receiving", "OBSERVE", [case_epc], PHARM_GLN)]))
    assert unit(chain, "W2")["owner"] == "pharm"


def test_an_illegitimate_determination_is_final(chain: TestChain) -> None:
    ok(commission(chain, "F1"))
    args = {"gtin": GTIN, "serial": "F1"}
    ok(run(chain, "maker-admin", "flag_suspect", {**args, "reason": "r"}))
    ok(run(chain, "maker-admin", "determine", {**args, "determination": "illegitimate"}))
    again = run(chain, "maker-admin", "determine", {**args, "determination": "legitimate"})
    assert code(again) == "ALREADY_DETERMINED"
    assert "notify_by" in state(chain, f"suspect/{GTIN}/F1")["determination"]
