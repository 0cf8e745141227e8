"""FHIR R4 search over resources as JSON: parameters, modifiers, prefixes, sorting. Pure.

Which parameters a type has, their types and the elements they look at come from HL7's own R4
definitions (``data/search-parameters-r4.json``), compiled by :mod:`fhirpath_lite`: one place
for every type, so the CapabilityStatement, the parser and the matcher cannot disagree.

The rule that matters most: a search never answers with a filter silently dropped. A parameter,
modifier, prefix or chain this module does not evaluate is refused with an OperationOutcome
naming it, unless the client asked for ``Prefer: handling=lenient``; then it is ignored and the
answer says so (``SearchRequest.ignored``).

Semantics follow R4 (http://hl7.org/fhir/R4/search.html): dates are intervals in UTC with the
prefixes' interval rules; numbers and quantities carry the precision of how they are written;
strings match from the start, ignoring case and accents; tokens match ``system|code``; each
repeated parameter is AND, each comma-separated value OR.
"""

from __future__ import annotations

import json
import re
import unicodedata
from calendar import monthrange
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources as package_files
from typing import Any

from careledger.fhir.fhirpath_lite import Path, Typed, Unsupported, compile_path, compile_union
from careledger.fhir.outcome import FhirError, Issue

MAX_COUNT = 1_000
DEFAULT_COUNT = 50
DATE_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
NUMBER_PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "ap"})
MODIFIERS = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "text", "of-type", "missing"}),
    "reference": frozenset({"missing", "identifier"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"missing"}),
    "composite": frozenset({"missing"}),
}
SUMMARY = frozenset({"true", "false", "text", "data", "count"})
TOTAL = frozenset({"none", "estimate", "accurate"})
# Result and format parameters this module (or the route) handles; everything else starting with
# "_" that is not a search parameter of the type is refused.
CONTROL = frozenset(
    {
        "_sort",
        "_count",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_format",
        "_pretty",
        "_offset",
        "_at",
    }
)
ESCAPED = re.compile(r"\\([,$|\\])")
_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_WHOLE = re.compile(r"[0-9]{1,12}")  # ASCII digits only ("²".isdigit() is True)
MIN_TIME = -(2**62)
MAX_TIME = 2**62


# -- the parameters of each type ------------------------------------------------------------


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    paths: tuple[Path, ...]
    targets: frozenset[str] = frozenset()
    components: tuple[tuple[SearchParam, Path], ...] = ()
    definition: str = ""  # the id of HL7's SearchParameter

    def values(self, resource: Mapping[str, Any]) -> list[Typed]:
        return [v for path in self.paths for v in path.evaluate(resource)]


@cache
def _definitions() -> tuple[dict[str, Any], ...]:
    text = (
        package_files.files("careledger.fhir")
        .joinpath("data/search-parameters-r4.json")
        .read_text(encoding="utf-8")
    )
    return tuple(json.loads(text)["parameters"])


@cache
def _by_id() -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in _definitions()}


LEDGER_PATIENT = "https://careledger.dev/fhir/SearchParameter/ledger-patient"
"""This server's ``patient`` parameter of the types held as a patient's record that R4 gives no
parameter naming their patient (a Binary, a Slot, a stored Bundle): the patient whose record
the ledger says it is. It is answered from the ledger's index of that patient's records, given
once; it has no element to match, so it is not an _include."""


@cache
def parameters(resource_type: str) -> dict[str, SearchParam]:
    """The search parameters of ``resource_type`` this module evaluates, by code."""
    from careledger.fhir.types import RECORD_TYPES, patient_search

    out: dict[str, SearchParam] = {}
    for definition in _definitions():
        bases = definition["base"]
        if resource_type not in bases and not {"Resource", "DomainResource"} & set(bases):
            continue
        param = _compile(definition, resource_type)
        if param is not None:
            out[param.code] = param
    named = patient_search(resource_type)
    if resource_type in RECORD_TYPES - {"Patient"} and named not in out:
        out[named] = SearchParam(named, "reference", (), frozenset({"Patient"}), (),
                                 LEDGER_PATIENT)  # fmt: skip
    return out


