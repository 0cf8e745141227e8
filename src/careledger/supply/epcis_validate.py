"""Validation of GS1 EPCIS 2.0 JSON / JSON-LD capture documents.

Pure: no I/O except loading the shipped JSON Schema (``schema/EPCIS-JSON-Schema.json``, see
``schema/NOTICE``) once, on first use, through :mod:`importlib.resources`. No network: the
schema is compiled against a :class:`referencing.Registry` whose retriever refuses every URI,
so a remote ``$ref`` can never be fetched.

A document is checked in two layers and *every* error of both layers is reported at once:

1. the EPCIS 2.0 JSON Schema (draft-07, as the schema declares), with a cheap RFC 3339
   ``date-time`` format check (``uri`` formats are left to layer 2);
2. the rules the schema cannot express:

   * ``bizStep`` / ``disposition`` (and ``persistentDisposition`` set/unset) must be a CBV 2.0
     standard value - the bare word (``shipping``), the Web URI
     (``https://ref.gs1.org/cbv/BizStep-shipping``) or the CURIE (``cbv:BizStep-shipping``) -
     or a user vocabulary value: an absolute ``http(s):`` / ``urn:`` URI outside the CBV
     namespaces, or a CURIE whose prefix is declared in an ``@context``. Codes
     ``UNKNOWN_BIZSTEP``, ``UNKNOWN_DISPOSITION``. The EPCIS 1.x URN form
     (``urn:epcglobal:cbv:bizstep:shipping``) is recognised here, but the EPCIS 2.0 JSON
     Schema itself forbids ``urn:epcglobal:cbv`` values, so such a value is always refused
     with ``SCHEMA`` (plus the vocabulary code when the word is not standard);
   * user extension fields (a key the standard does not define at that place for that event
     type: at event level, in ``ilmd``, ``readPoint``, ``bizLocation``, ``errorDeclaration``,
     ``sensorElementList[]``, ``sensorMetadata``, ``sensorReport[]``) must be ``prefix:name``
     with the prefix declared in an ``@context`` (of the document or of the event, at any
     depth) or by the standard EPCIS context: ``EXTENSION_WITHOUT_NAMESPACE``. Keys *inside* an
     extension's value are the extension's business and are not checked;
   * every EPC in ``epcList``, ``childEPCs``, ``parentID``, ``inputEPCList``,
     ``outputEPCList`` must be a GS1 EPC URN or Digital Link that
     :func:`careledger.supply.identifiers.normalise_epc` accepts (check digits included):
     ``BAD_EPC``;
   * ``eventTime`` (RFC 3339 with offset) and ``eventTimeZoneOffset`` (``+hh:mm``, within
     -12:00..+14:00) present and well-formed: ``BAD_EVENT_TIME``, ``BAD_TIME_ZONE_OFFSET``;
   * only the five EPCIS 2.0 event types are admitted (``UNSUPPORTED_EVENT_TYPE``), and only an
     ``EPCISDocument`` or a bare event is a capture document (``NOT_A_CAPTURE_DOCUMENT``).

A document that declares an ``ignoreFields`` list (upstream epcis-event-hash-generator's
non-standard way to leave fields out of an event hash) is refused whole, before validation, by
:func:`refuse_ignore_fields`: ``IGNORE_FIELDS_UNSUPPORTED``.

Schema errors carry code ``SCHEMA``. Paths look like ``epcisBody.eventList[1].bizStep``;
``index`` is the event's position in ``epcisBody.eventList`` (``None`` for document-level
errors and for a bare event). Messages name fields, codes and at most the offending
vocabulary word or key, never whole values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
from jsonschema import (  # type: ignore[import-untyped, unused-ignore]
    Draft7Validator,
    FormatChecker,
)
from jsonschema.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    ValidationError as SchemaError,
)
from jsonschema.exceptions import best_match  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry, Resource

from careledger.errors import ValidationError
from careledger.supply.cbv import CBV_BIZSTEPS, CBV_DISPOSITIONS
from careledger.supply.identifiers import normalise_epc

__all__ = [
    "CBV_BIZSTEPS",
    "CBV_DISPOSITIONS",
    "EVENT_TYPES",
    "EpcisRejected",
    "EventError",
    "refuse_ignore_fields",
    "validate_document",
    "validate_event",
]


# The forms a standard value may take besides the bare word: (prefix, case-insensitive?).
_BIZSTEP_FORMS = (
    ("https://ref.gs1.org/cbv/BizStep-", False),
    ("cbv:BizStep-", False),
    ("urn:epcglobal:cbv:bizstep:", True),
)
_DISPOSITION_FORMS = (
    ("https://ref.gs1.org/cbv/Disp-", False),
    ("cbv:Disp-", False),
    ("urn:epcglobal:cbv:disp:", True),
)
# Values in these namespaces must be standard values (no private words under GS1's names).
_CBV_NAMESPACES = ("https://ref.gs1.org/cbv/", "http://ref.gs1.org/cbv/", "urn:epcglobal:cbv:")

# Prefixes the standard EPCIS 2.0 context (required in every document) declares.
_STANDARD_PREFIXES = frozenset({"epcis", "cbv", "cbvmda", "gs1", "rdfs", "owl", "xsd", "dcterms"})

# --------------------------------------------------------------------------------------------
# Fields the EPCIS 2.0 standard defines (EPCIS 2.0 section 7 / the JSON binding, section 10).

_COMMON_EVENT_FIELDS = frozenset(
    {
        "@context",
        "type",
        "eventID",
        "eventTime",
        "recordTime",
        "eventTimeZoneOffset",
        "certificationInfo",
        "errorDeclaration",
        "readPoint",
        "bizLocation",
        "bizStep",
        "disposition",
        "persistentDisposition",
        "bizTransactionList",
        "sourceList",
        "destinationList",
        "sensorElementList",
    }
)
EVENT_TYPES: Mapping[str, frozenset[str]] = {
    "ObjectEvent": _COMMON_EVENT_FIELDS | {"action", "epcList", "quantityList", "ilmd"},
    "AggregationEvent": _COMMON_EVENT_FIELDS
    | {"action", "parentID", "childEPCs", "childQuantityList"},
    "TransactionEvent": _COMMON_EVENT_FIELDS | {"action", "parentID", "epcList", "quantityList"},
    "TransformationEvent": _COMMON_EVENT_FIELDS
    | {
        "inputEPCList",
        "inputQuantityList",
        "outputEPCList",
        "outputQuantityList",
        "transformationID",
        "ilmd",
    },
    "AssociationEvent": _COMMON_EVENT_FIELDS
    | {"action", "parentID", "childEPCs", "childQuantityList"},
}
_LOCATION_FIELDS = frozenset({"id"})
_ERROR_DECLARATION_FIELDS = frozenset({"declarationTime", "reason", "correctiveEventIDs"})
_SENSOR_ELEMENT_FIELDS = frozenset({"sensorMetadata", "sensorReport"})
_SENSOR_METADATA_FIELDS = frozenset(
    {
        "time",
        "deviceID",
        "deviceMetadata",
        "rawData",
        "startTime",
        "endTime",
        "dataProcessingMethod",
        "bizRules",
    }
)
_SENSOR_REPORT_FIELDS = frozenset(
    {
        "type",
        "exception",
        "deviceID",
        "deviceMetadata",
        "rawData",
        "dataProcessingMethod",
        "time",
        "microorganism",
        "chemicalSubstance",
        "coordinateReferenceSystem",
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
        "bizRules",
    }
)
_EPC_LIST_FIELDS = ("epcList", "childEPCs", "inputEPCList", "outputEPCList")

_CURIE = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*):([^\s/][^\s]*)")
_ABSOLUTE_URI = re.compile(r"(?:https?://[^\s/?#]+[^\s]*|urn:[A-Za-z0-9][A-Za-z0-9\-]{0,31}:\S+)")
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_TZ_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")

# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class EventError:
    """One problem in a document: event ``index`` (or ``None``), field ``path``, ``code``."""

    index: int | None
    path: str
    code: str
    message: str


class EpcisRejected(ValidationError):
    """The document is not a valid EPCIS 2.0 capture document; ``errors`` lists every problem."""

    code = "EPCIS_INVALID"

    def __init__(self, errors: Iterable[EventError]) -> None:
        self.errors: tuple[EventError, ...] = tuple(errors)
        first = self.errors[0] if self.errors else None
        summary = f"{first.code} at {first.path or '(document)'}" if first else "invalid"
        super().__init__(f"EPCIS document refused: {len(self.errors)} error(s), first {summary}")

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(e.code for e in self.errors)


# --------------------------------------------------------------------------------------------
# The schema


def _refuse_retrieval(uri: str) -> Resource[Any]:
    raise LookupError(f"remote schema references are not fetched: {uri}")


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only constrain strings
    m = _RFC3339.fullmatch(value)
    if m is None:
        return False
    try:
        datetime.fromisoformat(f"{m[1]}T{m[2]}")
    except ValueError:
        return False
    return _offset_ok(m[4])


def _offset_ok(text: str) -> bool:
    if text in ("Z", "z"):
        return True
    m = _TZ_OFFSET.fullmatch(text)
    if m is None:
        return False
    minutes = int(m[2]) * 60 + int(m[3])
    if int(m[3]) >= 60:
        return False
    return minutes <= (14 * 60 if m[1] == "+" else 12 * 60)


@cache
def _validator() -> Draft7Validator:
    text = (
        resources.files("careledger.supply")
        .joinpath("schema/EPCIS-JSON-Schema.json")
        .read_text(encoding="utf-8")
    )
    schema = json.loads(text)
    Draft7Validator.check_schema(schema)
    checker = FormatChecker(formats=())
    checker.checks("date-time")(_is_date_time)
    registry: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
    return Draft7Validator(schema, registry=registry, format_checker=checker)


@cache
def _fast_validator() -> Any:
    """The same schema compiled by jsonschema-rs: about 50x faster, used only to say "valid".

    A document it accepts is accepted; one it rejects is re-checked by ``_validator`` for the
    precise, path-by-path errors users see, so the two never have to agree on messages. The
    date-time format uses the same checker as the reference validator, and a differential
    test keeps the two verdicts equal on every corpus document.
    """
    text = (
        resources.files("careledger.supply")
        .joinpath("schema/EPCIS-JSON-Schema.json")
        .read_text(encoding="utf-8")
    )
    return jsonschema_rs.Draft7Validator(
        json.loads(text),
        # The reference checks date-time only (see _validator); "uri" must not be checked here.
        formats={"date-time": _is_date_time, "uri": _any_string},
        validate_formats=True,
        ignore_unknown_formats=True,
        retriever=_refuse_fast_retrieval,
    )


def _any_string(value: object) -> bool:
    return True


def _refuse_fast_retrieval(uri: str) -> dict[str, Any]:
    raise LookupError(f"remote schema references are not fetched: {uri}")


def schema_valid(doc: object) -> bool:
    """The fast verdict alone (see _fast_validator)."""
    return bool(_fast_validator().is_valid(doc))


def _path_text(parts: Iterable[object]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _leaf(error: SchemaError) -> SchemaError:
    """The most specific sub-error of an anyOf / oneOf / if-then failure."""
    while error.context:
        best = best_match(error.context)
        if best is None or best is error:
            break
        error = best
    return error


def _schema_message(error: SchemaError) -> str:
    v = error.validator
    vv = error.validator_value
    name = error.absolute_path[-1] if error.absolute_path else "document"
    if v == "required":
        return str(error.message)  # "'action' is a required property": names a field only
    if v == "type":
        return f"{name}: must be of JSON type {vv}"
    if v == "enum":
        return f"{name}: not one of the allowed values"
    if v == "const":
        return f"{name}: not the required constant"
    if v == "format":
        return f"{name}: not a valid {vv}"
    if v == "pattern":
        return f"{name}: does not match the required pattern"
    if v == "additionalProperties":
        return str(error.message)  # names the unexpected property names
    if v == "propertyNames":
        return f"property name {error.instance!r} not allowed here"
    if v in ("minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum"):
        return f"{name}: violates {v} {vv}"
    if v == "not":
        return f"{name}: not allowed here (e.g. ilmd only with action ADD)"
    if v in ("anyOf", "oneOf", "allOf"):
        return f"{name}: does not match any allowed form"
    return f"{name}: fails schema keyword {v!r}"


def _schema_errors(
    doc: object, base: tuple[object, ...]
) -> Iterator[tuple[tuple[object, ...], str]]:
    if schema_valid(doc):
        return
    seen: set[tuple[tuple[object, ...], str]] = set()
    for top in _validator().iter_errors(doc):
        err = _leaf(top)
        parent = err.parent
        # A propertyNames failure reports the bad key as the instance, at the object's path.
        if parent is not None and parent.validator == "propertyNames":
            path = (*base, *parent.absolute_path, str(parent.instance))
            item = (tuple(path), f"property name {err.instance!r} not allowed here")
        else:
            item = ((*base, *err.absolute_path), _schema_message(err))
        if item not in seen:
            seen.add(item)
            yield item


# --------------------------------------------------------------------------------------------
# Semantic checks


class _Collector:
    def __init__(self, event_index: int | None, base: tuple[object, ...]) -> None:
        self.index = event_index
        self.base = base
        self.errors: list[EventError] = []

    def add(self, rel: Iterable[object], code: str, message: str) -> None:
        self.errors.append(EventError(self.index, _path_text((*self.base, *rel)), code, message))


def _context_prefixes(context: object) -> set[str]:
    out: set[str] = set()
    items = context if isinstance(context, list) else [context]
    for item in items:
        if isinstance(item, dict):
            for key, value in item.items():
                is_term = isinstance(key, str) and ":" not in key and not key.startswith("@")
                is_iri = isinstance(value, str) or (isinstance(value, dict) and "@id" in value)
                if is_term and is_iri:
                    out.add(key)
    return out


def _all_context_prefixes(node: object) -> set[str]:
    """Prefixes declared by any ``@context`` inside ``node`` (lenient about JSON-LD scoping)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            for key, value in cur.items():
                if key == "@context":
                    out |= _context_prefixes(value)
                else:
                    stack.append(value)
        elif isinstance(cur, list):
            stack.extend(cur)
    return out


