"""OpenAI's API: /v1/completions, /v1/chat/completions and /v1/models.

The openai package, LangChain's `OpenAI` and `ChatOpenAI`, and anything else written for
OpenAI work unchanged; `logic_weight`, `blend` and `top_k` go in the body (the openai
client's `extra_body`). Log-probabilities are those of the blend the token was drawn
from (before temperature and the top-k/top-p cuts), and the alternatives are the blend's
likeliest tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fastapi import APIRouter, Request

from plotarmour.sampling import SamplingParams

from ..errors import gateway_error_body
from ..schemas import ChatCompletionRequest, CompletionRequest, _OpenAIBase, chat_prompt
from ..service import GatewayDep, Job, SettingsDep, unless_disconnected
from ..streaming import data_line, event_stream

router = APIRouter(prefix="/v1", tags=["openai"])

FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def jobs(req: _OpenAIBase, prompts: list[str], max_tokens: int | None, alternatives: int) -> list[Job]:
    """n jobs per prompt, in OpenAI's order. With a seed, choice j of every prompt draws
    with seed + j, so a prompt's choices do not depend on the other prompts."""
    sampling = SamplingParams(temperature=1.0 if req.temperature is None else req.temperature, top_k=req.top_k,
                              top_p=1.0 if req.top_p is None else req.top_p)
    return [Job(prompt=p, logic_weight=req.logic_weight, blend=req.blend, max_new_tokens=max_tokens,
                sampling=sampling, seed=None if req.seed is None else (req.seed + j) % 2**63, stop=req.stop or [],
                top_alternatives=alternatives)
            for p in prompts for j in range(req.n)]


def usage(first: list[dict], ends: list[dict], n: int) -> dict:
    prompt = sum(f["prompt_tokens"] for f in first[::n])  # each prompt counted once, as OpenAI does
    done = sum(e["usage"]["completion_tokens"] for e in ends)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0  # JSON has no -inf


def visible(tokens: list[dict]) -> list[dict]:
    return [t for t in tokens if not t["special"]]


