"""The visits, device-readings, EPCIS, supply and trials services decide by the clock and the
randomness they are given (issue 14): ids come from the given ``Random``, the times they record
and judge by from the given ``Clock``, and a window's age from the given monotonic source. The
ledger around them is a dict (the contracts' views read it through their own keys)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import EPCIS_FILE
from careledger.contracts.identity import member_key
from careledger.contracts.monitoring import binding_key, device_key
from careledger.contracts.supply import COMMISSIONED, unit_key
from careledger.contracts.trials import participant_key, study_key
from careledger.contracts.visits import visit_key
from careledger.core.keys import KeyPair
from careledger.errors import Forbidden
from careledger.monitoring.device import sign_batch
from careledger.monitoring.ingest import Ingestor
from careledger.monitoring.service import MonitoringService
from careledger.monitoring.store import MONITORING_FILE, ReadingsStore
from careledger.monitoring.visits import VISITS_FILE, VisitsService
from careledger.sqlite_threads import iso_ms
from careledger.supply.alerts import AlertStore
from careledger.supply.repository import EpcisRepository
from careledger.supply.service import EpcisService
from careledger.supply.supply_service import SupplyService
from careledger.supply.verification_log import VerificationLog
from careledger.trials.consent_records import ConsentRecorder
from careledger.trials.recruitment import TRIALS_FILE, RecruitmentResponder, RecruitmentStore
from tests.support.sources import CountingRandom, FakeClock, counted

NOW = 1_000_000_000  # 2001-09-09T01:46:40Z: long past by the machine's clock
NODE_KEY = KeyPair.from_seed(bytes(32))
ORG = "st-mary"


class FakeLedger:
    """Committed state as a dict of (namespace, key) -> value."""

    def __init__(self) -> None:
        self.node_key = NODE_KEY
        self.entries: dict[tuple[str, str], Any] = {}
        self.store = self  # state_keys is the store's
        self.commit_listeners: list[Any] = []

    def state(self, namespace: str, key: str) -> Any:
        return self.entries.get((namespace, key))

    def state_keys(self, namespace: str, prefix: str, limit: int) -> list[str]:
        keys = sorted(k for n, k in self.entries if n == namespace and k.startswith(prefix))
        return keys[:limit]


class FakeNode:
    def __init__(self) -> None:
        self.ledger = FakeLedger()
        self.settings = type("Settings", (), {"org": ORG, "node_name": "node-a"})()
        self.acted: list[tuple[str, str, str, dict[str, Any]]] = []

    def act_for(self, namespace: str, member: str, method: str, args: dict[str, Any]) -> Any:
        self.acted.append((namespace, member, method, args))
        if (namespace, method) == ("visits", "schedule"):
            visit = {**args, "clinician": member, "status": "scheduled", "org": ORG}
            self.ledger.entries[("visits", visit_key(args["id"]))] = visit
        return {"result": "accepted", "tx_id": "tx-1"}

    @property
    def verify_pool(self) -> FakeNode:
        return self  # submit(...) runs at once

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(fn(*args))
        return done


class FakeRecords:
    """The slice of HealthRecords the services use: the node, its ledger, writes captured."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.ledger = node.ledger
        self.org = ORG
        self.written: list[tuple[dict[str, Any], str, int, str]] = []

    def node_caller(self) -> Caller:
        return caller("node-a", {"node"})

    def write_then(self, who: Caller, writes: list[Any], then: Any) -> tuple[list[Any], Any]:
        self.written += writes
        return [], ({"result": "accepted", "tx_id": "tx-2"},)

    def write_all(self, who: Caller, writes: list[Any]) -> list[Any]:
        self.written += writes
        return []


def caller(member: str, roles: set[str], org: str = ORG) -> Caller:
    return Caller(member, org, frozenset(roles), parse_scopes(default_scopes(roles)))


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


# -- visits ---------------------------------------------------------------------------------


