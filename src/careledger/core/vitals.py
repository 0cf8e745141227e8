"""Vital-sign readings: the compact batch form, FHIR R4 vital-signs Observations, leaf bytes. Pure.

A device sends readings either as FHIR Observations of the vital-signs profile or in a compact
form that maps to them one to one:

    {"t0": 1764000000000, "codes": ["8867-4", "59408-5", "85354-9"],
     "rows": [[0, 72, 97, [121, 79]], [60000, 75, null, null]]}

Each row is an offset in milliseconds from ``t0`` followed by one value per code (``null``: not
measured); the blood-pressure panel's value is ``[systolic, diastolic]``. Internally a reading
is ``Reading(code, time_ms, value)``; its leaf bytes (what the window's Merkle tree commits to,
salted) are the RFC 8785 form of ``{"c", "d", "t", "v"}`` with the device id, so a reading
proves which device took it and when.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from careledger.core.canonical import canonical_bytes

LOINC = "http://loinc.org"
BP_PANEL = "85354-9"
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"
# code -> (display, UCUM unit, plausible range): values outside the range are refused as
# device faults, not stored as readings.
VITALS: dict[str, tuple[str, str, float, float]] = {
    "8867-4": ("Heart rate", "/min", 0.0, 350.0),
    "59408-5": ("Oxygen saturation in Arterial blood by Pulse oximetry", "%", 0.0, 100.0),
    "9279-1": ("Respiratory rate", "/min", 0.0, 150.0),
    "8310-5": ("Body temperature", "Cel", 20.0, 45.0),
    "2339-0": ("Glucose [Mass/volume] in Blood", "mg/dL", 0.0, 2000.0),
    "29463-7": ("Body weight", "kg", 0.0, 700.0),
    BP_PANEL: ("Blood pressure panel with all children optional", "mm[Hg]", 0.0, 400.0),
}
MAX_ROWS = 10_000
MAX_READINGS = 20_000
VITAL_SIGNS = "http://terminology.hl7.org/CodeSystem/observation-category"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Value = float | tuple[float, float]


class ReadingError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Reading:
    code: str
    time_ms: int
    value: Value

    def leaf_bytes(self, device: str) -> bytes:
        value: Any = list(self.value) if isinstance(self.value, tuple) else self.value
        return canonical_bytes({"c": self.code, "d": device, "t": self.time_ms, "v": value})

    def as_json(self) -> dict[str, Any]:
        value: Any = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"code": self.code, "time": self.time_ms, "value": value}


def _number(raw: object, code: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ReadingError("BAD_READING", f"{code}: a value is a finite number")
    low, high = VITALS[code][2], VITALS[code][3]
    if not low <= raw <= high:
        raise ReadingError("IMPLAUSIBLE", f"{code}: {raw} is outside {low}..{high}")
    return float(raw)


def _value(raw: object, code: str) -> Value:
    if code == BP_PANEL:
        if not isinstance(raw, list | tuple) or len(raw) != 2:
            raise ReadingError("BAD_READING", "a blood pressure is [systolic, diastolic]")
        return (_number(raw[0], code), _number(raw[1], code))
    return _number(raw, code)


def _time(raw: object) -> int:
    if type(raw) is not int or not 0 <= raw < 2**53:
        raise ReadingError("BAD_READING", "times are whole milliseconds since the epoch")
    return raw


def from_compact(batch: Mapping[str, Any]) -> list[Reading]:
    codes = batch.get("codes")
    rows = batch.get("rows")
    t0 = _time(batch.get("t0"))
    if not isinstance(codes, list) or not codes or len(set(codes)) != len(codes):
        raise ReadingError("BAD_BATCH", "codes is a list of distinct LOINC codes")
    unknown = [c for c in codes if c not in VITALS]
    if unknown:
        raise ReadingError("UNKNOWN_CODE", f"not a supported vital sign: {unknown}")
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_ROWS:
        raise ReadingError("BAD_BATCH", f"rows is a list of 1..{MAX_ROWS} rows")
    out: list[Reading] = []
    for row in rows:
        if not isinstance(row, list) or len(row) != len(codes) + 1:
            raise ReadingError("BAD_BATCH", "each row is [offset_ms, one value per code]")
        offset = row[0]
        if type(offset) is not int or offset < 0:
            raise ReadingError("BAD_BATCH", "a row's offset is whole milliseconds from t0")
        when = _time(t0 + offset)
        for code, raw in zip(codes, row[1:], strict=True):
            if raw is not None:
                out.append(Reading(code, when, _value(raw, code)))
    if len(out) > MAX_READINGS:
        raise ReadingError("BAD_BATCH", f"at most {MAX_READINGS} readings per batch")
    return out


def _ms(text: object) -> int:
    if not isinstance(text, str):
        raise ReadingError("BAD_READING", "effectiveDateTime is required")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReadingError("BAD_READING", f"bad effectiveDateTime {text!r}") from None
    if moment.tzinfo is None:
        raise ReadingError("BAD_READING", "effectiveDateTime needs a time zone")
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _loinc(concept: object) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == LOINC:
            code = coding.get("code")
            if isinstance(code, str):
                return code
    return None


def _quantity(obs: Mapping[str, Any], code: str) -> float:
    quantity = obs.get("valueQuantity")
    if not isinstance(quantity, dict):
        raise ReadingError("BAD_READING", f"{code}: valueQuantity is required")
    return _number(quantity.get("value"), code)


def from_observation(obs: Mapping[str, Any]) -> Reading:
    """A vital-signs Observation (LOINC-coded, valueQuantity or the BP panel's components)."""
    if obs.get("resourceType") != "Observation":
        raise ReadingError("BAD_READING", "readings are Observations")
    code = _loinc(obs.get("code"))
    if code not in VITALS:
        raise ReadingError("UNKNOWN_CODE", f"not a supported vital sign: {code!r}")
    when = _ms(obs.get("effectiveDateTime"))
    if code != BP_PANEL:
        return Reading(code, when, _quantity(obs, code))
    parts: dict[str, float] = {}
    for component in obs.get("component") or []:
        part = _loinc(component.get("code")) if isinstance(component, dict) else None
        if part in {SYSTOLIC, DIASTOLIC}:
            parts[part] = _quantity(component, code)
    if set(parts) != {SYSTOLIC, DIASTOLIC}:
        raise ReadingError("BAD_READING", "a blood pressure has systolic and diastolic parts")
    return Reading(code, when, (parts[SYSTOLIC], parts[DIASTOLIC]))


def parse_readings(batch: Mapping[str, Any]) -> list[Reading]:
    """Readings of a batch body: ``compact`` or ``observations`` (exactly one)."""
    compact, observations = batch.get("compact"), batch.get("observations")
    if (compact is None) == (observations is None):
        raise ReadingError("BAD_BATCH", "send compact or observations")
    if compact is not None:
        if not isinstance(compact, dict):
            raise ReadingError("BAD_BATCH", "compact is an object")
        return from_compact(compact)
    if not isinstance(observations, list) or not 0 < len(observations) <= MAX_READINGS:
        raise ReadingError("BAD_BATCH", f"observations is a list of 1..{MAX_READINGS}")
    return [from_observation(o if isinstance(o, dict) else {}) for o in observations]


def _iso(ms: int) -> str:
    moment = EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _coded(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}]}