def _declared_curie(text: str, prefixes: set[str]) -> bool:
    m = _CURIE.fullmatch(text)
    return m is not None and m[1] in prefixes


def _check_vocabulary(
    value: object,
    words: frozenset[str],
    forms: tuple[tuple[str, bool], ...],
    prefixes: set[str],
) -> str | None:
    """None if ``value`` is acceptable, else a reason."""
    if not isinstance(value, str):
        return None  # the schema reports the type
    if value in words:
        return None
    for prefix, fold in forms:
        head = value[: len(prefix)]
        if head == prefix or (fold and head.lower() == prefix.lower()):
            rest = value[len(prefix) :]
            return None if rest in words else "not a CBV 2.0 standard value"
    if value.lower().startswith(_CBV_NAMESPACES) or value.startswith("cbv:"):
        return "not a CBV 2.0 standard value"
    if _ABSOLUTE_URI.fullmatch(value):
        return None  # a user vocabulary URI
    m = _CURIE.fullmatch(value)
    if m is not None and m[1] not in ("http", "https", "urn"):
        return None if m[1] in prefixes else f"prefix {m[1]!r} not declared in @context"
    return "neither a CBV 2.0 standard value nor a user vocabulary URI"


def _check_keys(
    obj: object,
    allowed: frozenset[str],
    prefixes: set[str],
    rel: tuple[object, ...],
    out: _Collector,
) -> None:
    if not isinstance(obj, dict):
        return
    for key in obj:
        if not isinstance(key, str) or key in allowed or key.startswith("@"):
            continue
        if not _declared_curie(key, prefixes):
            m = _CURIE.fullmatch(key)
            why = (
                f"prefix {m[1]!r} not declared in @context"
                if m is not None
                else "must be prefix:name"
            )
            out.add(
                (*rel, key),
                "EXTENSION_WITHOUT_NAMESPACE",
                f"extension field {key!r}: {why}",
            )


