"""EPCIS 2.0 event hash IDs (GS1 CBV 2.0 §8.9 "Event Hash ID") for JSON / JSON-LD events.

An event hash ID is ``ni:///sha-256;<hex>?ver=CBV2.0`` where ``<hex>`` is the SHA-256 of the
event's canonical *pre-hash string*: the event's fields in a fixed order as ``name=value``,
values normalised (timestamps to UTC with millisecond precision, numbers without redundant
digits, EPC URIs and GS1 Digital Link URIs to canonical ``https://id.gs1.org/...`` form, bare
CBV words and old ``urn:epcglobal:cbv:`` URNs to ``https://ref.gs1.org/cbv/...`` web vocabulary),
repeated values sorted, then user extensions (with ``{namespace}`` names) sorted after them.
``recordTime``, ``eventID``, ``errorDeclaration`` and comments do not take part.

This is a pure re-implementation of the reference implementation by the algorithm's author,
https://github.com/RalphTro/epcis-event-hash-generator (MIT, (c) 2019 RalphTro), release
1.9.3: it follows that code's behaviour step by step (including its quirks) so hashes agree
with it. Differences, all deliberate:

* no JSON-LD processor and no network: expanding bare CBV words (``"shipping"``) uses the
  term tables of the EPCIS 2.0 context, copied below; the set of expanded words is taken from
  the event itself, not from the whole document (an event's hash never depends on its siblings);
* namespace prefixes come from the ``@context`` passed in (the document's), never from
  documents hashed earlier (the reference keeps them in a global);
* in ``bizTransactionList``/``sourceList``/``destinationList`` entries ``type`` always comes
  before the value, whatever the JSON key order (the reference follows key order);
* a timestamp whose milliseconds round up to the next second is carried into that second
  (the reference fails the event); timestamps without an offset are read as UTC (the reference
  uses the machine's zone), and timestamps are parsed with ``datetime.fromisoformat``;
* EPCIS query documents (``epcisBody.queryResults.resultsBody.eventList``) are read (newer
  than 1.9.3, as the upstream repository's tests);
* events the reference would silently skip raise ``ValidationError(code="MALFORMED_EPCIS")``.

``ignoreFields`` is not part of EPCIS 2.0 or CBV 2.0: it is a non-standard extension the
upstream repository added after 1.9.3 (a list of event fields a repository leaves out of the
hash). ``document_event_hash_ids`` honours it exactly as upstream HEAD (commit 5d2f1c3) does,
and no further: only the key ``<prefix>:ignoreFields`` whose prefix the ``@context`` binds to
exactly ``https://repository-x.example.com/`` (the first such prefix; ``:ignoreFields`` when
none is bound), read at document level for an ``eventList`` or ``event`` document and only in
``epcisBody.queryResults`` for a query document; its entries are top-level event keys matched
literally (``"example:captureID"``, never another prefix, ``{iri}name`` or nested keys); bare
CBV words are expanded over the whole event before fields are dropped, and the event's
``type`` is read before it. Capture on a node refuses such documents (every node re-hashes
every field of an event, see ``careledger.supply.epcis_validate.refuse_ignore_fields``), and the
ledger never hashes with an ignore list.

No I/O, clock or randomness: the same event always gives the same hash.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from careledger.errors import ValidationError
from careledger.supply.cbv import CBV_BIZSTEPS, CBV_DISPOSITIONS

__all__ = ["document_event_hash_ids", "event_hash_id", "event_prehash"]

ERROR_CODE = "MALFORMED_EPCIS"

# A node of the event tree: (name, value, children), as in the reference implementation.
Node: TypeAlias = "tuple[str, str, list[Node]]"

# Marker name of a (type, value) pair taken from a bizTransaction/source/destination entry.
_PAIR = "\x00pair"
_PAIR_LISTS = {
    "bizTransactionList": "bizTransaction",
    "sourceList": "source",
    "destinationList": "destination",
}
_UNSORTED_KEYS = ("bizTransaction", "source", "destination")
_IGNORED_KEYS = frozenset({"#text", "rdfs:comment", "comment", "@context"})
_IGNORED_TOP_LEVEL = frozenset({"recordTime", "eventID", "type", "errorDeclaration"})
# The namespace of upstream's (non-standard) ``ignoreFields`` key; see the module docstring.
_IGNORE_FIELDS_NAMESPACE = "https://repository-x.example.com/"

_QTY = ("quantityElement", (("epcClass", None), ("quantity", None), ("uom", None)))
_EPC = (("epc", None),)
Order: TypeAlias = "tuple[tuple[Any, Order | None], ...]"
# The order in which fields enter the pre-hash string (CBV 2.0 §8.9.2).
PROP_ORDER: Order = (
    ("eventTime", None),
    ("eventTimeZoneOffset", None),
    ("certificationInfo", None),
    ("parentID", None),
    ("epcList", _EPC),
    ("inputEPCList", _EPC),
    ("childEPCs", _EPC),
    ("quantityList", (_QTY,)),
    ("childQuantityList", (_QTY,)),
    ("inputQuantityList", (_QTY,)),
    ("outputEPCList", _EPC),
    ("outputQuantityList", (_QTY,)),
    ("action", None),
    ("transformationID", None),
    ("bizStep", None),
    ("disposition", None),
    ("persistentDisposition", (("set", None), ("unset", None))),
    ("readPoint", (("id", None),)),
    ("bizLocation", (("id", None),)),
    # The reference's orders for these three lists never match a child (their entries are
    # pairs), so they are hashed with the extensions at the end; kept for the same result.
    ("bizTransactionList", None),
    ("sourceList", None),
    ("destinationList", None),
    (
        "sensorElementList",
        (
            (
                "sensorElement",
                (
                    (
                        "sensorMetadata",
                        tuple(
                            (name, None)
                            for name in (
                                "time",
                                "startTime",
                                "endTime",
                                "deviceID",
                                "deviceMetadata",
                                "rawData",
                                "dataProcessingMethod",
                                "bizRules",
                            )
                        ),
                    ),
                    (
                        "sensorReport",
                        tuple(
                            (name, None)
                            for name in (
                                "type",
                                "exception",
                                "deviceID",
                                "deviceMetadata",
                                "rawData",
                                "dataProcessingMethod",
                                "time",
                                "microorganism",
                                "chemicalSubstance",
                                "value",
                                "component",
                                "stringValue",
                                "booleanValue",
                                "hexBinaryValue",
                                "uriValue",
                                "minValue",
                                "maxValue",
                                "meanValue",
                                "sDev",
                                "percRank",
                                "percValue",
                                "uom",
                                "coordinateReferenceSystem",
                            )
                        ),
                    ),
                ),
            ),
        ),
    ),
)

# --- CBV web vocabulary terms of the EPCIS 2.0 JSON-LD context (@type: @vocab fields) ---------

_CBV = "https://ref.gs1.org/cbv/"
_GS1 = "https://gs1.org/voc/"
_VOCAB_PREFIXES = ("https://ref.gs1.org/cbv", "https://gs1.org/voc")
_BIZ_STEPS = CBV_BIZSTEPS
_DISPOSITIONS = CBV_DISPOSITIONS
_BTTS = frozenset(
    [
        "bol",
        "cert",
        "desadv",
        "inv",
        "pedigree",
        "po",
        "poc",
        "prodorder",
        "recadv",
        "rma",
        "testprd",
        "testres",
        "upevt",
    ]
)
_SDTS = frozenset(("owning_party", "possessing_party", "location"))
_MEASUREMENT_TYPES = frozenset(
    [
        "AbsoluteHumidity",
        "AbsorbedDose",
        "AbsorbedDoseRate",
        "Acceleration",
        "Altitude",
        "AmountOfSubstance",
        "AmountOfSubstancePerUnitVolume",
        "Angle",
        "AngularAcceleration",
        "AngularMomentum",
        "AngularVelocity",
        "Area",
        "Capacitance",
        "Conductance",
        "Conductivity",
        "Count",
        "Density",
        "Dimensionless",
        "DoseEquivalent",
        "DoseEquivalentRate",
        "DynamicViscosity",
        "ElectricCharge",
        "ElectricCurrent",
        "ElectricCurrentDensity",
        "ElectricFieldStrength",
        "Energy",
        "Exposure",
        "Force",
        "Frequency",
        "Illuminance",
        "Inductance",
        "Irradiance",
        "KinematicViscosity",
        "Length",
        "LinearMomentum",
        "Luminance",
        "LuminousFlux",
        "LuminousIntensity",
        "MagneticFlux",
        "MagneticFluxDensity",
        "MagneticVectorPotential",
        "Mass",
        "MassConcentration",
        "MassFlowRate",
        "MassPerAreaTime",
        "MemoryCapacity",
        "MolalityOfSolute",
        "MolarEnergy",
        "MolarMass",
        "MolarVolume",
        "Power",
        "Pressure",
        "RadiantFlux",
        "RadiantIntensity",
        "Radioactivity",
        "RelativeHumidity",
        "Resistance",
        "Resistivity",
        "SolidAngle",
        "SpecificVolume",
        "Speed",
        "SurfaceDensity",
        "SurfaceTension",
        "Temperature",
        "Time",
        "Torque",
        "Voltage",
        "Volume",
        "VolumeFlowRate",
        "VolumeFraction",
        "VolumetricFlux",
        "Wavenumber",
    ]
)
_EXCEPTIONS = frozenset(("ALARM_CONDITION", "ERROR_CONDITION"))
_COMPONENTS = frozenset(
    [
        "x",
        "y",
        "z",
        "axial_distance",
        "azimuth",
        "height",
        "spherical_radius",
        "polar_angle",
        "elevation_angle",
        "easting",
        "northing",
        "latitude",
        "longitude",
        "altitude",
    ]
)
_ERROR_REASONS = frozenset(("did_not_occur", "incorrect_data"))

Vocab: TypeAlias = "tuple[frozenset[str], str]"
_EVENT_VOCAB: dict[str, Vocab] = {
    "bizStep": (_BIZ_STEPS, _CBV + "BizStep-"),
    "disposition": (_DISPOSITIONS, _CBV + "Disp-"),
}
_PERSISTENT_VOCAB: Vocab = (_DISPOSITIONS, _CBV + "Disp-")
_PAIR_VOCAB: dict[str, Vocab] = {
    "bizTransactionList": (_BTTS, _CBV + "BTT-"),
    "sourceList": (_SDTS, _CBV + "SDT-"),
    "destinationList": (_SDTS, _CBV + "SDT-"),
}
_SENSOR_REPORT_VOCAB: dict[str, Vocab] = {
    "type": (_MEASUREMENT_TYPES, _GS1),
    "exception": (_EXCEPTIONS, _GS1),
    "component": (_COMPONENTS, _CBV + "Comp-"),
}
_ERROR_VOCAB: Vocab = (_ERROR_REASONS, _CBV + "ER-")
_CURIES = {"cbv": _CBV, "gs1": _GS1}


def _malformed(what: str) -> ValidationError:
    return ValidationError(f"EPCIS event cannot be hashed: {what}", code=ERROR_CODE)


# --- public API -------------------------------------------------------------------------------


def event_prehash(
    event: Mapping[str, Any], context: Any = None, *, ignore_fields: Collection[str] = ()
) -> str:
    """The canonical pre-hash string of one EPCIS 2.0 JSON/JSON-LD event.

    ``context`` is the ``@context`` of the enclosing document (a URL, a list of URLs and prefix
    maps, or a prefix map); it names the namespaces of user extensions. If it is None, the
    event's own ``@context`` is used, if any. ``ignore_fields`` names top-level event keys left
    out of the hash, matched literally (``"example:captureID"`` drops that key and no other):
    upstream's non-standard ``ignoreFields`` list (see ``document_event_hash_ids``).
    """
    if not isinstance(event, Mapping):
        raise _malformed("event is not an object")
    if context is None:
        context = event.get("@context")
    namespaces = _namespaces_from_context(context)
    # As upstream: bare words are expanded from the whole event, ignored fields included, and
    # the fields are dropped while the tree is built (after the event's type is read).
    event = _replace_bare_strings(event, _expanded_vocabulary(event))
    root = _correct_structure(_json_to_node(event, namespaces, frozenset(ignore_fields)))
    name = event.get("type")
    if not isinstance(name, str) or not name:
        raise _malformed("field 'type' must be a non-empty string")
    children = root[2]
    ordered = _ordered_prehash(children, PROP_ORDER)
    rest = [child for child in children if child[0] not in _IGNORED_TOP_LEVEL]
    return "eventType=" + root[0] + ordered + (_generic_prehash(rest) if rest else "")


def event_hash_id(
    event: Mapping[str, Any], context: Any = None, *, ignore_fields: Collection[str] = ()
) -> str:
    """The event hash ID ``ni:///sha-256;<64 lowercase hex>?ver=CBV2.0`` of one event."""
    return prehash_to_hash_id(event_prehash(event, context, ignore_fields=ignore_fields))


