"""MIMIC-II bedside numerics (PhysioNet, per-minute CSV as derived from WFDB) as compact batches.

Columns map to LOINC vital signs: HR -> 8867-4, SpO2 -> 59408-5, RESP -> 9279-1, and the
arterial (else non-invasive) systolic/diastolic pressure -> the 85354-9 panel. A 0 is the
monitor reporting nothing (probe off) and an empty cell no sample: both become ``null``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from careledger.core.vitals import BP_PANEL
from careledger.errors import ValidationError

CODES = ["8867-4", "59408-5", "9279-1", BP_PANEL]
MINUTE_MS = 60_000


def _num(row: dict[str, str], *names: str) -> float | None:
    for name in names:
        raw = (row.get(name) or "").strip()
        if raw:
            value = float(raw)
            if value > 0:
                return value
    return None


def rows(path: Path) -> list[tuple[int, list[Any]]]:
    """(elapsed minutes, [HR, SpO2, RESP, [sys, dia] | None]) per CSV row; ValidationError
    (BAD_FILE) naming the file and row when it is not a numerics CSV."""
    out = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "elapsed_min" not in (reader.fieldnames or ()):
                raise ValidationError(
                    f"{path.name} is not a numerics CSV: it has no elapsed_min column",
                    code="BAD_FILE",
                )
            for number, row in enumerate(reader, start=2):
                try:
                    systolic = _num(row, "ABPSys [mmHg]", "NBPSys [mmHg]")
                    diastolic = _num(row, "ABPDias [mmHg]", "NBPDias [mmHg]")
                    pressure = [systolic, diastolic] if systolic and diastolic else None
                    values = [
                        _num(row, "HR [bpm]"),
                        _num(row, "SpO2 [%]"),
                        _num(row, "RESP [pm]"),
                        pressure,
                    ]
                    out.append((int(float(row["elapsed_min"])), values))
                except (TypeError, ValueError, OverflowError):
                    raise ValidationError(
                        f"{path.name}, line {number}: not a number where one is expected",
                        code="BAD_FILE",
                    ) from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path.name} is not a text (UTF-8) CSV", code="BAD_FILE") from None
    except csv.Error as exc:
        raise ValidationError(f"{path.name} is not a CSV: {exc}", code="BAD_FILE") from None
    if not out:
        raise ValidationError(f"{path.name} holds no readings", code="BAD_FILE")
    return out


def batches(path: Path, *, start_ms: int, per_batch: int = 10) -> Iterator[dict[str, Any]]:
    """Compact batches of ``per_batch`` minutes each, the first minute at ``start_ms``."""
    data = rows(path)
    for first in range(0, len(data), per_batch):
        chunk = data[first : first + per_batch]
        t0 = start_ms + chunk[0][0] * MINUTE_MS
        yield {
            "t0": t0,
            "codes": CODES,
            "rows": [[(minute - chunk[0][0]) * MINUTE_MS, *values] for minute, values in chunk],
        }