def _check_extensions(
    event: dict[str, Any], kind: str, prefixes: set[str], out: _Collector
) -> None:
    _check_keys(event, EVENT_TYPES[kind], prefixes, (), out)
    ilmd = event.get("ilmd")
    if "ilmd" in EVENT_TYPES[kind]:
        _check_keys(ilmd, frozenset(), prefixes, ("ilmd",), out)
    for field in ("readPoint", "bizLocation"):
        _check_keys(event.get(field), _LOCATION_FIELDS, prefixes, (field,), out)
    _check_keys(
        event.get("errorDeclaration"),
        _ERROR_DECLARATION_FIELDS,
        prefixes,
        ("errorDeclaration",),
        out,
    )
    elements = event.get("sensorElementList")
    if isinstance(elements, list):
        for i, element in enumerate(elements):
            rel: tuple[object, ...] = ("sensorElementList", i)
            _check_keys(element, _SENSOR_ELEMENT_FIELDS, prefixes, rel, out)
            if not isinstance(element, dict):
                continue
            _check_keys(
                element.get("sensorMetadata"),
                _SENSOR_METADATA_FIELDS,
                prefixes,
                (*rel, "sensorMetadata"),
                out,
            )
            reports = element.get("sensorReport")
            if isinstance(reports, list):
                for j, report in enumerate(reports):
                    _check_keys(
                        report, _SENSOR_REPORT_FIELDS, prefixes, (*rel, "sensorReport", j), out
                    )


