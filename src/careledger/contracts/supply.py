"""Drug supply chain (DSCSA style): per-unit state of serialised saleable units.

A manufacturer organisation claims GS1 company prefixes and commissions serialised units
(SGTINs) of the GTINs under them; units are packed into logistic units (SSCCs), shipped to
trading partners (any active organisation of the chain), received, and finally dispensed by a
pharmacy, decommissioned or destroyed. The prefix owner recalls whole lots; any holder may put a
unit in quarantine as suspect, and a determination of "illegitimate" starts the 24-hour
notification clock. Only GS1 identifiers live here: there is no PHI in this namespace.

State (namespace ``supply``):

* ``prefix/{prefix}`` -> ``{"org", "height"}``
* ``gln/{gln}`` -> ``{"org", "name", "height"}``
* ``unit/{gtin14}/{serial}`` -> the unit (see :meth:`SupplyV1.commission`)
* ``lotunits/{gtin14}/{lot}`` -> ``{"count", "chunks"}`` and ``lotchunk/{gtin14}/{lot}/{i}`` ->
  up to 500 serials (contracts cannot list keys, so the recall walks the per-lot chunks; a
  commission rewrites only the last chunk)
* ``sscc/{sscc}`` -> ``{"children": [{"gtin", "serial"}], "ssccs": [child SSCCs], "parent",
  "owner", "location", "status"}`` (cases nest in pallets)
* ``shipment/{id}`` -> ``{"from", "to", "to_location", "units", "ssccs", "status"}``
* ``stock/{gtin14}/{gln}`` -> ``{"gtin", "gln", "org", "quantity"}``: units in stock there
* ``recall/{tx_id}`` -> the recall and the holders (by GLN) it reached
* ``suspect/{gtin14}/{serial}`` -> the suspect-product case (quarantine, investigation,
  determination)
* ``event/{sha256}`` and ``capture/{id}``: anchored EPCIS event hashes

A rejected transaction keeps none of its events, so the alerts a refused dispense stands for
(``ALREADY_DISPENSED``, ``UNKNOWN_SERIAL``) are visible as the receipt's code in the log; the
refusal's ``detail`` names the unit, which a dry run (``Ledger.explain``) recovers.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from typing import Any, ClassVar

from careledger.contracts.base import Args, Context, Contract, KeyLister, StateReader, tx_method
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import org_key
from careledger.errors import Rejected, ValidationError
from careledger.supply.epcis_ops import location_gln, supply_op
from careledger.supply.event_hash import document_event_hash_ids
from careledger.supply.identifiers import (
    SGTIN,
    SSCC,
    parse_digital_link,
    parse_epc_urn,
    validate_gln,
    validate_gtin,
    validate_sscc,
)

NAMESPACE = "supply"
PREFIX = re.compile(r"^[0-9]{6,12}$")
SHIPMENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_COMMISSION = 1000  # units per transaction (the 64 KiB envelope limit binds first)
MAX_SHIPMENT = 1000  # units per shipment, after expanding SSCCs
MAX_AGGREGATE = 1000  # children per SSCC
MAX_LOT_UNITS = 10_000  # serials per lot (the recall walks them in one transaction)
MAX_LOTS = 32  # lots per recall
LOT_CHUNK = 500  # serials per lot-index chunk
MAX_NESTING = 3  # unit in case in pallet (in a larger pallet)
MAX_CASE_NOTES = 20  # investigation notes per suspect case
NOTIFY_MS = 24 * 60 * 60 * 1000  # DSCSA: notify within 24 hours of an illegitimate finding

SUPPLY_ROLES = frozenset({"admin", "manufacturer", "distributor", "pharmacist"})
CAPTURE_ROLES = SUPPLY_ROLES | {"node"}
CAPTURE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
EVENT_HASH_ID = re.compile(r"^ni:///sha-256;[0-9a-f]{64}\?ver=CBV2\.0$")
EPCIS_EVENT_TYPES = frozenset(
    {
        "ObjectEvent",
        "AggregationEvent",
        "TransactionEvent",
        "TransformationEvent",
        "AssociationEvent",
    }
)
# One document's anchors must fit one 64 KiB envelope (about 130 bytes an event).
MAX_CAPTURE_EVENTS = 400
COMMISSION_ROLES = frozenset({"admin", "manufacturer"})
DISPENSE_ROLES = frozenset({"admin", "pharmacist"})
DECOMMISSION_REASONS = frozenset(
    {"damaged", "stolen", "lost", "sample", "expired", "recalled", "returned", "other"}
)
ON_BEHALF_METHODS = frozenset(
    {
        "register_prefix",
        "register_location",
        "commission",
        "aggregate",
        "disaggregate",
        "ship",
        "receive",
        "dispense",
        "decommission",
        "destroy",
        "recall",
        "flag_suspect",
        "investigate",
        "determine",
        "notify",
    }
)
DETERMINATIONS = frozenset({"legitimate", "illegitimate"})

COMMISSIONED = "commissioned"
SHIPPED = "shipped"
RECEIVED = "received"
DISPENSED = "dispensed"
DECOMMISSIONED = "decommissioned"
DESTROYED = "destroyed"
IN_STOCK = frozenset({COMMISSIONED, RECEIVED})

RECALLED = "recalled"
SUSPECT = "suspect"
ILLEGITIMATE = "illegitimate"


def unit_key(gtin14: str, serial: str) -> str:
    return f"unit/{gtin14}/{serial}"


def _escape(lot: str) -> str:
    """``/`` and ``%`` in a lot (both legal in AI 10) are %-escaped so keys cannot collide."""
    return lot.replace("%", "%25").replace("/", "%2F")


def lot_units_key(gtin14: str, lot: str) -> str:
    return f"lotunits/{gtin14}/{_escape(lot)}"


def lot_chunk_key(gtin14: str, lot: str, index: int) -> str:
    return f"lotchunk/{gtin14}/{_escape(lot)}/{index}"


def stock_key(gtin14: str, gln: str) -> str:
    return f"stock/{gtin14}/{gln}"


def suspect_key(gtin14: str, serial: str) -> str:
    return f"suspect/{gtin14}/{serial}"


def sscc_key(sscc: str) -> str:
    return f"sscc/{sscc}"


def shipment_key(shipment_id: str) -> str:
    return f"shipment/{shipment_id}"


def unit_view(state_reader: StateReader, gtin: str, serial: str) -> dict[str, Any] | None:
    """The committed state of one unit, or None (unknown unit or malformed identifiers)."""
    try:
        gtin14 = validate_gtin(gtin)
    except ValidationError:
        return None
    if not isinstance(serial, str) or not serial:
        return None
    unit = state_reader(NAMESPACE, unit_key(gtin14, serial))
    if unit is None:
        return None
    view = dict(unit)
    view["flags"] = list(unit.get("flags", []))
    return view


def prefix_owner(read: StateReader, digits: str) -> str | None:
    """The org owning the longest registered company prefix of a GTIN-14 or SSCC.

    Both keys start with one indicator or extension digit, then the company prefix.
    """
    body = digits[1:]
    for length in range(12, 5, -1):
        entry = read(NAMESPACE, f"prefix/{body[:length]}")
        if entry is not None:
            return str(entry["org"])
    return None


# -- views: what the node reads of this contract's state (pure; none is used by a ruleset) ----

GLN_PREFIX = "gln/"
RECALL_PREFIX = "recall/"
STOCK_PREFIX = "stock/"
SUSPECT_PREFIX = "suspect/"


def gln_key(gln: str) -> str:
    return f"{GLN_PREFIX}{gln}"


def recall_key(recall_id: str) -> str:
    return f"{RECALL_PREFIX}{recall_id}"


def capture_key(capture_id: str) -> str:
    return f"capture/{capture_id}"


def _entries(read: StateReader, keys: KeyLister, prefix: str, limit: int) -> list[Any]:
    found = (read(NAMESPACE, k) for k in keys(NAMESPACE, prefix, limit))
    return [e for e in found if e is not None]


def location_of(read: StateReader, gln: str) -> Mapping[str, Any] | None:
    """A registered location (its org and name), or None: whose site a GLN is."""
    found: Mapping[str, Any] | None = read(NAMESPACE, gln_key(gln))
    return found


def first_location_of(read: StateReader, keys: KeyLister, org: str, limit: int) -> str | None:
    """The first GLN (in key order) ``org`` registered, or None: who answers for a brand."""
    for key in keys(NAMESPACE, GLN_PREFIX, limit):
        entry = read(NAMESPACE, key)
        if entry is not None and entry["org"] == org:
            return key[len(GLN_PREFIX) :]
    return None


def shipment_of(read: StateReader, shipment_id: str) -> Mapping[str, Any] | None:
    """A shipment (from, to, destination, units, status), or None: where a shipped unit goes."""
    found: Mapping[str, Any] | None = read(NAMESPACE, shipment_key(shipment_id))
    return found


def lot_serials(read: StateReader, gtin14: str, lot: str) -> list[str]:
    """The serials commissioned in one lot of a GTIN, in commission order: what a recall
    reaches."""
    index = read(NAMESPACE, lot_units_key(gtin14, lot)) or {"chunks": 0}
    serials: list[str] = []
    for i in range(index["chunks"]):
        serials.extend(read(NAMESPACE, lot_chunk_key(gtin14, lot, i)))
    return serials


def stock_entries(
    read: StateReader, keys: KeyLister, gtin14: str | None, limit: int
) -> list[Mapping[str, Any]]:
    """Stock counters (gtin, gln, org, quantity) of one GTIN, or of all with None, in key
    order, at most ``limit``: the inventory."""
    prefix = f"{STOCK_PREFIX}{gtin14}/" if gtin14 else STOCK_PREFIX
    return _entries(read, keys, prefix, limit)


def recall_of(read: StateReader, recall_id: str) -> Mapping[str, Any] | None:
    """A recall as issued (gtin, lots, reason, by, holders reached), or None."""
    found: Mapping[str, Any] | None = read(NAMESPACE, recall_key(recall_id))
    return found


def recall_entries(read: StateReader, keys: KeyLister, limit: int) -> list[Mapping[str, Any]]:
    """Recalls in key order, at most ``limit``: the list a supply member browses."""
    return _entries(read, keys, RECALL_PREFIX, limit)


def suspect_cases(read: StateReader, keys: KeyLister, limit: int) -> list[Mapping[str, Any]]:
    """Suspect-product cases in key order, at most ``limit``: whom each concerns is the node's
    to judge."""
    return _entries(read, keys, SUSPECT_PREFIX, limit)


def capture_of(read: StateReader, capture_id: str) -> Mapping[str, Any] | None:
    """An anchored EPCIS capture (its height), or None: whether a staged capture committed."""
    found: Mapping[str, Any] | None = read(NAMESPACE, capture_key(capture_id))
    return found


def expiry_date(expiry: str) -> date:
    """AI 17 YYMMDD as the last day the unit may be used (DD 00 = the month's last day)."""
    year, month, day = 2000 + int(expiry[:2]), int(expiry[2:4]), int(expiry[4:])
    if day == 0:
        day = calendar.monthrange(year, month)[1]
    return date(year, month, day)


def block_date(time_ms: int) -> date:
    """The UTC calendar date of a block time (integer arithmetic, no clock)."""
    return date(1970, 1, 1) + timedelta(days=time_ms // 86_400_000)


def is_expired(expiry: str, time_ms: int) -> bool:
    return block_date(time_ms) > expiry_date(expiry)


def _bad(exc: ValidationError) -> Rejected:
    return Rejected("BAD_ARGS", exc.message)


def _gtin(value: object) -> str:
    try:
        return validate_gtin(value)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _bad(exc) from None


def _gln(value: object) -> str:
    try:
        return validate_gln(value)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _bad(exc) from None


def _sscc(value: object) -> str:
    if isinstance(value, str) and not value.isdigit():
        try:
            obj = parse_epc_urn(value) if value[:4].lower() == "urn:" else parse_digital_link(value)
        except ValidationError as exc:
            raise _bad(exc) from None
        if not isinstance(obj, SSCC):
            raise Rejected("BAD_ARGS", f"{value!r} is not an SSCC")
        return obj.sscc
    try:
        return validate_sscc(value)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _bad(exc) from None


def _ref(value: object) -> tuple[str, str] | str:
    """A unit reference -> (gtin14, serial), or an SSCC reference -> the 18-digit SSCC.

    Accepted: ``{"gtin", "serial"}``, ``{"sscc"}``, an EPC URN or Digital Link of an SGTIN or
    SSCC, or a bare 18-digit SSCC.
    """
    if isinstance(value, dict):
        if set(value) == {"sscc"}:
            return _sscc(value["sscc"])
        if set(value) != {"gtin", "serial"}:
            raise Rejected("BAD_ARGS", "a unit is {'gtin', 'serial'} or an SSCC is {'sscc'}")
        try:
            sgtin = SGTIN(value["gtin"], value["serial"])
        except ValidationError as exc:
            raise _bad(exc) from None
        return sgtin.gtin, sgtin.serial
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise Rejected("BAD_ARGS", "a unit reference must be an object or an EPC string")
    if value.isdigit():
        return _sscc(value)
    try:
        obj = parse_epc_urn(value) if value[:4].lower() == "urn:" else parse_digital_link(value)
    except ValidationError as exc:
        raise _bad(exc) from None
    if isinstance(obj, SGTIN):
        return obj.gtin, obj.serial
    if isinstance(obj, SSCC):
        return obj.sscc
    raise Rejected("BAD_ARGS", f"{value!r} is not an SGTIN or SSCC")


def _list(args: Args, name: str, max_items: int) -> list[Any]:
    value = args.raw.get(name)
    if not isinstance(value, list) or not 0 < len(value) <= max_items:
        raise Rejected("BAD_ARGS", f"{name} must be a list of 1..{max_items} items")
    return value


class SupplyV1(Contract):
    name = NAMESPACE

    # ---------------------------------------------------------------------------------------
    # helpers

    @staticmethod
    def _org(ctx: Context, org_id: str) -> dict[str, Any] | None:
        org = ctx.state.read(IDENTITY, org_key(org_id))
        if org is None or org.get("status") != "active":
            return None
        return dict(org)

    @staticmethod
    def _require_roles(ctx: Context, roles: frozenset[str]) -> None:
        if not ctx.signer.roles & roles:
            raise Rejected("NOT_AUTHORISED", f"needs one of the roles {sorted(roles)}")

    @staticmethod
    def _prefix_owner(ctx: Context, gtin14: str) -> str | None:
        return prefix_owner(ctx.state.read, gtin14)

    @staticmethod
    def _own_location(ctx: Context, gln: str, org: str) -> None:
        entry = ctx.state.get(f"gln/{gln}")
        if entry is None or entry["org"] != org:
            raise Rejected("UNKNOWN_LOCATION", f"GLN {gln} is not a location of {org}")

    @staticmethod
    def _unit(ctx: Context, gtin14: str, serial: str) -> dict[str, Any]:
        unit = ctx.state.get(unit_key(gtin14, serial))
        if unit is None:
            raise Rejected(
                "UNKNOWN_SERIAL",
                f"unit {gtin14}/{serial} was never commissioned",
                detail={"gtin": gtin14, "serial": serial},
            )
        return {**unit, "flags": list(unit["flags"])}

    @staticmethod
    def _put_unit(ctx: Context, unit: dict[str, Any]) -> None:
        unit["history_height"] = ctx.height
        ctx.state.put(unit_key(unit["gtin"], unit["serial"]), unit)

    @staticmethod
    def _stock(ctx: Context, gtin14: str, gln: str, org: str, delta: int) -> None:
        """Keep the per-GTIN, per-location count of units in stock (inventory, shortages)."""
        key = stock_key(gtin14, gln)
        entry = ctx.state.get(key)
        quantity = (entry["quantity"] if entry else 0) + delta
        if quantity < 0:  # a bookkeeping bug must refuse, never go negative silently
            raise Rejected("CONTRACT_FAULT", f"stock of {gtin14} at {gln} would go negative")
        if quantity == 0:
            ctx.state.delete(key)
        else:
            ctx.state.put(key, {"gtin": gtin14, "gln": gln, "org": org, "quantity": quantity})

    def _stock_out(self, ctx: Context, unit: Mapping[str, Any]) -> None:
        if unit["status"] in IN_STOCK:
            self._stock(ctx, unit["gtin"], unit["holder_location"], unit["owner"], -1)

    def _tracked(self, ctx: Context, digits: str) -> bool:
        """A GTIN-14 or SSCC whose company prefix a member organisation has registered."""
        return self._prefix_owner(ctx, digits) is not None

    @staticmethod
    def _owned(ctx: Context, unit: Mapping[str, Any]) -> None:
        if unit["owner"] != ctx.signer.org:
            raise Rejected("NOT_OWNER", f"{ctx.signer.org} does not own {unit['serial']}")

    @staticmethod
    def _movable(unit: Mapping[str, Any]) -> None:
        """A unit that may be packed or shipped: in stock, not recalled, not quarantined."""
        if RECALLED in unit["flags"]:
            raise Rejected("RECALLED", f"unit {unit['serial']} is recalled")
        if SUSPECT in unit["flags"] or ILLEGITIMATE in unit["flags"]:
            raise Rejected("SUSPECT", f"unit {unit['serial']} is quarantined")
        if unit["status"] not in IN_STOCK:
            raise Rejected("INVALID_STATUS", f"unit {unit['serial']} is {unit['status']}")

    @staticmethod
    def _single_unit(args: Args) -> tuple[str, str]:
        gtin14 = _gtin(args.raw.get("gtin"))
        try:
            serial = SGTIN(gtin14, args.raw.get("serial")).serial  # type: ignore[arg-type]
        except ValidationError as exc:
            raise _bad(exc) from None
        return gtin14, serial

    # ---------------------------------------------------------------------------------------
    # prefixes and locations

    @tx_method
    def register_prefix(self, ctx: Context, args: Args) -> None:
        args.only("prefix")
        prefix = args.string("prefix", pattern=PREFIX, max_len=12)
        self._require_roles(ctx, COMMISSION_ROLES)
        org = self._org(ctx, ctx.signer.org)
        if org is None or org["kind"] != "manufacturer":
            raise Rejected("NOT_MANUFACTURER", "only a manufacturer organisation claims prefixes")
        entry = ctx.state.get(f"prefix/{prefix}")
        if entry is not None:
            if entry["org"] != ctx.signer.org:
                raise Rejected("PREFIX_TAKEN", f"prefix {prefix} belongs to another organisation")
            return
        # A prefix nested in another organisation's (or holding one) would take over its GTINs:
        # the longest registered prefix decides who owns a GTIN.
        for length in range(6, len(prefix)):
            outer = ctx.state.get(f"prefix/{prefix[:length]}")
            if outer is not None and outer["org"] != ctx.signer.org:
                raise Rejected("PREFIX_TAKEN", f"{prefix} lies inside another organisation's")
        index_key = f"prefixindex/{prefix[:6]}"
        siblings = list(ctx.state.get(index_key) or [])
        for other in siblings:
            owner = ctx.state.get(f"prefix/{other}")["org"]
            if other.startswith(prefix) and owner != ctx.signer.org:
                raise Rejected("PREFIX_TAKEN", f"{prefix} holds another organisation's prefix")
        ctx.state.put(index_key, sorted([*siblings, prefix]))
        ctx.state.put(f"prefix/{prefix}", {"org": ctx.signer.org, "height": ctx.height})
        ctx.emit("supply.prefix_registered", {"prefix": prefix, "org": ctx.signer.org})

    @tx_method
    def register_location(self, ctx: Context, args: Args) -> None:
        args.only("gln", "name")
        gln = _gln(args.raw.get("gln"))
        name = args.string("name", max_len=128)
        self._require_roles(ctx, SUPPLY_ROLES)
        entry = ctx.state.get(f"gln/{gln}")
        if entry is not None and entry["org"] != ctx.signer.org:
            raise Rejected("GLN_TAKEN", f"GLN {gln} is registered to another organisation")
        ctx.state.put(f"gln/{gln}", {"org": ctx.signer.org, "name": name, "height": ctx.height})
        ctx.emit("supply.location_registered", {"gln": gln, "org": ctx.signer.org})

    # ---------------------------------------------------------------------------------------
    # commissioning and packing

    @tx_method
    def commission(self, ctx: Context, args: Args) -> None:
        """Serialise units: all of them, or (on any refusal) none."""
        args.only("units", "location")
        raw_units = _list(args, "units", MAX_COMMISSION)
        location = _gln(args.raw.get("location"))
        self._require_roles(ctx, COMMISSION_ROLES)
        org = ctx.signer.org
        self._own_location(ctx, location, org)
        units: list[SGTIN] = []
        seen: set[tuple[str, str]] = set()
        for item in raw_units:
            if not isinstance(item, dict) or set(item) != {"gtin", "serial", "lot", "expiry"}:
                raise Rejected("BAD_ARGS", "each unit is {'gtin', 'serial', 'lot', 'expiry'}")
            if not isinstance(item["lot"], str) or not isinstance(item["expiry"], str):
                raise Rejected("BAD_ARGS", "each unit needs a lot and an expiry (YYMMDD)")
            try:
                sgtin = SGTIN(item["gtin"], item["serial"], item["lot"], item["expiry"])
            except ValidationError as exc:
                raise _bad(exc) from None
            if (sgtin.gtin, sgtin.serial) in seen:
                raise Rejected("DUPLICATE_COMMISSION", f"serial {sgtin.serial} given twice")
            seen.add((sgtin.gtin, sgtin.serial))
            units.append(sgtin)
        owners: dict[str, str | None] = {}
        for sgtin in units:
            if sgtin.gtin not in owners:
                owners[sgtin.gtin] = self._prefix_owner(ctx, sgtin.gtin)
            if owners[sgtin.gtin] != org:
                raise Rejected("NOT_PREFIX_OWNER", f"{org} does not own the prefix of {sgtin.gtin}")
            if ctx.state.get(unit_key(sgtin.gtin, sgtin.serial)) is not None:
                raise Rejected("DUPLICATE_COMMISSION", f"serial {sgtin.serial} already exists")
        lots: dict[tuple[str, str], list[str]] = {}
        for sgtin in units:
            lot, expiry = str(sgtin.lot), str(sgtin.expiry)
            unit: dict[str, Any] = {
                "gtin": sgtin.gtin,
                "serial": sgtin.serial,
                "lot": lot,
                "expiry": expiry,
                "owner": org,
                "holder_location": location,
                "status": COMMISSIONED,
                "parent": None,
                "flags": [],
                "commissioned_height": ctx.height,
            }
            self._put_unit(ctx, unit)
            lots.setdefault((sgtin.gtin, lot), []).append(sgtin.serial)
        for (gtin14, lot), serials in sorted(lots.items()):
            self._index_lot(ctx, gtin14, lot, serials)
            self._stock(ctx, gtin14, location, org, len(serials))
            ctx.emit(
                "supply.commissioned",
                {"gtin": gtin14, "lot": lot, "serials": serials, "org": org, "location": location},
            )

    @staticmethod
    def _index_lot(ctx: Context, gtin14: str, lot: str, serials: list[str]) -> None:
        index = ctx.state.get(lot_units_key(gtin14, lot)) or {"count": 0, "chunks": 0}
        count = index["count"] + len(serials)
        if count > MAX_LOT_UNITS:
            raise Rejected("LOT_FULL", f"a lot holds at most {MAX_LOT_UNITS} serials")
        chunks = index["chunks"]
        pending = list(serials)
        if chunks:
            last = list(ctx.state.get(lot_chunk_key(gtin14, lot, chunks - 1)))
            room = LOT_CHUNK - len(last)
            if room > 0:
                ctx.state.put(lot_chunk_key(gtin14, lot, chunks - 1), [*last, *pending[:room]])
                pending = pending[room:]
        while pending:
            ctx.state.put(lot_chunk_key(gtin14, lot, chunks), pending[:LOT_CHUNK])
            pending = pending[LOT_CHUNK:]
            chunks += 1
        ctx.state.put(lot_units_key(gtin14, lot), {"count": count, "chunks": chunks})

    @staticmethod
    def lot_serials(ctx: Context, gtin14: str, lot: str) -> list[str]:
        index = ctx.state.get(lot_units_key(gtin14, lot))
        if not index:
            return []
        serials: list[str] = []
        for i in range(index["chunks"]):
            serials.extend(ctx.state.get(lot_chunk_key(gtin14, lot, i)))
        return serials

    @tx_method
    def aggregate(self, ctx: Context, args: Args) -> None:
        """Pack units, or cases (SSCCs), into a logistic unit: children move with their parent."""
        args.only("parent_sscc", "children")
        parent = _sscc(args.raw.get("parent_sscc"))
        refs = [_ref(c) for c in _list(args, "children", MAX_AGGREGATE)]
        self._require_roles(ctx, SUPPLY_ROLES)
        org = ctx.signer.org
        if ctx.state.get(sscc_key(parent)) is not None:
            raise Rejected("SSCC_EXISTS", f"SSCC {parent} is already packed")
        children: list[dict[str, Any]] = []
        cases: list[dict[str, Any]] = []
        seen: set[tuple[str, str] | str] = set()
        for ref in refs:
            if ref in seen or ref == parent:
                raise Rejected("BAD_ARGS", f"child {ref} given twice")
            seen.add(ref)
            if isinstance(ref, str):
                cases.append(self._loose_sscc(ctx, ref, org))
                continue
            unit = self._unit(ctx, *ref)
            self._owned(ctx, unit)
            self._movable(unit)
            if unit["parent"] is not None:
                raise Rejected("AGGREGATED", f"unit {ref[1]} is already in {unit['parent']}")
            children.append(unit)
        depth = 1 + max((c.get("depth", 1) for c in cases), default=0)
        if depth > MAX_NESTING:
            raise Rejected("TOO_DEEP", f"logistic units nest at most {MAX_NESTING} levels")
        locations = {c["holder_location"] for c in children} | {c["location"] for c in cases}
        if len(locations) != 1:
            raise Rejected("LOCATION_MISMATCH", "the children are at different locations")
        for unit in children:
            unit["parent"] = parent
            self._put_unit(ctx, unit)
        for case in cases:
            ctx.state.put(sscc_key(case["sscc"]), {**case, "parent": parent})
        entry = {
            "sscc": parent,
            "children": [{"gtin": c["gtin"], "serial": c["serial"]} for c in children],
            "ssccs": [c["sscc"] for c in cases],
            "parent": None,
            "depth": depth,
            "owner": org,
            "location": locations.pop(),
            "status": "packed",
            "height": ctx.height,
        }
        ctx.state.put(sscc_key(parent), entry)
        ctx.emit(
            "supply.aggregated",
            {"sscc": parent, "children": entry["children"], "ssccs": entry["ssccs"], "org": org},
        )

    @staticmethod
    def _loose_sscc(ctx: Context, sscc: str, org: str) -> dict[str, Any]:
        """A packed SSCC the signer's organisation holds, not in transit, not inside another."""
        entry = ctx.state.get(sscc_key(sscc))
        if entry is None:
            raise Rejected("UNKNOWN_SSCC", f"no packed SSCC {sscc}", detail={"sscc": sscc})
        if entry["owner"] != org:
            raise Rejected("NOT_OWNER", f"{org} does not own {sscc}")
        if entry["status"] == SHIPPED:
            raise Rejected("IN_TRANSIT", f"SSCC {sscc} is in transit")
        if entry.get("parent") is not None:
            raise Rejected("AGGREGATED", f"SSCC {sscc} is packed in {entry['parent']}")
        return dict(entry)

    def _contents(
        self, ctx: Context, entry: Mapping[str, Any], depth: int = 0
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every unit inside an SSCC, however deep, and every SSCC on the way (itself first)."""
        if depth >= MAX_NESTING:
            raise Rejected("TOO_DEEP", f"logistic units nest at most {MAX_NESTING} levels")
        units = [self._unit(ctx, c["gtin"], c["serial"]) for c in entry["children"]]
        entries = [dict(entry)]
        for child in entry.get("ssccs", ()):
            inner_units, inner_entries = self._contents(
                ctx, ctx.state.get(sscc_key(child)), depth + 1
            )
            units.extend(inner_units)
            entries.extend(inner_entries)
        return units, entries

    @tx_method
    def disaggregate(self, ctx: Context, args: Args) -> None:
        args.only("parent_sscc")
        parent = _sscc(args.raw.get("parent_sscc"))
        self._require_roles(ctx, SUPPLY_ROLES)
        entry = ctx.state.get(sscc_key(parent))
        if entry is None:
            raise Rejected("UNKNOWN_SSCC", f"no packed SSCC {parent}", detail={"sscc": parent})
        if entry["owner"] != ctx.signer.org:
            raise Rejected("NOT_OWNER", f"{ctx.signer.org} does not own {parent}")
        if entry["status"] == SHIPPED:
            raise Rejected("IN_TRANSIT", f"SSCC {parent} is in transit")
        for child in entry["children"]:
            unit = self._unit(ctx, child["gtin"], child["serial"])
            unit["parent"] = None
            self._put_unit(ctx, unit)
        for child in entry.get("ssccs", ()):
            ctx.state.put(sscc_key(child), {**ctx.state.get(sscc_key(child)), "parent": None})
        outer = entry.get("parent")
        if outer is not None:  # unpacking a case still on its pallet takes it off the pallet
            pallet = ctx.state.get(sscc_key(outer))
            ssccs = [s for s in pallet["ssccs"] if s != parent]
            ctx.state.put(sscc_key(outer), {**pallet, "ssccs": ssccs})
        ctx.state.delete(sscc_key(parent))
        ctx.emit("supply.disaggregated", {"sscc": parent, "org": ctx.signer.org})

    # ---------------------------------------------------------------------------------------
    # moving ownership

    @tx_method
    def ship(self, ctx: Context, args: Args) -> None:
        args.only("shipment_id", "units", "to_org", "to_location")
        shipment_id = args.string("shipment_id", pattern=SHIPMENT_ID, max_len=64)
        refs = [_ref(r) for r in _list(args, "units", MAX_SHIPMENT)]
        to_org = args.string("to_org", max_len=64)
        to_location = _gln(args.raw.get("to_location"))
        self._require_roles(ctx, SUPPLY_ROLES)
        org = ctx.signer.org
        if ctx.state.get(shipment_key(shipment_id)) is not None:
            raise Rejected("SHIPMENT_EXISTS", f"shipment {shipment_id} already exists")
        if to_org == org or self._org(ctx, to_org) is None:
            raise Rejected("UNKNOWN_TRADING_PARTNER", f"{to_org!r} is not a trading partner")
        destination = ctx.state.get(f"gln/{to_location}")
        if destination is None or destination["org"] != to_org:
            raise Rejected("UNKNOWN_LOCATION", f"GLN {to_location} is not a location of {to_org}")
        ssccs: list[dict[str, Any]] = []
        units: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()

        def add(unit: dict[str, Any]) -> None:
            ident = (unit["gtin"], unit["serial"])
            if ident in seen:
                raise Rejected("BAD_ARGS", f"unit {unit['serial']} given twice")
            seen.add(ident)
            units.append(unit)

        for ref in refs:
            if isinstance(ref, str):
                inner_units, entries = self._contents(ctx, self._loose_sscc(ctx, ref, org))
                if any(e["sscc"] in {s["sscc"] for s in ssccs} for e in entries):
                    raise Rejected("BAD_ARGS", f"SSCC {ref} given twice")
                ssccs.extend(entries)
                for unit in inner_units:
                    add(unit)
            else:
                unit = self._unit(ctx, *ref)
                if unit["parent"] is not None:
                    raise Rejected("AGGREGATED", f"unit {ref[1]} is packed in {unit['parent']}")
                add(unit)
            if len(units) > MAX_SHIPMENT:
                raise Rejected("TOO_MANY_UNITS", f"a shipment carries at most {MAX_SHIPMENT} units")
        for unit in units:
            self._owned(ctx, unit)
            self._movable(unit)
        for unit in units:
            self._stock_out(ctx, unit)
            unit["status"] = SHIPPED
            unit["shipment"] = shipment_id
            self._put_unit(ctx, unit)
        for entry in ssccs:
            ctx.state.put(sscc_key(entry["sscc"]), {**entry, "status": SHIPPED})
        listed = [{"gtin": u["gtin"], "serial": u["serial"]} for u in units]
        shipment = {
            "id": shipment_id,
            "from": org,
            "to": to_org,
            "to_location": to_location,
            "units": listed,
            "ssccs": [e["sscc"] for e in ssccs],
            "status": "open",
            "shipped_height": ctx.height,
            "shipped_time": ctx.time,
        }
        ctx.state.put(shipment_key(shipment_id), shipment)
        ctx.emit(
            "supply.shipped",
            {
                "shipment": shipment_id,
                "from": org,
                "to": to_org,
                "to_location": to_location,
                "units": listed,
                "ssccs": shipment["ssccs"],
            },
        )

    @tx_method
    def receive(self, ctx: Context, args: Args) -> None:
        """Take delivery of a whole open shipment, at its destination or another own location."""
        args.only("shipment_id", "location")
        shipment_id = args.string("shipment_id", pattern=SHIPMENT_ID, max_len=64)
        self._require_roles(ctx, SUPPLY_ROLES)
        org = ctx.signer.org
        shipment = ctx.state.get(shipment_key(shipment_id))
        if shipment is None or shipment["status"] != "open" or shipment["to"] != org:
            raise Rejected("NO_MATCHING_SHIPMENT", f"no open shipment {shipment_id} to {org}")
        location = shipment["to_location"]
        if args.has("location"):
            location = _gln(args.raw.get("location"))
            self._own_location(ctx, location, org)
        for ref in shipment["units"]:
            unit = self._unit(ctx, ref["gtin"], ref["serial"])
            unit.update(owner=org, holder_location=location, status=RECEIVED)
            unit.pop("shipment", None)
            self._put_unit(ctx, unit)
            self._stock(ctx, unit["gtin"], location, org, 1)
        for sscc in shipment["ssccs"]:
            entry = ctx.state.get(sscc_key(sscc))
            ctx.state.put(
                sscc_key(sscc), {**entry, "owner": org, "location": location, "status": "packed"}
            )
        ctx.state.put(
            shipment_key(shipment_id),
            {**shipment, "status": "closed", "received_height": ctx.height},
        )
        ctx.emit(
            "supply.received",
            {"shipment": shipment_id, "from": shipment["from"], "to": org, "location": location},
        )

    # ---------------------------------------------------------------------------------------
    # end of life

    @tx_method
    def dispense(self, ctx: Context, args: Args) -> None:
        """A pharmacy hands a unit to a patient (no patient data is recorded here)."""
        args.only("gtin", "serial", "location")
        gtin14, serial = self._single_unit(args)
        location = _gln(args.raw.get("location"))
        self._require_roles(ctx, DISPENSE_ROLES)
        org = self._org(ctx, ctx.signer.org)
        if org is None or org["kind"] != "pharmacy":
            raise Rejected("NOT_PHARMACY", "only a pharmacy organisation dispenses")
        # Refused, so the receipt (not an event, which a rejection drops) carries the alert.
        unit = self._unit(ctx, gtin14, serial)
        if unit["status"] == DISPENSED:
            raise Rejected(
                "ALREADY_DISPENSED",
                f"unit {gtin14}/{serial} was already dispensed",
                detail={"gtin": gtin14, "serial": serial, "location": location},
            )
        self._owned(ctx, unit)
        self._own_location(ctx, location, ctx.signer.org)
        if RECALLED in unit["flags"]:
            raise Rejected("RECALLED", f"unit {serial} is recalled")
        if SUSPECT in unit["flags"] or ILLEGITIMATE in unit["flags"]:
            raise Rejected("SUSPECT", f"unit {serial} is quarantined")
        if unit["status"] not in IN_STOCK:
            raise Rejected("INVALID_STATUS", f"unit {serial} is {unit['status']}")
        if is_expired(unit["expiry"], ctx.time):
            raise Rejected("EXPIRED", f"unit {serial} expired ({unit['expiry']})")
        if unit["parent"] is not None:
            raise Rejected("AGGREGATED", f"unit {serial} is packed in {unit['parent']}")
        self._stock_out(ctx, unit)
        unit.update(status=DISPENSED, holder_location=location, dispensed_height=ctx.height)
        self._put_unit(ctx, unit)
        ctx.emit(
            "supply.dispensed",
            {"gtin": gtin14, "serial": serial, "org": ctx.signer.org, "location": location},
        )

    def _retire(self, ctx: Context, args: Args, status: str, reason: str | None) -> None:
        gtin14, serial = self._single_unit(args)
        self._require_roles(ctx, SUPPLY_ROLES)
        unit = self._unit(ctx, gtin14, serial)
        self._owned(ctx, unit)
        allowed = IN_STOCK | ({DECOMMISSIONED} if status == DESTROYED else frozenset())
        if unit["status"] not in allowed:
            raise Rejected("INVALID_STATUS", f"unit {serial} is {unit['status']}")
        if unit["parent"] is not None:
            raise Rejected("AGGREGATED", f"unit {serial} is packed in {unit['parent']}")
        self._stock_out(ctx, unit)
        unit["status"] = status
        if reason is not None:
            unit["reason"] = reason
        self._put_unit(ctx, unit)
        event = {"gtin": gtin14, "serial": serial, "org": ctx.signer.org}
        ctx.emit(f"supply.{status}", event if reason is None else {**event, "reason": reason})

    @tx_method
    def decommission(self, ctx: Context, args: Args) -> None:
        args.only("gtin", "serial", "reason")
        reason = args.string("reason", max_len=32)
        if reason not in DECOMMISSION_REASONS:
            raise Rejected("BAD_ARGS", f"reason must be one of {sorted(DECOMMISSION_REASONS)}")
        self._retire(ctx, args, DECOMMISSIONED, reason)

    @tx_method
    def destroy(self, ctx: Context, args: Args) -> None:
        args.only("gtin", "serial")
        self._retire(ctx, args, DESTROYED, None)

    # ---------------------------------------------------------------------------------------
    # recalls and suspect product

    @tx_method
    def recall(self, ctx: Context, args: Args) -> None:
        args.only("gtin", "lots", "reason")
        gtin14 = _gtin(args.raw.get("gtin"))
        lots = _list(args, "lots", MAX_LOTS)
        if not all(isinstance(lot, str) and 0 < len(lot) <= 20 for lot in lots):
            raise Rejected("BAD_ARGS", "lots must be lot numbers (AI 10)")
        lots = sorted(set(lots))
        reason = args.string("reason", max_len=256)
        self._require_roles(ctx, COMMISSION_ROLES)
        if self._prefix_owner(ctx, gtin14) != ctx.signer.org:
            raise Rejected("NOT_PREFIX_OWNER", f"{ctx.signer.org} does not own {gtin14}")
        holders: dict[str, dict[str, Any]] = {}
        count = 0
        for lot in lots:
            serials = self.lot_serials(ctx, gtin14, lot)
            if not serials:
                raise Rejected("UNKNOWN_LOT", f"no units of lot {lot} of {gtin14}")
            for serial in serials:
                unit = self._unit(ctx, gtin14, serial)
                count += 1
                if unit["status"] not in (DESTROYED, DISPENSED, DECOMMISSIONED):
                    # In transit, the units are held for the receiver at the destination GLN.
                    gln, holder = unit["holder_location"], unit["owner"]
                    if unit["status"] == SHIPPED:
                        shipment = ctx.state.get(shipment_key(unit["shipment"]))
                        gln, holder = shipment["to_location"], shipment["to"]
                    entry = holders.setdefault(gln, {"org": holder, "quantity": 0})
                    entry["quantity"] += 1
                if RECALLED not in unit["flags"]:
                    unit["flags"] = sorted([*unit["flags"], RECALLED])
                    unit["recall"] = ctx.tx_id
                    self._put_unit(ctx, unit)
        entry = {
            "id": ctx.tx_id,
            "gtin": gtin14,
            "lots": lots,
            "reason": reason,
            "by": ctx.signer.org,
            "units": count,
            "holders": dict(sorted(holders.items())),
            "height": ctx.height,
            "time": ctx.time,
        }
        ctx.state.put(f"recall/{ctx.tx_id}", entry)
        ctx.emit(
            "supply.recall",
            {
                "recall": ctx.tx_id,
                "gtin": gtin14,
                "lots": lots,
                "reason": reason,
                "holders": entry["holders"],
            },
        )
        for gln, holder in entry["holders"].items():  # one notice per holder, to act on
            ctx.emit(
                "supply.recall_notice",
                {"recall": ctx.tx_id, "gtin": gtin14, "lots": lots, "gln": gln, **holder},
            )

    def _case_party(self, ctx: Context, unit: Mapping[str, Any]) -> str:
        """The holder of a unit, or the owner of its GTIN's prefix, runs its suspect case."""
        org = ctx.signer.org
        if unit["owner"] != org and self._prefix_owner(ctx, unit["gtin"]) != org:
            raise Rejected("NOT_AUTHORISED", "only the holder or the prefix owner acts on a unit")
        return org

    @tx_method
    def flag_suspect(self, ctx: Context, args: Args) -> None:
        """Quarantine: the unit may not move or be dispensed until a determination."""
        args.only("gtin", "serial", "reason")
        gtin14, serial = self._single_unit(args)
        reason = args.string("reason", max_len=256)
        self._require_roles(ctx, SUPPLY_ROLES)
        unit = self._unit(ctx, gtin14, serial)
        org = self._case_party(ctx, unit)
        if SUSPECT in unit["flags"]:
            raise Rejected("ALREADY_SUSPECT", f"unit {serial} is already quarantined")
        unit["flags"] = sorted([*unit["flags"], SUSPECT])
        unit["suspect"] = {"by": org, "reason": reason, "height": ctx.height, "time": ctx.time}
        self._put_unit(ctx, unit)
        case = {
            "gtin": gtin14,
            "serial": serial,
            "stage": "quarantined",
            "opened_by": org,
            "reason": reason,
            "opened_time": ctx.time,
            "opened_height": ctx.height,
            "notes": [],
        }
        ctx.state.put(suspect_key(gtin14, serial), case)
        ctx.emit("supply.suspect", {"gtin": gtin14, "serial": serial, "by": org})

    def _open_case(self, ctx: Context, gtin14: str, serial: str) -> dict[str, Any]:
        case = ctx.state.get(suspect_key(gtin14, serial))
        if case is None or case["stage"] == "closed":
            raise Rejected("NOT_SUSPECT", f"unit {serial} has no open suspect case")
        return {**case, "notes": list(case["notes"])}

    @tx_method
    def investigate(self, ctx: Context, args: Args) -> None:
        """Record an investigation step (no PHI: a reference to the findings, not the findings)."""
        args.only("gtin", "serial", "note")
        gtin14, serial = self._single_unit(args)
        note = args.string("note", max_len=512)
        self._require_roles(ctx, SUPPLY_ROLES)
        org = self._case_party(ctx, self._unit(ctx, gtin14, serial))
        case = self._open_case(ctx, gtin14, serial)
        if len(case["notes"]) >= MAX_CASE_NOTES:
            raise Rejected("TOO_MANY_NOTES", f"a case keeps at most {MAX_CASE_NOTES} notes")
        case["stage"] = "investigating"
        case["notes"].append({"by": org, "note": note, "time": ctx.time, "height": ctx.height})
        ctx.state.put(suspect_key(gtin14, serial), case)
        ctx.emit("supply.investigating", {"gtin": gtin14, "serial": serial, "by": org})

    @tx_method
    def determine(self, ctx: Context, args: Args) -> None:
        args.only("gtin", "serial", "determination")
        gtin14, serial = self._single_unit(args)
        determination = args.string("determination", max_len=16)
        if determination not in DETERMINATIONS:
            raise Rejected("BAD_ARGS", f"determination must be one of {sorted(DETERMINATIONS)}")
        self._require_roles(ctx, SUPPLY_ROLES)
        unit = self._unit(ctx, gtin14, serial)
        org = self._case_party(ctx, unit)
        record: dict[str, Any] = {
            "determination": determination,
            "by": org,
            "height": ctx.height,
            "time": ctx.time,
        }
        case = ctx.state.get(suspect_key(gtin14, serial))
        if ILLEGITIMATE in unit["flags"]:
            # Final: the notification duty and the evidence stay; no later "legitimate".
            raise Rejected("ALREADY_DETERMINED", f"unit {serial} was determined illegitimate")
        if determination == "legitimate":
            if SUSPECT not in unit["flags"]:
                raise Rejected("NOT_SUSPECT", f"unit {serial} is not quarantined")
            unit["flags"] = [f for f in unit["flags"] if f != SUSPECT]
        else:
            record["notify_by"] = ctx.time + NOTIFY_MS
            unit["flags"] = sorted({*unit["flags"], ILLEGITIMATE})
        unit["determination"] = record
        self._put_unit(ctx, unit)
        case = {
            **(case or {"gtin": gtin14, "serial": serial, "opened_by": org, "notes": []}),
            "opened_time": (case or {}).get("opened_time", ctx.time),
            "opened_height": (case or {}).get("opened_height", ctx.height),
            "stage": "closed" if determination == "legitimate" else "illegitimate",
            "determination": record,
        }
        ctx.state.put(suspect_key(gtin14, serial), case)
        event = {"gtin": gtin14, "serial": serial, "by": org, "determination": determination}
        if determination == "illegitimate":
            ctx.emit("supply.illegitimate", {**event, "notify_by": record["notify_by"]})
        else:
            ctx.emit("supply.determined", event)

    @tx_method
    def notify(self, ctx: Context, args: Args) -> None:
        """Record that the regulator and trading partners were told of an illegitimate unit."""
        args.only("gtin", "serial", "reference")
        gtin14, serial = self._single_unit(args)
        reference = args.string("reference", max_len=128)
        self._require_roles(ctx, SUPPLY_ROLES)
        org = self._case_party(ctx, self._unit(ctx, gtin14, serial))
        case = ctx.state.get(suspect_key(gtin14, serial))
        if case is not None and case.get("notified") is not None:
            raise Rejected("ALREADY_NOTIFIED", f"the notification for {serial} is recorded")
        if case is None or case["stage"] != "illegitimate":
            raise Rejected("NOT_ILLEGITIMATE", f"unit {serial} has no illegitimate determination")
        notified = {"by": org, "reference": reference, "time": ctx.time, "height": ctx.height}
        notified["late"] = ctx.time > case["determination"]["notify_by"]
        ctx.state.put(
            suspect_key(gtin14, serial), {**case, "notified": notified, "stage": "closed"}
        )
        ctx.emit("supply.notified", {"gtin": gtin14, "serial": serial, **notified})

    # ---------------------------------------------------------------------------------------
    # EPCIS capture

    @tx_method
    def anchor_events(self, ctx: Context, args: Args) -> None:
        """Anchor the CBV 2.0 hash IDs of one captured EPCIS document and apply what they say.

        All of it, or none: each event's ``op`` (the unit-state change its bizStep stands for,
        derived by the capturing node; see careledger.supply.epcis_ops) runs in order, and any
        refusal refuses the document, its ``detail`` naming the event. The event bodies stay
        with the node; an event hash can be anchored once only, so a replayed capture is
        refused (DUPLICATE_EVENT) rather than counted twice. A node may capture for a member
        (``actor``): ownership and roles are then that member's.
        """
        args.only("capture", "events", "actor")
        ctx, capture = self._capture_of(ctx, args)
        events = _list(args, "events", MAX_CAPTURE_EVENTS)
        for position, item in enumerate(events):
            if not isinstance(item, dict):
                raise Rejected("BAD_ARGS", "each event is an object")
            event = ctx.args(item)
            event.only("hash", "type", "op")
            hash_id = event.string("hash", pattern=EVENT_HASH_ID)
            kind = event.string("type")
            if kind not in EPCIS_EVENT_TYPES:
                raise Rejected("BAD_ARGS", f"unknown EPCIS event type {kind!r}")
            key = f"event/{hash_id.split(';', 1)[1][:64]}"
            if ctx.state.get(key) is not None:
                raise Rejected(
                    "DUPLICATE_EVENT",
                    f"event {position} was already captured",
                    detail={"event": position},
                )
            ctx.state.put(
                key, {"capture": capture, "index": position, "type": kind, "org": ctx.signer.org}
            )
            if event.has("op"):
                self._apply_event(ctx, item["op"], position)
        self._captured(ctx, capture, len(events))

    def _capture_of(self, ctx: Context, args: Args) -> tuple[Context, str]:
        """The capturing member's context (a node may capture for one) and a new capture id."""
        self._require_roles(ctx, CAPTURE_ROLES)
        capture = args.string("capture", pattern=CAPTURE_ID)
        if args.has("actor"):
            ctx = ctx.rules.act_for(ctx, args.string("actor", max_len=64))
            self._require_roles(ctx, SUPPLY_ROLES)
        if ctx.state.get(f"capture/{capture}") is not None:
            raise Rejected("CAPTURE_EXISTS", "that capture id is already anchored")
        return ctx, capture

    def _apply_event(self, ctx: Context, op: object, position: int) -> None:
        """Apply one event's op; a refusal names the event."""
        try:
            self._apply(ctx, op)
        except Rejected as exc:
            raise Rejected(
                exc.code,
                f"event {position}: {exc.message}",
                detail={**exc.detail, "event": position},
            ) from None

    @staticmethod
    def _captured(ctx: Context, capture: str, count: int) -> None:
        ctx.state.put(
            f"capture/{capture}",
            {"org": ctx.signer.org, "events": count, "height": ctx.height, "time": ctx.time},
        )
        ctx.emit("supply.captured", {"capture": capture, "org": ctx.signer.org, "events": count})

    @tx_method
    def on_behalf(self, ctx: Context, args: Args) -> None:
        """A node runs one supply method for a member it authenticated (API workflows).

        Ownership and roles are the member's; the leaf records both the node and the member.
        """
        ctx.rules.run_on_behalf(self, ctx, args, ON_BEHALF_METHODS)

    # -- EPCIS operations: one bizStep's effect on the units an event names ---------------

    def _apply(self, ctx: Context, op: object) -> None:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise Rejected("BAD_ARGS", "an event's op is an object with an 'op' name")
        handler = self._OPS.get(op["op"])
        if handler is None:
            raise Rejected("BAD_ARGS", f"unknown op {op['op']!r}")
        handler(self, ctx, op)

    def _tracked_refs(self, ctx: Context, raw: object) -> list[tuple[str, str] | str]:
        """The units and SSCCs of an op that this chain tracks (their prefix is registered).

        Identifiers under prefixes no member has claimed are outside the chain's custody: their
        events are anchored, but they have no unit state to change.
        """
        if not isinstance(raw, list) or len(raw) > MAX_SHIPMENT:
            raise Rejected("BAD_ARGS", f"an op names at most {MAX_SHIPMENT} identifiers")
        refs: list[tuple[str, str] | str] = []
        for item in raw:
            ref = _ref(item)
            if isinstance(ref, str):  # an SSCC: tracked once packed here, whoever's prefix
                if ctx.state.get(sscc_key(ref)) is not None or self._tracked(ctx, ref):
                    refs.append(ref)
            elif self._tracked(ctx, ref[0]):
                refs.append(ref)
        return refs

    @staticmethod
    def _op_location(op: Mapping[str, Any], name: str = "location") -> str | None:
        value = op.get(name)
        return None if value is None else _gln(value)

    def _op_commission(self, ctx: Context, op: Mapping[str, Any]) -> None:
        units = op.get("units")
        if not isinstance(units, list) or not all(isinstance(u, dict) for u in units):
            raise Rejected("BAD_ARGS", "commission names its units as objects")
        tracked = [u for u in units if self._tracked(ctx, _gtin(u.get("gtin")))]
        if tracked:
            if op.get("location") is None:
                raise Rejected("BAD_ARGS", "commissioning needs a bizLocation (the site's GLN)")
            self.commission(ctx, ctx.args({"units": tracked, "location": op["location"]}))

    def _op_aggregate(self, ctx: Context, op: Mapping[str, Any]) -> None:
        children = self._tracked_refs(ctx, op.get("children"))
        if not children:
            return
        parent = _sscc(op.get("parent"))
        args = {"parent_sscc": parent, "children": [_ref_json(c) for c in children]}
        self.aggregate(ctx, ctx.args(args))

    def _op_disaggregate(self, ctx: Context, op: Mapping[str, Any]) -> None:
        parent = _sscc(op.get("parent"))
        if ctx.state.get(sscc_key(parent)) is not None or self._tracked(ctx, parent):
            self.disaggregate(ctx, ctx.args({"parent_sscc": parent}))

    def _op_ship(self, ctx: Context, op: Mapping[str, Any]) -> None:
        refs = self._tracked_refs(ctx, op.get("units"))
        if not refs:
            return
        for ref in refs:  # a serial never commissioned is the finding, whatever else is wrong
            if not isinstance(ref, str):
                self._unit(ctx, *ref)
        to_location = self._op_location(op, "to_location")
        if to_location is None:
            raise Rejected("BAD_ARGS", "shipping needs a destination location (GLN)")
        destination = ctx.state.get(f"gln/{to_location}")
        if destination is None:
            raise Rejected("UNKNOWN_LOCATION", f"GLN {to_location} is not a registered location")
        args = {
            "shipment_id": op.get("shipment"),
            "units": [_ref_json(r) for r in refs],
            "to_org": destination["org"],
            "to_location": to_location,
        }
        self.ship(ctx, ctx.args(args))

    def _op_receive(self, ctx: Context, op: Mapping[str, Any]) -> None:
        refs = self._tracked_refs(ctx, op.get("units"))
        if not refs:
            return
        named: set[tuple[str, str]] = set()
        shipments: set[str] = set()
        for ref in refs:
            if isinstance(ref, str):
                entry = ctx.state.get(sscc_key(ref))
                if entry is None:
                    raise Rejected("UNKNOWN_SSCC", f"no packed SSCC {ref}", detail={"sscc": ref})
                units, _ = self._contents(ctx, entry)
            else:
                units = [self._unit(ctx, *ref)]
            for unit in units:
                named.add((unit["gtin"], unit["serial"]))
                shipments.add(unit.get("shipment") or "")
        if len(shipments) != 1 or "" in shipments:
            raise Rejected("NO_MATCHING_SHIPMENT", "the received units are not one open shipment")
        shipment_id = shipments.pop()
        shipment = ctx.state.get(shipment_key(shipment_id))
        expected = {(u["gtin"], u["serial"]) for u in shipment["units"]}
        if named != expected:
            raise Rejected(
                "NO_MATCHING_SHIPMENT",
                f"shipment {shipment_id} holds {len(expected)} units; {len(named)} were received",
            )
        args: dict[str, Any] = {"shipment_id": shipment_id}
        location = self._op_location(op)
        if location is not None:
            args["location"] = location
        self.receive(ctx, ctx.args(args))

    def _units_only(self, ctx: Context, op: Mapping[str, Any], what: str) -> list[tuple[str, str]]:
        refs = self._tracked_refs(ctx, op.get("units"))
        if any(isinstance(r, str) for r in refs):
            raise Rejected("BAD_ARGS", f"{what} names units, not logistic units (SSCCs)")
        return [r for r in refs if not isinstance(r, str)]

    def _op_dispense(self, ctx: Context, op: Mapping[str, Any]) -> None:
        location = op.get("location")
        for gtin14, serial in self._units_only(ctx, op, "dispensing"):
            self.dispense(ctx, ctx.args({"gtin": gtin14, "serial": serial, "location": location}))

    def _op_decommission(self, ctx: Context, op: Mapping[str, Any]) -> None:
        reason = op.get("reason") or "other"
        for gtin14, serial in self._units_only(ctx, op, "decommissioning"):
            self.decommission(ctx, ctx.args({"gtin": gtin14, "serial": serial, "reason": reason}))

    def _op_destroy(self, ctx: Context, op: Mapping[str, Any]) -> None:
        for gtin14, serial in self._units_only(ctx, op, "destroying"):
            self.destroy(ctx, ctx.args({"gtin": gtin14, "serial": serial}))

    def _op_observe(self, ctx: Context, op: Mapping[str, Any]) -> None:
        """An event with no state change still tells where a unit was seen: check it."""
        location = self._op_location(op)
        for ref in self._tracked_refs(ctx, op.get("units")):
            if isinstance(ref, str):
                continue
            gtin14, serial = ref
            unit = ctx.state.get(unit_key(gtin14, serial))
            alert = {"gtin": gtin14, "serial": serial, "location": location, "org": ctx.signer.org}
            if unit is None:
                ctx.emit("supply.alert", {"kind": "never_commissioned", **alert})
            elif location is not None and not self._explains(ctx, unit, location):
                ctx.emit("supply.alert", {"kind": "unexplained_location", **alert})

    @staticmethod
    def _explains(ctx: Context, unit: Mapping[str, Any], location: str) -> bool:
        """Whether the unit's custody chain puts it at ``location`` (held there, or en route)."""
        if unit["holder_location"] == location:
            return True
        site = ctx.state.get(f"gln/{location}")
        if site is not None and site["org"] == unit["owner"] and unit["status"] in IN_STOCK:
            return True  # moved between its owner's own sites
        if unit["status"] == SHIPPED:
            shipment = ctx.state.get(shipment_key(unit["shipment"]))
            return shipment is not None and shipment["to_location"] == location
        return False

    _OPS: ClassVar[dict[str, Callable[[SupplyV1, Context, Mapping[str, Any]], None]]] = {
        "commission": _op_commission,
        "aggregate": _op_aggregate,
        "disaggregate": _op_disaggregate,
        "ship": _op_ship,
        "receive": _op_receive,
        "dispense": _op_dispense,
        "decommission": _op_decommission,
        "destroy": _op_destroy,
        "observe": _op_observe,
    }


def _ref_json(ref: tuple[str, str] | str) -> dict[str, str]:
    return {"sscc": ref} if isinstance(ref, str) else {"gtin": ref[0], "serial": ref[1]}


class SupplyV2(SupplyV1):
    """r3: the ledger, not the capturing node, reads each EPCIS event.

    A capture carries the events themselves (supply-chain events hold no PHI) and the document's
    ``@context``; every node recomputes each event's CBV 2.0 hash ID and derives its unit
    operations from the event's own content, so a capturing node can no longer claim one thing
    and apply another. Only a party the event names anchors it: the event happened at one of the
    signer's locations (its bizLocation, else readPoint, is a GLN the signer's organisation
    registered). A partner who sees an event first can no longer anchor its hash and block the
    real capture, and no one records an observation at another organisation's site.
    """

    version = 2

    @tx_method
    def register_location(self, ctx: Context, args: Args) -> None:
        """As before, and a GLN under a company prefix another organisation registered is that
        organisation's to claim (r3: a location makes its holder a party to events there)."""
        gln = _gln(args.raw.get("gln"))
        owner = prefix_owner(ctx.state.read, "0" + gln)  # a GLN has no indicator digit
        if owner is not None and owner != ctx.signer.org:
            raise Rejected("GLN_TAKEN", f"GLN {gln} lies under another organisation's prefix")
        super().register_location(ctx, args)

    @tx_method
    def anchor_events(self, ctx: Context, args: Args) -> None:
        args.only("capture", "events", "context", "actor")
        ctx, capture = self._capture_of(ctx, args)
        events = _list(args, "events", MAX_CAPTURE_EVENTS)
        if not all(isinstance(e, dict) for e in events):
            raise Rejected("BAD_ARGS", "each event is an EPCIS event object")
        try:
            document = {"@context": args.raw.get("context"), "epcisBody": {"eventList": events}}
            hashes = document_event_hash_ids(document)
        except (ValidationError, TypeError, ValueError, KeyError) as exc:
            raise Rejected("BAD_EVENT", f"the events cannot be hashed: {exc}") from None
        for position, (event, hash_id) in enumerate(zip(events, hashes, strict=True)):
            self._anchor_one(ctx, capture, position, event, hash_id)
        self._captured(ctx, capture, len(events))

    def _anchor_one(
        self, ctx: Context, capture: str, position: int, event: Mapping[str, Any], hash_id: str
    ) -> None:
        def refuse(code: str, message: str) -> Rejected:
            return Rejected(code, f"event {position}: {message}", detail={"event": position})

        kind = event.get("type")
        if kind not in EPCIS_EVENT_TYPES:
            raise refuse("BAD_ARGS", f"unknown EPCIS event type {kind!r}")
        if "hash" in event or "op" in event:  # r2's anchor shape: a claim, not an event
            raise refuse("BAD_EVENT", "send the EPCIS event itself, not its hash or operations")
        key = f"event/{hash_id.split(';', 1)[1][:64]}"
        if ctx.state.get(key) is not None:
            raise refuse("DUPLICATE_EVENT", "it was already captured")
        try:
            location = location_gln(event)
            op = supply_op(event, hash_id)
        except (ValidationError, TypeError, ValueError, KeyError):
            raise refuse("BAD_EVENT", "the event's identifiers cannot be read") from None
        site = ctx.state.get(f"gln/{location}") if location is not None else None
        if site is None or site["org"] != ctx.signer.org:
            raise refuse(
                "NOT_A_PARTY",
                "an event is anchored by the organisation at whose location it happened "
                "(its bizLocation or readPoint, a GLN that organisation registered)",
            )
        ctx.state.put(
            key, {"capture": capture, "index": position, "type": kind, "org": ctx.signer.org}
        )
        if op is not None:
            self._apply_event(ctx, op, position)
