"""supply: serialised units from commissioning through shipping to dispensing, recalls, suspects."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.contracts.base import BlockState, Context, Signer, StateView, TxState
from careledger.contracts.registry import default_registry
from careledger.contracts.supply import MAX_COMMISSION, NOTIFY_MS, SupplyV1, is_expired, unit_view
from careledger.errors import Rejected
from careledger.storage.memory import MemoryStore
from careledger.supply.identifiers import SGTIN, gs1_check_digit, to_epc_urn
from tests.support.chain import TestChain, key


def cd(digits: str) -> str:
    return digits + gs1_check_digit(digits)


PREFIX = "0614141"
GTIN = cd("0" + PREFIX + "12345")  # GTIN-14
OTHER_GTIN = cd("0" + "9999999" + "00001")  # no prefix registered
MAKER_GLN = cd(PREFIX + "00001")
HOSP_GLN = cd(PREFIX + "00002")
PHARM_GLN = cd(PREFIX + "00003")
SSCC = cd("0" + PREFIX + "000000001")
SSCC2 = cd("0" + PREFIX + "000000002")
LOT = "L1"
EXPIRY = "271231"


def ok(receipt: dict[str, Any]) -> dict[str, Any]:
    assert receipt["result"] == "accepted", receipt
    return receipt


def code(receipt: dict[str, Any]) -> str:
    assert receipt["result"] == "rejected", receipt
    return str(receipt["code"])


def run(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
    return chain.run(signer, method, args, contract="supply")


def events(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> list[Any]:
    """Commit one supply transaction and return its (type, data) events."""
    executed = chain.commit(chain.envelope(signer, method, args, contract="supply"))
    (receipt,) = executed.receipts.values()
    ok(receipt)
    return [(e.type, orjson.loads(e.data)) for e in executed.block.events]


def unit(chain: TestChain, serial: str, gtin: str = GTIN) -> dict[str, Any]:
    def reader(ns: str, k: str) -> Any:
        raw = chain.store.get_state(ns, k)
        return None if raw is None else orjson.loads(raw)

    view = unit_view(reader, gtin, serial)
    assert view is not None
    return view


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("supply", k)
    return None if raw is None else orjson.loads(raw)


def units(*serials: str, lot: str = LOT, expiry: str = EXPIRY, gtin: str = GTIN) -> list[dict]:
    return [{"gtin": gtin, "serial": s, "lot": lot, "expiry": expiry} for s in serials]


def commission(chain: TestChain, *serials: str, **kw: Any) -> dict[str, Any]:
    return run(
        chain, "maker-admin", "commission", {"units": units(*serials, **kw), "location": MAKER_GLN}
    )


def ship(
    chain: TestChain,
    sid: str,
    items: list[Any],
    *,
    signer: str = "maker-admin",
    to_org: str = "hosp",
    to_location: str = HOSP_GLN,
) -> dict[str, Any]:
    args = {"shipment_id": sid, "units": items, "to_org": to_org, "to_location": to_location}
    return run(chain, signer, "ship", args)


def ref(serial: str) -> dict[str, str]:
    return {"gtin": GTIN, "serial": serial}


@pytest.fixture
def chain() -> TestChain:
    c = TestChain(MemoryStore())
    ok(run(c, "maker-admin", "register_prefix", {"prefix": PREFIX}))
    ok(run(c, "maker-admin", "register_location", {"gln": MAKER_GLN, "name": "Plant"}))
    ok(run(c, "hosp-admin", "register_location", {"gln": HOSP_GLN, "name": "Hospital DC"}))
    ok(run(c, "pharm-admin", "register_location", {"gln": PHARM_GLN, "name": "Pharmacy"}))
    return c


def to_pharmacy(chain: TestChain, *serials: str) -> None:
    """maker -> pharm directly."""
    sid = "to-pharm-" + "-".join(serials)
    ok(ship(chain, sid, [ref(s) for s in serials], to_org="pharm", to_location=PHARM_GLN))
    ok(run(chain, "pharm-admin", "receive", {"shipment_id": sid}))


def dispense(chain: TestChain, serial: str, signer: str = "pharm-admin") -> dict[str, Any]:
    args = {"gtin": GTIN, "serial": serial, "location": PHARM_GLN}
    return run(chain, signer, "dispense", args)


def add_second_maker(chain: TestChain) -> None:
    args = {
        "org": {"id": "maker2", "name": "Maker 2", "kind": "manufacturer"},
        "admin": {"id": "maker2-admin", "name": "M2", "public_key": key("maker2-admin").public_b64},
    }
    proposal = ok(chain.run("maker-admin", "propose_org", args))["tx_id"]
    ok(chain.run("hosp-admin", "vote", {"proposal": proposal, "approve": True}))


# ------------------------------------------------------------------------------------------
# prefixes and locations


def test_register_prefix_rules(chain: TestChain) -> None:
    assert state(chain, f"prefix/{PREFIX}")["org"] == "maker"
    ok(run(chain, "maker-admin", "register_prefix", {"prefix": PREFIX}))  # idempotent for owner
    assert code(run(chain, "hosp-admin", "register_prefix", {"prefix": "123456"})) == (
        "NOT_MANUFACTURER"
    )
    assert code(run(chain, "dr-a", "register_prefix", {"prefix": "123456"})) == "NOT_AUTHORISED"
    assert code(run(chain, "maker-admin", "register_prefix", {"prefix": "12345"})) == "BAD_ARGS"
    add_second_maker(chain)
    assert code(run(chain, "maker2-admin", "register_prefix", {"prefix": PREFIX})) == (
        "PREFIX_TAKEN"
    )
    # A prefix inside another organisation's, or holding one, would take over its GTINs.
    assert code(run(chain, "maker2-admin", "register_prefix", {"prefix": PREFIX + "12"})) == (
        "PREFIX_TAKEN"
    )
    assert code(run(chain, "maker2-admin", "register_prefix", {"prefix": PREFIX[:6]})) == (
        "PREFIX_TAKEN"
    )
    ok(run(chain, "maker-admin", "register_prefix", {"prefix": PREFIX + "12"}))  # its own: fine
    assert code(commission(chain, "S1", gtin=cd("0" + "9876543" + "00001"))) == ("NOT_PREFIX_OWNER")
    ok(run(chain, "maker2-admin", "register_prefix", {"prefix": "9876543"}))
    ok(run(chain, "maker2-admin", "register_location", {"gln": cd("9" * 12), "name": "M2"}))
    args = {"units": units("S1", gtin=cd("0" + "9876543" + "00001")), "location": cd("9" * 12)}
    ok(run(chain, "maker2-admin", "commission", args))


def test_register_location_rules(chain: TestChain) -> None:
    assert state(chain, f"gln/{HOSP_GLN}")["org"] == "hosp"
    bad = MAKER_GLN[:-1] + str((int(MAKER_GLN[-1]) + 1) % 10)
    assert code(run(chain, "hosp-admin", "register_location", {"gln": bad, "name": "x"})) == (
        "BAD_ARGS"
    )
    args = {"gln": MAKER_GLN, "name": "mine"}
    assert code(run(chain, "hosp-admin", "register_location", args)) == "GLN_TAKEN"
    assert code(run(chain, "patient-1", "register_location", args)) == "NOT_AUTHORISED"


# ------------------------------------------------------------------------------------------
# commissioning


def test_commission_writes_units_and_lot_index(chain: TestChain) -> None:
    evs = events(
        chain, "maker-admin", "commission", {"units": units("S1", "S2"), "location": MAKER_GLN}
    )
    u = unit(chain, "S1")
    assert u["owner"] == "maker" and u["status"] == "commissioned" and u["parent"] is None
    assert (u["lot"], u["expiry"], u["holder_location"], u["flags"]) == (
        LOT,
        EXPIRY,
        MAKER_GLN,
        [],
    )
    assert u["history_height"] > 0
    assert state(chain, f"lotunits/{GTIN}/{LOT}") == {"count": 2, "chunks": 1}
    assert state(chain, f"lotchunk/{GTIN}/{LOT}/0") == ["S1", "S2"]
    assert state(chain, f"stock/{GTIN}/{MAKER_GLN}")["quantity"] == 2
    assert evs == [
        (
            "supply.commissioned",
            {
                "gtin": GTIN,
                "lot": LOT,
                "serials": ["S1", "S2"],
                "org": "maker",
                "location": MAKER_GLN,
            },
        )
    ]
    # a GTIN-13 is stored as its GTIN-14
    ok(commission(chain, "S3", gtin=GTIN[1:]))
    assert unit(chain, "S3")["gtin"] == GTIN


def test_commission_is_all_or_nothing(chain: TestChain) -> None:
    ok(commission(chain, "S1"))
    assert code(commission(chain, "S2", "S3", "S1", "S4")) == "DUPLICATE_COMMISSION"
    assert code(commission(chain, "S5", "S5")) == "DUPLICATE_COMMISSION"
    for serial in ("S2", "S3", "S4", "S5"):
        assert state(chain, f"unit/{GTIN}/{serial}") is None
    assert state(chain, f"lotunits/{GTIN}/{LOT}") == {"count": 1, "chunks": 1}
    assert state(chain, f"lotchunk/{GTIN}/{LOT}/0") == ["S1"]
    assert state(chain, f"stock/{GTIN}/{MAKER_GLN}")["quantity"] == 1


def test_commission_refusals(chain: TestChain) -> None:
    assert code(commission(chain, "S1", gtin=OTHER_GTIN)) == "NOT_PREFIX_OWNER"
    args = {"units": units("S1"), "location": HOSP_GLN}
    assert code(run(chain, "maker-admin", "commission", args)) == "UNKNOWN_LOCATION"
    assert code(run(chain, "hosp-admin", "commission", args)) == "NOT_PREFIX_OWNER"
    assert code(run(chain, "dr-a", "commission", args)) == "NOT_AUTHORISED"
    assert code(commission(chain, "S1", expiry="271332")) == "BAD_ARGS"
    assert code(commission(chain, "bad serial with spaces")) == "BAD_ARGS"
    bad = {"units": [{"gtin": GTIN, "serial": "S1", "lot": None, "expiry": EXPIRY}]}
    assert code(run(chain, "maker-admin", "commission", {**bad, "location": MAKER_GLN})) == (
        "BAD_ARGS"
    )


def test_commission_batch_bound() -> None:
    """1,000 units per transaction (checked directly: such an envelope exceeds 64 KiB)."""
    tx = TxState(BlockState(lambda ns, k: None))
    signer = Signer("k", "maker-admin", "maker", frozenset({"admin"}))
    ctx = Context(signer, "c", 1, 0, "t", StateView("supply", tx), default_registry().named("r0"))
    args = {"units": units(*(f"S{i}" for i in range(1001))), "location": MAKER_GLN}
    with pytest.raises(Rejected) as exc:
        SupplyV1().call(ctx, "commission", args)
    assert exc.value.code == "BAD_ARGS" and MAX_COMMISSION == 1000


# ------------------------------------------------------------------------------------------
# aggregation, shipping, receiving


def test_aggregate_ship_receive_moves_children_with_parent(chain: TestChain) -> None:
    ok(commission(chain, "S1", "S2", "S3"))
    epc = to_epc_urn(SGTIN(GTIN, "S2"), len(PREFIX))
    ok(run(chain, "maker-admin", "aggregate", {"parent_sscc": SSCC, "children": [ref("S1"), epc]}))
    assert state(chain, f"sscc/{SSCC}")["children"] == [ref("S1"), ref("S2")]
    assert unit(chain, "S1")["parent"] == SSCC
    assert code(ship(chain, "sh0", [ref("S1")])) == "AGGREGATED"
    evs = events(
        chain,
        "maker-admin",
        "ship",
        {
            "shipment_id": "sh1",
            "units": [SSCC, ref("S3")],
            "to_org": "hosp",
            "to_location": HOSP_GLN,
        },
    )
    assert evs[0][0] == "supply.shipped" and evs[0][1]["ssccs"] == [SSCC]
    shipment = state(chain, "shipment/sh1")
    assert (shipment["from"], shipment["to"], shipment["status"]) == ("maker", "hosp", "open")
    assert shipment["units"] == [ref("S1"), ref("S2"), ref("S3")]
    assert all(unit(chain, s)["status"] == "shipped" for s in ("S1", "S2", "S3"))
    assert unit(chain, "S1")["owner"] == "maker"
    assert code(run(chain, "maker-admin", "disaggregate", {"parent_sscc": SSCC})) == "IN_TRANSIT"
    assert code(run(chain, "pharm-admin", "receive", {"shipment_id": "sh1"})) == (
        "NO_MATCHING_SHIPMENT"
    )
    assert code(run(chain, "hosp-admin", "receive", {"shipment_id": "nope"})) == (
        "NO_MATCHING_SHIPMENT"
    )
    ok(run(chain, "hosp-admin", "receive", {"shipment_id": "sh1"}))
    assert code(run(chain, "hosp-admin", "receive", {"shipment_id": "sh1"})) == (
        "NO_MATCHING_SHIPMENT"
    )
    assert state(chain, "shipment/sh1")["status"] == "closed"
    for s in ("S1", "S2", "S3"):
        u = unit(chain, s)
        assert (u["owner"], u["status"], u["holder_location"]) == ("hosp", "received", HOSP_GLN)
    parent = state(chain, f"sscc/{SSCC}")
    assert (parent["owner"], parent["location"]) == ("hosp", HOSP_GLN)
    # the receiver ships the pallet on, still whole, by its Digital Link
    dl = f"https://example.com/00/{SSCC}"
    ok(ship(chain, "sh2", [dl], signer="hosp-admin", to_org="pharm", to_location=PHARM_GLN))
    ok(run(chain, "pharm-admin", "receive", {"shipment_id": "sh2"}))
    assert unit(chain, "S2")["owner"] == "pharm"
    assert code(dispense(chain, "S2")) == "AGGREGATED"
    assert code(run(chain, "hosp-admin", "disaggregate", {"parent_sscc": SSCC})) == "NOT_OWNER"
    ok(run(chain, "pharm-admin", "disaggregate", {"parent_sscc": SSCC}))
    assert state(chain, f"sscc/{SSCC}") is None
    assert unit(chain, "S2")["parent"] is None
    ok(dispense(chain, "S2"))
    assert code(run(chain, "pharm-admin", "disaggregate", {"parent_sscc": SSCC})) == "UNKNOWN_SSCC"


def test_aggregate_refusals(chain: TestChain) -> None:
    ok(commission(chain, "S1", "S2", "S3"))
    args = {"parent_sscc": SSCC, "children": [ref("S1")]}
    assert code(run(chain, "hosp-admin", "aggregate", args)) == "NOT_OWNER"
    ok(run(chain, "maker-admin", "aggregate", args))
    assert code(run(chain, "maker-admin", "aggregate", args)) == "SSCC_EXISTS"
    again = {"parent_sscc": SSCC2, "children": [ref("S1")]}
    assert code(run(chain, "maker-admin", "aggregate", again)) == "AGGREGATED"
    assert (
        code(
            run(
                chain,
                "maker-admin",
                "aggregate",
                {**args, "parent_sscc": SSCC2, "children": [SSCC2]},
            )
        )
        == "BAD_ARGS"
    )
    unknown_case = {"parent_sscc": SSCC2, "children": [cd("0" + PREFIX + "000000077")]}
    assert code(run(chain, "maker-admin", "aggregate", unknown_case)) == "UNKNOWN_SSCC"
    ok(run(chain, "maker-admin", "destroy", {"gtin": GTIN, "serial": "S3"}))
    dead = {"parent_sscc": SSCC2, "children": [ref("S3")]}
    assert code(run(chain, "maker-admin", "aggregate", dead)) == "INVALID_STATUS"
    unknown = {"parent_sscc": SSCC2, "children": [ref("S9")]}
    assert code(run(chain, "maker-admin", "aggregate", unknown)) == "UNKNOWN_SERIAL"
    bad = {"parent_sscc": SSCC[:-1] + "0" if SSCC[-1] != "0" else SSCC[:-1] + "1"}
    assert code(run(chain, "maker-admin", "aggregate", {**bad, "children": [ref("S2")]})) == (
        "BAD_ARGS"
    )


def test_ship_refusals(chain: TestChain) -> None:
    ok(commission(chain, "S1", "S2"))
    assert code(ship(chain, "sh1", [ref("S1")], signer="hosp-admin", to_org="maker",
                     to_location=MAKER_GLN)) == "NOT_OWNER"  # fmt: skip
    assert code(ship(chain, "sh1", [ref("S1")], to_org="nobody")) == "UNKNOWN_TRADING_PARTNER"
    assert code(ship(chain, "sh1", [ref("S1")], to_org="maker")) == "UNKNOWN_TRADING_PARTNER"
    assert code(ship(chain, "sh1", [ref("S1")], to_location=PHARM_GLN)) == "UNKNOWN_LOCATION"
    assert code(ship(chain, "sh1", [ref("S9")])) == "UNKNOWN_SERIAL"
    assert code(ship(chain, "sh1", [SSCC])) == "UNKNOWN_SSCC"
    assert code(ship(chain, "sh1", [ref("S1"), ref("S1")])) == "BAD_ARGS"
    assert code(ship(chain, "sh1", [ref("S1")], signer="dr-a")) == "NOT_AUTHORISED"
    ok(ship(chain, "sh1", [ref("S1")]))
    assert code(ship(chain, "sh1", [ref("S2")])) == "SHIPMENT_EXISTS"
    assert code(ship(chain, "sh2", [ref("S1")])) == "INVALID_STATUS"  # already in transit
    flag = {"gtin": GTIN, "serial": "S2", "reason": "damaged seal"}
    ok(run(chain, "maker-admin", "flag_suspect", flag))
    assert code(ship(chain, "sh3", [ref("S2")])) == "SUSPECT"


# ------------------------------------------------------------------------------------------
# dispensing and end of life


def test_dispense_happy_path_and_twice(chain: TestChain) -> None:
    ok(commission(chain, "S1"))
    assert code(dispense(chain, "S1")) == "NOT_OWNER"  # still at the maker
    to_pharmacy(chain, "S1")
    evs = events(
        chain, "pharm-admin", "dispense", {"gtin": GTIN, "serial": "S1", "location": PHARM_GLN}
    )
    assert evs == [
        (
            "supply.dispensed",
            {"gtin": GTIN, "serial": "S1", "org": "pharm", "location": PHARM_GLN},
        )
    ]
    assert unit(chain, "S1")["status"] == "dispensed"
    assert code(dispense(chain, "S1")) == "ALREADY_DISPENSED"
    assert code(dispense(chain, "NEVER")) == "UNKNOWN_SERIAL"
    assert code(run(chain, "pharm-admin", "destroy", {"gtin": GTIN, "serial": "S1"})) == (
        "INVALID_STATUS"
    )


def test_dispense_refusals(chain: TestChain) -> None:
    ok(commission(chain, "S1", "S2"))
    ok(ship(chain, "sh1", [ref("S1")]))
    ok(run(chain, "hosp-admin", "receive", {"shipment_id": "sh1"}))
    args = {"gtin": GTIN, "serial": "S1", "location": HOSP_GLN}
    assert code(run(chain, "hosp-admin", "dispense", args)) == "NOT_PHARMACY"
    assert code(run(chain, "dr-a", "dispense", args)) == "NOT_AUTHORISED"
    to_pharmacy(chain, "S2")
    wrong_place = {"gtin": GTIN, "serial": "S2", "location": HOSP_GLN}
    assert code(run(chain, "pharm-admin", "dispense", wrong_place)) == "UNKNOWN_LOCATION"
    ok(run(chain, "pharm-admin", "flag_suspect", {"gtin": GTIN, "serial": "S2", "reason": "x"}))
    assert code(dispense(chain, "S2")) == "SUSPECT"


def test_expiry_is_refused_and_day_00_means_month_end(chain: TestChain) -> None:
    # genesis time 1_700_000_000_000 ms is 2023-11-14 (UTC)
    assert is_expired("231113", chain.time) and not is_expired("231114", chain.time)
    assert not is_expired("231100", chain.time) and is_expired("231000", chain.time)
    ok(commission(chain, "OLD", lot="L-OLD", expiry="231000"))
    ok(commission(chain, "EOM", lot="L-EOM", expiry="231100"))
    to_pharmacy(chain, "OLD", "EOM")
    assert code(dispense(chain, "OLD")) == "EXPIRED"
    ok(dispense(chain, "EOM"))


def test_decommission_and_destroy(chain: TestChain) -> None:
    ok(commission(chain, "S1", "S2"))
    args = {"gtin": GTIN, "serial": "S1", "reason": "damaged"}
    assert code(run(chain, "hosp-admin", "decommission", args)) == "NOT_OWNER"
    assert code(run(chain, "maker-admin", "decommission", {**args, "reason": "meh"})) == "BAD_ARGS"
    ok(run(chain, "maker-admin", "decommission", args))
    u = unit(chain, "S1")
    assert (u["status"], u["reason"]) == ("decommissioned", "damaged")
    assert code(run(chain, "maker-admin", "decommission", args)) == "INVALID_STATUS"
    ok(run(chain, "maker-admin", "destroy", {"gtin": GTIN, "serial": "S1"}))
    assert unit(chain, "S1")["status"] == "destroyed"
    assert code(run(chain, "hosp-admin", "destroy", {"gtin": GTIN, "serial": "S2"})) == "NOT_OWNER"
    assert code(ship(chain, "sh1", [ref("S1")])) == "INVALID_STATUS"


# ------------------------------------------------------------------------------------------
# recalls and suspect product


def test_recall_flags_lots_blocks_dispense_and_counts_holders(chain: TestChain) -> None:
    ok(commission(chain, "R1", "R2", "R3"))
    ok(commission(chain, "K1", lot="L2"))
    to_pharmacy(chain, "R1", "R2", "K1")
    args = {"gtin": GTIN, "lots": [LOT], "reason": "contamination"}
    assert code(run(chain, "dr-a", "recall", args)) == "NOT_AUTHORISED"
    assert code(run(chain, "pharm-admin", "recall", args)) == "NOT_PREFIX_OWNER"
    assert code(run(chain, "maker-admin", "recall", {**args, "lots": ["NOPE"]})) == "UNKNOWN_LOT"
    add_second_maker(chain)
    assert code(run(chain, "maker2-admin", "recall", args)) == "NOT_PREFIX_OWNER"
    evs = events(chain, "maker-admin", "recall", args)
    (recall,) = [d for t, d in evs if t == "supply.recall"]
    holders = {
        MAKER_GLN: {"org": "maker", "quantity": 1},
        PHARM_GLN: {"org": "pharm", "quantity": 2},
    }
    assert recall["holders"] == holders
    assert recall["gtin"] == GTIN and recall["lots"] == [LOT]
    entry = state(chain, f"recall/{recall['recall']}")
    assert entry["units"] == 3 and entry["holders"] == holders
    notices = sorted(
        (d["gln"], d["org"], d["quantity"]) for t, d in evs if t == "supply.recall_notice"
    )
    assert notices == [(MAKER_GLN, "maker", 1), (PHARM_GLN, "pharm", 2)]
    assert all("recalled" in unit(chain, s)["flags"] for s in ("R1", "R2", "R3"))
    assert unit(chain, "K1")["flags"] == []
    assert code(dispense(chain, "R1")) == "RECALLED"
    assert code(ship(chain, "sh9", [ref("R3")])) == "RECALLED"
    ok(dispense(chain, "K1"))  # another lot is unaffected


def test_flag_suspect_and_legitimate_determination(chain: TestChain) -> None:
    ok(commission(chain, "S1"))
    to_pharmacy(chain, "S1")
    flag = {"gtin": GTIN, "serial": "S1", "reason": "label mismatch"}
    assert code(run(chain, "hosp-admin", "flag_suspect", flag)) == "NOT_AUTHORISED"
    assert code(run(chain, "maker-admin", "flag_suspect", {**flag, "serial": "S9"})) == (
        "UNKNOWN_SERIAL"
    )
    ok(run(chain, "maker-admin", "flag_suspect", flag))  # the prefix owner may flag
    assert code(run(chain, "pharm-admin", "flag_suspect", flag)) == "ALREADY_SUSPECT"
    u = unit(chain, "S1")
    assert u["flags"] == ["suspect"] and u["suspect"]["by"] == "maker"
    assert code(dispense(chain, "S1")) == "SUSPECT"
    det = {"gtin": GTIN, "serial": "S1", "determination": "legitimate"}
    assert code(run(chain, "hosp-admin", "determine", det)) == "NOT_AUTHORISED"
    assert code(run(chain, "pharm-admin", "determine", {**det, "determination": "maybe"})) == (
        "BAD_ARGS"
    )
    ok(run(chain, "pharm-admin", "determine", det))
    assert unit(chain, "S1")["flags"] == []
    assert code(run(chain, "pharm-admin", "determine", det)) == "NOT_SUSPECT"
    ok(dispense(chain, "S1"))


def test_illegitimate_sets_24_hour_notification_deadline(chain: TestChain) -> None:
    ok(commission(chain, "S1"))
    ok(run(chain, "maker-admin", "flag_suspect", {"gtin": GTIN, "serial": "S1", "reason": "x"}))
    det = {"gtin": GTIN, "serial": "S1", "determination": "illegitimate"}
    evs = events(chain, "maker-admin", "determine", det)
    block_time = chain.time  # the time of the block just committed
    u = unit(chain, "S1")
    assert "illegitimate" in u["flags"]
    assert u["determination"]["notify_by"] == block_time + NOTIFY_MS == block_time + 86_400_000
    assert evs == [
        (
            "supply.illegitimate",
            {
                "gtin": GTIN,
                "serial": "S1",
                "by": "maker",
                "determination": "illegitimate",
                "notify_by": block_time + NOTIFY_MS,
            },
        )
    ]
    assert code(ship(chain, "sh1", [ref("S1")])) == "SUSPECT"


def test_unit_view_and_bad_args(chain: TestChain) -> None:
    ok(commission(chain, "S1"))

    def reader(ns: str, k: str) -> Any:
        raw = chain.store.get_state(ns, k)
        return None if raw is None else orjson.loads(raw)

    assert unit_view(reader, GTIN[1:], "S1") is not None  # GTIN-13 finds the GTIN-14 unit
    assert unit_view(reader, GTIN, "S9") is None
    assert unit_view(reader, "123", "S1") is None
    assert code(run(chain, "maker-admin", "commission", {"units": units("S2")})) == "BAD_ARGS"


def test_verification_answers_from_ledger_state(chain: TestChain) -> None:
    from careledger.supply.verification import verify_unit

    commission(chain, "V1", "V2")

    def reader(ns: str, k: str) -> Any:
        return chain.ledger.state(ns, k)

    def check(serial: str, **kw: Any) -> dict[str, Any]:
        return verify_unit(
            unit_view(reader, GTIN, serial),
            lot=kw.get("lot", LOT),
            expiry=EXPIRY,
            time_ms=chain.time,
        )

    assert check("V1") == {"verified": True}
    assert check("NOPE") == {"verified": False, "verificationFailureReason": "No_match_GTIN_Serial"}
    assert check("V1", lot="L9")["verificationFailureReason"] == "No_match_GTIN_Serial_Lot"
    ok(
        run(
            chain, "maker-admin", "recall", {"gtin": GTIN, "lots": [LOT], "reason": "contamination"}
        )
    )
    assert check("V2") == {"verified": True, "additionalInfo": "Recalled"}


def test_capture_anchors_event_hashes_once(chain: TestChain) -> None:
    import json

    from careledger.supply.event_hash import document_event_hash_ids
    from tests.support.vectors import vector_path

    document = json.loads(
        vector_path(
            "epcis-event-hash-generator", "examples", "epcisDocWithVariousEventTypes.jsonld"
        ).read_text()
    )
    types = [e["type"] for e in document["epcisBody"]["eventList"]]
    hashes = document_event_hash_ids(document)
    events = [{"hash": h, "type": t} for h, t in zip(hashes, types, strict=True)]
    ok(run(chain, "maker-admin", "anchor_events", {"capture": "cap-1", "events": events}))
    assert state(chain, "capture/cap-1")["events"] == len(events)
    assert state(chain, f"event/{hashes[0].split(';')[1][:64]}")["capture"] == "cap-1"
    assert (
        code(run(chain, "maker-admin", "anchor_events", {"capture": "cap-1", "events": events[:1]}))
        == "CAPTURE_EXISTS"
    )
    # A replayed event in a new capture is refused, and nothing of that capture is kept.
    fresh = {"hash": "ni:///sha-256;" + "ab" * 32 + "?ver=CBV2.0", "type": "ObjectEvent"}
    assert (
        code(
            run(
                chain,
                "maker-admin",
                "anchor_events",
                {"capture": "cap-2", "events": [fresh, events[3]]},
            )
        )
        == "DUPLICATE_EVENT"
    )
    assert state(chain, "capture/cap-2") is None
    assert state(chain, "event/" + "ab" * 32) is None
    bad = {"hash": "sha256:abc", "type": "ObjectEvent"}
    assert (
        code(run(chain, "maker-admin", "anchor_events", {"capture": "cap-3", "events": [bad]}))
        == "BAD_ARGS"
    )
    assert (
        code(run(chain, "patient-1", "anchor_events", {"capture": "cap-4", "events": [fresh]}))
        == "NOT_AUTHORISED"
    )