@pytest.fixture
def visits(node: FakeNode, tmp_path: Path) -> Iterator[tuple[VisitsService, FakeClock]]:
    clock = FakeClock(NOW)
    service = VisitsService(
        FakeRecords(node),  # type: ignore[arg-type]
        tmp_path / VISITS_FILE,
        clock=clock,
        random=CountingRandom(),
    )
    try:
        yield service, clock
    finally:
        service.close()


def test_a_visit_id_comes_from_the_given_random(
    visits: tuple[VisitsService, FakeClock], node: FakeNode
) -> None:
    service, _ = visits
    start = NOW * 1000 + 3_600_000
    body = {"patient": "pat-1", "start": start, "end": start + 1_800_000,
            "link": "https://video.example/room"}  # fmt: skip
    scheduled = service.schedule(caller("dr-a", {"clinician"}), body)
    assert scheduled["visit"]["id"] == "visit-" + counted(0, 8).hex()
    assert node.acted[0][3]["id"] == scheduled["visit"]["id"]  # the id the ledger was given


def test_a_visit_is_upcoming_or_past_by_the_given_clock(
    visits: tuple[VisitsService, FakeClock], node: FakeNode
) -> None:
    service, clock = visits
    end = NOW * 1000 + 3_600_000  # in an hour, by the clock; in 2001, by the machine's
    visit = {"id": "v1", "patient": "pat-1", "clinician": "dr-a", "start": end - 1_800_000,
             "end": end, "status": "scheduled"}  # fmt: skip
    node.ledger.entries[("visits", visit_key("v1"))] = visit
    node.ledger.entries[("visits", "by-clinician/dr-a/v1")] = {}
    dr = caller("dr-a", {"clinician"})
    mine = service.mine(dr)
    assert [v["id"] for v in mine["upcoming"]] == ["v1"] and mine["past"] == []
    clock.now = NOW + 3_601
    mine = service.mine(dr)
    assert mine["upcoming"] == [] and [v["id"] for v in mine["past"]] == ["v1"]


def test_a_visit_note_carries_the_clock_time_and_ids_from_the_random(
    visits: tuple[VisitsService, FakeClock], node: FakeNode
) -> None:
    service, clock = visits
    clock.now = NOW + 42.5
    started = NOW * 1000 - 600_000
    visit = {"id": "v1", "patient": "pat-1", "clinician": "dr-a", "start": started,
             "end": started + 1_800_000, "started": started, "status": "in_progress"}  # fmt: skip
    node.ledger.entries[("visits", visit_key("v1"))] = visit
    ended = service.end(caller("dr-a", {"clinician"}), "v1", "all well")
    assert (ended["encounter"], ended["note"]) == (counted(0, 16).hex(), counted(16, 16).hex())
    records: FakeRecords = service.records  # type: ignore[assignment]
    (encounter, encounter_id, _, _), (note, note_id, _, _) = records.written
    assert (encounter_id, note_id) == (ended["encounter"], ended["note"])
    at = iso_ms(NOW * 1000 + 42_500)
    assert encounter["period"] == {"start": iso_ms(started), "end": at}
    assert note["date"] == at