def prehash_to_hash_id(prehash: str) -> str:
    digest = hashlib.sha256(prehash.encode("utf-8")).hexdigest()
    return f"ni:///sha-256;{digest}?ver=CBV2.0"


def document_event_hash_ids(document: Mapping[str, Any]) -> list[str]:
    """Hash IDs of every event of an EPCISDocument or EPCISQueryDocument, in document order.

    Fields named by upstream's non-standard ``ignoreFields`` list are left out of every event's
    hash, exactly where and as upstream HEAD honours it (see the module docstring).
    """
    if not isinstance(document, Mapping):
        raise _malformed("document is not an object")
    context = document.get("@context")
    events = _document_events(document)
    ignored = _ignore_fields(document, context)
    return [event_hash_id(event, context, ignore_fields=ignored) for event in events]


def _ignore_fields(document: Mapping[str, Any], context: Any) -> frozenset[str]:
    """The ``ignoreFields`` entries upstream HEAD would honour (``_document_events`` has
    checked the body's shape)."""
    body = document["epcisBody"]
    holder = document
    if "eventList" not in body and "event" not in body:
        holder = body["queryResults"]  # a query document: its list sits there, and only there
    key = _ignore_fields_key(_namespaces_from_context(context))
    value = holder.get(key)
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise _malformed(f"field '{key}' must be a list of field names")
    return frozenset(entry for entry in value if isinstance(entry, str))


