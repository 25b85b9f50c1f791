"""The FastAPI app: the routers of every surface over one `Gateway` (service.py).

`create_app(settings)` builds everything from one settings object; the gRPC channels open
in the lifespan (they belong to the server's event loop). Start-up fails only when both
servers answer and cannot be blended; a server that is not up yet is retried in the
background and `/ready` says what is missing.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import swagger_ui_bundle
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles

from . import errors
from .errors import GatewayError, IncompatibleModels
from .metrics import GatewayMetrics, MetricsMiddleware
from .routes import ROUTERS
from .routes.ops import STATIC, VERSION
from .security import install as install_guards
from .service import Gateway
from .settings import GatewaySettings

log = logging.getLogger("plotarmour.gateway")
SWAGGER_ASSETS = "/static/swagger-ui"  # under /static/: public, like the page's own files


async def keep_trying(gw: Gateway) -> None:
    # For the gateway's whole life, not just start-up: after a server fails mid-run
    # (pair.problem is set), re-check both every retry_interval_s, so a restarted
    # server is found by itself, without waiting for a request or a /ready probe.
    pair, s = gw.pair, gw.settings
    while True:
        await asyncio.sleep(s.retry_interval_s)
        if pair.problem is None:
            continue
        try:
            await pair.recheck()  # (says what is wrong through pair.problem, not by raising)
        except GatewayError as e:
            log.debug("model servers not ready: %s", e)
            continue
        if pair.problem is None:
            log.info("model servers ready: gpt2 at %s, bdh at %s", s.gpt2_address, s.bdh_address)
        else:
            log.debug("model servers not ready: %s", pair.problem)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gw = app.state.gateway = Gateway(settings, metrics)
        try:
            await gw.pair.refresh()
        except IncompatibleModels:
            await gw.pair.aclose()
            raise  # refuse to start: blending two vocabularies is meaningless
        except GatewayError as e:
            log.warning("starting without the model servers (retrying every %ss): %s", settings.retry_interval_s, e)
        retry = asyncio.create_task(keep_trying(gw))
        log.info("gateway up: gpt2 at %s, bdh at %s", settings.gpt2_address, settings.bdh_address)
        try:
            yield
        finally:
            retry.cancel()
            await gw.loop.stop()
            await gw.pair.aclose()
            await gw.peers.aclose()

    # /docs from Swagger UI's files in a Python package (FastAPI's own /docs loads them from a
    # CDN, blank offline); ReDoc has no such package, so /redoc is off.
    app = FastAPI(title="PlotArmour gateway", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None)
    install_guards(app, settings)  # body size cap, API key, CORS
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the guards' 401/413 too
    errors.install(app, ROUTERS)
    for router in ROUTERS:
        app.include_router(router)
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{SWAGGER_ASSETS}/favicon-32x32.png")

    # The page's stylesheet and JS modules (plain files: no build step).
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
