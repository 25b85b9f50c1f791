"""PlotArmour's own API: a story as JSON or as Server-Sent Events, and live steering."""

from __future__ import annotations

from fastapi import APIRouter, Request

from plotarmour.sampling import SamplingParams

from ..errors import OpenAIErrors, gateway_error_body
from ..schemas import GenerateRequest, SteerRequest
from ..params import GenerationParams
from ..runs import unless_disconnected
from ..service import GatewayDep
from ..streaming import event_stream, sse

router = APIRouter(tags=["native"], route_class=OpenAIErrors)

TOKEN_FIELDS = ("id", "text", "p_blend", "p_gpt2", "p_bdh", "logic_weight", "special", "alternatives", "context_shift")


def job(req: GenerateRequest) -> GenerationParams:
    return GenerationParams(
        prompt=req.prompt, logic_weight=req.logic_weight, blend=req.blend, max_new_tokens=req.max_new_tokens,
        sampling=SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p),
        seed=req.seed, stop=req.stop, top_alternatives=req.top_alternatives,
        steering=[(p.at, p.logic_weight) for p in req.steering])


@router.post("/generate")
async def generate_json(req: GenerateRequest, gw: GatewayDep, request: Request):
    (first,), ((tokens, end),) = await unless_disconnected(request, gw.complete([job(req)]))
    return {
        "id": first["id"], "text": end["text"], "finish_reason": end["finish_reason"],
        "tokens": [{k: t[k] for k in TOKEN_FIELDS if k in t} for t in tokens],
        "usage": end["usage"], "timings": end["timings"],
        "seed": first["seed"], "blend": first["blend"], "logic_weight": tokens[-1]["logic_weight"],
        **{k: first[k] for k in ("temperature", "top_k", "top_p")},
    }


@router.post("/generate_stream")
async def generate_sse(req: GenerateRequest, gw: GatewayDep):
    run = await gw.open([job(req)])
    first = run.first[0]
    return event_stream(run, lambda _, ev: sse(ev["type"], ev),
                        lambda e: sse("error", {"type": "error", **gateway_error_body(e), "status": e.status}),
                        head=sse("start", first), headers={"X-Generation-Id": first["id"]})


@router.post("/generations/{gen_id}")
async def steer(gen_id: str, req: SteerRequest, gw: GatewayDep, request: Request):
    return await gw.steer(gen_id, req.logic_weight, request)


@router.get("/generations/{gen_id}")
async def generation_status(gen_id: str, gw: GatewayDep, request: Request):
    """Where a running story is; `waiting_for` names the model servers whose answer to the
    current step is still due, or that it waits to come back, so a page whose story has
    stalled can say which model it is waiting for."""
    return await gw.state(gen_id, request)