def _ucum(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def to_observation(reading: Reading, *, patient: str, device: str) -> dict[str, Any]:
    """The FHIR R4 vital-signs Observation of a reading (deterministic)."""
    display, unit, _, _ = VITALS[reading.code]
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": VITAL_SIGNS, "code": "vital-signs", "display": "Vital Signs"}]}
        ],
        "code": _coded(reading.code, display),
        "subject": {"reference": f"Patient/{patient}"},
        "device": {"reference": f"Device/{device}"},
        "effectiveDateTime": _iso(reading.time_ms),
    }
    if isinstance(reading.value, tuple):
        systolic, diastolic = reading.value
        obs["component"] = [
            {
                "code": _coded(SYSTOLIC, "Systolic blood pressure"),
                "valueQuantity": _ucum(systolic, unit),
            },
            {
                "code": _coded(DIASTOLIC, "Diastolic blood pressure"),
                "valueQuantity": _ucum(diastolic, unit),
            },
        ]
    else:
        obs["valueQuantity"] = _ucum(reading.value, unit)
    return obs


def from_json(raw: Sequence[Any]) -> list[Reading]:
    """Readings as stored (``Reading.as_json``), read back."""
    out = []
    for r in raw:
        value = r["value"]
        out.append(
            Reading(
                r["code"], r["time"], (value[0], value[1]) if isinstance(value, list) else value
            )
        )
    return out