def _ignore_fields_key(namespaces: Mapping[str, str]) -> str:
    for prefix, iri in namespaces.items():
        if iri == "{" + _IGNORE_FIELDS_NAMESPACE + "}":
            return prefix + ":ignoreFields"
    return ":ignoreFields"  # as upstream when no prefix is bound to that namespace


def _document_events(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    body = document.get("epcisBody")
    if not isinstance(body, Mapping):
        raise _malformed("field 'epcisBody' must be an object")
    if "eventList" in body:
        events = body["eventList"]
    elif "event" in body:
        events = [body["event"]]
    else:
        results = body.get("queryResults")
        results_body = results.get("resultsBody") if isinstance(results, Mapping) else None
        if not isinstance(results_body, Mapping):
            raise _malformed("field 'epcisBody' holds no eventList, event or queryResults")
        events = results_body.get("eventList", [])
    if not isinstance(events, list) or not all(isinstance(e, Mapping) for e in events):
        raise _malformed("field 'eventList' must be a list of objects")
    return events


# --- bare CBV words -> web vocabulary (stands in for JSON-LD expansion) -----------------------


def _expand_vocab_value(value: Any, vocab: Vocab) -> Iterator[str]:
    values = value if isinstance(value, list) else [value]
    terms, prefix = vocab
    for item in values:
        if not isinstance(item, str):
            continue
        curie, _, rest = item.partition(":")
        if item in terms:
            yield prefix + item
        elif rest and curie in _CURIES:
            yield _CURIES[curie] + rest


def _all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_strings(item)


def _mappings(value: Any) -> Iterator[Mapping[str, Any]]:
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, Mapping):
            yield item


