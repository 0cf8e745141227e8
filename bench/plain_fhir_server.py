"""The no-ledger baseline of bench/fhir_mix.py: a plain FastAPI + SQLite FHIR server.

The routes and JSON shapes bench/fhir_mix.py drives, nothing more: read by id, a search of a
patient's Observations by code or newest first (table columns with an index), create, update
(with If-Match). One process served by uvicorn with the node's settings, one SQLite file in WAL
with synchronous=FULL and one durable commit per write. No token check, signature, encryption,
consent, access event or ledger: the floor a FHIR server over HTTP stands on here.

    .venv/bin/python bench/plain_fhir_server.py DB PORT
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

FHIR_JSON = "application/fhir+json"
TYPE_PATTERN = r"^[A-Z][A-Za-z]{1,63}$"
ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"
SCHEMA = """
CREATE TABLE IF NOT EXISTS resources(
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, patient TEXT,
    code TEXT, date TEXT, updated TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (type, id));
CREATE INDEX IF NOT EXISTS by_patient_code ON resources(type, patient, code, date);
CREATE INDEX IF NOT EXISTS by_patient_date ON resources(type, patient, date);
"""


def _outcome(status: int, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON)


def _columns(resource: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(patient id, first code as system|code, effective date) of a resource."""
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    patient = ref.removeprefix("Patient/") if ref.startswith("Patient/") else None
    if resource.get("resourceType") == "Patient":
        patient = resource.get("id")
    codings = (resource.get("code") or {}).get("coding") or [{}]
    code = f"{codings[0].get('system', '')}|{codings[0].get('code', '')}" if codings[0] else None
    return patient, code, resource.get("effectiveDateTime")


def create_app(db: Path) -> FastAPI:
    setup = sqlite3.connect(db)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.executescript(SCHEMA)
    setup.close()
    local = threading.local()
    writer = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    writer.execute("PRAGMA synchronous=FULL")
    write_lock = threading.Lock()
    app = FastAPI()

    def reader() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(db, check_same_thread=False)
        return conn

    def answer(resource: dict[str, Any], status: int, version: int, updated: str) -> Response:
        moment = datetime.fromisoformat(updated.replace("Z", "+00:00"))
        headers = {
            "ETag": f'W/"{version}"',
            "Last-Modified": format_datetime(moment, usegmt=True),
            "Location": f"/fhir/{resource['resourceType']}/{resource['id']}/_history/{version}",
        }
        return Response(orjson.dumps(resource), status_code=status, media_type=FHIR_JSON,
                        headers=headers)  # fmt: skip

    def store(kind: str, resource: dict[str, Any], record_id: str, expected: int | None) -> Any:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        with write_lock:
            writer.execute("BEGIN IMMEDIATE")
            try:
                row = writer.execute(
                    "SELECT version FROM resources WHERE type = ? AND id = ?", (kind, record_id)
                ).fetchone()
                current = row[0] if row else 0
                if expected is not None and expected != current:
                    writer.execute("ROLLBACK")
                    return None
                version = current + 1
                resource["id"] = record_id
                resource["meta"] = {"versionId": str(version), "lastUpdated": now}
                patient, code, date = _columns(resource)
                writer.execute(
                    "INSERT OR REPLACE INTO resources VALUES(?,?,?,?,?,?,?,?)",
                    (kind, record_id, version, patient, code, date, now, orjson.dumps(resource)),
                )
                writer.execute("COMMIT")  # durable (synchronous=FULL) before the answer
            except BaseException:
                writer.execute("ROLLBACK")
                raise
        return version, now

    async def body(request: Request, kind: str) -> dict[str, Any] | Response:
        try:
            resource = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _outcome(400, "not JSON")
        if not isinstance(resource, dict) or resource.get("resourceType") != kind:
            return _outcome(400, f"not a {kind}")
        return resource

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/fhir/{kind}", status_code=201)
    async def create(kind: Annotated[str, PathParam(pattern=TYPE_PATTERN)], request: Request) -> Response:  # fmt: skip
        resource = await body(request, kind)
        if isinstance(resource, Response):
            return resource
        version, now = await run_in_threadpool(store, kind, resource, str(uuid.uuid4()), None)
        return answer(resource, 201, version, now)

    @app.put("/fhir/{kind}/{record_id}")
    async def update(
        kind: Annotated[str, PathParam(pattern=TYPE_PATTERN)],
        record_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
        request: Request,
        if_match: Annotated[str | None, Header(alias="If-Match")] = None,
    ) -> Response:
        resource = await body(request, kind)
        if isinstance(resource, Response):
            return resource
        expected = int(if_match.removeprefix("W/").strip('"')) if if_match else None
        done = await run_in_threadpool(store, kind, resource, record_id, expected)
        if done is None:
            return _outcome(412, f"If-Match names version {expected}, not the current one")
        version, now = done
        return answer(resource, 200 if version > 1 else 201, version, now)

    @app.get("/fhir/{kind}/{record_id}")
    def read(
        kind: Annotated[str, PathParam(pattern=TYPE_PATTERN)],
        record_id: Annotated[str, PathParam(pattern=ID_PATTERN)],
    ) -> Response:
        row = (
            reader()
            .execute(
                "SELECT body, version, updated FROM resources WHERE type = ? AND id = ?",
                (kind, record_id),
            )
            .fetchone()
        )
        if row is None:
            return _outcome(404, f"{kind}/{record_id} is not known")
        return answer(orjson.loads(row[0]), 200, row[1], row[2])

    @app.get("/fhir/{kind}")
    def search(kind: Annotated[str, PathParam(pattern=TYPE_PATTERN)], request: Request) -> Response:  # fmt: skip
        params = request.query_params
        patient = (params.get("patient") or params.get("subject") or "").removeprefix("Patient/")
        count = min(int(params.get("_count", "20")), 1000)
        where, args = ["type = ?", "patient = ?"], [kind, patient]
        if "code" in params:
            where.append("code = ?")
            args.append(params["code"])
        order = "date DESC" if params.get("_sort") == "-date" else "id"
        sql = (
            f"SELECT body FROM resources WHERE {' AND '.join(where)}"  # the clauses are fixed text
        )
        conn = reader()
        total = conn.execute(sql.replace("SELECT body", "SELECT count(*)"), args).fetchone()[0]
        rows = conn.execute(f"{sql} ORDER BY {order} LIMIT ?", [*args, count]).fetchall()
        base = str(request.base_url).rstrip("/") + "/fhir"
        entries = []
        for (raw,) in rows:
            resource = orjson.loads(raw)
            entries.append(
                {
                    "fullUrl": f"{base}/{kind}/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            )
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": str(request.url)}],
        }
        if entries:
            bundle["entry"] = entries
        return Response(orjson.dumps(bundle), media_type=FHIR_JSON)

    return app


def main() -> None:
    db, port = Path(sys.argv[1]), int(sys.argv[2])
    # the settings `careledger serve` gives uvicorn, so both servers stand on the same HTTP stack
    uvicorn.run(
        create_app(db),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
