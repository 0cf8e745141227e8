"""The one loader for standards' test vectors copied into tests/vectors/ (with their licences)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def vector_path(*parts: str) -> Path:
    path = VECTORS.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"test vector missing: {path} (vectors are committed, not fetched)")
    return path


def load_json(*parts: str) -> Any:
    return json.loads(vector_path(*parts).read_text(encoding="utf-8"))
