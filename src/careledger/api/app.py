"""The FastAPI application factory. Nothing happens at import time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from careledger import __version__
from careledger.api import errors
from careledger.api.body_limit import BodyLimit
from careledger.api.cors import AppOriginIndex, AppOrigins
from careledger.api.forwarded import ForwardedHeaders, networks
from careledger.api.metrics import Metrics
from careledger.api.routes import (
    auth,
    bulk,
    cards,
    chain,
    cluster,
    epcis,
    events,
    federation,
    fhir,
    health,
    links,
    monitoring,
    patients,
    smart,
    supply,
    trials,
    tx,
    visits,
)
from careledger.api.routes.events import BlockSignal
from careledger.auth import TokenIssuer
from careledger.config import EPCIS_FILE, Settings
from careledger.health.bulk_export import ExportJobs
from careledger.health.federation import (
    FEDERATION_NONCES_FILE,
    MAX_AGE_MS,
    FederationClient,
    FederationServer,
)
from careledger.health.health_cards import HealthCards
from careledger.health.replay_guard import ReplayGuard
from careledger.health.service import HealthRecords
from careledger.health.share_links import ShareLinks
from careledger.monitoring.ingest import Ingestor
from careledger.monitoring.readings import ReadingsService
from careledger.monitoring.service import MonitoringService
from careledger.monitoring.store import MONITORING_FILE, ReadingsStore
from careledger.monitoring.ticker import Ticker
from careledger.monitoring.visits import VISITS_FILE, VisitsService
from careledger.node import Node
from careledger.smart.grants import SMART_FILE, GrantStore
from careledger.smart.oauth import AuthorizationServer
from careledger.smart.oidc import OidcKey
from careledger.supply.alerts import AlertStore, AlertWatcher
from careledger.supply.repository import EpcisRepository
from careledger.supply.service import EpcisService
from careledger.supply.supply_service import SupplyService
from careledger.supply.verification_log import VerificationLog
from careledger.trials.consent_records import ConsentRecorder
from careledger.trials.recruitment import TRIALS_FILE, RecruitmentResponder, RecruitmentStore
from careledger.trials.service import TrialsService
from careledger.web import authorize
from careledger.web import routes as portal


def public_origin(settings: Settings) -> str:
    """Where clients reach this node: ``public_url`` if set, else the address it serves on
    (none when it listens on every interface: then the request's own URL is used)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if settings.host in ("0.0.0.0", "::", ""):  # noqa: S104 - a comparison, not a bind
        return ""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def create_app(settings: Settings, *, node: Node | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = node or Node(settings)
        metrics = Metrics()
        signal = BlockSignal(asyncio.get_running_loop())
        health = HealthRecords.for_node(running)
        health.federation = FederationClient(health)
        nonces = ReplayGuard(settings.data_dir / FEDERATION_NONCES_FILE, keep_ms=2 * MAX_AGE_MS)
        app.state.federation = FederationServer(health, nonces)
        running.ledger.commit_listeners.extend([metrics.on_commit, signal.pulse_threadsafe])
        app.state.app_origins = AppOriginIndex(running.ledger)
        running.ledger.commit_listeners.append(app.state.app_origins.on_commit)
        app.state.health = health
        app.state.exports = ExportJobs(health, settings.data_dir)
        app.state.share_links = ShareLinks(health, settings.data_dir)
        running.ledger.commit_listeners.append(app.state.share_links.on_commit)
        app.state.health_cards = HealthCards(health, settings.data_dir)
        running.ledger.commit_listeners.append(app.state.exports.on_commit)
        repository = EpcisRepository(settings.data_dir / EPCIS_FILE)
        app.state.epcis = EpcisService(running, repository)
        app.state.epcis.recover()  # captures a stopped node left staged
        alert_store = AlertStore(settings.data_dir / EPCIS_FILE)
        verification_log = VerificationLog(settings.data_dir / EPCIS_FILE)
        watcher = AlertWatcher(running.ledger, alert_store)
        watcher.attach()  # catches up on blocks committed while the API was down
        app.state.supply = SupplyService(running, alert_store, verification_log)
        recruitment = RecruitmentStore(settings.data_dir / TRIALS_FILE)
        responder = RecruitmentResponder(health, recruitment)
        consent_records = ConsentRecorder(health, settings.data_dir / TRIALS_FILE)
        app.state.trials = TrialsService(running, health, recruitment)
        app.state.recruitment = responder
        readings_store = ReadingsStore.for_node(
            settings.data_dir / MONITORING_FILE, running.ledger.node_key
        )
        ingestor = Ingestor(
            running,
            readings_store,
            window_ms=settings.monitoring_window_ms,
            window_readings=settings.monitoring_window_readings,
        )
        readings = ReadingsService(health, readings_store)
        running.ledger.commit_listeners.append(readings.on_commit)  # erasure shreds readings
        running.ledger.commit_listeners.append(ingestor.on_commit)  # and the live values
        app.state.monitoring = MonitoringService(health, ingestor, readings)
        ticker = Ticker(running, settings.monitoring_tick_seconds)
        app.state.visits = VisitsService(health, settings.data_dir / VISITS_FILE)
        metrics.head_height.set(running.ledger.head.height)
        metrics.log_size.set(running.ledger.head.log_size)
        app.state.node = running
        app.state.metrics = metrics
        app.state.block_signal = signal
        app.state.issuer = TokenIssuer(
            chain=running.ledger.chain,
            node_name=settings.node_name,
            node_key=running.ledger.node_key,
            ttl_seconds=settings.token_ttl_seconds,
        )
        app.state.public_origin = public_origin(settings)
        grants = GrantStore(settings.data_dir / SMART_FILE)
        app.state.smart = AuthorizationServer(
            running.ledger, app.state.issuer, grants, OidcKey.for_node(settings.data_dir)
        )
        running.start()
        responder.attach()  # after start: it answers queries committed while it was down
        consent_records.attach()
        ingestor.start()  # re-submits windows closed but not anchored before a restart
        ticker.start()
        try:
            yield
        finally:
            app.state.exports.close()  # before the node stops: a running job ends first
            ticker.stop()
            ingestor.stop()
            responder.detach()
            consent_records.detach()
            running.stop()
            health.close()
            watcher.detach()
            repository.close()
            alert_store.close()
            verification_log.close()
            recruitment.close()
            readings_store.close()
            app.state.visits.close()
            nonces.close()
            grants.close()
            app.state.share_links.close()

    app = FastAPI(
        title="CareLedger",
        version=__version__,
        description="A permissioned, provable ledger for health data.",
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own assets: /docs works offline
        redoc_url=None,
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="CareLedger API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="/favicon.ico",
            # 19 groups, some 130 operations: listed by group, each opened on demand (the
            # bundled Swagger UI stops rendering the operations of every group at once at
            # this size, after the first group)
            swagger_ui_parameters={"docExpansion": "none"},
        )

    errors.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(AppOrigins)
    # outermost: a trusted proxy's scheme, host and client are what every layer sees
    app.add_middleware(
        ForwardedHeaders,
        trusted=networks(settings.trusted_proxies),
        family=settings.forwarded_headers,
    )
    routers = (
        tx,
        chain,
        cluster,
        federation,
        events,
        auth,
        health,
        fhir,
        patients,
        epcis,
        supply,
        monitoring,
        visits,
        links,
        cards,
    )
    app.include_router(smart.router)  # before /fhir/{type}/{id}: /fhir/.well-known/...
    app.include_router(bulk.router)  # before /fhir/{type}/{id}: /fhir/Patient/$export
    for module in routers:
        app.include_router(module.router)
    app.include_router(trials.router)
    app.include_router(trials.feasibility_router)
    app.include_router(trials.payments_router)
    app.include_router(portal.router)
    app.include_router(authorize.router)
    app.mount("/static", StaticFiles(directory=str(portal.HERE / "static")), name="static")
    app.state.error_page = portal.error_page  # portal errors as pages (api/errors.py)
    return app
