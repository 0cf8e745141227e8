"""One place that wires a node and its services (issue 14).

``NodeServices`` builds, from the settings (and, optionally, a node already made), a clock and a
source of randomness, every store and service the API serves, in the order they depend on each
other, registers their commit listeners, and starts and stops them in the one order that is safe
(``start``, ``close``). ``create_app`` uses it; the CLI and the demo loader use its smaller parts
(``records_for``, ``epcis_for``, ``readings_for``, ``visits_for``, ``token_issuer``) so that no
other module builds these services by hand (tests/unit/test_architecture.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from careledger.callers.tokens import TokenIssuer
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.config import EPCIS_FILE, Settings
from careledger.core.keys import KeyPair
from careledger.entropy import SYSTEM_RANDOM, Random

# The services are imported where they are built: `careledger token` needs the token issuer
# alone, and importing every service costs a CLI command over a second.
if TYPE_CHECKING:
    from careledger.health.service import HealthRecords
    from careledger.monitoring.ingest import Ingestor
    from careledger.monitoring.store import ReadingsStore
    from careledger.monitoring.visits import VisitsService
    from careledger.node import Node
    from careledger.supply.repository import EpcisRepository
    from careledger.supply.service import EpcisService


# -- the parts, each usable alone -----------------------------------------------------------


def records_for(
    node: Node, *, clock: Clock = SYSTEM_CLOCK, random: Random = SYSTEM_RANDOM
) -> HealthRecords:
    """The health records service over the node's vault, listening to its commits."""
    from careledger.health.service import HealthRecords

    return HealthRecords.for_node(node, clock=clock, random=random)


@contextmanager
def records_session(node: Node) -> Iterator[HealthRecords]:
    """``records_for(node)``, closed (and its listener removed) on leaving."""
    records = records_for(node)
    try:
        yield records
    finally:
        records.close()


def epcis_for(
    node: Node,
    settings: Settings,
    *,
    clock: Clock = SYSTEM_CLOCK,
    random: Random = SYSTEM_RANDOM,
) -> tuple[EpcisService, EpcisRepository]:
    """EPCIS capture over the node's event repository (the caller closes the repository)."""
    from careledger.supply.repository import EpcisRepository
    from careledger.supply.service import EpcisService

    repository = EpcisRepository(settings.data_dir / EPCIS_FILE)
    return EpcisService(node, repository, clock=clock, random=random), repository


def readings_for(
    node: Node,
    settings: Settings,
    *,
    clock: Clock = SYSTEM_CLOCK,
    random: Random = SYSTEM_RANDOM,
) -> tuple[ReadingsStore, Ingestor]:
    """The device readings store and the ingestor that windows readings into it (the caller
    starts and stops the ingestor and closes the store)."""
    from careledger.monitoring.ingest import Ingestor
    from careledger.monitoring.store import MONITORING_FILE, ReadingsStore

    store = ReadingsStore.for_node(settings.data_dir / MONITORING_FILE, node.ledger.node_key)
    ingestor = Ingestor(
        node,
        store,
        window_ms=settings.monitoring_window_ms,
        window_readings=settings.monitoring_window_readings,
        rng=random.token_bytes,
        clock=clock,
    )
    return store, ingestor


def visits_for(
    records: HealthRecords,
    settings: Settings,
    *,
    clock: Clock = SYSTEM_CLOCK,
    random: Random = SYSTEM_RANDOM,
) -> VisitsService:
    """Visits and their video links (the caller closes it)."""
    from careledger.monitoring.visits import VISITS_FILE, VisitsService

    return VisitsService(records, settings.data_dir / VISITS_FILE, clock=clock, random=random)


def token_issuer(
    chain: str,
    settings: Settings,
    node_key: KeyPair,
    *,
    ttl_seconds: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    random: Random = SYSTEM_RANDOM,
) -> TokenIssuer:
    """The node's bearer-token issuer (``ttl_seconds``: the settings' token lifetime)."""
    return TokenIssuer(
        chain=chain,
        node_name=settings.node_name,
        node_key=node_key,
        ttl_seconds=settings.token_ttl_seconds if ttl_seconds is None else ttl_seconds,
        clock=clock,
        random=random,
    )


# -- the whole node ---------------------------------------------------------------------------


