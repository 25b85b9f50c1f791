"""The logic validator's route: which draft words does the context make less likely?

Four Score calls, all at once: each model scores context + draft (with each position's
likeliest tokens and entropy, for the reasons and the surprisal term) and <eot> + draft
(the draft without its context). With no context the two are the same sequence, so two
calls do. The arithmetic is in ../validator.py.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
from fastapi import APIRouter, Request

from plotarmour.rpc import language_model_pb2 as pb

from ..backends import ModelBackend, _translate
from ..errors import InvalidField
from ..schemas import ValidateRequest
from ..service import GatewayDep, unless_disconnected
from ..validator import EXPECTED_K, MODELS, Expected, surprisal_bits_of, validate as validate_draft

router = APIRouter(tags=["validate"])

# One more than the alternatives shown: the draft's own token is left out of them.
TOP_K = EXPECTED_K + 1


async def score(backend: ModelBackend, ids: list[int], *, expected: bool) -> pb.ScoreResponse:
    """One Score call, bounded like every call to a server (a dead one is a 503)."""
    try:
        return await backend.stub.Score(
            pb.ScoreRequest(token_ids=ids, top_k=TOP_K if expected else 0, entropy=expected),
            timeout=backend.settings.step_timeout_s)
    except grpc.aio.AioRpcError as e:
        raise _translate(backend.role, backend.address, e, backend.step_deadline) from None


def _floats(data: bytes, skip: int, n: int) -> np.ndarray:
    """A Score answer's per-position float32 values for the draft: n of them after `skip`."""
    return np.frombuffer(data, dtype="<f4")[skip: skip + n]


@router.post("/validate")
async def validate(req: ValidateRequest, gw: GatewayDep, request: Request):
    limit = gw.settings.max_prompt_chars
    if len(req.context) + len(req.draft) > limit:
        raise InvalidField("draft", f"context + draft is over the limit of {limit} characters")

    async def run():
        p = gw.pair
        tok = await p.ensure_ready()
        # The first draft token needs something to be conditioned on: end-of-text stands
        # for "the start of a story", as in training; it is also the draft without context.
        alone = [p.eot_id]
        prefix = tok.encode(req.context).ids if req.context else alone
        enc = tok.encode(req.draft)
        ids = prefix + enc.ids
        if len(ids) > p.max_context:
            raise InvalidField("draft", f"context + draft is {len(ids)} tokens; the models' limit is {p.max_context}")
        backends = [getattr(p, m) for m in MODELS]
        calls = [score(b, ids, expected=True) for b in backends]
        if req.context:
            calls += [score(b, alone + enc.ids, expected=False) for b in backends]
        answers = await asyncio.gather(*calls)
        return tok, enc, len(prefix) - 1, answers

    # Leaving cancels every Score call; the servers drop them at their next chunk.
    tok, enc, skip, answers = await unless_disconnected(request, gw.slot_for(run()))
    n = len(enc.ids)
    with_ctx = {m: _floats(a.log_probs, skip, n) for m, a in zip(MODELS, answers)}
    # <eot> + draft: the draft's values start at once (with no context, that was the only call)
    alone = answers[len(MODELS):] or answers[: len(MODELS)]
    without = {m: _floats(a.log_probs, 0, n) for m, a in zip(MODELS, alone)}
    entropies = {m: _floats(a.entropies, skip, n) for m, a in zip(MODELS, answers)}
    expected = {}
    for m, a in zip(MODELS, answers):
        top_ids = np.frombuffer(a.top_ids, dtype="<u4").reshape(-1, TOP_K)[skip: skip + n]
        top_lp = np.frombuffer(a.top_log_probs, dtype="<f4").reshape(-1, TOP_K)[skip: skip + n]
        expected[m] = Expected(top_ids, top_lp)

    body = validate_draft(req.draft, enc.offsets, enc.ids, with_ctx, without, entropies, expected,
                          tok.decode, sensitivity=req.sensitivity)
    s = {m: surprisal_bits_of(with_ctx[m]) for m in MODELS}
    body["tokens"] = [{"id": i, "text": req.draft[a:b], "start": a, "end": b,
                       "surprisal_gpt2_bits": round(float(s["gpt2"][k]), 4),
                       "surprisal_bdh_bits": round(float(s["bdh"][k]), 4)}
                      for k, (i, (a, b)) in enumerate(zip(enc.ids, enc.offsets))]
    return body
