"""The FastAPI app: routes over the blending loop, the validator and the two model servers.

`create_app(settings)` builds everything from one settings object; the gRPC channels open
in the lifespan (they belong to the server's event loop). Start-up fails only when both
servers answer and cannot be blended; a server that is not up yet is retried in the
background and `/ready` says what is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from plotarmour.sampling import SamplingParams

from .backends import GatewayError, IncompatibleModels, ModelPair, ModelUnavailable
from .generation import GenerationLoop, GenerationParams, Registry, generate
from .metrics import GatewayMetrics, MetricsMiddleware, StepTimer
from .schemas import CompletionRequest, GenerateRequest, SteerRequest, ValidateRequest
from .security import install as install_guards
from .settings import GatewaySettings
from .validator import ValidatorParams, find_spans, surprisal_bits

log = logging.getLogger("plotarmour.gateway")
STATIC = Path(__file__).parent / "static"


class InvalidField(GatewayError):
    """A request that passed the schema but breaks a configured limit."""

    status = 422

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class TooBusy(GatewayError):
    status = 429


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    # OpenAI's error shape, so the openai package reports our messages as they are.
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def gateway_error_body(e: GatewayError) -> dict:
    return error_body(str(e), type(e).__name__, getattr(e, "field", None))


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Slot:
    """One place under the concurrency limit; release is idempotent."""

    def __init__(self, limiter: Limiter):
        self._limiter, self._held = limiter, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.active -= 1
            self._limiter.metrics.active.set(self._limiter.active)


class Limiter:
    def __init__(self, limit: int, metrics: GatewayMetrics):
        self.limit, self.metrics, self.active = limit, metrics, 0

    def acquire(self) -> Slot:
        if self.active >= self.limit:
            self.metrics.rejected.inc()
            raise TooBusy(f"the gateway is running its limit of {self.limit} requests; retry shortly")
        self.active += 1
        self.metrics.active.set(self.active)
        return Slot(self)


class ManagedStream(StreamingResponse):
    """A streaming response that always runs its cleanup, even if the client left before
    the first byte (Starlette then never iterates the body, so a generator's `finally`
    alone would not run)."""

    def __init__(self, content, cleanup, **kwargs):
        super().__init__(content, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    limiter = Limiter(settings.max_concurrent, metrics)
    registry = Registry()
    holder: dict[str, ModelPair] = {}

    async def keep_trying(pair: ModelPair) -> None:
        # For the gateway's whole life, not just start-up: after a server fails mid-run
        # (pair.problem is set), re-check both every retry_interval_s, so a restarted
        # server is found by itself, without waiting for a request or a /ready probe.
        while True:
            await asyncio.sleep(settings.retry_interval_s)
            if pair.problem is None:
                continue
            try:
                await pair.refresh()
                log.info("model servers ready: gpt2 at %s, bdh at %s", settings.gpt2_address, settings.bdh_address)
            except GatewayError as e:
                log.debug("model servers not ready: %s", e)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pair = holder["pair"] = ModelPair(settings)
        holder["loop"] = GenerationLoop(pair)
        try:
            await pair.refresh()
        except IncompatibleModels:
            await pair.aclose()
            raise  # refuse to start: blending two vocabularies is meaningless
        except GatewayError as e:
            log.warning("starting without the model servers (retrying every %ss): %s", settings.retry_interval_s, e)
        retry = asyncio.create_task(keep_trying(pair))
        log.info("gateway up: gpt2 at %s, bdh at %s", settings.gpt2_address, settings.bdh_address)
        try:
            yield
        finally:
            retry.cancel()
            await holder["loop"].stop()
            await pair.aclose()

    app = FastAPI(title="PlotArmour gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings, app.state.metrics, app.state.registry = settings, metrics, registry
    install_guards(app, settings)  # body size cap, API key, CORS
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the guards' 401/413 too

    # ---- errors --------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        body = error_body(f"{field}: {first['msg']}", "invalid_request_error", field)
        # Each error's location, message and type; never the raw input, which may be NaN,
        # an infinity or a lone surrogate that no JSON encoder can write back.
        body["detail"] = [{"loc": [str(p) for p in e["loc"]], "msg": str(e["msg"]), "type": str(e["type"])}
                          for e in errors]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError):
        return JSONResponse(gateway_error_body(exc), status_code=exc.status)

    # ---- the generation path -----------------------------------------------------------
    def pair() -> ModelPair:
        return holder["pair"]

    async def prepare(req: GenerateRequest) -> GenerationParams:
        """Settings-dependent checks (no server needed), then tokenize with the servers' tokenizer."""
        max_new = req.max_new_tokens or min(settings.default_max_new_tokens, settings.max_new_tokens_limit)
        if max_new > settings.max_new_tokens_limit:
            raise InvalidField("max_new_tokens", f"{max_new} is over the limit of {settings.max_new_tokens_limit}")
        if len(req.prompt) > settings.max_prompt_chars:
            raise InvalidField("prompt", f"{len(req.prompt)} characters is over the limit of {settings.max_prompt_chars}")
        if len(req.stop) > settings.max_stop_sequences:
            raise InvalidField("stop", f"{len(req.stop)} stop sequences; at most {settings.max_stop_sequences}")
        tok = await pair().ensure_ready()
        ids = tok.encode(req.prompt).ids
        limit = min(settings.max_prompt_tokens, pair().max_context - 1)
        if len(ids) > limit:
            raise InvalidField("prompt", f"{len(ids)} tokens is over the limit of {limit}")
        return GenerationParams(
            prompt_ids=ids, logic_weight=req.logic_weight, blend=req.blend, max_new_tokens=max_new,
            sampling=SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p),
            seed=req.seed if req.seed is not None else secrets.randbits(63), stop=req.stop,
        )

    async def start(req: GenerateRequest):
        """Take a slot, prefill both models and return (start event, the remaining events).

        Everything that can fail before the first token fails here, as an HTTP status."""
        slot = limiter.acquire()
        try:
            params = await prepare(req)
            gen = registry.start(req.logic_weight)
            events = run(params, gen, slot)
            first = await anext(events)
        except BaseException:
            slot.release()
            raise
        return first, events

    async def run(params: GenerationParams, gen, slot: Slot):
        t0, timer = time.perf_counter(), StepTimer(metrics.step)
        try:
            async for ev in generate(holder["loop"], gen, params):
                if ev["type"] == "token":
                    metrics.tokens.inc()
                    timer.tick()
                    if ev["index"] == 0:
                        metrics.ttft.observe(time.perf_counter() - t0)
                elif ev["type"] == "end":
                    metrics.finished.labels(ev["finish_reason"]).inc()
                yield ev
        except GatewayError as e:
            metrics.model_errors.labels(type(e).__name__).inc()
            if isinstance(e, ModelUnavailable):
                pair().problem = str(e)  # the next request re-checks the servers first
            raise
        finally:
            registry.finish(gen)
            slot.release()

    async def collect(req: GenerateRequest) -> tuple[dict, list[dict], dict]:
        first, events = await start(req)
        tokens, end = [], None
        async for ev in events:
            if ev["type"] == "token":
                tokens.append(ev)
            else:
                end = ev
        return first, tokens, end

    def stream(first: dict, events, encode) -> ManagedStream:
        """SSE over `events`; `encode(ev)` gives the bytes of one event (or None to skip)."""

        async def body():
            head = encode(first)
            if head:
                yield head
            try:
                async for ev in events:
                    chunk = encode(ev)
                    if chunk:
                        yield chunk
            except GatewayError as e:
                yield encode({"type": "error", **gateway_error_body(e), "status": e.status})
            except Exception as e:  # a bug must still end the stream with an event, not a hang
                log.exception("generation failed")
                yield encode({"type": "error", **error_body(f"internal error: {e!r}", "InternalError"), "status": 500})

        async def cleanup():
            await events.aclose()

        return ManagedStream(body(), cleanup, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                      "X-Generation-Id": first["id"]})

    # ---- routes: generation ------------------------------------------------------------
    @app.post("/generate")
    async def generate_json(req: GenerateRequest):
        first, tokens, end = await collect(req)
        return {
            "id": first["id"], "text": end["text"], "finish_reason": end["finish_reason"],
            "tokens": [{k: t[k] for k in ("id", "text", "p_blend", "p_gpt2", "p_bdh", "logic_weight", "special")}
                       for t in tokens],
            "usage": end["usage"], "timings": end["timings"],
            "seed": first["seed"], "blend": first["blend"], "logic_weight": tokens[-1]["logic_weight"],
        }

    @app.post("/generate_stream")
    async def generate_sse(req: GenerateRequest):
        first, events = await start(req)
        return stream(first, events, lambda ev: sse(ev["type"], ev))

    @app.post("/generations/{gen_id}")
    async def steer(gen_id: str, req: SteerRequest):
        gen = registry.get(gen_id)
        if gen is None:
            return JSONResponse(error_body(f"no running generation with id {gen_id!r} (unknown or finished)",
                                           "NotFound", "gen_id"), status_code=404)
        gen.logic_weight = req.logic_weight
        return {"id": gen.id, "logic_weight": gen.logic_weight, "applies_from_token": gen.tokens_done}

    @app.get("/generations/{gen_id}")
    async def generation_status(gen_id: str):
        gen = registry.get(gen_id)
        if gen is None:
            return JSONResponse(error_body(f"no running generation with id {gen_id!r} (unknown or finished)",
                                           "NotFound", "gen_id"), status_code=404)
        return {"id": gen.id, "logic_weight": gen.logic_weight, "tokens_done": gen.tokens_done}

    # ---- routes: OpenAI-compatible -----------------------------------------------------
    def as_generate(req: CompletionRequest) -> GenerateRequest:
        return GenerateRequest(
            prompt=req.prompt, logic_weight=req.logic_weight, blend=req.blend, max_new_tokens=req.max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature, top_k=req.top_k,
            top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed, stop=req.stop or [],
        )

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        model, created = req.model or settings.model_name, int(time.time())
        openai_reason = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}

        def choice(text: str, reason: str | None) -> dict:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}

        if not req.stream:
            first, tokens, end = await collect(as_generate(req))
            return {"id": "cmpl-" + first["id"], "object": "text_completion", "created": created, "model": model,
                    "choices": [choice(end["text"], openai_reason[end["finish_reason"]])], "usage": end["usage"]}

        first, events = await start(as_generate(req))

        def encode(ev: dict) -> bytes | None:
            head = {"id": "cmpl-" + first["id"], "object": "text_completion", "created": created, "model": model}
            if ev["type"] == "token" and ev["text"]:
                return b"data: " + json.dumps({**head, "choices": [choice(ev["text"], None)]}).encode() + b"\n\n"
            if ev["type"] == "end":
                last = {**head, "choices": [choice("", openai_reason[ev["finish_reason"]])], "usage": ev["usage"]}
                return b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n"
            if ev["type"] == "error":
                return b"data: " + json.dumps({"error": ev["error"]}).encode() + b"\n\ndata: [DONE]\n\n"
            return None

        return stream(first, events, encode)

    # ---- routes: validator -------------------------------------------------------------
    @app.post("/validate")
    async def validate(req: ValidateRequest):
        if len(req.context) + len(req.draft) > settings.max_prompt_chars:
            raise InvalidField("draft", f"context + draft is over the limit of {settings.max_prompt_chars} characters")
        slot = limiter.acquire()
        try:
            p = pair()
            tok = await p.ensure_ready()
            # The first draft token needs something to be conditioned on: with no context,
            # end-of-text stands for "the start of a story", as in training.
            prefix = tok.encode(req.context).ids if req.context else [p.eot_id]
            enc = tok.encode(req.draft)
            ids = prefix + enc.ids
            if len(ids) > p.max_context:
                raise InvalidField("draft", f"context + draft is {len(ids)} tokens; the models' limit is {p.max_context}")
            lp_g, lp_b = await asyncio.gather(p.gpt2.score(ids), p.bdh.score(ids))
        except ModelUnavailable as e:
            pair().problem = str(e)
            raise
        finally:
            slot.release()
        lp_g, lp_b = lp_g[len(prefix) - 1:], lp_b[len(prefix) - 1:]  # log p of each draft token
        spans = find_spans(req.draft, enc.offsets, lp_b, lp_g, ValidatorParams(min_excess_bits=req.min_excess_bits))
        s_g, s_b = surprisal_bits(lp_g), surprisal_bits(lp_b)
        tokens = [{"id": i, "text": req.draft[a:b], "start": a, "end": b,
                   "surprisal_gpt2_bits": round(float(g), 4), "surprisal_bdh_bits": round(float(bd), 4)}
                  for i, (a, b), g, bd in zip(enc.ids, enc.offsets, s_g, s_b)]
        return {"consistent": not spans, "spans": spans, "tokens": tokens,
                "mean_surprisal_bits": {"gpt2": round(float(s_g.mean()), 4), "bdh": round(float(s_b.mean()), 4)}}

    # ---- routes: operations ------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        problems = await pair().readiness()
        if problems:
            return JSONResponse({"ready": False, "problems": problems}, status_code=503)
        return {"ready": True, "tokenizer_fingerprint": pair().fingerprint}

    @app.get("/info")
    async def info():
        p = pair()
        return {
            "gateway": {"version": app.version, "problem": p.problem,
                        "limits": {k: getattr(settings, k) for k in (
                            "max_concurrent", "max_new_tokens_limit", "default_max_new_tokens", "max_prompt_chars",
                            "max_prompt_tokens", "max_stop_sequences", "connect_timeout_s", "step_timeout_s")}},
            "models": {b.role: {"address": b.address, **(dataclasses.asdict(b.info) if b.info else {})} for b in p},
            "tokenizer_fingerprint": p.fingerprint,
        }

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    # The page's stylesheet and JS modules (plain files: no build step).
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app
