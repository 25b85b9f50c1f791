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

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from . import errors
from .backends import GatewayError, IncompatibleModels
from .metrics import GatewayMetrics, MetricsMiddleware
from .routes import ROUTERS
from .routes.ops import STATIC, VERSION
from .security import install as install_guards
from .service import Gateway
from .settings import GatewaySettings

log = logging.getLogger("plotarmour.gateway")


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
            await pair.recheck()
            log.info("model servers ready: gpt2 at %s, bdh at %s", s.gpt2_address, s.bdh_address)
        except GatewayError as e:
            log.debug("model servers not ready: %s", e)


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

    app = FastAPI(title="PlotArmour gateway", version=VERSION, lifespan=lifespan)
    install_guards(app, settings)  # body size cap, API key, CORS
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the guards' 401/413 too
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    # The page's stylesheet and JS modules (plain files: no build step).
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
