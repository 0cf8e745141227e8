"""Every DSCSA verification request and its answer, kept by the node that answered it.

Verifications are reads, so they are not ledger transactions; the log is what a manufacturer
shows a regulator ("who asked about this serial, when, and what did we say"), and what the
verified-after-decommissioning alert is raised from. Only GS1 identifiers and member ids are
logged: no PHI.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from careledger.sqlite_threads import ThreadConnections, page_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS verifications(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, requester TEXT NOT NULL,
  requester_org TEXT, requestor_gln TEXT, corr_uuid TEXT, gtin TEXT NOT NULL,
  serial TEXT NOT NULL, lot TEXT, expiry TEXT, brand_owner TEXT, verified INTEGER NOT NULL,
  response BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS verifications_unit ON verifications(gtin, serial);
CREATE INDEX IF NOT EXISTS verifications_org ON verifications(requester_org);
"""


class VerificationLog:
    def __init__(self, path: Path) -> None:
        self._conns = ThreadConnections(path, "verification log")
        self._conns.schema(SCHEMA)

    def record(
        self,
        *,
        time: str,
        requester: str,
        requester_org: str | None,
        request: Mapping[str, Any],
        brand_owner: str | None,
        response: Mapping[str, Any],
    ) -> int:
        cursor = self._conns.get().execute(
            "INSERT INTO verifications(time, requester, requester_org, requestor_gln, corr_uuid,"
            " gtin, serial, lot, expiry, brand_owner, verified, response)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                time,
                requester,
                requester_org,
                request.get("requestorGLN"),
                request.get("corrUUID"),
                request["gtin"],
                request["serialNumber"],
                request.get("lotNumber"),
                request.get("expirationDate"),
                brand_owner,
                int(bool(response["data"]["verified"])),
                orjson.dumps(dict(response)),
            ),
        )
        return int(cursor.lastrowid or 0)

    def list(
        self,
        *,
        org: str | None,
        gtin: str | None = None,
        serial: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Requests an organisation made, or that were about its brands (None: all of them)."""
        where: list[str] = ["seq > ?"]
        params: list[object] = [after]
        if org is not None:
            where.append("(requester_org = ? OR brand_owner = ?)")
            params.extend([org, org])
        if gtin is not None:
            where.append("gtin = ?")
            params.append(gtin)
        if serial is not None:
            where.append("serial = ?")
            params.append(serial)
        rows = (
            self._conns.get()
            .execute(
                "SELECT seq, time, requester, requester_org, requestor_gln, corr_uuid, gtin,"  # noqa: S608
                " serial, lot, expiry, verified, response FROM verifications"
                f" WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                [*params, limit + 1],
            )
            .fetchall()
        )
        rows, last = page_of(rows, limit)
        out = [
            {
                "id": r[0],
                "time": r[1],
                "requester": r[2],
                "requester_org": r[3],
                "requestorGLN": r[4],
                "corrUUID": r[5],
                "gtin": r[6],
                "serialNumber": r[7],
                "lotNumber": r[8],
                "expirationDate": r[9],
                "verified": bool(r[10]),
                "response": orjson.loads(r[11]),
            }
            for r in rows
        ]
        return out, last

    def close(self) -> None:
        self._conns.close()