def _expanded_vocabulary(event: Mapping[str, Any]) -> frozenset[str]:
    """The CBV/GS1 web vocabulary IRIs a JSON-LD expansion of the event would contain."""
    found: set[str] = set()
    for key, vocab in _EVENT_VOCAB.items():
        found.update(_expand_vocab_value(event.get(key), vocab))
    for persistent in _mappings(event.get("persistentDisposition")):
        for key in ("set", "unset"):
            found.update(_expand_vocab_value(persistent.get(key), _PERSISTENT_VOCAB))
    for key, vocab in _PAIR_VOCAB.items():
        for entry in _mappings(event.get(key)):
            found.update(_expand_vocab_value(entry.get("type"), vocab))
    for element in _mappings(event.get("sensorElementList")):
        for report in _mappings(element.get("sensorReport")):
            for key, vocab in _SENSOR_REPORT_VOCAB.items():
                found.update(_expand_vocab_value(report.get(key), vocab))
    for declaration in _mappings(event.get("errorDeclaration")):
        found.update(_expand_vocab_value(declaration.get("reason"), _ERROR_VOCAB))
    found.update(s for s in _all_strings(event) if s.startswith(_VOCAB_PREFIXES))
    return frozenset(found)


def _replace_bare_strings(value: Any, expanded: frozenset[str]) -> Any:
    if isinstance(value, str):
        matches = [x for x in expanded if x.endswith(("-" + value, "/" + value))]
        return matches[0] if len(matches) == 1 else value
    if isinstance(value, Mapping):
        return {key: _replace_bare_strings(item, expanded) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_bare_strings(item, expanded) for item in value]
    return value


# --- JSON -> node tree ------------------------------------------------------------------------


def _namespaces_from_context(context: Any) -> dict[str, str]:
    namespaces: dict[str, str] = {}
    if isinstance(context, Mapping):
        context = [context]
    if isinstance(context, list):
        for item in context:
            if isinstance(item, str):
                namespaces[item] = "{" + item + "}"
            elif isinstance(item, Mapping):
                for key, iri in item.items():
                    if isinstance(key, str) and isinstance(iri, str):
                        namespaces[key] = "{" + iri + "}"
    return namespaces


def _namespace_replace(text: str, namespaces: Mapping[str, str], *, is_value: bool) -> str:
    prefix, colon, rest = text.partition(":")
    if colon and prefix in namespaces:
        iri = namespaces[prefix]
        return (iri.replace("{", "").replace("}", "") if is_value else iri) + rest
    return text


def _json_to_node(
    value: Any, namespaces: dict[str, str], ignored: frozenset[str] = frozenset()
) -> Node:
    """``ignored``: keys of ``value`` itself (not of its children) left out, as upstream."""
    node: Node = ("", "", [])
    if isinstance(value, list):
        for item in value:
            node[2].append(_json_to_node(item, namespaces))
    elif isinstance(value, Mapping):
        if "type" in value:
            kind = value["type"]
            node = (kind if isinstance(kind, str) else "", "", [])
        if "#text" in value:
            text = value["#text"]
            node = (node[0], text if isinstance(text, str) else str(text), node[2])
        for key, item in value.items():
            if not isinstance(key, str):
                raise _malformed("object keys must be strings")
            if key in _IGNORED_KEYS or key in ignored:
                continue
            if key.startswith("@xmlns"):
                if not isinstance(item, str):
                    raise _malformed(f"field '{key}' must be a string")
                namespaces[key[7:]] = "{" + item + "}"
                node = (_namespace_replace(node[0], namespaces, is_value=False), node[1], node[2])
                continue
            child = _json_to_node(item, namespaces)
            name = _namespace_replace(key, namespaces, is_value=False)
            if isinstance(item, list):
                node[2].extend((name, element[1], element[2]) for element in child[2])
            else:
                node[2].append((name, child[1], child[2]))
        if not any(key in value for key in _UNSORTED_KEYS):
            node[2].sort()
    else:
        return ("", _scalar(value, namespaces), [])
    return node


def _scalar(value: Any, namespaces: Mapping[str, str]) -> str:
    if isinstance(value, str):
        return _namespace_replace(value, namespaces, is_value=True)
    if isinstance(value, (Mapping, list)):
        raise _malformed("expected a scalar value")
    return str(value)  # as the reference: True -> "True", None -> "None", 2.0 -> "2.0"


def _pair(entry: Node, value_name: str) -> Node:
    """A bizTransaction/source/destination entry as its (type, value) pair."""
    if entry[1] and not entry[2]:
        raise _malformed(f"entries of '{value_name}List' must be objects")
    kept = [c for name in ("type", value_name) for c in entry[2] if c[0] == name][:2]
    return (_PAIR, "", kept)


