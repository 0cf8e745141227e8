"""Search terms of a resource, and which terms a search needs, for a blind index. Pure.

A custodian keeps no clear-text index of codes, names, dates or identifiers (ADR 0007, 0014):
each term below is turned into a keyed HMAC by the vault (``careledger.vault.blind_index``)
before it touches the disk. This module only says which terms a resource has and which a
search asks for, so that the node decrypts the candidates a search may match, not every record.

Terms are exact for tokens (``system|code``, ``|code``, ``code``, ``system|``), references
(``Type/id``, ``id``), URIs, ``:exact`` strings and string prefixes up to ``PREFIX`` characters;
dates are indexed by month (a record whose date spans more than ``MAX_MONTHS`` months, or is
open-ended, carries a "wide" term instead and is always a candidate). A plan is ``exact`` when
its terms alone decide the answer (no date, no longer prefix, nothing left to refine), so that a
page can be cut without decrypting anything but the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from careledger.fhir.search import (
    Criterion,
    SearchParam,
    SearchRequest,
    date_ranges,
    normalise,
    parameters,
    parse_date,
    strings,
)

PREFIX = 8
MAX_MONTHS = 36
INDEXED = frozenset({"token", "reference", "string", "uri", "date"})


def index_terms(resource: Mapping[str, Any]) -> set[str]:
    """Every term ``resource`` can be found by."""
    kind = str(resource.get("resourceType", ""))
    terms: set[str] = set()
    for code, param in parameters(kind).items():
        if param.type not in INDEXED or code in ("_id", "_lastUpdated"):
            continue
        found = param.values(resource)
        if not found:
            continue
        head = f"{kind}.{code}"
        if param.type == "token":
            for system, value in _codes(found):
                terms.add(f"{head}={value}")
                terms.add(f"{head}={system or ''}|{value}")
                if system:
                    terms.add(f"{head}={system}|")
        elif param.type == "reference":
            for ref in _refs(found):
                terms.add(f"{head}={ref}")
                terms.add(f"{head}=id:{ref.rsplit('/', 1)[-1]}")
        elif param.type == "uri":
            terms.update(f"{head}={v.value}" for v in found if isinstance(v.value, str))
        elif param.type == "string":
            for text in strings(found):
                terms.add(f"{head}:exact={text}")
                folded = normalise(text)
                terms.update(f"{head}^{folded[:n]}" for n in range(1, min(len(folded), PREFIX) + 1))
        else:  # date
            for start, end in (r for v in found for r in date_ranges(v)):
                terms.update(f"{head}@{m}" for m in _months(start, end))
    return terms


def _codes(found: Iterable[Any]) -> Iterable[tuple[str | None, str]]:
    from careledger.fhir.search import _tokens

    return ((system, code) for system, code, _ in _tokens(found))


def _refs(found: Iterable[Any]) -> Iterable[str]:
    for item in found:
        value = item.value
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str) and not ref.startswith(("#", "urn:")):
            parts = ref.split("/_history/", 1)[0].split("/")
            if len(parts) >= 2:
                yield f"{parts[-2]}/{parts[-1]}"


def _months(start: int, end: int) -> list[str]:
    """Month buckets of [start, end) in microseconds, or ["wide"] when there are too many (or
    the interval leaves the calendar: open ends, a time zone past 9999-12-31)."""
    first_day = start // _DAY + _EPOCH_DAY
    last_day = (end - 1) // _DAY + _EPOCH_DAY
    if not 1 <= first_day <= last_day <= date.max.toordinal():
        return ["wide"]
    first, last = date.fromordinal(first_day), date.fromordinal(last_day)
    count = (last.year - first.year) * 12 + last.month - first.month + 1
    if count > MAX_MONTHS:
        return ["wide"]
    out = []
    year, month = first.year, first.month
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


_DAY = 86_400_000_000
_EPOCH_DAY = date(1970, 1, 1).toordinal()


@dataclass(frozen=True)
class Plan:
    """AND of OR-groups of terms; ``exact``: the groups decide the answer with nothing left to
    check on decrypted resources."""

    groups: tuple[tuple[str, ...], ...]
    exact: bool


def plan(request: SearchRequest, *, base_url: str = "") -> Plan:
    """The terms that narrow ``request`` (criteria that cannot use the index are refined)."""
    groups: list[tuple[str, ...]] = []
    exact = True
    for criterion in request.criteria:
        group, precise = _criterion_terms(request.resource_type, criterion, base_url)
        if group is None:
            exact = False
            continue
        groups.append(group)
        exact = exact and precise
    return Plan(tuple(groups), exact and not request.sort)


def _criterion_terms(
    kind: str, criterion: Criterion, base_url: str
) -> tuple[tuple[str, ...] | None, bool]:
    param: SearchParam = criterion.param
    head = f"{kind}.{param.code}"
    if param.type not in INDEXED or param.code in ("_id", "_lastUpdated"):
        return None, False
    modifier = criterion.modifier
    terms: list[str] = []
    precise = True
    for value in criterion.values:
        text = value.text
        if param.type == "token":
            if modifier is not None:
                return None, False
            terms.append(f"{head}={text}")
        elif param.type == "reference":
            if modifier == "identifier" or modifier == "missing":
                return None, False
            local = text.split("/_history/", 1)[0]
            if base_url and local.startswith(base_url.rstrip("/") + "/"):
                local = local[len(base_url.rstrip("/")) + 1 :]
            parts = local.split("/")
            if modifier is not None:  # subject:Patient=123
                terms.append(f"{head}={modifier}/{parts[-1]}")
            elif len(parts) == 1:
                terms.append(f"{head}=id:{parts[0]}")
                precise = precise and not param.targets  # the target type is checked after
            elif len(parts) >= 2 and "://" not in local:
                terms.append(f"{head}={parts[-2]}/{parts[-1]}")
            else:
                return None, False  # another server's URL: refined
        elif param.type == "uri":
            if modifier is not None:
                return None, False
            terms.append(f"{head}={text}")
        elif param.type == "string":
            if modifier == "exact":
                terms.append(f"{head}:exact={text}")
            elif modifier is None:
                folded = normalise(text)
                terms.append(f"{head}^{folded[:PREFIX]}")
                precise = precise and len(folded) <= PREFIX
            else:
                return None, False
        else:  # date
            if modifier is not None or value.prefix not in ("eq", "ap", "ge", "le", "gt", "lt"):
                return None, False
            wanted = parse_date(text)
            if wanted is None or value.prefix != "eq":
                return None, False  # open-ended: every record is a candidate
            months = _months(*wanted)
            if months == ["wide"]:
                return None, False
            terms.extend(f"{head}@{m}" for m in months)
            terms.append(f"{head}@wide")
            precise = False  # month buckets are coarser than days and times
    return tuple(terms), precise
