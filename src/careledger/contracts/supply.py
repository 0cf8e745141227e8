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
* ``lot/{gtin14}/{lot}/{serial}`` -> ``{"height"}`` and ``lotunits/{gtin14}/{lot}`` -> [serials]
  (contracts cannot list keys, so the recall walks the per-lot list; it is bounded)
* ``sscc/{sscc}`` -> ``{"children": [{"gtin", "serial"}], "owner", "location", "status"}``
* ``shipment/{id}`` -> ``{"from", "to", "to_location", "units", "ssccs", "status"}``
* ``recall/{tx_id}`` -> the recall and the holders it reached

A rejected transaction keeps none of its events, so the alerts a refused dispense stands for
(``ALREADY_DISPENSED``, ``UNKNOWN_SERIAL``) are visible as the receipt's code in the log.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

from careledger.contracts.base import Args, Context, Contract, StateReader, tx_method
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import org_key
from careledger.errors import Rejected, ValidationError
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


def lot_key(gtin14: str, lot: str, serial: str) -> str:
    """``/`` and ``%`` in the lot (both legal in AI 10) are %-escaped so keys cannot collide."""
    escaped = lot.replace("%", "%25").replace("/", "%2F")
    return f"lot/{gtin14}/{escaped}/{serial}"


def lot_units_key(gtin14: str, lot: str) -> str:
    return f"lotunits/{gtin14}/{lot}"


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
        """The org owning the longest registered company prefix of the GTIN-13 body."""
        body = gtin14[1:]
        for length in range(12, 5, -1):
            entry = ctx.state.get(f"prefix/{body[:length]}")
            if entry is not None:
                return str(entry["org"])
        return None

    @staticmethod
    def _own_location(ctx: Context, gln: str, org: str) -> None:
        entry = ctx.state.get(f"gln/{gln}")
        if entry is None or entry["org"] != org:
            raise Rejected("UNKNOWN_LOCATION", f"GLN {gln} is not a location of {org}")

    @staticmethod
    def _unit(ctx: Context, gtin14: str, serial: str) -> dict[str, Any]:
        unit = ctx.state.get(unit_key(gtin14, serial))
        if unit is None:
            raise Rejected("UNKNOWN_SERIAL", f"unit {gtin14}/{serial} was never commissioned")
        return {**unit, "flags": list(unit["flags"])}

    @staticmethod
    def _put_unit(ctx: Context, unit: dict[str, Any]) -> None:
        unit["history_height"] = ctx.height
        ctx.state.put(unit_key(unit["gtin"], unit["serial"]), unit)

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
            ctx.state.put(lot_key(sgtin.gtin, lot, sgtin.serial), {"height": ctx.height})
            lots.setdefault((sgtin.gtin, lot), []).append(sgtin.serial)
        for (gtin14, lot), serials in sorted(lots.items()):
            existing = ctx.state.get(lot_units_key(gtin14, lot)) or []
            if len(existing) + len(serials) > MAX_LOT_UNITS:
                raise Rejected("LOT_FULL", f"a lot holds at most {MAX_LOT_UNITS} serials")
            ctx.state.put(lot_units_key(gtin14, lot), [*existing, *serials])
            ctx.emit(
                "supply.commissioned",
                {"gtin": gtin14, "lot": lot, "serials": serials, "org": org, "location": location},
            )

    @tx_method
    def aggregate(self, ctx: Context, args: Args) -> None:
        args.only("parent_sscc", "children")
        parent = _sscc(args.raw.get("parent_sscc"))
        refs = [_ref(c) for c in _list(args, "children", MAX_AGGREGATE)]
        self._require_roles(ctx, SUPPLY_ROLES)
        if ctx.state.get(sscc_key(parent)) is not None:
            raise Rejected("SSCC_EXISTS", f"SSCC {parent} is already packed")
        children: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for ref in refs:
            if isinstance(ref, str):
                raise Rejected("BAD_ARGS", "an SSCC's children are units (no nesting)")
            if ref in seen:
                raise Rejected("BAD_ARGS", f"unit {ref[1]} given twice")
            seen.add(ref)
            unit = self._unit(ctx, *ref)
            self._owned(ctx, unit)
            self._movable(unit)
            if unit["parent"] is not None:
                raise Rejected("AGGREGATED", f"unit {ref[1]} is already in {unit['parent']}")
            children.append(unit)
        locations = {c["holder_location"] for c in children}
        if len(locations) != 1:
            raise Rejected("LOCATION_MISMATCH", "the children are at different locations")
        for unit in children:
            unit["parent"] = parent
            self._put_unit(ctx, unit)
        entry = {
            "sscc": parent,
            "children": [{"gtin": c["gtin"], "serial": c["serial"]} for c in children],
            "owner": ctx.signer.org,
            "location": locations.pop(),
            "status": "packed",
            "height": ctx.height,
        }
        ctx.state.put(sscc_key(parent), entry)
        ctx.emit(
            "supply.aggregated",
            {"sscc": parent, "children": entry["children"], "org": ctx.signer.org},
        )

    @tx_method
    def disaggregate(self, ctx: Context, args: Args) -> None:
        args.only("parent_sscc")
        parent = _sscc(args.raw.get("parent_sscc"))
        self._require_roles(ctx, SUPPLY_ROLES)
        entry = ctx.state.get(sscc_key(parent))
        if entry is None:
            raise Rejected("UNKNOWN_SSCC", f"no packed SSCC {parent}")
        if entry["owner"] != ctx.signer.org:
            raise Rejected("NOT_OWNER", f"{ctx.signer.org} does not own {parent}")
        if entry["status"] == SHIPPED:
            raise Rejected("IN_TRANSIT", f"SSCC {parent} is in transit")
        for child in entry["children"]:
            unit = self._unit(ctx, child["gtin"], child["serial"])
            unit["parent"] = None
            self._put_unit(ctx, unit)
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
                entry = ctx.state.get(sscc_key(ref))
                if entry is None:
                    raise Rejected("UNKNOWN_SSCC", f"no packed SSCC {ref}")
                if entry["owner"] != org:
                    raise Rejected("NOT_OWNER", f"{org} does not own {ref}")
                if entry["status"] == SHIPPED:
                    raise Rejected("INVALID_STATUS", f"SSCC {ref} is already in transit")
                ssccs.append(dict(entry))
                for child in entry["children"]:
                    add(self._unit(ctx, child["gtin"], child["serial"]))
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
        args.only("shipment_id")
        shipment_id = args.string("shipment_id", pattern=SHIPMENT_ID, max_len=64)
        self._require_roles(ctx, SUPPLY_ROLES)
        org = ctx.signer.org
        shipment = ctx.state.get(shipment_key(shipment_id))
        if shipment is None or shipment["status"] != "open" or shipment["to"] != org:
            raise Rejected("NO_MATCHING_SHIPMENT", f"no open shipment {shipment_id} to {org}")
        location = shipment["to_location"]
        for ref in shipment["units"]:
            unit = self._unit(ctx, ref["gtin"], ref["serial"])
            unit.update(owner=org, holder_location=location, status=RECEIVED)
            unit.pop("shipment", None)
            self._put_unit(ctx, unit)
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
            raise Rejected("ALREADY_DISPENSED", f"unit {gtin14}/{serial} was already dispensed")
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
        holders: dict[str, int] = {}
        count = 0
        for lot in lots:
            serials = ctx.state.get(lot_units_key(gtin14, lot))
            if not serials:
                raise Rejected("UNKNOWN_LOT", f"no units of lot {lot} of {gtin14}")
            for serial in serials:
                unit = self._unit(ctx, gtin14, serial)
                count += 1
                if unit["status"] not in (DESTROYED, DISPENSED, DECOMMISSIONED):
                    holders[unit["owner"]] = holders.get(unit["owner"], 0) + 1
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

    @tx_method
    def flag_suspect(self, ctx: Context, args: Args) -> None:
        args.only("gtin", "serial", "reason")
        gtin14, serial = self._single_unit(args)
        reason = args.string("reason", max_len=256)
        self._require_roles(ctx, SUPPLY_ROLES)
        unit = self._unit(ctx, gtin14, serial)
        org = ctx.signer.org
        if unit["owner"] != org and self._prefix_owner(ctx, gtin14) != org:
            raise Rejected("NOT_AUTHORISED", "only the holder or the prefix owner flags a unit")
        if SUSPECT in unit["flags"]:
            raise Rejected("ALREADY_SUSPECT", f"unit {serial} is already quarantined")
        unit["flags"] = sorted([*unit["flags"], SUSPECT])
        unit["suspect"] = {"by": org, "reason": reason, "height": ctx.height, "time": ctx.time}
        self._put_unit(ctx, unit)
        ctx.emit("supply.suspect", {"gtin": gtin14, "serial": serial, "by": org})

    @tx_method
    def determine(self, ctx: Context, args: Args) -> None:
        args.only("gtin", "serial", "determination")
        gtin14, serial = self._single_unit(args)
        determination = args.string("determination", max_len=16)
        if determination not in DETERMINATIONS:
            raise Rejected("BAD_ARGS", f"determination must be one of {sorted(DETERMINATIONS)}")
        self._require_roles(ctx, SUPPLY_ROLES)
        unit = self._unit(ctx, gtin14, serial)
        org = ctx.signer.org
        if unit["owner"] != org and self._prefix_owner(ctx, gtin14) != org:
            raise Rejected("NOT_AUTHORISED", "only the owner or the prefix owner determines")
        record: dict[str, Any] = {
            "determination": determination,
            "by": org,
            "height": ctx.height,
            "time": ctx.time,
        }
        if determination == "legitimate":
            if SUSPECT not in unit["flags"]:
                raise Rejected("NOT_SUSPECT", f"unit {serial} is not quarantined")
            unit["flags"] = [f for f in unit["flags"] if f != SUSPECT]
        else:
            record["notify_by"] = ctx.time + NOTIFY_MS
            unit["flags"] = sorted({*unit["flags"], ILLEGITIMATE})
        unit["determination"] = record
        self._put_unit(ctx, unit)
        event = {"gtin": gtin14, "serial": serial, "by": org, "determination": determination}
        if determination == "illegitimate":
            ctx.emit("supply.illegitimate", {**event, "notify_by": record["notify_by"]})
        else:
            ctx.emit("supply.determined", event)

    @tx_method
    def anchor_events(self, ctx: Context, args: Args) -> None:
        """Anchor the CBV 2.0 hash IDs of one captured EPCIS document: all of them, or none.

        The event bodies stay with the capturing node; an event hash can be anchored once only,
        so a replayed capture is refused (DUPLICATE_EVENT) rather than counted twice.
        """
        args.only("capture", "events")
        self._require_roles(ctx, CAPTURE_ROLES)
        capture = args.string("capture", pattern=CAPTURE_ID)
        if ctx.state.get(f"capture/{capture}") is not None:
            raise Rejected("CAPTURE_EXISTS", "that capture id is already anchored")
        events = _list(args, "events", MAX_CAPTURE_EVENTS)
        for position, item in enumerate(events):
            if not isinstance(item, dict):
                raise Rejected("BAD_ARGS", "each event is an object")
            event = Args(item)
            event.only("hash", "type")
            hash_id = event.string("hash", pattern=EVENT_HASH_ID)
            kind = event.string("type")
            if kind not in EPCIS_EVENT_TYPES:
                raise Rejected("BAD_ARGS", f"unknown EPCIS event type {kind!r}")
            key = f"event/{hash_id.split(';', 1)[1][:64]}"
            if ctx.state.get(key) is not None:
                raise Rejected("DUPLICATE_EVENT", f"event {position} was already captured")
            ctx.state.put(
                key, {"capture": capture, "index": position, "type": kind, "org": ctx.signer.org}
            )
        ctx.state.put(
            f"capture/{capture}",
            {"org": ctx.signer.org, "events": len(events), "height": ctx.height, "time": ctx.time},
        )
        ctx.emit(
            "supply.captured", {"capture": capture, "org": ctx.signer.org, "events": len(events)}
        )
