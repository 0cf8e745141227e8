"""SMART on FHIR token figures (issue 17), over real HTTP on a served demo node.

Prints the latency (p50/p99) of the token endpoint for an authorization-code exchange (PKCE
checked, access and refresh tokens issued, the grant stored durably), a refresh (rotation),
and Backend Services' client_credentials (an ES384 client assertion verified against the app's
keys on the ledger, its jti recorded); beside the baseline measured in the same run: CareLedger's
own challenge sign-in (/v1/auth/challenge + /v1/auth/token). Also the server's peak RSS.

Then FHIR Bulk Data: a backend app exports N Observations (default 10,000 over 20 patients) over
HTTP: kick-off to complete, resources/s, and the server's peak RSS; beside the baseline of the
same resources dumped to NDJSON from a plain SQLite table in the same run.

    .venv/bin/python bench/smart.py [--rounds N] [--export N] [--smoke]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    CALLER,
    figure,
    lift_write_budget,
    observation,
    pct,
    plain_db,
    timed,
    write,
)
from tests.support.nodes import Server, free_port  # noqa: E402

from careledger.config import Settings  # noqa: E402
from careledger.fhir.extract import patient_id  # noqa: E402
from careledger.health.service import HealthRecords  # noqa: E402
from careledger.keyfile import read_key_file  # noqa: E402
from careledger.node import Node  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402
from careledger.sdk import Client  # noqa: E402

FORM = {"content-type": "application/x-www-form-urlencoded"}
REDIRECT = "http://127.0.0.1:9/callback"
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BENCH = "smart"


def token_of(server: Server, key_file: Path) -> str:
    with Client(server.url, keypair=read_key_file(key_file)[1]) as client:
        return str(client.login())


def codes(server: Server, user_token: str, count: int) -> list[tuple[str, str]]:
    """``count`` (code, verifier) pairs, approved through the portal's authorize page."""
    portal = httpx.Client(base_url=server.url, headers={"origin": server.url}, timeout=30)
    portal.post("/session", json={"token": user_token}).raise_for_status()
    made = []
    for _ in range(count):
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        query = urlencode({
            "response_type": "code", "client_id": "bench-app", "redirect_uri": REDIRECT,
            "scope": "launch/patient patient/*.rs offline_access", "state": "s",
            "aud": f"{server.url}/fhir", "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        })  # fmt: skip
        page = portal.get(f"/auth/authorize?{query}").text
        csrf = unescape(re.search(r'name="csrf" value="([^"]*)"', page).group(1))  # type: ignore[union-attr]
        request = unescape(re.search(r'name="request" value="([^"]*)"', page).group(1))  # type: ignore[union-attr]
        form = {"csrf": csrf, "request": request, "decision": "approve",
                "scope": ["launch/patient", "patient/*.rs", "offline_access"]}  # fmt: skip
        answer = portal.post("/auth/authorize/decision", content=urlencode(form, doseq=True),
                             headers=FORM)  # fmt: skip
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        made.append((code, verifier))
    portal.close()
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--export", type=int, default=10_000, help="Observations to export")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the bench runs")
    args = parser.parse_args()
    rounds = 10 if args.smoke else args.rounds
    resources = 200 if args.smoke else args.export
    workdir = Path(tempfile.mkdtemp(prefix="bench-smart-"))
    try:
        data = workdir / "node"
        init_demo(data, with_records=False, with_supply=False).store.close()
        lift_write_budget(data)
        populate(data, resources, patients=max(1, min(20, resources // 10)))
        server = Server(data, free_port(), workdir / "server.log")
        server.start()
        try:
            run(server, data, rounds)
            export_figures(server, data, resources, workdir)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def populate(data: Path, count: int, patients: int) -> None:
    """``count`` Observations over ``patients`` patients, written in-process as St Mary's."""
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    try:
        started = time.perf_counter()
        pids = [records.create(CALLER, {"resourceType": "Patient", "gender": "other"},
                               patient_of=patient_id).record_id for _ in range(patients)]  # fmt: skip
        write(records, [(observation(pids[i % patients], i), f"b{i}", 1, pids[i % patients])
                        for i in range(count)])  # fmt: skip
        print(f"(set-up: {count:,} Observations written in {time.perf_counter() - started:.1f} s)")
    finally:
        records.close()
        node.stop()


def peak_rss(server: Server) -> float:
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(x.split()[1] for x in status.splitlines() if x.startswith("VmHWM"))) / 1024


def export_figures(server: Server, data: Path, count: int, workdir: Path) -> None:
    keys = data / "keys"
    private = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.get_algorithm_by_name("ES384").to_jwk(private.public_key()))
    with httpx.Client(
        base_url=server.url,
        timeout=60,
        headers={"authorization": f"Bearer {token_of(server, keys / 'st-mary-admin.key')}"},
    ) as admin:
        admin.post("/v1/apps", json={"client_id": "bench-export", "name": "Bench export",
                   "kind": "backend", "scopes": "system/*.rs",
                   "jwks": {"keys": [{**public, "kid": "k1"}]}}).raise_for_status()  # fmt: skip
    now = int(time.time())
    signed = jwt.encode({"iss": "bench-export", "sub": "bench-export",
                         "aud": f"{server.url}/auth/token", "exp": now + 240,
                         "jti": uuid.uuid4().hex}, private, algorithm="ES384",
                        headers={"kid": "k1"})  # fmt: skip
    token = httpx.post(f"{server.url}/auth/token", headers=FORM, content=urlencode({
        "grant_type": "client_credentials", "scope": "system/*.rs",
        "client_assertion_type": ASSERTION, "client_assertion": signed})).json()  # fmt: skip
    http = httpx.Client(base_url=server.url, timeout=120,
                        headers={"authorization": f"Bearer {token['access_token']}"})  # fmt: skip
    before = peak_rss(server)
    started = time.perf_counter()
    kicked = http.get("/fhir/$export?_type=Observation",
                      headers={"prefer": "respond-async"})  # fmt: skip
    kicked.raise_for_status()
    status_url = kicked.headers["content-location"]
    while True:
        answer = http.get(status_url)
        if answer.status_code == 200:
            break
        answer.raise_for_status()
        time.sleep(0.05)
    took = time.perf_counter() - started
    manifest = answer.json()
    exported = sum(o["count"] for o in manifest["output"])
    downloaded = sum(len(http.get(o["url"]).content) for o in manifest["output"])
    http.close()
    # the baseline: the same resources as JSON rows in a plain SQLite table, dumped to NDJSON
    rows = workdir / "plain.sqlite"
    conn = plain_db(rows)
    conn.execute("CREATE TABLE r(id TEXT PRIMARY KEY, body BLOB)")
    body = b'{"resourceType":"Observation","status":"final","valueQuantity":{"value":70}}'
    conn.executemany("INSERT INTO r VALUES(?, ?)", ((str(i), body) for i in range(count)))
    base_start = time.perf_counter()
    with (workdir / "plain.ndjson").open("wb") as out:
        for (raw,) in conn.execute("SELECT body FROM r"):
            out.write(raw + b"\n")
    base = time.perf_counter() - base_start
    conn.close()
    print(f"\nBulk export ($export, one backend app, {count:,} Observations)")
    print(f"{'path':44} {'seconds':>8} {'per s':>10}")
    print(f"{'kick-off to complete (access events, NDJSON)':44} {took:8.2f} "
          f"{exported / took:10,.0f}")  # fmt: skip
    print(f"{'baseline: plain SQLite rows to NDJSON':44} {base:8.2f} {count / base:10,.0f}")
    after = peak_rss(server)
    print(
        f"exported {exported:,} resources, {downloaded / 1e6:.1f} MB; "
        f"server peak RSS {before:.0f} MiB before, {after:.0f} MiB after"
    )
    plain = "plain SQLite rows to NDJSON"
    note = f"{exported:,} resources, {downloaded / 1e6:.1f} MB"
    label = f"bulk export of {count:,} Observations"
    figure(
        BENCH,
        f"{label}: kick-off to complete",
        took,
        "s",
        baseline=plain,
        baseline_value=base,
        note=note,
        peak_rss_mib=after,
    )
    figure(
        BENCH,
        f"{label}: resources/s",
        exported / took,
        "/s",
        baseline=plain,
        baseline_value=count / base,
        note=note,
        peak_rss_mib=after,
    )
    figure(BENCH, "server peak RSS before the export", before, "MiB", peak_rss_mib=before)
    figure(BENCH, "server peak RSS after the export", after, "MiB", peak_rss_mib=after)


def run(server: Server, data: Path, rounds: int) -> None:
    keys = data / "keys"
    admin = httpx.Client(base_url=server.url, timeout=30,
                         headers={"authorization": f"Bearer {token_of(server, keys / 'st-mary-admin.key')}"})  # fmt: skip
    private = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.get_algorithm_by_name("ES384").to_jwk(private.public_key()))
    for app in (
        {"client_id": "bench-app", "name": "Bench app", "kind": "public",
         "redirect_uris": [REDIRECT], "scopes": "launch/patient offline_access patient/*.rs"},
        {"client_id": "bench-backend", "name": "Bench backend", "kind": "backend",
         "scopes": "system/*.rs", "jwks": {"keys": [{**public, "kid": "k1"}]}},
    ):  # fmt: skip
        admin.post("/v1/apps", json=app).raise_for_status()
    admin.close()
    http = httpx.Client(base_url=server.url, timeout=30)
    patient = token_of(server, keys / "patient-0001.key")
    print(f"SMART token endpoint over HTTP, {rounds} rounds each (one client, loopback)")

    pending = codes(server, patient, rounds)
    refresh: list[str] = []

    def exchange() -> None:
        code, verifier = pending.pop()
        answer = http.post("/auth/token", headers=FORM, content=urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier, "client_id": "bench-app"}))  # fmt: skip
        answer.raise_for_status()
        refresh.append(answer.json()["refresh_token"])

    def rotate() -> None:
        answer = http.post("/auth/token", headers=FORM, content=urlencode({
            "grant_type": "refresh_token", "refresh_token": refresh.pop(),
            "client_id": "bench-app"}))  # fmt: skip
        answer.raise_for_status()

    def backend() -> None:
        now = int(time.time())
        signed = jwt.encode(
            {"iss": "bench-backend", "sub": "bench-backend", "aud": f"{server.url}/auth/token",
             "exp": now + 240, "jti": uuid.uuid4().hex},
            private, algorithm="ES384", headers={"kid": "k1"},
        )  # fmt: skip
        answer = http.post("/auth/token", headers=FORM, content=urlencode({
            "grant_type": "client_credentials", "scope": "system/*.rs",
            "client_assertion_type": ASSERTION, "client_assertion": signed}))  # fmt: skip
        answer.raise_for_status()

    key = read_key_file(keys / "patient-0001.key")[1]

    def challenge_sign_in() -> None:
        got = http.post("/v1/auth/challenge").json()
        signature = key.sign(got["message"].encode())
        http.post("/v1/auth/token", json={
            "public_key": key.public_b64, "challenge": got["challenge"],
            "signature": base64.urlsafe_b64encode(signature).decode().rstrip("=")},
        ).raise_for_status()  # fmt: skip

    rows = [
        ("authorization code exchange (PKCE)", timed(rounds, exchange)),
        ("refresh (rotation)", timed(rounds, rotate)),
        ("client_credentials (ES384 assertion)", timed(rounds, backend)),
        ("baseline: challenge sign-in (2 requests)", timed(rounds, challenge_sign_in)),
    ]
    print(f"{'path':44} {'p50 ms':>8} {'p99 ms':>8} {'per s':>8}")
    for name, took in rows:
        mean = sum(took) / len(took)
        print(f"{name:44} {pct(took, 50):8.2f} {pct(took, 99):8.2f} {1000 / mean:8.0f}")
    http.close()
    rss = peak_rss(server)
    print(f"server peak RSS: {rss:.0f} MiB")
    sign_in = rows[-1][1]  # the baseline, beside each of the others
    for name, took in rows:
        mean = sum(took) / len(took)
        measured = took is not sign_in
        for p in (50, 99):
            figure(
                BENCH,
                f"token: {name} p{p}",
                pct(took, p),
                "ms",
                baseline=f"challenge sign-in p{p}" if measured else None,
                baseline_value=pct(sign_in, p) if measured else None,
                note=f"{1000 / mean:,.0f}/s, one client",
                peak_rss_mib=rss,
            )
    figure(BENCH, "server peak RSS after the token rounds", rss, "MiB", peak_rss_mib=rss)


if __name__ == "__main__":
    main()