def _check_epc(value: object, rel: tuple[object, ...], out: _Collector) -> None:
    if not isinstance(value, str):
        return  # the schema reports the type
    try:
        normalise_epc(value)
    except ValidationError as exc:
        out.add(rel, "BAD_EPC", f"{_path_text(rel)}: not a valid GS1 EPC ({exc.code})")


def _check_epcs(event: dict[str, Any], out: _Collector) -> None:
    for field in _EPC_LIST_FIELDS:
        values = event.get(field)
        if isinstance(values, list):
            for i, value in enumerate(values):
                _check_epc(value, (field, i), out)
    if "parentID" in event:
        _check_epc(event["parentID"], ("parentID",), out)


def _check_times(event: dict[str, Any], out: _Collector) -> None:
    t = event.get("eventTime")
    if t is None:
        out.add(("eventTime",), "BAD_EVENT_TIME", "eventTime is missing")
    elif not isinstance(t, str) or not _is_date_time(t):
        out.add(("eventTime",), "BAD_EVENT_TIME", "eventTime is not an RFC 3339 date-time")
    z = event.get("eventTimeZoneOffset")
    if z is None:
        out.add(("eventTimeZoneOffset",), "BAD_TIME_ZONE_OFFSET", "eventTimeZoneOffset is missing")
    elif not isinstance(z, str) or _TZ_OFFSET.fullmatch(z) is None or not _offset_ok(z):
        out.add(
            ("eventTimeZoneOffset",),
            "BAD_TIME_ZONE_OFFSET",
            "eventTimeZoneOffset is not +hh:mm / -hh:mm within -12:00..+14:00",
        )


