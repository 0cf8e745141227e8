"""Per-patient alert rules and their deterministic evaluation over readings. Pure.

A clinician sets rules on the ledger (``monitoring.set_rules``); the custodian's node runs
them over each window of readings in order, and the alerts they raise are committed with the
window's anchor. The same rules over the same readings raise the same alerts anywhere, so an
auditor holding the readings can re-run them. An alert fires once per episode: when a rule
becomes true (after ``n`` consecutive abnormal readings) and not again until ``clear_n``
consecutive normal readings have ended the episode.

Rule kinds:

* ``threshold``: ``{"id", "kind", "code", "op": "<"|"<="|">"|">=", "value", "n"?, "clear_n"?}``
* ``rate``: ``{"id", "kind", "code", "op": ">" (rise) | "<" (fall), "delta", "minutes"}``
* ``no_data``: ``{"id", "kind", "minutes"}`` — judged on the ledger's block time (``tick``)

A rule on systolic (8480-6) or diastolic (8462-4) pressure reads that part of the blood
pressure panel. ``escalate_after`` (minutes, optional) escalates an unacknowledged alert.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from careledger.core.vitals import BP_PANEL, DIASTOLIC, SYSTOLIC, VITALS, Reading

RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
KINDS = frozenset({"threshold", "rate", "no_data"})
OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
MAX_RULES = 32
MAX_RECENT = 512  # points a rate rule remembers (its window, bounded)
MAX_WINDOW_MINUTES = 24 * 60
RULE_CODES = frozenset(VITALS) - {BP_PANEL} | {SYSTOLIC, DIASTOLIC}


class RuleError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _number(raw: object, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise RuleError(f"{what} is a number")
    return float(raw)


def _count(raw: object, what: str, default: int | None, high: int) -> int:
    if raw is None and default is not None:
        return default
    if type(raw) is not int or not 1 <= raw <= high:
        raise RuleError(f"{what} is a whole number from 1 to {high}")
    return raw


def check_rule(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A rule in its stored form, or RuleError."""
    if not isinstance(raw, Mapping):
        raise RuleError("a rule is an object")
    rule_id, kind = raw.get("id"), raw.get("kind")
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        raise RuleError("a rule has an id (letters, digits, . _ -)")
    if kind not in KINDS:
        raise RuleError(f"{rule_id}: kind is one of {sorted(KINDS)}")
    allowed = {"id", "kind", "escalate_after"}
    rule: dict[str, Any] = {"id": rule_id, "kind": kind}
    if raw.get("escalate_after") is not None:
        rule["escalate_after"] = _count(raw["escalate_after"], "escalate_after", None, 7 * 24 * 60)
    if kind == "no_data":
        allowed |= {"minutes"}
        rule["minutes"] = _count(raw.get("minutes"), "minutes", None, MAX_WINDOW_MINUTES)
    else:
        code = raw.get("code")
        if code not in RULE_CODES:
            raise RuleError(f"{rule_id}: code is one of {sorted(RULE_CODES)}")
        rule["code"] = code
        if kind == "threshold":
            allowed |= {"code", "op", "value", "n", "clear_n"}
            if raw.get("op") not in OPS:
                raise RuleError(f"{rule_id}: op is one of {sorted(OPS)}")
            rule.update(
                op=raw["op"],
                value=_number(raw.get("value"), "value"),
                n=_count(raw.get("n"), "n", 1, 1000),
                clear_n=_count(raw.get("clear_n"), "clear_n", 1, 1000),
            )
        else:
            allowed |= {"code", "op", "delta", "minutes"}
            if raw.get("op") not in {"<", ">"}:
                raise RuleError(f"{rule_id}: a rate rule's op is > (rise) or < (fall)")
            delta = _number(raw.get("delta"), "delta")
            if delta <= 0:
                raise RuleError(f"{rule_id}: delta is positive")
            rule.update(
                op=raw["op"],
                delta=delta,
                minutes=_count(raw.get("minutes"), "minutes", None, MAX_WINDOW_MINUTES),
            )
    extra = set(raw) - allowed
    if extra:
        raise RuleError(f"{rule_id}: unknown fields {sorted(extra)}")
    return rule


def check_rules(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        raise RuleError(f"rules is a list of at most {MAX_RULES}")
    rules = [check_rule(r) for r in raw]
    ids = [r["id"] for r in rules]
    if len(set(ids)) != len(ids):
        raise RuleError("rule ids are unique")
    return rules


def _value_of(rule: Mapping[str, Any], reading: Reading) -> float | None:
    code = rule["code"]
    if code in {SYSTOLIC, DIASTOLIC}:
        if reading.code != BP_PANEL or not isinstance(reading.value, tuple):
            return None
        return reading.value[0] if code == SYSTOLIC else reading.value[1]
    if reading.code != code or isinstance(reading.value, tuple):
        return None
    return reading.value


@dataclass(frozen=True)
class Fired:
    rule: str
    index: int  # the reading's position in the evaluated sequence
    time_ms: int
    value: float

    def as_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "index": self.index, "at": self.time_ms, "value": self.value}


def _abnormal(rule: Mapping[str, Any], state: dict[str, Any], t: int, v: float) -> bool:
    if rule["kind"] == "threshold":
        return bool(OPS[rule["op"]](v, float(rule["value"])))
    horizon = t - rule["minutes"] * 60_000
    recent: list[tuple[int, float]] = [
        (int(rt), float(rv)) for rt, rv in state.get("recent", []) if rt >= horizon
    ]
    state["recent"] = [*recent, (t, v)][-MAX_RECENT:]
    if not recent:
        return False
    delta = float(rule["delta"])
    if rule["op"] == ">":
        return v - min(rv for _, rv in recent) > delta
    return max(rv for _, rv in recent) - v > delta


def evaluate(
    rules: Iterable[Mapping[str, Any]],
    state: dict[str, dict[str, Any]],
    readings: Iterable[Reading],
    *,
    start: int = 0,
) -> list[Fired]:
    """Run the rules over readings in order; ``state`` (per rule id) is updated in place.

    ``start`` numbers the first reading (its index within the window)."""
    active_rules = [r for r in rules if r["kind"] != "no_data"]
    fired: list[Fired] = []
    for index, reading in enumerate(readings, start=start):
        for rule in active_rules:
            value = _value_of(rule, reading)
            if value is None:
                continue
            st = state.setdefault(rule["id"], {"run": 0, "normal": 0, "active": False})
            if _abnormal(rule, st, reading.time_ms, value):
                st["run"] += 1
                st["normal"] = 0
                if not st["active"] and st["run"] >= rule.get("n", 1):
                    st["active"] = True
                    fired.append(Fired(rule["id"], index, reading.time_ms, value))
            else:
                st["normal"] += 1
                st["run"] = 0
                if st["active"] and st["normal"] >= rule.get("clear_n", 1):
                    st["active"] = False
    return fired
