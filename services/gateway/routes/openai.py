"""OpenAI's API: /v1/completions, /v1/chat/completions and /v1/models.

The openai package, LangChain's `OpenAI` and `ChatOpenAI`, and anything else written for
OpenAI work unchanged; `logic_weight`, `blend` and `top_k` go in the body (the openai
client's `extra_body`). `model` may be left out or name this gateway's `model_name`
("plotarmour"); any other is a 404 `model_not_found`, as vLLM and TGI answer.

Log-probabilities are those of the blend the token was drawn from (before temperature
and the top-k/top-p cuts), and the alternatives are the blend's likeliest tokens. Each
token is listed as its own text; one that is only part of a UTF-8 character is written
as OpenAI writes it, `bytes:\\xe2\\x80` (chat's `bytes` field holds its raw bytes), so two
such tokens never share a name. End-of-text is never listed. A streamed choice carries
one chunk per listed token (its text may be empty while a character is incomplete) and
the text released at the end, so its chunks add up to the whole answer, logprobs included.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from tokenizers import Tokenizer

from plotarmour.sampling import SamplingParams

from ..errors import InvalidField, OpenAIErrors, UnknownModel, gateway_error_body, logprob, openai_body
from ..params import GenerationParams
from ..schemas import ChatCompletionRequest, CompletionRequest, OpenAIBase, chat_prompt
from ..runs import unless_disconnected
from ..service import GatewayDep, SettingsDep
from ..streaming import data_line, event_stream

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIErrors)

FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def jobs(req: OpenAIBase, prompts: list[str], max_tokens: int | None, alternatives: int,
         limit: int) -> list[GenerationParams]:
    """n jobs per prompt, in OpenAI's order. With a seed, choice j of every prompt draws
    with seed + j, so a prompt's choices do not depend on the other prompts. At most
    `limit` in all (one request takes one place under max_concurrent)."""
    if len(prompts) * req.n > limit:
        raise InvalidField("n" if req.n > 1 else "prompt",
                           f"{len(prompts)} prompt(s) × n = {req.n} is {len(prompts) * req.n} stories; "
                           f"at most {limit} per request")
    sampling = SamplingParams(temperature=1.0 if req.temperature is None else req.temperature, top_k=req.top_k,
                              top_p=1.0 if req.top_p is None else req.top_p)
    return [GenerationParams(prompt=p, logic_weight=req.logic_weight, blend=req.blend, max_new_tokens=max_tokens,
                             sampling=sampling, seed=None if req.seed is None else (req.seed + j) % 2**63,
                             stop=req.stop or [], top_alternatives=alternatives)
            for p in prompts for j in range(req.n)]


def usage(first: list[dict], ends: list[dict], n: int) -> dict:
    prompt = sum(f["prompt_tokens"] for f in first[::n])  # each prompt counted once, as OpenAI does
    done = sum(e["usage"]["completion_tokens"] for e in ends)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def listed(tokens: list[dict]) -> list[dict]:
    """The tokens a logprobs answer lists: all but end-of-text."""
    return [t for t in tokens if not t["special"]]


def _byte_of_char() -> dict[str, int]:
    # The byte-level BPE alphabet (GPT-2's): printable bytes stand for themselves, the
    # others for code points from 256 up, in byte order.
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    moved = [b for b in range(256) if b not in keep]
    return {**{chr(b): b for b in keep}, **{chr(256 + i): b for i, b in enumerate(moved)}}


BYTE_OF_CHAR = _byte_of_char()


def token_bytes(tok: Tokenizer, token_id: int) -> bytes:
    """A token's own bytes: from the byte-level alphabet, checked against the token
    decoded alone (a special token, or another kind of tokenizer, gives that text's)."""
    piece, text = tok.id_to_token(token_id) or "", tok.decode([token_id], skip_special_tokens=False)
    if all(c in BYTE_OF_CHAR for c in piece):
        raw = bytes(BYTE_OF_CHAR[c] for c in piece)
        if raw.decode("utf-8", "replace") == text:
            return raw
    return text.encode("utf-8")


def token_name(raw: bytes) -> str:
    """How OpenAI lists a token: its text, or `bytes:\\x..` when it is not whole UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


# ---- /v1/completions ------------------------------------------------------------------
def completion_logprobs(tok: Tokenizer, tokens: list[dict], k: int, offset: int) -> dict:
    """OpenAI's legacy logprobs object for `tokens`, whose text starts at `offset`: a
    token's offset is where the text released with it begins."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [] if k else None, "text_offset": []}
    for t in tokens:
        if not t["special"]:
            out["tokens"].append(token_name(token_bytes(tok, t["id"])))
            out["token_logprobs"].append(logprob(t["p_blend"]))
            out["text_offset"].append(offset)
            if k:
                out["top_logprobs"].append({token_name(token_bytes(tok, a["id"])): logprob(a["p"])
                                            for a in t["alternatives"]["blend"]})
        offset += len(t["text"])
    return out


def served_model(asked: str | None, settings) -> str:
    """The model a request names: this gateway's (or none named), else 404."""
    if asked and asked != settings.model_name:
        raise UnknownModel(asked, settings.model_name)
    return settings.model_name


@router.post("/completions")
async def completions(req: CompletionRequest, gw: GatewayDep, settings: SettingsDep, request: Request):
    model, created, n, k = served_model(req.model, settings), int(time.time()), req.n, req.logprobs or 0
    prompts = req.prompts
    names = {"prompt": "prompt", "max_new_tokens": "max_tokens", "stop": "stop"}
    todo = jobs(req, prompts, req.max_tokens, k, settings.max_choices)

    def head(first: dict) -> dict:
        return {"id": "cmpl-" + first["id"], "object": "text_completion", "created": created, "model": model}

    def echo(i: int) -> str:
        return prompts[i // n] if req.echo else ""

    if not req.stream:
        first, results = await unless_disconnected(request, gw.complete(todo, names))
        tok = gw.pair.tokenizer
        choices = [{"text": echo(i) + end["text"], "index": i,
                    "logprobs": completion_logprobs(tok, tokens, k, len(echo(i))) if req.logprobs is not None
                    else None,
                    "finish_reason": FINISH[end["finish_reason"]]}
                   for i, (tokens, end) in enumerate(results)]
        return {**head(first[0]), "choices": choices, "usage": usage(first, [e for _, e in results], n)}

    run = await gw.open(todo, names)
    tok = gw.pair.tokenizer
    offsets = [len(echo(i)) for i in range(len(todo))]
    ends: list[dict] = []
    with_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choice: dict) -> bytes:
        return data_line({**head(run.first[0]), "choices": [choice], **({"usage": None} if with_usage else {})})

    def encode(i: int, ev: dict) -> bytes | None:
        if ev["type"] == "token":
            # Every listed token gets its chunk when logprobs are asked for, and the text
            # released with end-of-text (held back for a stop sequence) is sent too.
            lp = completion_logprobs(tok, [ev], k, offsets[i]) if req.logprobs is not None else None
            offsets[i] += len(ev["text"])
            if ev["text"] or (lp and lp["tokens"]):
                return chunk({"text": ev["text"], "index": i, "logprobs": lp, "finish_reason": None})
            return None
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
def chat_logprobs(tok: Tokenizer, tokens: list[dict], k: int) -> dict:
    def entry(token_id: int, p: float) -> dict:
        raw = token_bytes(tok, token_id)
        return {"token": token_name(raw), "logprob": logprob(p), "bytes": list(raw)}

    return {"content": [{**entry(t["id"], t["p_blend"]),
                         "top_logprobs": [entry(a["id"], a["p"]) for a in t["alternatives"]["blend"]] if k else []}
                        for t in listed(tokens)],
            "refusal": None}


@router.post("/chat/completions")
async def chat_completions(req: ChatCompletionRequest, gw: GatewayDep, settings: SettingsDep, request: Request):
    model, created, n = served_model(req.model, settings), int(time.time()), req.n
    k = (req.top_logprobs or 0) if req.logprobs else 0
    max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    names = {"prompt": "messages", "max_new_tokens": max_field, "stop": "stop"}
    todo = jobs(req, [chat_prompt(req.messages)], req.max_completion_tokens or req.max_tokens, k, settings.max_choices)

    def head(first: dict, kind: str) -> dict:
        return {"id": "chatcmpl-" + first["id"], "object": kind, "created": created, "model": model,
                "system_fingerprint": None}

    if not req.stream:
        first, results = await unless_disconnected(request, gw.complete(todo, names))
        tok = gw.pair.tokenizer
        choices = [{"index": i, "message": {"role": "assistant", "content": end["text"]},
                    "logprobs": chat_logprobs(tok, tokens, k) if req.logprobs else None,
                    "finish_reason": FINISH[end["finish_reason"]]}
                   for i, (tokens, end) in enumerate(results)]
        return {**head(first[0], "chat.completion"), "choices": choices,
                "usage": usage(first, [e for _, e in results], n)}

    run = await gw.open(todo, names)
    tok = gw.pair.tokenizer
    ends: list[dict] = []
    with_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(i: int, delta: dict, finish: str | None = None, lp: dict | None = None) -> bytes:
        return data_line({**head(run.first[0], "chat.completion.chunk"),
                          "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}],
                          **({"usage": None} if with_usage else {})})

    def encode(i: int, ev: dict) -> bytes | None:
        if ev["type"] == "token":  # as in /v1/completions: every listed token, and all the text
            lp = chat_logprobs(tok, [ev], k) if req.logprobs else None
            if ev["text"] or (lp and lp["content"]):
                return chunk(i, {"content": ev["text"]}, lp=lp)
            return None
        if ev["type"] == "end":
            ends.append(ev)
            return chunk(i, {}, FINISH[ev["finish_reason"]])
        return None

    roles = b"".join(chunk(i, {"role": "assistant", "content": ""}) for i in range(len(todo)))
    return event_stream(run, encode, stream_error, head=roles,
                        tail=done(lambda: {**head(run.first[0], "chat.completion.chunk"), "choices": [],
                                           "usage": usage(run.first, ends, n)} if with_usage else None))


# ---- /v1/models -----------------------------------------------------------------------
def model_card(settings) -> dict:
    return {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "plotarmour"}


@router.get("/models")
async def models(settings: SettingsDep):
    return {"object": "list", "data": [model_card(settings)]}


@router.get("/models/{model}")
async def model(model: str, settings: SettingsDep):
    if model != settings.model_name:
        return JSONResponse(openai_body(404, f"The model {model!r} does not exist; this gateway serves "
                                             f"{settings.model_name!r}", "model", "model_not_found"), status_code=404)
    return model_card(settings)