def _correct_structure(node: Node) -> Node:
    """Map the JSON data model onto the XML one (as json_xml_model_mismatch_correction does)."""
    children = list(node[2])
    lists: dict[str, list[Node]] = {}
    for element in [c for c in children if c[0].endswith("List")]:
        lists.setdefault(element[0], []).append((element[0][:-4], element[1], element[2]))
        children.remove(element)
    for list_name, elements in lists.items():
        if list_name in _PAIR_LISTS:
            pairs = [_pair(e, _PAIR_LISTS[list_name]) for e in elements]
            children.append((list_name, "", pairs))
        else:
            children.append((list_name, "", elements))
    child_epcs: list[Node] = []
    for element in [c for c in children if c[0] == "childEPCs"]:
        child_epcs.append(("epc", element[1], []))
        children.remove(element)
    if child_epcs:
        children.append(("childEPCs", "", child_epcs))
    corrected = [c if c[0] in _PAIR_LISTS else _correct_structure(c) for c in children]
    name = node[0]
    if name in ("inputEPC", "outputEPC"):
        name = "epc"
    elif name in ("inputQuantity", "outputQuantity", "childQuantity") or (
        name == "quantity" and corrected
    ):
        name = "quantityElement"
    return (name, node[1], corrected)


# --- pre-hash string --------------------------------------------------------------------------


def _ordered_prehash(children: list[Node], order: Order) -> str:
    """Fields named in ``order``, in that order; consumes them from ``children``."""
    prehash = ""
    extensions = _gather_user_extensions(children)
    for name, sub_order in order:
        values: list[str] = []
        for child in [c for c in children if c[0] == name]:
            text = _child_prehash(child, sub_order)
            if text:
                values.append(text)
            if not child[2]:
                children.remove(child)
        values.sort()
        prehash += "".join(values)
    if extensions:
        prehash += _generic_prehash(extensions)
    return prehash


def _child_prehash(child: Node, sub_order: Order | None) -> str:
    grandchildren = _ordered_prehash(child[2], sub_order) if sub_order else ""
    text = ""
    if child[1]:
        text = child[1].strip()
        lowered = child[0].lower()
        if "time" in lowered and "offset" not in lowered:
            text = _fix_timestamp(text)
        else:
            text = _canonize_value(text)
        if text:
            text = "=" + text
    if text or grandchildren:
        return child[0] + text + grandchildren
    return ""


def _gather_user_extensions(children: list[Node]) -> list[Node]:
    """Extensions nested in a field (``{ns/}name``), hashed after that field's own children."""
    if len(children) <= 1:
        return []
    if any("eventTime" in c[0] or "action" in c[0] for c in children):
        return []  # the event's top level: its extensions come last of all
    extensions = [c for c in children if "{" in c[0] and "/}" in c[0]]
    for extension in extensions:
        children.remove(extension)
    return extensions


def _generic_prehash(children: list[Node]) -> str:
    values: list[str] = []
    for child in children:
        if child[0] == _PAIR:
            values.append(_generic_prehash(child[2]))
            continue
        text = child[1].strip()
        if text:
            text = "=" + _canonize_value(text)
        values.append(child[0] + text + _generic_prehash(child[2]))
    if len(children) > 1 and not any(c[0] in _UNSORTED_KEYS for c in children):
        values.sort()
    return "".join(values)


# --- value canonicalisation -------------------------------------------------------------------