# -- device readings ------------------------------------------------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_is_stamped_by_the_clock_and_its_window_closes_by_the_monotonic_source(
    node: FakeNode, tmp_path: Path
) -> None:
    device, patient = KeyPair.from_seed(b"d" * 32), KeyPair.from_seed(b"p" * 32)
    since = NOW * 1000 - 60_000
    node.ledger.entries.update({
        ("monitoring", device_key("oxi-1")): {"org": ORG, "status": "active",
                                              "key": device.public_b64},
        ("monitoring", binding_key("oxi-1")): {"patient": "pat-1", "status": "active",
                                               "since": since},
        ("identity", member_key("pat-1")): {"key": patient.public_b64},
    })  # fmt: skip
    store = ReadingsStore.for_node(tmp_path / MONITORING_FILE, NODE_KEY)
    clock, monotonic = FakeClock(NOW + 7.25), FakeMonotonic()
    ingestor = Ingestor(
        node,  # type: ignore[arg-type]
        store,
        window_ms=2000,
        clock=clock,
        monotonic=monotonic,
    )  # not started: this test drives the windows
    try:
        batch = {"device": "oxi-1", "seq": 1,
                 "compact": {"t0": since + 1000, "codes": ["59408-5"], "rows": [[0, 97]]}}  # fmt: skip
        # the routes stamp arrival before reading the body, on the ingestor's own source
        service = MonitoringService(
            SimpleNamespace(node=node, ledger=node.ledger),  # type: ignore[arg-type]
            ingestor,
            None,  # type: ignore[arg-type]  # readings out: not used here
        )
        arrived = service.arrived()
        assert arrived == 500.0
        monotonic.now = 501.5  # the body took 1.5 s to come in
        ack = service.accept("oxi-1", sign_batch(device, batch), arrived)
        stored = store.batch("oxi-1", 1)
        assert stored is not None and stored.received_ms == NOW * 1000 + 7_250
        monotonic.now = 501.999  # open for 1.999 s of a 2 s window: still open
        assert ingestor.close_due() == 0
        assert store.window("oxi-1", ack.window) is None
        monotonic.now = 502.0  # 2 s: due, with no sleep
        assert ingestor.close_due() == 1
        closed = store.window("oxi-1", ack.window)
        assert closed is not None and closed.status == "closed" and closed.count == 1
    finally:
        store.close()


# -- EPCIS and supply -------------------------------------------------------------------------


def test_an_epcis_capture_id_comes_from_the_random_and_its_time_from_the_clock(
    node: FakeNode, tmp_path: Path
) -> None:
    repository = EpcisRepository(tmp_path / EPCIS_FILE)
    service = EpcisService(
        node,  # type: ignore[arg-type]
        repository,
        clock=FakeClock(NOW),
        random=CountingRandom(),
    )
    try:
        failed = service.capture(caller("node-a", {"node"}), {"not": "EPCIS"})
        assert failed["captureID"] == "cap-" + counted(0, 12).hex()
        assert failed["createdAt"] == "2001-09-09T01:46:40Z"
        assert failed["status"] == "failed" and failed["errors"]
        again = service.capture(caller("node-a", {"node"}), {"not": "EPCIS"})
        assert again["captureID"] == "cap-" + counted(12, 12).hex()
    finally:
        repository.close()


def test_a_verification_is_timed_and_judged_by_the_clock(node: FakeNode, tmp_path: Path) -> None:
    gtin = "09506000134352"
    node.ledger.entries[("supply", unit_key(gtin, "S1"))] = {
        "status": COMMISSIONED, "lot": "L1", "expiry": "250131", "flags": []
    }  # fmt: skip
    clock = FakeClock(NOW)
    alerts, log = AlertStore(tmp_path / EPCIS_FILE), VerificationLog(tmp_path / EPCIS_FILE)
    service = SupplyService(node, alerts, log, clock=clock)  # type: ignore[arg-type]
    request = {"gtin": gtin, "serialNumber": "S1", "lotNumber": "L1", "expirationDate": "250131"}
    try:
        answer = service.verify(None, request)
        assert answer["verificationTimestamp"] == "2001-09-09T01:46:40.000Z"
        assert answer["data"] == {"verified": True}  # in 2001 the pack is in date
        clock.now = datetime(2025, 2, 1, 12, tzinfo=UTC).timestamp()
        later = service.verify(None, request)
        assert later["verificationTimestamp"] == "2025-02-01T12:00:00.000Z"
        assert later["data"] == {"verified": True, "additionalInfo": "Expired"}
    finally:
        alerts.close()
        log.close()


# -- trials ---------------------------------------------------------------------------------


