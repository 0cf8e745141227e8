"""SMART Health Links and Cards figures (issue 19), over real HTTP on a served demo node.

Prints the latency (p50/p99) of: making a link (the patient's links.create committed, the key
wrapped, the QR drawn) and revoking it (at most 50 are active at once); opening one as a
receiver does (manifest POST: passcode checked, records decrypted, the opening's access event
committed, the file encrypted as JWE), for a link to two kinds of record and for an
International Patient Summary (a new link every 20 openings, the node's limit per link in ten
minutes); a wrong passcode; and issuing a SMART Health Card (ES256, fitted to one QR; each
revoked after, untimed, as at most 20 are active per patient). Beside them, measured in the
same run: the node's HTTP floor (GET /healthz) and the spec's own cost for the same file (JWE
encryption in-process). Also the server's peak RSS.

    .venv/bin/python bench/links.py [--rounds N] [--smoke]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import figure, lift_write_budget, pct, timed  # noqa: E402
from bench.smart import peak_rss, token_of  # noqa: E402
from tests.support.nodes import Server, free_port  # noqa: E402

from careledger.health.share_links import OPENINGS  # noqa: E402
from careledger.health_links import jwe  # noqa: E402
from careledger.health_links.link import new_key, parse_uri  # noqa: E402
from careledger.nodedir import init_demo  # noqa: E402

PASSCODE = "bench-passcode-1"
BENCH = "links"


def row(name: str, took: list[float]) -> None:
    print(f"{name:52} {pct(took, 50):8.2f} {pct(took, 99):8.2f} {len(took):7}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the bench runs")
    args = parser.parse_args()
    rounds = 5 if args.smoke else args.rounds
    workdir = Path(tempfile.mkdtemp(prefix="bench-links-"))
    try:
        data = workdir / "node"
        init_demo(data, with_supply=False).store.close()
        lift_write_budget(data)
        server = Server(data, free_port(), workdir / "server.log")
        server.start()
        try:
            run(server, data, rounds)
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(server: Server, data: Path, rounds: int) -> None:
    key_file = sorted((data / "keys" / "patients").glob("*.key"))[0]
    patient = key_file.stem
    headers = {"authorization": f"Bearer {token_of(server, key_file)}"}
    own = httpx.Client(base_url=server.url, headers=headers, timeout=60)
    recipient = httpx.Client(timeout=60)
    body = {"types": ["Observation", "Condition"], "passcode": PASSCODE, "expires_in_days": 1}

    def make(extra: dict[str, object] | None = None) -> dict[str, object]:
        answer = own.post(f"/v1/patients/{patient}/links", json={**body, **(extra or {})})
        answer.raise_for_status()
        return dict(answer.json())

    made: list[float] = []
    revoked: list[float] = []
    for _ in range(rounds):  # one made, one revoked: at most 50 are active at once
        start = time.perf_counter()
        link_id = str(make()["id"])
        made.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        own.delete(f"/v1/patients/{patient}/links/{link_id}").raise_for_status()
        revoked.append((time.perf_counter() - start) * 1000)
    size = 0

    def open_link(url: str, passcode: str = PASSCODE) -> None:
        nonlocal size
        answer = recipient.post(url, json={"recipient": "Bench clinic", "passcode": passcode})
        if passcode == PASSCODE:
            answer.raise_for_status()
            size = len(answer.json()["files"][0]["embedded"])
        elif answer.status_code != 401:
            raise AssertionError(answer.text)

    def open_in_turns(extra: dict[str, object] | None = None) -> list[float]:
        """``rounds`` openings, of a new link every OPENINGS (the node's limit per link in
        ten minutes), each revoked after its turn."""
        took: list[float] = []
        while len(took) < rounds:
            made_link = make(extra)
            url = parse_uri(str(made_link["shlink"])).url
            took += timed(min(OPENINGS, rounds - len(took)), lambda url=url: open_link(url))
            own.delete(f"/v1/patients/{patient}/links/{made_link['id']}").raise_for_status()
        return took

    opened = open_in_turns()
    kinds_size = size
    summaries = open_in_turns({"summary": True, "types": []})
    wrong_link = parse_uri(str(make()["shlink"]))
    wrong = timed(min(rounds, 4), lambda: open_link(wrong_link.url, "not-the-passcode"))
    cards: list[float] = []
    for _ in range(rounds):  # each revoked after: at most 20 are active per patient and issuer
        start = time.perf_counter()
        card = own.post(f"/v1/patients/{patient}/cards", json={"kind": "immunizations"})
        card.raise_for_status()
        cards.append((time.perf_counter() - start) * 1000)
        own.delete(f"/v1/patients/{patient}/cards/{card.json()['id']}").raise_for_status()
    floor = timed(rounds, lambda: recipient.get(f"{server.url}/healthz").raise_for_status())
    plain = b"x" * max(1, kinds_size * 3 // 4)  # about the file's plaintext (before base64)
    key = new_key(b"\x01" * 32)
    crypto = timed(rounds, lambda: jwe.encrypt(plain, key, "application/fhir+json",
                                               compress=True))  # fmt: skip
    own.close()
    recipient.close()
    print(f"\nSMART Health Links and Cards ({rounds} rounds; milliseconds)")
    print(f"{'path':52} {'p50':>8} {'p99':>8} {'rounds':>7}")
    row("make a link (links.create on the ledger, QR)", made)
    row("revoke a link (links.revoke on the ledger)", revoked)
    row(f"open: 2 kinds of record (JWE of {kinds_size:,} chars)", opened)
    row("open: International Patient Summary", summaries)
    row("open: wrong passcode (401, counted)", wrong)
    row("issue a SMART Health Card (ES256, one QR)", cards)
    print("baselines, same run:")
    row("  HTTP floor: GET /healthz", floor)
    row("  the spec's cost: JWE (dir, A256GCM, DEF) in-process", crypto)
    rss = peak_rss(server)
    print(f"server peak RSS: {rss:,.0f} MiB")
    over_http = [
        ("make a link (links.create on the ledger, QR)", made, None),
        ("revoke a link (links.revoke on the ledger)", revoked, None),
        ("open: 2 kinds of record", opened, f"JWE of {kinds_size:,} chars"),
        ("open: International Patient Summary", summaries, None),
        ("open: wrong passcode (401, counted)", wrong, None),
        ("issue a SMART Health Card (ES256, one QR)", cards, None),
    ]
    for name, took, note in over_http:
        for p in (50, 99):
            figure(
                BENCH,
                f"{name} p{p}",
                pct(took, p),
                "ms",
                baseline=f"HTTP floor (GET /healthz) p{p}",
                baseline_value=pct(floor, p),
                note=note,
                peak_rss_mib=rss,
            )
    for p in (50, 99):
        figure(BENCH, f"HTTP floor: GET /healthz p{p}", pct(floor, p), "ms")
    for p in (50, 99):
        figure(
            BENCH,
            f"the spec's cost: JWE (dir, A256GCM, DEF) in-process p{p}",
            pct(crypto, p),
            "ms",
            note=f"{len(plain):,} bytes of plaintext",
        )
    figure(BENCH, "server peak RSS", rss, "MiB", peak_rss_mib=rss)


if __name__ == "__main__":
    main()
