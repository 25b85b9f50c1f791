"""Text Generation Inference's API: `POST /` with `{inputs, parameters, stream}`.

`huggingface_hub.InferenceClient(url).text_generation(...)` and the `text-generation`
package's `Client` work unchanged. PlotArmour's `logic_weight` and `blend` are extra
`parameters`. As in TGI, decoding is greedy unless `do_sample` or a sampling knob
(temperature, top_k, top_p) is set. Errors come in TGI's shape, `{error, error_type}`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from plotarmour.sampling import SamplingParams

from ..errors import TgiErrors, gateway_error_body, logprob
from ..params import GenerationParams
from ..schemas import TGIRequest
from ..runs import unless_disconnected
from ..service import GatewayDep
from ..streaming import data_line, event_stream

router = APIRouter(tags=["tgi"], route_class=TgiErrors)

NAMES = {"prompt": "inputs", "max_new_tokens": "parameters.max_new_tokens", "stop": "parameters.stop"}


def job(req: TGIRequest) -> GenerationParams:
    p = req.parameters
    if p.sampling:
        sampling = SamplingParams(temperature=p.temperature or 1.0, top_k=p.top_k or 0, top_p=p.top_p or 1.0)
    else:
        sampling = SamplingParams(temperature=0.0)
    return GenerationParams(
        prompt=req.inputs, logic_weight=p.logic_weight, blend=p.blend, max_new_tokens=p.max_new_tokens,
        sampling=sampling, seed=p.seed, stop=p.stop, top_alternatives=p.top_n_tokens or 0, truncate=p.truncate)


def token(ev: dict) -> dict:
    return {"id": ev["id"], "text": ev["text"], "logprob": logprob(ev["p_blend"]), "special": ev["special"]}


def top_tokens(ev: dict) -> list[dict]:
    return [{"id": a["id"], "text": a["text"], "logprob": logprob(a["p"]), "special": False}
            for a in ev.get("alternatives", {}).get("blend", [])]


@router.post("/")
async def tgi_generate(req: TGIRequest, gw: GatewayDep, request: Request):
    p = req.parameters
    prefix = req.inputs if p.return_full_text else ""

    def details(first: dict, end: dict) -> dict:
        # As TGI: the seed is reported only when it was used, i.e. when sampling.
        return {"finish_reason": end["finish_reason"], "generated_tokens": end["usage"]["completion_tokens"],
                "seed": first["seed"] if p.sampling else None}

    if not req.stream:
        (first,), ((tokens, end),) = await unless_disconnected(request, gw.complete([job(req)], NAMES))
        out = {"generated_text": prefix + end["text"]}
        if p.details:
            out["details"] = {**details(first, end), "prefill": [], "tokens": [token(t) for t in tokens],
                              **({"top_tokens": [top_tokens(t) for t in tokens]} if p.top_n_tokens else {})}
        return [out]  # TGI answers POST / with a list of one

    run = await gw.open([job(req)], NAMES)

    held: list[dict] = []  # TGI's last token event carries the whole text: hold each token one event

    def line(ev: dict, end: dict | None = None) -> bytes:
        return data_line({"index": ev["index"] + 1, "token": token(ev),
                          "top_tokens": top_tokens(ev) if p.top_n_tokens else None,
                          "generated_text": prefix + end["text"] if end else None,
                          "details": {**details(run.first[0], end), "input_length": end["usage"]["prompt_tokens"]}
                          if end and p.details else None})

    def encode(_: int, ev: dict) -> bytes | None:
        out = line(held.pop(), ev if ev["type"] == "end" else None) if held else None
        if ev["type"] == "token":
            held.append(ev)
        return out

    return event_stream(run, encode, lambda e: data_line(gateway_error_body(e, "tgi")))