# ---- /v1/completions ------------------------------------------------------------------
def completion_logprobs(tokens: list[dict], k: int, offset: int) -> dict:
    """OpenAI's legacy logprobs object for `tokens`, whose text starts at `offset`."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [] if k else None, "text_offset": []}
    for t in visible(tokens):
        out["tokens"].append(t["text"])
        out["token_logprobs"].append(logprob(t["p_blend"]))
        out["text_offset"].append(offset)
        offset += len(t["text"])
        if k:
            out["top_logprobs"].append({a["text"]: logprob(a["p"]) for a in t["alternatives"]["blend"]})
    return out


@router.post("/completions")
async def completions(req: CompletionRequest, gw: GatewayDep, settings: SettingsDep, request: Request):
    model, created, n, k = req.model or settings.model_name, int(time.time()), req.n, req.logprobs or 0
    prompts = req.prompts
    names = {"prompt": "prompt", "max_new_tokens": "max_tokens", "stop": "stop"}
    todo = jobs(req, prompts, req.max_tokens, k)

    def head(first: dict) -> dict:
        return {"id": "cmpl-" + first["id"], "object": "text_completion", "created": created, "model": model}

    def echo(i: int) -> str:
        return prompts[i // n] if req.echo else ""

    if not req.stream:
        async def work():
            run = await gw.open(todo, names)
            return run.first, await run.collect()

        first, results = await unless_disconnected(request, work())
        choices = [{"text": echo(i) + end["text"], "index": i,
                    "logprobs": completion_logprobs(tokens, k, len(echo(i))) if req.logprobs is not None else None,
                    "finish_reason": FINISH[end["finish_reason"]]}
                   for i, (tokens, end) in enumerate(results)]
        return {**head(first[0]), "choices": choices, "usage": usage(first, [e for _, e in results], n)}

    run = await gw.open(todo, names)
    offsets = [len(echo(i)) for i in range(len(todo))]
    ends: list[dict] = []
    with_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choice: dict) -> bytes:
        return data_line({**head(run.first[0]), "choices": [choice], **({"usage": None} if with_usage else {})})

    def encode(i: int, ev: dict) -> bytes | None:
        if ev["type"] == "token" and ev["text"] and not ev["special"]:
            lp = completion_logprobs([ev], k, offsets[i]) if req.logprobs is not None else None
            offsets[i] += len(ev["text"])
            return chunk({"text": ev["text"], "index": i, "logprobs": lp, "finish_reason": None})
        if ev["type"] == "end":
            ends.append(ev)
            return chunk({"text": "", "index": i, "logprobs": None, "finish_reason": FINISH[ev["finish_reason"]]})
        return None

    echoes = b"".join(chunk({"text": echo(i), "index": i, "logprobs": None, "finish_reason": None})
                      for i in range(len(todo))) if req.echo else b""
    return event_stream(run, encode, stream_error, head=echoes,
                        tail=done(lambda: {**head(run.first[0]), "choices": [],
                                           "usage": usage(run.first, ends, n)} if with_usage else None))


def stream_error(e) -> bytes:
    # The openai client raises APIError on a chunk that carries "error".
    return data_line({"error": gateway_error_body(e)["error"]}) + data_line("[DONE]")


def done(last: Callable[[], dict | None]) -> Callable[[], bytes]:
    def tail() -> bytes:
        body = last()
        return (data_line(body) if body else b"") + data_line("[DONE]")
    return tail


# ---- /v1/chat/completions -------------------------------------------------------------
def chat_logprobs(tokens: list[dict], k: int) -> dict:
    def entry(text: str, p: float) -> dict:
        return {"token": text, "logprob": logprob(p), "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(t["text"], t["p_blend"]),
                         "top_logprobs": [entry(a["text"], a["p"]) for a in t["alternatives"]["blend"]] if k else []}
                        for t in visible(tokens)],
            "refusal": None}


@router.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, gw: GatewayDep, settings: SettingsDep, request: Request):
    model, created, n = req.model or settings.model_name, int(time.time()), req.n
    k = (req.top_logprobs or 0) if req.logprobs else 0
    max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    names = {"prompt": "messages", "max_new_tokens": max_field, "stop": "stop"}
    todo = jobs(req, [chat_prompt(req.messages)], req.max_completion_tokens or req.max_tokens, k)

    def head(first: dict, kind: str) -> dict:
        return {"id": "chatcmpl-" + first["id"], "object": kind, "created": created, "model": model,
                "system_fingerprint": None}

    if not req.stream:
        async def work():
            run = await gw.open(todo, names)
            return run.first, await run.collect()

        first, results = await unless_disconnected(request, work())
        choices = [{"index": i, "message": {"role": "assistant", "content": end["text"]},
                    "logprobs": chat_logprobs(tokens, k) if req.logprobs else None,
                    "finish_reason": FINISH[end["finish_reason"]]}
                   for i, (tokens, end) in enumerate(results)]
        return {**head(first[0], "chat.completion"), "choices": choices,
                "usage": usage(first, [e for _, e in results], n)}

    run = await gw.open(todo, names)
    ends: list[dict] = []
    with_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(i: int, delta: dict, finish: str | None = None, lp: dict | None = None) -> bytes:
        return data_line({**head(run.first[0], "chat.completion.chunk"),
                          "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}],
                          **({"usage": None} if with_usage else {})})

    def encode(i: int, ev: dict) -> bytes | None:
        if ev["type"] == "token" and ev["text"] and not ev["special"]:
            return chunk(i, {"content": ev["text"]}, lp=chat_logprobs([ev], k) if req.logprobs else None)
        if ev["type"] == "end":
            ends.append(ev)
            return chunk(i, {}, FINISH[ev["finish_reason"]])
        return None

    roles = b"".join(chunk(i, {"role": "assistant", "content": ""}) for i in range(len(todo)))
    return event_stream(run, encode, stream_error, head=roles,
                        tail=done(lambda: {**head(run.first[0], "chat.completion.chunk"), "choices": [],
                                           "usage": usage(run.first, ends, n)} if with_usage else None))


# ---- /v1/models -----------------------------------------------------------------------
@router.get("/models")
async def models(settings: SettingsDep):
    return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                        "owned_by": "plotarmour"}]}