def _compile(definition: Mapping[str, Any], resource_type: str) -> SearchParam | None:
    kind = definition["type"]
    expression = definition.get("expression")
    if kind not in MODIFIERS or not expression:
        return None
    try:
        paths = tuple(compile_union(expression, resource_type))
        components: list[tuple[SearchParam, Path]] = []
        for component in definition.get("component", ()):
            inner = _by_id().get(component["definition"])
            if inner is None or inner["type"] not in ("token", "quantity", "date", "string"):
                return None
            part = SearchParam(inner["code"], inner["type"], ())
            components.append((part, compile_path(f"Element.{component['expression']}")))
    except Unsupported:
        return None
    if not paths:
        return None
    return SearchParam(
        definition["code"],
        kind,
        paths,
        frozenset(definition.get("target", ())),
        tuple(components),
        definition["id"],
    )


# -- the request ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    prefix: str
    text: str


@dataclass(frozen=True)
class Criterion:
    param: SearchParam
    name: str  # as written, with its modifier
    modifier: str | None
    values: tuple[Value, ...]  # OR


@dataclass(frozen=True)
class Include:
    source: str
    param: SearchParam
    target: str | None
    iterate: bool
    text: str


@dataclass
class SearchRequest:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[tuple[SearchParam, bool]] = field(default_factory=list)  # (param, descending)
    count: int = DEFAULT_COUNT
    offset: int = 0
    at: int | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: tuple[str, ...] = ()
    total: str = "accurate"
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (parameter, why)
    kept: list[tuple[str, str]] = field(default_factory=list)  # what the self link repeats


def parse_search(
    resource_type: str,
    pairs: Sequence[tuple[str, str]],
    *,
    lenient: bool = False,
    max_count: int = MAX_COUNT,
) -> SearchRequest:
    """The request ``pairs`` (query parameters, in order) ask for; FhirError (400) naming every
    parameter that cannot be honoured, unless ``lenient``."""
    request = SearchRequest(resource_type)
    known = parameters(resource_type)
    problems: list[tuple[str, str]] = []
    for name, raw in pairs:
        try:
            _take(request, known, name, raw, max_count)
        except _Refused as exc:
            problems.append((name, exc.why))
    if problems and not lenient:
        raise FhirError(
            [Issue("error", "not-supported", f"{n}: {why}", (n,)) for n, why in problems],
            code="UNSUPPORTED_SEARCH",
        )
    request.ignored = problems
    return request


