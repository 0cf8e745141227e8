"""Fast JSON for the wire (orjson). Never used for bytes that are hashed or signed."""

from __future__ import annotations

from typing import Any

import orjson

from careledger.errors import ValidationError


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(
            f"the body is not valid JSON ({exc.msg})", code="MALFORMED_JSON"
        ) from None