def test_recruitment_ids_times_and_pseudonym_key_come_from_the_given_sources(
    tmp_path: Path,
) -> None:
    clock = FakeClock(NOW)
    store = RecruitmentStore(tmp_path / TRIALS_FILE, clock=clock, random=CountingRandom())
    try:
        key = counted(0, 32)  # the first bytes drawn: the pseudonym key
        expected = int.from_bytes(hashlib.blake2b(b"pat-1", key=key, digest_size=8).digest())
        assert store.pseudonyms(["pat-1"]) == frozenset({expected})
        assert store.invite("q1", "study-1", ORG, "pat-1")
        (invitation,) = store.invitations_for("pat-1")
        assert invitation["id"] == counted(32, 12).hex()
        assert invitation["created"] == iso_ms(NOW * 1000)
        clock.now = NOW + 90
        answered = store.respond("pat-1", invitation["id"], "interested")
        assert answered["answered"] == iso_ms(NOW * 1000 + 90_000)
        assert store.interested("study-1", ORG) == [
            {"patient": "pat-1", "answered": iso_ms(NOW * 1000 + 90_000)}
        ]
    finally:
        store.close()


class InvitingRecords(FakeRecords):
    """One patient, born 2000-06-15, who opted in to research contact."""

    def __init__(self, node: FakeNode) -> None:
        super().__init__(node)
        self.vault = type("Vault", (), {"store": self})()

    def live_records(self, types: frozenset[str]) -> list[tuple[str, str, int, str]]:
        return [("pat-1", "rec-1", 1, "Patient")]

    def open_anchored(self, record_id: str, version: int) -> dict[str, Any]:
        return {"resourceType": "Patient", "id": record_id, "birthDate": "2000-06-15"}

    def authorise(self, who: Caller, **asked: Any) -> None:
        if asked["purpose"] != "HRESCH":
            raise Forbidden("no", code="NOT_AUTHORISED")


class InvitationsSeen:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, str]] = []

    def invited(self, study: str, site: str, patient: str) -> bool:
        return False

    def invite(self, query: str, study: str, site: str, patient: str) -> bool:
        self.sent.append((query, study, site, patient))
        return True


def test_a_site_invitation_run_judges_ages_on_the_clock_day_and_is_named_by_the_random(
    node: FakeNode,
) -> None:
    clock, seen = FakeClock(datetime(2018, 6, 14, 23, tzinfo=UTC).timestamp()), InvitationsSeen()
    responder = RecruitmentResponder(
        InvitingRecords(node),  # type: ignore[arg-type]
        seen,  # type: ignore[arg-type]
        clock=clock,
        random=CountingRandom(),
    )
    study: Mapping[str, Any] = {"eligibility": {"age": [18, 150]}}
    # the day before the 18th birthday, by the clock: evaluated, not eligible
    assert responder.invite_for_study("study-1", dict(study)) == {
        "evaluated": 1, "matched": 0, "invited": 0
    }  # fmt: skip
    clock.now = datetime(2018, 6, 15, 1, tzinfo=UTC).timestamp()
    assert responder.invite_for_study("study-1", dict(study)) == {
        "evaluated": 1, "matched": 1, "invited": 1
    }  # fmt: skip
    # each run's id is drawn from the given random: the second run's is bytes 8..15
    assert seen.sent == [("site-" + counted(8, 8).hex(), "study-1", ORG, "pat-1")]


def test_a_participant_consent_record_id_comes_from_the_random(
    node: FakeNode, tmp_path: Path
) -> None:
    node.ledger.entries.update({
        ("trials", study_key("study-1")): {"id": "study-1",
                                          "protocols": [{"version": 1, "hash": "ab"}]},
        ("trials", participant_key("study-1", "pat-1")): {
            "site": ORG, "consents": [{"version": 1, "time": NOW * 1000, "tx": "tx-9"}]},
    })  # fmt: skip
    records = FakeRecords(node)
    recorder = ConsentRecorder(
        records,  # type: ignore[arg-type]
        tmp_path / TRIALS_FILE,
        random=CountingRandom(),
    )
    try:
        record = recorder.sync("study-1", "pat-1")
        assert record == counted(0, 16).hex()
        ((consent, written_id, version, patient),) = records.written
        assert (written_id, version, patient) == (record, 1, "pat-1")
        assert consent["resourceType"] == "Consent"
        assert recorder.record_of("study-1", "pat-1") == record
    finally:
        recorder.detach()