class _Refused(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _take(
    request: SearchRequest, known: Mapping[str, SearchParam], name: str, raw: str, max_count: int
) -> None:
    base, _, modifier = name.partition(":")
    if base in CONTROL:
        _control(request, known, name, base, modifier, raw, max_count)
        if base not in ("_offset", "_at"):
            request.kept.append((name, raw))
        return
    if "." in base:
        raise _Refused("chained parameters are not supported")
    if base.startswith("_has"):
        raise _Refused("reverse chaining (_has) is not supported")
    param = known.get(base)
    if param is None:
        raise _Refused(f"{request.resource_type} has no search parameter {base!r} here")
    mod = modifier or None
    if mod is not None and mod not in MODIFIERS[param.type] and not _type_modifier(param, mod):
        raise _Refused(f"the modifier :{mod} is not supported on {param.type} parameters")
    if mod == "of-type" and not _identifier_param(param):
        raise _Refused(":of-type applies to identifiers")
    values = tuple(_parse_value(param, mod, v) for v in _split(raw, ","))
    if not values:
        raise _Refused("an empty value")
    request.criteria.append(Criterion(param, name, mod, values))
    request.kept.append((name, raw))


def _type_modifier(param: SearchParam, modifier: str) -> bool:
    """``subject:Patient=123``: a reference parameter restricted to one of its target types."""
    if param.type != "reference" or not re.fullmatch(r"[A-Z][A-Za-z]+", modifier):
        return False
    return not param.targets or modifier in param.targets


def _identifier_param(param: SearchParam) -> bool:
    return param.code == "identifier" or param.code.endswith("-identifier")


def _control(
    request: SearchRequest,
    known: Mapping[str, SearchParam],
    name: str,
    base: str,
    modifier: str,
    raw: str,
    max_count: int,
) -> None:
    if modifier and base not in ("_include", "_revinclude"):
        raise _Refused(f"{base} takes no modifier")
    if base == "_count":
        if not _WHOLE.fullmatch(raw):
            raise _Refused("_count is a whole number")
        request.count = min(int(raw), max_count)  # capped, as R4 allows, not refused
    elif base == "_offset":
        if not _WHOLE.fullmatch(raw) or int(raw) > 10**9:
            raise _Refused("_offset is a whole number")
        request.offset = int(raw)
    elif base == "_at":
        if not _WHOLE.fullmatch(raw) or int(raw) > 2**62:
            raise _Refused("_at is a ledger height")
        request.at = int(raw)
    elif base == "_sort":
        for key in _split(raw, ","):
            descending = key.startswith("-")
            code = key.removeprefix("-")
            param = known.get(code)
            if param is None or param.type == "composite":
                raise _Refused(f"cannot sort by {code!r}")
            request.sort.append((param, descending))
    elif base == "_summary":
        if raw not in SUMMARY:
            raise _Refused(f"_summary is one of {sorted(SUMMARY)}")
        request.summary = raw
    elif base == "_elements":
        names = tuple(e.strip() for e in raw.split(",") if e.strip())
        if not names or not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", n) for n in names):
            raise _Refused("_elements lists element names")
        request.elements = names
    elif base == "_total":
        if raw not in TOTAL:
            raise _Refused(f"_total is one of {sorted(TOTAL)}")
        request.total = raw
    elif base in ("_include", "_revinclude"):
        if modifier not in ("", "iterate"):
            raise _Refused(f"{base}:{modifier} is not supported")
        include = _include(request.resource_type, raw, modifier == "iterate", base == "_include")
        (request.includes if base == "_include" else request.revincludes).append(include)
    elif base == "_format" and "json" not in raw:
        raise _Refused("only JSON is served (application/fhir+json)")
    # _pretty: formatting only


def _include(resource_type: str, raw: str, iterate: bool, forward: bool) -> Include:
    parts = raw.split(":")
    if raw == "*" or len(parts) not in (2, 3):
        raise _Refused("an include is Type:parameter or Type:parameter:TargetType")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if forward and source != resource_type and not iterate:
        raise _Refused(f"_include starts from {resource_type} (or use _include:iterate)")
    param = parameters(source).get(code) if re.fullmatch(r"[A-Z][A-Za-z]+", source) else None
    if param is None or param.type != "reference" or not param.paths:
        raise _Refused(f"{source} has no reference parameter {code!r} to include by")
    if target is not None and param.targets and target not in param.targets:
        raise _Refused(f"{source}:{code} does not refer to {target}")
    return Include(source, param, target, iterate, raw)


def _split(raw: str, sep: str) -> list[str]:
    """Split on ``sep`` unless escaped with a backslash; unescape the parts."""
    parts, current, escaped = [], [], False
    for ch in raw:
        if escaped:
            current.append(ch if ch in ",$|\\" else "\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p != ""]


def _parse_value(param: SearchParam, modifier: str | None, raw: str) -> Value:
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _Refused(":missing is true or false")
        return Value("", raw)
    if param.type == "date":
        prefix, text = _prefixed(raw, DATE_PREFIXES)
        if parse_date(text) is None:
            raise _Refused("the value is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or an instant)")
        return Value(prefix, text)
    if param.type in ("number", "quantity"):
        prefix, text = _prefixed(raw, NUMBER_PREFIXES)
        if raw[:2] in ("sa", "eb"):
            raise _Refused(f"the prefix {raw[:2]} applies to dates only")
        number = text.split("|", 1)[0]
        if _decimal(number) is None:
            raise _Refused("the value is not a number")
        if param.type == "number" and "|" in text:
            raise _Refused("a number has no unit")
        return Value(prefix, text)
    if param.type == "composite":
        parts = _split(raw, "$")
        if len(parts) != len(param.components):
            raise _Refused(f"{param.code} takes {len(param.components)} values joined by $")
        for (component, _), part in zip(param.components, parts, strict=True):
            _parse_value(component, None, part)
        return Value("", raw)
    return Value("", raw)  # tokens, strings, references, uris: "ge" in a code is no prefix


def _prefixed(raw: str, allowed: frozenset[str]) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2].isalpha() and raw[:2].islower():
        if raw[:2] not in allowed:
            raise _Refused(f"the prefix {raw[:2]!r} is not supported here")
        return raw[:2], raw[2:]
    return "eq", raw


# -- matching -------------------------------------------------------------------------------


def matches(
    resource: Mapping[str, Any], request: SearchRequest, *, now: datetime, base_url: str = ""
) -> bool:
    """Whether ``resource`` meets every criterion of ``request`` (AND of ORs)."""
    return all(_criterion(resource, c, now=now, base_url=base_url) for c in request.criteria)


def _criterion(
    resource: Mapping[str, Any], criterion: Criterion, *, now: datetime, base_url: str
) -> bool:
    found = criterion.param.values(resource)
    if criterion.modifier == "missing":
        missing = criterion.values[0].text == "true"
        return (not found) == missing
    if criterion.modifier == "not":
        return not any(
            _one(criterion.param, None, v, found, now=now, base_url=base_url)
            for v in criterion.values
        )
    return any(
        _one(criterion.param, criterion.modifier, v, found, now=now, base_url=base_url)
        for v in criterion.values
    )


def _one(
    param: SearchParam,
    modifier: str | None,
    value: Value,
    found: Sequence[Typed],
    *,
    now: datetime,
    base_url: str,
) -> bool:
    kind = param.type
    if kind == "date":
        wanted = parse_date(value.text)
        assert wanted is not None
        return any(_date_ok(r, wanted, value.prefix, now) for t in found for r in date_ranges(t))
    if kind == "token":
        return _token_ok(found, modifier, value.text)
    if kind == "string":
        return _string_ok(found, modifier, value.text)
    if kind == "reference":
        return _reference_ok(param, found, modifier, value.text, base_url)
    if kind in ("number", "quantity"):
        return _number_ok(found, value, quantity=kind == "quantity")
    if kind == "uri":
        return any(isinstance(t.value, str) and t.value == value.text for t in found)
    if kind == "composite":
        parts = _split(value.text, "$")
        for element in found:
            pairs = zip(param.components, parts, strict=True)
            if all(
                _one(
                    comp,
                    None,
                    _component_value(comp, part),
                    path.evaluate_from(element.value),
                    now=now,
                    base_url=base_url,
                )
                for (comp, path), part in pairs
            ):
                return True
        return False
    return False


def _component_value(param: SearchParam, raw: str) -> Value:
    if param.type in ("date",):
        prefix, text = _prefixed(raw, DATE_PREFIXES)
        return Value(prefix, text)
    if param.type in ("quantity", "number"):
        prefix, text = _prefixed(raw, NUMBER_PREFIXES)
        return Value(prefix, text)
    return Value("", raw)


# dates


def parse_date(text: str) -> tuple[int, int] | None:
    """[start, end) in microseconds since the epoch, UTC, by the precision written.

    Integer arithmetic on day ordinals, so every date R4 allows works, 0001 and 9999 included
    (9999-12-31 is a common "no end"), in any time zone."""
    m = _DATE.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, zone = m.groups()
    y, mo, d = int(year), int(month or 1), int(day or 1)
    try:
        first = date(y, mo, d)
    except ValueError:
        return None
    h, mi, sec = int(hour or 0), int(minute or 0), int(second or 0)
    if h > 23 or mi > 59 or sec > 59:
        return None
    begin = (first.toordinal() - _EPOCH_DAY) * _DAY + ((h * 60 + mi) * 60 + sec) * 1_000_000
    if hour is not None and zone is not None and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        begin -= sign * (int(zone[1:3]) * 60 + int(zone[4:6])) * 60_000_000
    if frac is not None:
        begin += int(frac[:6].ljust(6, "0"))
        return begin, begin + 10 ** max(0, 6 - len(frac))
    if second is not None:
        return begin, begin + 1_000_000
    if minute is not None:
        return begin, begin + 60_000_000
    if day is not None:
        return begin, begin + _DAY
    if month is not None:
        last = date(y, mo, monthrange(y, mo)[1])
        return begin, (last.toordinal() + 1 - _EPOCH_DAY) * _DAY
    return begin, (date(y, 12, 31).toordinal() + 1 - _EPOCH_DAY) * _DAY


_DAY = 86_400_000_000
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def date_ranges(found: Typed) -> Iterator[tuple[int, int]]:
    """The intervals a date-bearing element covers (date, dateTime, instant, Period, Timing)."""
    value = found.value
    if isinstance(value, str):
        parsed = parse_date(value)
        if parsed is not None:
            yield parsed
    elif isinstance(value, dict):
        if "start" in value or "end" in value:
            start = parse_date(value["start"]) if isinstance(value.get("start"), str) else None
            end = parse_date(value["end"]) if isinstance(value.get("end"), str) else None
            yield (start[0] if start else MIN_TIME, end[1] if end else MAX_TIME)
        for event in value.get("event", ()) if isinstance(value.get("event"), list) else ():
            if isinstance(event, str):
                parsed = parse_date(event)
                if parsed is not None:
                    yield parsed


def _date_ok(have: tuple[int, int], want: tuple[int, int], prefix: str, now: datetime) -> bool:
    rs, re_ = have
    ps, pe = want
    within = ps <= rs and re_ <= pe
    if prefix == "eq":
        return within
    if prefix == "ne":
        return not within
    if prefix == "gt":
        return re_ > pe
    if prefix == "lt":
        return rs < ps
    if prefix == "ge":
        return re_ > pe or within
    if prefix == "le":
        return rs < ps or within
    if prefix == "sa":
        return rs >= pe
    if prefix == "eb":
        return re_ <= ps
    # ap: overlaps the value widened by a tenth of its distance from now (at least a day)
    gap = max(abs(_micros(now) - ps) // 10, 86_400_000_000)
    return rs < pe + gap and re_ > ps - gap


# tokens


def _tokens(found: Iterable[Typed]) -> Iterator[tuple[str | None, str, Any]]:
    """(system, code, the element) of every coded value."""
    for item in found:
        value = item.value
        if isinstance(value, bool):
            yield None, "true" if value else "false", value
        elif isinstance(value, str):
            yield None, value, value
        elif isinstance(value, dict):
            if isinstance(value.get("coding"), list):
                for coding in value["coding"]:
                    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                        yield _str(coding.get("system")), coding["code"], value
            elif isinstance(value.get("code"), str):
                yield _str(value.get("system")), value["code"], value
            elif isinstance(value.get("value"), str):  # Identifier, ContactPoint
                yield _str(value.get("system")), value["value"], value


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _token_ok(found: Sequence[Typed], modifier: str | None, raw: str) -> bool:
    if modifier == "text":
        wanted = normalise(raw)
        return any(_text_starts(t, wanted) for t in _token_texts(found))
    if modifier == "of-type":
        parts = _split(raw, "|")
        if len(parts) != 3:
            return False
        system, code, value = parts
        for item in found:
            ident = item.value
            if not isinstance(ident, dict) or ident.get("value") != value:
                continue
            codings = (ident.get("type") or {}).get("coding") or []
            if any(c.get("system") == system and c.get("code") == code for c in codings):
                return True
        return False
    if "|" in raw:
        system, _, code = raw.partition("|")
        for have_system, have_code, _ in _tokens(found):
            if system == "" and have_system is None and have_code == code:
                return True
            if system and have_system == system and (code == "" or have_code == code):
                return True
        return False
    return any(code == raw for _, code, _ in _tokens(found))


def _token_texts(found: Iterable[Typed]) -> Iterator[str]:
    for item in found:
        value = item.value
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            if isinstance(value.get("text"), str):
                yield value["text"]
            if isinstance(value.get("display"), str):
                yield value["display"]
            for coding in value.get("coding", ()) if isinstance(value.get("coding"), list) else ():
                if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                    yield coding["display"]
            kind = value.get("type")
            if isinstance(kind, dict) and isinstance(kind.get("text"), str):
                yield kind["text"]


# strings


def normalise(text: str) -> str:
    """Case- and accent-insensitive form: NFKD without combining marks, case-folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def strings(found: Iterable[Typed]) -> Iterator[str]:
    for item in found:
        value = item.value
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for part in (*_NAME_PARTS, *_ADDRESS_PARTS):
                got = value.get(part)
                if isinstance(got, str):
                    yield got
                elif isinstance(got, list):
                    yield from (g for g in got if isinstance(g, str))


def _text_starts(have: str, wanted: str) -> bool:
    text = normalise(have)
    return text.startswith(wanted) or any(w.startswith(wanted) for w in text.split())


def _string_ok(found: Sequence[Typed], modifier: str | None, raw: str) -> bool:
    if modifier == "exact":
        return any(s == raw for s in strings(found))
    wanted = normalise(raw)
    if modifier == "contains":
        return any(wanted in normalise(s) for s in strings(found))
    return any(normalise(s).startswith(wanted) for s in strings(found))


# references


def _reference_ok(
    param: SearchParam, found: Sequence[Typed], modifier: str | None, raw: str, base_url: str
) -> bool:
    if modifier == "identifier":
        identifiers = [
            Typed(v.value["identifier"]) for v in found
            if isinstance(v.value, dict) and isinstance(v.value.get("identifier"), dict)
        ]  # fmt: skip
        return _token_ok(identifiers, None, raw)
    wanted = _local(raw, base_url)
    type_filter = modifier  # subject:Patient=123
    for item in found:
        value = item.value
        ref = value.get("reference") if isinstance(value, dict) else value
        if not isinstance(ref, str):
            continue
        have = _local(ref, base_url)
        if "/" in wanted:
            if have == wanted:
                return True
            continue
        kind, _, ident = have.rpartition("/")
        kind = kind.rsplit("/", 1)[-1]
        if ident != wanted:
            continue
        if type_filter is not None and kind != type_filter:
            continue
        if type_filter is None and param.targets and kind not in param.targets:
            continue
        return True
    return False


def _local(ref: str, base_url: str) -> str:
    ref = ref.split("/_history/", 1)[0]
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        return ref[len(base_url.rstrip("/")) + 1 :]
    return ref


def references(found: Iterable[Typed], base_url: str) -> Iterator[tuple[str, str]]:
    """(type, id) of the local references among ``found`` (for _include)."""
    for item in found:
        value = item.value
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str):
            local = _local(ref, base_url)
            parts = local.split("/")
            if len(parts) == 2 and parts[0][:1].isupper():
                yield parts[0], parts[1]


# numbers and quantities


def _decimal(text: str) -> Decimal | None:
    """A finite decimal of sane magnitude (1e999999999 is no lab value, and would make
    Decimal arithmetic raise), else None."""
    if len(text) > 64:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int) or not -64 <= exponent + len(number.as_tuple().digits) <= 64:
        return None
    return number


def _number_ok(found: Sequence[Typed], value: Value, *, quantity: bool) -> bool:
    pieces = value.text.split("|")
    number_text = pieces[0]
    system = pieces[1] if len(pieces) > 1 else ""
    code = pieces[2] if len(pieces) > 2 else ""
    wanted = _decimal(number_text)
    if wanted is None:
        return False
    exponent = wanted.as_tuple().exponent
    half = Decimal(5).scaleb((exponent if isinstance(exponent, int) else 0) - 1)
    for item in found:
        have = item.value
        if quantity:
            if not isinstance(have, dict):
                continue
            if system and have.get("system") != system:
                continue
            if code and code not in (have.get("code"), have.get("unit")):
                continue
            amount = have.get("value")
        else:
            amount = have
        if isinstance(amount, bool) or not isinstance(amount, int | float | str):
            continue
        got = _decimal(str(amount))
        if got is not None and _compare(got, wanted, half, value.prefix):
            return True
    return False


def _compare(have: Decimal, wanted: Decimal, half: Decimal, prefix: str) -> bool:
    if prefix == "eq":
        return wanted - half <= have < wanted + half
    if prefix == "ne":
        return not wanted - half <= have < wanted + half
    if prefix == "gt":
        return have > wanted
    if prefix == "lt":
        return have < wanted
    if prefix == "ge":
        return have >= wanted
    if prefix == "le":
        return have <= wanted
    return abs(have - wanted) <= abs(wanted) / 10  # ap


# -- sorting --------------------------------------------------------------------------------


def sort_key(resource: Mapping[str, Any], param: SearchParam, descending: bool) -> tuple[int, Any]:
    """A key that puts resources without a value last, whichever the direction, for a stable
    ``sort(key=..., reverse=descending)``."""
    found = param.values(resource)
    keys: list[Any]
    if param.type == "date":
        ranges = [r for t in found for r in date_ranges(t)]
        keys = [r[1] if descending else r[0] for r in ranges]
    elif param.type in ("number", "quantity"):
        keys = []
        for t in found:
            amount = t.value.get("value") if isinstance(t.value, dict) else t.value
            got = _decimal(str(amount)) if isinstance(amount, int | float | str) else None
            if got is not None and not isinstance(amount, bool):
                keys.append(got)
    elif param.type == "token":
        keys = [code for _, code, _ in _tokens(found)]
    elif param.type == "reference":
        keys = [v.value.get("reference") for v in found if isinstance(v.value, dict)]
        keys = [k for k in keys if isinstance(k, str)]
    else:
        keys = [normalise(s) for s in strings(found)]
    if not keys:
        return (-1 if descending else 1, 0)  # last either way (a descending sort reverses)
    return (0, max(keys) if descending else min(keys))


# -- what each entry shows (_summary, _elements) ---------------------------------------------

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """The elements R4 marks as summary for a type (from the R4B models, as validation uses)."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return _ALWAYS
    names = {
        (info.alias or name).lstrip("_")
        for name, info in model.model_fields.items()
        if isinstance(info.json_schema_extra, dict)
        and info.json_schema_extra.get("summary_element_property")
    }
    return frozenset(names) | _ALWAYS


@cache
def mandatory_elements(resource_type: str) -> frozenset[str]:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except KeyError:
        return frozenset()
    return frozenset((i.alias or n) for n, i in model.model_fields.items() if i.is_required())


def shape(
    resource: Mapping[str, Any], summary: str | None, elements: Sequence[str]
) -> dict[str, Any]:
    """The resource as ``_summary`` / ``_elements`` ask; marked SUBSETTED when anything is left
    out, as R4 requires (a subsetted resource must not be taken for the whole)."""
    kind = str(resource.get("resourceType", ""))
    keep: frozenset[str] | None = None
    if summary == "true":
        keep = summary_elements(kind)
    elif summary == "text":
        keep = _ALWAYS | {"text"} | mandatory_elements(kind)
    elif summary == "data":
        keep = frozenset(k for k in resource if k != "text")
    elif elements:
        keep = _ALWAYS | set(elements) | mandatory_elements(kind)
    if keep is None:
        return dict(resource)
    out = {k: v for k, v in resource.items() if k in keep or _choice_of(k, keep)}
    if len(out) < len(resource):
        meta = dict(out.get("meta") or {})
        meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
        out["meta"] = meta
    return out


def _choice_of(key: str, keep: frozenset[str]) -> bool:
    """``effectiveDateTime`` is kept when ``effective`` (or it) is asked for."""
    return any(key.startswith(k) and len(key) > len(k) and key[len(k)].isupper() for k in keep)
