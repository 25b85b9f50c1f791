"""The page and the operations routes: health, readiness, info, metrics."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from plotarmour.sampling import BLENDS

from ..errors import OpenAIErrors
from ..security import authorized
from ..service import GatewayDep, PairDep, SettingsDep

router = APIRouter(tags=["operations"], route_class=OpenAIErrors)
STATIC = Path(__file__).resolve().parent.parent / "static"
VERSION = "0.1.0"


def page() -> str:
    """index.html with the blend choices filled in from the one registry."""
    options = "".join(f'<option value="{name}" title="{html.escape(what)}"{" selected" if name == "linear" else ""}>'
                      f"{name}</option>" for name, what in BLENDS.items())
    return (STATIC / "index.html").read_text(encoding="utf-8").replace("<!--blend-options-->", options)


@router.get("/", include_in_schema=False)
async def index():
    return HTMLResponse(page())


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, gw: GatewayDep, pair: PairDep, settings: SettingsDep):
    """Ready or not, for anyone (load balancers carry no key); what is wrong, with the
    servers' addresses and gRPC errors, only behind the API key (and always in the log)."""
    problems = await gw.readiness()
    # ready keeps its meaning for probes (both servers up); each role says whether stories
    # that need only it can be written now.
    body = {"ready": not problems, "models": pair.up()}
    if authorized(request, settings):
        body.update({"problems": problems} if problems else {"tokenizer_fingerprint": pair.fingerprint})
    return JSONResponse(body, status_code=503 if problems else 200)


@router.get("/info")
async def info(gw: GatewayDep):
    s, p = gw.settings, gw.pair
    context, max_input, max_total = gw.token_limits()
    return {
        "gateway": {"version": VERSION, "problem": p.problem, "blends": BLENDS,
                    "limits": {k: getattr(s, k) for k in (
                        "max_concurrent", "max_new_tokens_limit", "default_max_new_tokens", "max_prompt_chars",
                        "max_prompt_tokens", "max_stop_sequences", "context_shift", "connect_timeout_s", "step_timeout_s")},
                    "models_context": context},
        "models": {b.role: {"address": b.address, **(dataclasses.asdict(b.info) if b.info else {})} for b in p},
        "tokenizer_fingerprint": p.fingerprint,
        # Text Generation Inference's /info fields, for its clients and dashboards.
        "model_id": s.model_name,
        "model_dtype": p.bdh.info.dtype if p.bdh.info else None,
        "model_device_type": p.bdh.info.device if p.bdh.info else None,
        "max_concurrent_requests": s.max_concurrent,
        "max_best_of": 1,
        "max_stop_sequences": s.max_stop_sequences,
        "max_input_tokens": max_input,
        "max_total_tokens": max_total,
        "version": VERSION,
        "router": "plotarmour-gateway",
    }


@router.get("/metrics")
async def prometheus(gw: GatewayDep):
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