class NodeServices:
    """A node and every service the API serves, built in dependency order.

    ``edge_listeners`` is called with the node once the records service listens to it and before
    any other service does: the edge's own commit listeners (metrics, the block signal, the app
    origins index) are registered there, so every listener runs in the order it always has.
    ``start`` and ``close`` are the one safe order; ``close`` is for a started node.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        node: Node | None = None,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
        edge_listeners: Callable[[Node], None] | None = None,
    ) -> None:
        from careledger.health.bulk_export import ExportJobs
        from careledger.health.federation import (
            FEDERATION_NONCES_FILE,
            MAX_AGE_MS,
            FederationClient,
            FederationServer,
        )
        from careledger.health.health_cards import HealthCards
        from careledger.health.replay_guard import ReplayGuard
        from careledger.health.share_links import ShareLinks
        from careledger.monitoring.readings import ReadingsService
        from careledger.monitoring.service import MonitoringService
        from careledger.monitoring.ticker import Ticker
        from careledger.node import Node
        from careledger.smart.apps_service import AppsService
        from careledger.smart.grants import SMART_FILE, GrantStore
        from careledger.smart.oauth import AuthorizationServer
        from careledger.smart.oidc import OidcKey
        from careledger.supply.alerts import AlertStore, AlertWatcher
        from careledger.supply.supply_service import SupplyService
        from careledger.supply.verification_log import VerificationLog
        from careledger.trials.consent_records import ConsentRecorder
        from careledger.trials.recruitment import (
            TRIALS_FILE,
            RecruitmentResponder,
            RecruitmentStore,
        )
        from careledger.trials.service import TrialsService

        data_dir = settings.data_dir
        self.settings, self.clock, self.random = settings, clock, random
        self.node = running = node or Node(settings)
        listeners = running.ledger.commit_listeners
        self.health = health = records_for(running, clock=clock, random=random)
        health.federation = FederationClient(health, clock=clock, random=random)
        self.nonces = ReplayGuard(data_dir / FEDERATION_NONCES_FILE, keep_ms=2 * MAX_AGE_MS)
        self.federation = FederationServer(health, self.nonces, clock=clock)
        if edge_listeners is not None:
            edge_listeners(running)
        self.exports = ExportJobs(health, data_dir, clock=clock, random=random)
        self.share_links = ShareLinks(health, data_dir, clock=clock, random=random)
        listeners.append(self.share_links.on_commit)
        self.health_cards = HealthCards(health, data_dir, clock=clock, random=random)
        listeners.append(self.exports.on_commit)
        self.epcis, self.epcis_repository = epcis_for(running, settings, clock=clock, random=random)
        self.epcis.recover()  # captures a stopped node left staged
        self.alert_store = AlertStore(data_dir / EPCIS_FILE)
        self.verification_log = VerificationLog(data_dir / EPCIS_FILE)
        self.alert_watcher = AlertWatcher(running.ledger, self.alert_store)
        self.alert_watcher.attach()  # catches up on blocks committed while the API was down
        self.supply = SupplyService(running, self.alert_store, self.verification_log, clock=clock)
        self.recruitment_store = RecruitmentStore(
            data_dir / TRIALS_FILE, clock=clock, random=random
        )
        self.recruitment = RecruitmentResponder(
            health, self.recruitment_store, clock=clock, random=random
        )
        self.consent_records = ConsentRecorder(health, data_dir / TRIALS_FILE, random=random)
        self.trials = TrialsService(running, health, self.recruitment_store)
        self.readings_store, self.ingestor = readings_for(
            running, settings, clock=clock, random=random
        )
        self.readings = ReadingsService(health, self.readings_store)
        listeners.append(self.readings.on_commit)  # erasure shreds readings
        listeners.append(self.ingestor.on_commit)  # and the live values
        self.monitoring = MonitoringService(health, self.ingestor, self.readings)
        self.ticker = Ticker(running, settings.monitoring_tick_seconds)
        self.visits = visits_for(health, settings, clock=clock, random=random)
        self.issuer = token_issuer(
            running.ledger.chain, settings, running.ledger.node_key, clock=clock, random=random
        )
        self.grants = GrantStore(data_dir / SMART_FILE, clock=clock, random=random)
        self.smart = AuthorizationServer(
            running.ledger, self.issuer, self.grants, OidcKey.for_node(data_dir), clock=clock
        )
        self.apps = AppsService(running, random=random)

    def start(self) -> None:
        self.node.start()
        self.recruitment.attach()  # after start: it answers queries committed while it was down
        self.consent_records.attach()
        self.ingestor.start()  # re-submits windows closed but not anchored before a restart
        self.ticker.start()

    def close(self) -> None:
        self.exports.close()  # before the node stops: a running job ends first
        self.ticker.stop()
        self.ingestor.stop()
        self.recruitment.detach()
        self.consent_records.detach()
        self.node.stop()
        self.health.close()
        self.alert_watcher.detach()
        self.epcis_repository.close()
        self.alert_store.close()
        self.verification_log.close()
        self.recruitment_store.close()
        self.readings_store.close()
        self.visits.close()
        self.nonces.close()
        self.grants.close()
        self.share_links.close()


__all__ = [
    "NodeServices",
    "epcis_for",
    "readings_for",
    "records_for",
    "records_session",
    "token_issuer",
    "visits_for",
]
