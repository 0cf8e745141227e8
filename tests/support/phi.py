"""PHI strings worth searching for on disk when proving that none is stored in clear."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from careledger.fhir.extract import phi_strings


def distinctive_phi(resources: Iterable[Mapping[str, Any]]) -> set[str]:
    """Names, birth dates, identifiers, telecoms and addresses of ``resources``.

    A short run of digits (a postal code) occurs by chance in hashes, keys and timestamps, so it
    proves nothing either way; only strings that could not appear by accident are kept.
    """
    needles: set[str] = set()
    for resource in resources:
        needles |= phi_strings(resource)
    return {n for n in needles if len(n) >= 4 and not (n.isdigit() and len(n) < 8)}


def files_containing(root: Path, needles: set[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {n}" for n in needles if n.encode() in data]
    return found
