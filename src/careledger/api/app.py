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
from careledger.api.forwarded import ForwardedHeaders
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
from careledger.clock import SYSTEM_CLOCK
from careledger.config import Settings, networks
from careledger.entropy import SYSTEM_RANDOM
from careledger.node import Node
from careledger.web import authorize
from careledger.web import routes as portal
from careledger.wiring import NodeServices


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
        metrics = Metrics()
        signal = BlockSignal(asyncio.get_running_loop())

        def edge_listeners(running: Node) -> None:
            running.ledger.commit_listeners.extend([metrics.on_commit, signal.pulse_threadsafe])
            app.state.app_origins = AppOriginIndex(running.ledger)
            running.ledger.commit_listeners.append(app.state.app_origins.on_commit)

        services = NodeServices(
            settings,
            node=node,
            clock=SYSTEM_CLOCK,
            random=SYSTEM_RANDOM,
            edge_listeners=edge_listeners,
        )
        running = services.node
        app.state.services = services
        app.state.federation = services.federation
        app.state.health = services.health
        app.state.exports = services.exports
        app.state.share_links = services.share_links
        app.state.health_cards = services.health_cards
        app.state.epcis = services.epcis
        app.state.supply = services.supply
        app.state.trials = services.trials
        app.state.recruitment = services.recruitment
        app.state.monitoring = services.monitoring
        app.state.visits = services.visits
        metrics.head_height.set(running.ledger.head.height)
        metrics.log_size.set(running.ledger.head.log_size)
        app.state.node = running
        app.state.metrics = metrics
        app.state.block_signal = signal
        app.state.issuer = services.issuer
        app.state.public_origin = public_origin(settings)
        app.state.smart = services.smart
        services.start()
        try:
            yield
        finally:
            services.close()

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