def _word(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_event(event: object, doc_prefixes: set[str], out: _Collector) -> None:
    if not isinstance(event, dict):
        return  # the schema reports it
    kind = event.get("type")
    if kind not in EVENT_TYPES:
        shown = repr(kind) if isinstance(kind, str) and len(kind) <= 64 else "(missing)"
        out.add(("type",), "UNSUPPORTED_EVENT_TYPE", f"type {shown} is not an EPCIS 2.0 event type")
        return
    assert isinstance(kind, str)
    prefixes = doc_prefixes | _all_context_prefixes(event)
    _check_times(event, out)
    reason = _check_vocabulary(event.get("bizStep"), CBV_BIZSTEPS, _BIZSTEP_FORMS, prefixes)
    if reason is not None:
        out.add(("bizStep",), "UNKNOWN_BIZSTEP", f"bizStep {_word(event['bizStep'])}: {reason}")
    reason = _check_vocabulary(
        event.get("disposition"), CBV_DISPOSITIONS, _DISPOSITION_FORMS, prefixes
    )
    if reason is not None:
        out.add(
            ("disposition",),
            "UNKNOWN_DISPOSITION",
            f"disposition {_word(event['disposition'])}: {reason}",
        )
    persistent = event.get("persistentDisposition")
    if isinstance(persistent, dict):
        for op in ("set", "unset"):
            values = persistent.get(op)
            if not isinstance(values, list):
                continue
            for i, value in enumerate(values):
                reason = _check_vocabulary(value, CBV_DISPOSITIONS, _DISPOSITION_FORMS, prefixes)
                if reason is not None:
                    out.add(
                        ("persistentDisposition", op, i),
                        "UNKNOWN_DISPOSITION",
                        f"persistentDisposition.{op} {_word(value)}: {reason}",
                    )
    _check_extensions(event, kind, prefixes, out)
    _check_epcs(event, out)


# --------------------------------------------------------------------------------------------
# Entry points


def _index_of(path: tuple[object, ...]) -> int | None:
    if len(path) >= 3 and path[0] == "epcisBody" and path[1] == "eventList":
        third = path[2]
        return third if isinstance(third, int) else None
    return None


def _collect(doc: object) -> tuple[list[EventError], list[dict[str, Any]]]:
    errors: list[EventError] = []
    if not isinstance(doc, dict):
        raise EpcisRejected([EventError(None, "", "SCHEMA", "document must be a JSON object")])
    kind = doc.get("type")
    if kind == "EPCISQueryDocument":
        errors.append(
            EventError(
                None,
                "type",
                "NOT_A_CAPTURE_DOCUMENT",
                "an EPCISQueryDocument is not a capture document",
            )
        )
        return errors, []
    bare = kind in EVENT_TYPES
    for path, message in _schema_errors(doc, ()):
        errors.append(EventError(_index_of(path), _path_text(path), "SCHEMA", message))
    doc_prefixes = set(_STANDARD_PREFIXES) | _context_prefixes(doc.get("@context"))
    events: list[dict[str, Any]] = []
    if bare:
        col = _Collector(None, ())
        _check_event(doc, doc_prefixes, col)
        errors.extend(col.errors)
        events = [doc]
    elif kind == "EPCISDocument":
        body = doc.get("epcisBody")
        event_list = body.get("eventList") if isinstance(body, dict) else None
        if isinstance(event_list, list):
            for i, event in enumerate(event_list):
                col = _Collector(i, ("epcisBody", "eventList", i))
                _check_event(event, doc_prefixes, col)
                errors.extend(col.errors)
            events = [e for e in event_list if isinstance(e, dict)]
    elif not errors:
        errors.append(
            EventError(
                None,
                "type",
                "NOT_A_CAPTURE_DOCUMENT",
                "type must be EPCISDocument or an EPCIS 2.0 event type",
            )
        )
    return errors, events


IGNORE_FIELDS_UNSUPPORTED = "IGNORE_FIELDS_UNSUPPORTED"


def _declares_ignore_fields(holder: object) -> str | None:
    if isinstance(holder, dict):
        for key in holder:
            if isinstance(key, str) and (key == "ignoreFields" or key.endswith(":ignoreFields")):
                return key
    return None


def refuse_ignore_fields(doc: object) -> None:
    """Refuse a document with an ``ignoreFields`` member (any prefix, or none) at document level
    or in ``epcisBody.queryResults``: raise ``ValidationError`` (``IGNORE_FIELDS_UNSUPPORTED``).

    Every node re-hashes every field of every event, so an event hash that leaves fields out
    could not be checked by the other nodes (and would let a submitter choose which fields
    count). Covers every key :func:`careledger.supply.event_hash.document_event_hash_ids`
    could honour.
    """
    body = doc.get("epcisBody") if isinstance(doc, dict) else None
    results = body.get("queryResults") if isinstance(body, dict) else None
    for where, holder in (("", doc), ("epcisBody.queryResults.", results)):
        key = _declares_ignore_fields(holder)
        if key is not None:
            shown = key if len(key) <= 64 else "…" + key[-24:]
            raise ValidationError(
                f"'{where}{shown}' is not supported: this node hashes every field of every EPCIS "
                "event, as every other node re-hashes it, so a hash that leaves fields out could "
                "not be checked by peers; send the document without it",
                code=IGNORE_FIELDS_UNSUPPORTED,
            )


def validate_document(doc: object) -> list[dict[str, Any]]:
    """Validate an EPCIS 2.0 capture document (an ``EPCISDocument`` or one bare event).

    Returns the events (``epcisBody.eventList``, or ``[doc]`` for a bare event). Raises
    :class:`EpcisRejected` listing every schema and semantic error otherwise.
    """
    errors, events = _collect(doc)
    if errors:
        raise EpcisRejected(errors)
    return events


def validate_event(event: object) -> None:
    """Validate one bare EPCIS 2.0 event (it must carry its own ``@context``)."""
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        raise EpcisRejected(
            [EventError(None, "type", "UNSUPPORTED_EVENT_TYPE", "not an EPCIS 2.0 event")]
        )
    validate_document(event)