def _fix_timestamp(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    rounded = round(moment.microsecond, -3)  # half to even, as the reference
    moment = moment.replace(microsecond=0) + timedelta(microseconds=rounded)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


_OLD_CBV_URNS = (
    ("urn:epcglobal:cbv:bizstep:", _CBV + "BizStep-"),
    ("urn:epcglobal:cbv:disp:", _CBV + "Disp-"),
    ("urn:epcglobal:cbv:btt:", _CBV + "BTT-"),
    ("urn:epcglobal:cbv:sdt:", _CBV + "SDT-"),
    ("urn:epcglobal:cbv:er:", _CBV + "ER-"),
)


def _canonize_value(text: str) -> str:
    for old, new in _OLD_CBV_URNS:
        text = text.replace(old, new)
    text = _format_numeric(text)
    return _dl_normalise(text) or text


def _format_numeric(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    try:
        if int(number) == number:
            return str(int(number))
    except ValueError:  # NaN: as the reference
        return text
    except OverflowError as exc:  # infinity: the reference cannot hash it either
        raise _malformed("a numeric value is infinite") from exc
    return str(number)


# --- GS1 Digital Link normaliser (the reference's dl_normaliser) --------------------------------

_P = (
    r"(\%2[125-9A-Fa-f]|\%3[0-9A-Fa-f]|\%4[1-9A-Fa-f]|\%5[0-9AaFf]|\%6[1-9A-Fa-f]|\%7[0-9Aa]"
    r"|[!\')(*+,.0-9:;=A-Za-z_-])"
)
_C = r"(\%2[3dfDF]|\%3[0-9]|\%4[1-9A-Fa-f]|\%5[0-9Aa]|[0-9A-Z-])"
_A = r"[\x22\x27\x2D\x2E\x30-\x39\x3B-\x3F\x41-\x5A\x5F\x61-\x7A]"
_A_SLASH = r"[\x2F\x22\x27\x2D\x2E\x30-\x39\x3B-\x3F\x41-\x5A\x5F\x61-\x7A]"
_CPI_CHARS = r"[\x23\x2D\x2F\x30-\x39\x41-\x5A]"


def _gcp(total: int, *, brackets: bool, last: str | None = None, end: str = "") -> str:
    """Alternatives for a GS1 company prefix of 6..12 digits, a dot and the rest of ``total``."""
    digit = r"[\d]" if brackets else r"\d"
    parts = []
    for size in range(6, 13):
        rest = total - size
        tail = f"{digit}{{{rest}}}" if rest > 0 else ""
        parts.append(f"({digit}{{{size}}}\\.{tail}{end})")
    if last is not None:
        parts[-1] = last
    return "(" + "|".join(parts) + ")"


def _gcp_then(chars: str, longest: int, *, brackets: bool, wrap: bool = True) -> str:
    digit = r"[\d]" if brackets else r"\d"
    parts = [f"{digit}{{{size}}}\\.{chars}{{1,{longest - size + 6}}}" for size in range(6, 13)]
    if wrap:
        parts = [f"({part})" for part in parts]
    return "(" + "|".join(parts) + ")"


_LAST12 = r"([\d]{12}\.\.)"
_RE = {
    "sgtin": rf"^urn:epc:id:sgtin:{_gcp(13, brackets=False)}\.{_P}{{1,20}}$",
    "sscc": rf"^urn:epc:id:sscc:{_gcp(17, brackets=False, end='$')}",
    "sgln": rf"^urn:epc:id:sgln:{_gcp(12, brackets=False)}\.{_P}{{1,20}}$",
    "grai": rf"^urn:epc:id:grai:{_gcp(12, brackets=True, last=_LAST12)}\.{_P}{{1,16}}$",
    "giai": rf"^urn:epc:id:giai:{_gcp_then(_P, 24, brackets=True)}$",
    "gsrn": rf"^urn:epc:id:gsrn:{_gcp(17, brackets=True, end='$')}",
    "gsrnp": rf"^urn:epc:id:gsrnp:{_gcp(17, brackets=True, end='$')}",
    "gdti": rf"^urn:epc:id:gdti:{_gcp(12, brackets=True, last=_LAST12)}{_P}{{1,20}}$",
    "cpi": rf"^urn:epc:id:cpi:{_gcp_then(_C, 24, brackets=False)}\.[\d]{{1,12}}$",
    "sgcn": rf"^urn:epc:id:sgcn:{_gcp(12, brackets=True)}\.[\d]{{1,12}}$",
    "ginc": rf"^urn:epc:id:ginc:{_gcp_then(_P, 24, brackets=True, wrap=False)}$",
    "gsin": rf"^urn:epc:id:gsin:{_gcp(16, brackets=True, end='$')}",
    "itip": rf"^urn:epc:id:itip:{_gcp(13, brackets=True)}\.[\d]{{2}}\.[\d]{{2}}\.{_P}{{1,20}}$",
    "upui": rf"^urn:epc:id:upui:{_gcp(13, brackets=False)}\.{_P}{{1,28}}$",
    "pgln": rf"^urn:epc:id:pgln:{_gcp(12, brackets=True)}$",
    "lgtin": rf"^urn:epc:class:lgtin:{_gcp(13, brackets=True)}\.{_P}{{1,20}}$",
    "idpat:sgtin": rf"^urn:epc:idpat:sgtin:{_gcp(13, brackets=False)}\.\*$",
    "idpat:grai": rf"^urn:epc:idpat:grai:{_gcp(12, brackets=True, last=_LAST12)}\.\*$",
    "idpat:gdti": rf"^urn:epc:idpat:gdti:{_gcp(12, brackets=True, last=_LAST12)}\.\*$",
    "idpat:sgcn": rf"^urn:epc:idpat:sgcn:{_gcp(12, brackets=True, last=_LAST12)}\.\*$",
    "idpat:cpi": rf"^urn:epc:idpat:cpi:{_gcp_then(_C, 24, brackets=False)}\.\*$",
    "idpat:itip": rf"^urn:epc:idpat:itip:{_gcp(13, brackets=True)}\.[\d]{{2}}\.[\d]{{2}}\.\*$",
    "idpat:upui": rf"^urn:epc:idpat:upui:{_gcp(13, brackets=False)}\.\*$",
}
_EPC_RE = {name: re.compile(pattern) for name, pattern in _RE.items()}

_DL_KEYS = (
    "01|gtin|8006|itip|8010|cpid|414|gln|417|party|8017|gsrnp|8018|gsrn|255|gcn|00|sscc"
    "|253|gdti|401|ginc|402|gsin|8003|grai|8004|giai"
)
_DL_URI = re.compile(
    r"^https?:(\/\/((([^\/?#]*)@)?([^\/?#:]*)(:([^\/?#]*))?))?((([^?#]*)(\/("
    + _DL_KEYS
    + r")\/)(\d{4}[^\/]+)(\/[^/]+\/[^/]+)?[/]?(\?([^?\n]*))?(#([^\n]*))?)|(\/[A-Za-z_-]{10}$))"
)
_DL_CANONICAL = re.compile(
    r"^https:\/\/id.gs1.org\/(01|8006|8010|414|417|8017|8018|255|00|253|401|402|8003|8004)\/"
    r"(\d{4}[^\/]+)(\/[^\/]+\/[^\/]+)?[\/]?(\?([^?\n]*))?(#([^\n]*))?|(\/[A-Za-z_-]{10}$)"
)
_DL_SHORT_NAMES = (
    ("/gtin/", "/01/"),
    ("/itip/", "/8006/"),
    ("/cpid/", "/8010/"),
    ("/gln/", "/414/"),
    ("/party/", "/417/"),
    ("/gsrnp/", "/8017/"),
    ("/gsrn/", "/8018/"),
    ("/gcn/", "/255/"),
    ("/sscc/", "/00/"),
    ("/gdti/", "/253/"),
    ("/ginc/", "/401/"),
    ("/gsin/", "/402/"),
    ("/grai/", "/8003/"),
    ("/giai/", "/8004/"),
    ("/cpv/", "/22/"),
    ("/lot/", "/10/"),
    ("/ser/", "/21/"),
)
_DL_KEY_PATHS = (
    "/00/",
    "/01/",
    "/253/",
    "/255/",
    "/401/",
    "/402/",
    "/414/",
    "/417/",
    "/8003/",
    "/8004/",
    "/8006/",
    "/8010/",
    "/8017/",
    "/8018/",
)
_ID = r"https:\/\/id.gs1.org\/"
_CPV_ONLY = (
    re.compile(rf"{_ID}8006\/\d{{18}}\/22\/({_A}{{0,20}})$"),
    re.compile(rf"{_ID}01\/\d{{14}}\/22\/({_A}{{0,20}})$"),
)
_CPV_MORE = (
    re.compile(rf"{_ID}8006\/\d{{18}}\/22\/({_A_SLASH}{{0,20}})$"),
    re.compile(rf"{_ID}01\/\d{{14}}\/22\/({_A_SLASH}{{0,20}})$"),
)
_LOT_AND_SERIAL = (
    re.compile(rf"{_ID}8006\/\d{{18}}\/10\/({_A}{{0,20}})\/21\/({_A}{{0,20}})$"),
    re.compile(rf"{_ID}01\/(\d{{14}})\/10\/({_A}{{0,20}})\/21\/({_A}{{0,20}})$"),
)
_DL_VALID = tuple(
    re.compile(_ID + pattern)
    for pattern in (
        r"00\/(\d{18})$",
        rf"01\/(\d{{14}})\/21\/({_A}{{0,20}})$",
        rf"01\/(\d{{14}})\/10\/({_A}{{0,20}})$",
        r"01\/(\d{14})$",
        rf"01\/(\d{{14}})\/235\/({_A}{{0,28}})$",
        rf"253\/(\d{{13}})({_A}{{0,17}})$",
        r"255\/(\d{13})(\d{0,12})$",
        rf"401\/({_A}{{0,30}})$",
        r"402\/(\d{17})$",
        r"414\/(\d{13})$",
        rf"414\/(\d{{13}})\/254\/({_A}{{0,20}})$",
        r"417\/(\d{13})$",
        rf"8003\/(\d{{14}})({_A}{{0,16}})$",
        rf"8004\/({_A}{{0,30}})$",
        rf"8006\/(\d{{18}})\/21\/({_A}{{0,20}})$",
        rf"8006\/(\d{{18}})\/10\/({_A}{{0,20}})$",
        r"8006\/(\d{18})$",
        rf"8010\/({_CPI_CHARS}{{0,30}})\/8011/(\d{{0,12}})$",
        rf"8010\/({_CPI_CHARS}{{0,30}})$",
        r"8017\/(\d{18})$",
        r"8018\/(\d{18})$",
    )
)


def _percent_encode(text: str) -> str:
    for char, code in (
        ("!", "%21"),
        ("(", "%28"),
        (")", "%29"),
        ("*", "%2A"),
        ("+", "%2B"),
        (",", "%2C"),
        (":", "%3A"),
    ):
        text = text.replace(char, code)
    return text


def check_digit(key: str) -> int:
    """The GS1 mod-10 check digit of a key given without it (GS1 General Specifications 7.9.1)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(key)))
    return math.ceil(total / 10) * 10 - total


def _gtin(uri: str, start: int, dot: int) -> str:
    prefix = uri[start:dot]
    item = uri[dot + 1 : dot + 1 + (13 - len(prefix))]
    raw = item[0:1] + prefix + item[1:]
    return raw + str(check_digit(raw))


def _epc_to_dl(uri: str, dot: int) -> str | None:
    def key(start: int, length: int) -> str:
        raw = uri[start:dot] + uri[dot + 1 : dot + 1 + (length - (dot - start))]
        return raw + str(check_digit(raw))

    def hit(name: str) -> bool:
        return _EPC_RE[name].match(uri) is not None

    base = "https://id.gs1.org/"
    if hit("sgtin"):
        return f"{base}01/{_gtin(uri, 17, dot)}/21/{_percent_encode(uri[32:])}"
    if hit("sscc"):
        raw = uri[dot + 1 : dot + 2] + uri[16:dot] + uri[dot + 2 :]
        return f"{base}00/{raw}{check_digit(raw)}"
    if hit("sgln"):
        gln, extension = key(16, 12), uri[30:]
        if extension == "0":
            return f"{base}414/{gln}"
        return f"{base}414/{gln}/254/{_percent_encode(extension)}"
    if hit("grai"):
        raw = "0" + uri[16:dot] + uri[dot + 1 : dot + 1 + (12 - (dot - 16))]
        return f"{base}8003/{raw}{check_digit(raw)}{_percent_encode(uri[30:])}"
    if hit("giai"):
        return f"{base}8004/{uri[16:dot]}{_percent_encode(uri[dot + 1 :])}"
    if hit("gsrn"):
        raw = uri[16:dot] + uri[dot + 1 :]
        return f"{base}8018/{raw}{check_digit(raw)}"
    if hit("gsrnp"):
        raw = uri[17:dot] + uri[dot + 1 :]
        return f"{base}8017/{raw}{check_digit(raw)}"
    if hit("gdti"):
        return f"{base}253/{key(16, 12)}{_percent_encode(uri[30:])}"
    if hit("cpi"):
        separator = uri.rfind(".")
        raw = uri[15:dot] + uri[dot + 1 : separator]
        return f"{base}8010/{_percent_encode(raw)}/8011/{uri[separator + 1 :]}"
    if hit("sgcn"):
        return f"{base}255/{key(16, 12)}{uri[30:]}"
    if hit("ginc"):
        return f"{base}401/{uri[16:dot]}{_percent_encode(uri[dot + 1 :])}"
    if hit("gsin"):
        raw = uri[16:dot] + uri[dot + 1 :]
        return f"{base}402/{raw}{check_digit(raw)}"
    if hit("itip"):
        gtin = _gtin(uri, 16, dot)
        return f"{base}8006/{gtin}{uri[31:33]}{uri[34:36]}/21/{_percent_encode(uri[37:])}"
    if hit("upui"):
        return f"{base}01/{_gtin(uri, 16, dot)}/235/{_percent_encode(uri[31:])}"
    if hit("pgln"):
        return f"{base}417/{key(16, 12)}"
    if hit("lgtin"):
        return f"{base}01/{_gtin(uri, 20, dot)}/10/{_percent_encode(uri[35:])}"
    if hit("idpat:sgtin"):
        return f"{base}01/{_gtin(uri, 20, dot)}"
    if hit("idpat:grai"):
        raw = "0" + uri[19:dot] + uri[dot + 1 : dot + 1 + (12 - (dot - 19))]
        return f"{base}8003/{raw}{check_digit(raw)}"
    if hit("idpat:gdti"):
        return f"{base}253/{key(19, 12)}"
    if hit("idpat:sgcn"):
        return f"{base}255/{key(19, 12)}"
    if hit("idpat:cpi"):
        return f"{base}8010/{_percent_encode(uri[18:dot] + uri[dot + 1 : uri.rfind('.')])}"
    if hit("idpat:itip"):
        return f"{base}8006/{_gtin(uri, 19, dot)}{uri[34:36]}{uri[37:39]}"
    if hit("idpat:upui"):
        return f"{base}01/{_gtin(uri, 19, dot)}"
    return None


def _any_match(patterns: Sequence[re.Pattern[str]], text: str) -> bool:
    return any(pattern.match(text) is not None for pattern in patterns)


def _dl_normalise(uri: str) -> str | None:
    """The canonical GS1 Digital Link URI of an EPC URI or DL URI; None if ``uri`` is neither."""
    dot = uri.find(".")
    if dot < 0:
        return None
    if uri.startswith("urn:epc:"):
        converted = _epc_to_dl(uri, dot)
        if converted is not None:
            return converted
    if _DL_URI.match(uri) is None:
        return None
    if "?" in uri:
        uri = uri[: uri.index("?")]
    for short, ai in _DL_SHORT_NAMES:
        uri = uri.replace(short, ai)
    if _DL_CANONICAL.match(uri) is None:
        for path in _DL_KEY_PATHS:
            if path in uri:
                uri = "https://id.gs1.org" + uri[uri.find(path) :]
                break
    if re.match(_ID + r"01\/\d{14}", uri) is None:
        for digits, padding in (("13", "0"), ("12", "00"), ("8", "000000")):
            if re.match(_ID + r"01\/\d{" + digits + "}", uri) is not None:
                uri = uri.replace("/01/", "/01/" + padding)
                break
    after_cpv = uri[uri.find("/22/") + 4 :]
    if _any_match(_CPV_ONLY, uri):
        uri = uri[: uri.find("/22/")] + after_cpv[after_cpv.find("/") : -1]
    if _any_match(_CPV_MORE, uri):
        uri = uri[: uri.find("/22/")] + after_cpv[after_cpv.find("/") :]
    if _any_match(_LOT_AND_SERIAL, uri):
        after_lot = uri[uri.find("/10/") + 4 :]
        uri = uri[: uri.find("/10/")] + after_lot[after_lot.find("/") :]
    return uri if _any_match(_DL_VALID, uri) else None
