"""``NodeServices`` on a real demo node hands its clock and randomness to the services it builds
(issue 14): under a fake clock an hour ahead of the machine's, a token it issues expires when the
fake clock passes its expiry, a visit is upcoming or past by the fake clock, a visit's note and a
supply verification carry the fake time, and an EPCIS capture id is one of its random draws.
The node starts and closes cleanly."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.contracts.base import Signer
from careledger.contracts.identity import member_of
from careledger.errors import Unauthorized
from careledger.keyfile import read_key_file
from careledger.sqlite_threads import iso_ms
from careledger.wiring import NodeServices
from tests.support.nodes import demo_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLINICIAN = "dr-ana-silva"
ORG = "st-mary"


class AdvancingClock:
    """A wall clock that moves only when the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return self.now

    def now_ms(self) -> int:
        return int(self.now * 1000)


class SeededRandom:
    """Distinct, reproducible bytes (SHAKE-256 of a seed and a counter), every draw kept."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.draws: list[bytes] = []
        self._lock = threading.Lock()

    def token_bytes(self, n: int) -> bytes:
        with self._lock:
            out = hashlib.shake_256(self.seed + len(self.draws).to_bytes(8, "big")).digest(n)
            self.draws.append(out)
            return out


def caller(member: str, roles: set[str]) -> Caller:
    return Caller(member, ORG, frozenset(roles), parse_scopes(default_scopes(roles)))


def test_node_services_run_on_the_clock_and_randomness_they_are_given(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data)
    wall = float(int(time.time()))
    clock, random = AdvancingClock(wall + 3600.25), SeededRandom(b"wiring-clock")
    services = NodeServices(Settings.load(data), clock=clock, random=random)
    services.start()
    try:
        assert (services.clock, services.random) == (clock, random)
        ledger = services.node.ledger
        dr = caller(CLINICIAN, {"clinician"})

        # a token is issued at the fake now, and expires when the fake clock passes it
        member = member_of(ledger.state, CLINICIAN)
        assert member is not None
        signer = Signer(str(member["key"]), CLINICIAN, ORG, frozenset({"clinician"}))
        token, ttl = services.issuer.issue(signer)
        claims = services.issuer.verify(token)
        assert claims.expires == int(clock.time()) + ttl
        clock.advance(ttl - 1)
        assert services.issuer.verify(token).member == CLINICIAN
        clock.advance(1)
        with pytest.raises(Unauthorized) as expired:
            services.issuer.verify(token)
        assert expired.value.code == "TOKEN_EXPIRED"

        # a visit: its id drawn from the given random; upcoming or past by the fake clock
        patient_file = sorted((data / "keys" / "patients").glob("*.key"))[-1]
        patient, patient_key = patient_file.stem, read_key_file(patient_file)[1]
        start = ledger.head.time - 60_000  # open now by block time (the ledger's own clock)
        clock.now = start / 1000 + 3600  # an hour into the visit by the fake clock
        body = {"patient": patient, "start": start, "end": start + 2 * 3_600_000,
                "link": "https://video.example/wired"}  # fmt: skip
        scheduled = services.visits.schedule(dr, body)
        assert scheduled["receipt"]["result"] == "accepted"
        visit_id = scheduled["visit"]["id"]
        assert visit_id[len("visit-") :] in {d.hex() for d in random.draws if len(d) == 8}
        assert visit_id in {v["id"] for v in services.visits.mine(dr)["upcoming"]}
        clock.advance(2 * 3600)  # past its end by the fake clock (not by the machine's)
        mine = services.visits.mine(dr)
        assert visit_id in {v["id"] for v in mine["past"]}
        assert visit_id not in {v["id"] for v in mine["upcoming"]}

        # its note is written at the fake time
        (consented,) = services.node.execute(
            [("visits", "consent", {"id": visit_id, "recording": False})], keypair=patient_key
        )
        assert consented["result"] == "accepted", consented
        started = services.visits.step(dr, visit_id, "start")
        assert started["receipt"]["result"] == "accepted", started
        clock.now = wall + 7200.125
        ended = services.visits.end(dr, visit_id, "Seen by video; all well.")
        assert ended["receipt"]["result"] == "accepted"
        node_key = ledger.node_key
        encounter, _ = services.health.vault.open(ended["encounter"], None, node_key)
        note, _ = services.health.vault.open(ended["note"], None, node_key)
        at = iso_ms(int((wall + 7200.125) * 1000))
        assert encounter["period"]["end"] == at  # type: ignore[index]
        assert note["date"] == at

        # a supply verification is stamped by the fake clock
        answer = services.supply.verify(None, {"gtin": "09506000134352", "serialNumber": "X1"})
        assert answer["verificationTimestamp"] == at
        assert answer["data"]["verified"] is False

        # an EPCIS capture id is drawn from the given random, at the fake time
        failed = services.epcis.capture(caller("node-a", {"node"}), {"not": "EPCIS"})
        assert failed["captureID"][len("cap-") :] in {d.hex() for d in random.draws}
        assert failed["createdAt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall + 7200))
    finally:
        services.close()
    alive = {t.name for t in threading.enumerate() if t.is_alive()}
    assert not alive & {"anchorer", "monitoring-tick"}  # the background threads stopped
