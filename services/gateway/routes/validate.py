"""The logic validator: where a draft surprises the models, given its context."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..errors import InvalidField
from ..schemas import ValidateRequest
from ..service import GatewayDep, unless_disconnected
from ..validator import ValidatorParams, find_spans, surprisal_bits

router = APIRouter(tags=["validate"])


@router.post("/validate")
async def validate(req: ValidateRequest, gw: GatewayDep, request: Request):
    limit = gw.settings.max_prompt_chars
    if len(req.context) + len(req.draft) > limit:
        raise InvalidField("draft", f"context + draft is over the limit of {limit} characters")

    async def score():
        p = gw.pair
        tok = await p.ensure_ready()
        # The first draft token needs something to be conditioned on: with no context,
        # end-of-text stands for "the start of a story", as in training.
        prefix = tok.encode(req.context).ids if req.context else [p.eot_id]
        enc = tok.encode(req.draft)
        ids = prefix + enc.ids
        if len(ids) > p.max_context:
            raise InvalidField("draft", f"context + draft is {len(ids)} tokens; the models' limit is {p.max_context}")
        lp_g, lp_b = await asyncio.gather(p.gpt2.score(ids), p.bdh.score(ids))
        return enc, lp_g[len(prefix) - 1:], lp_b[len(prefix) - 1:]  # log p of each draft token

    # Leaving cancels both Score calls; the servers drop them at their next chunk.
    enc, lp_g, lp_b = await unless_disconnected(request, gw.slot_for(score()))
    spans = find_spans(req.draft, enc.offsets, lp_b, lp_g, ValidatorParams(min_excess_bits=req.min_excess_bits))
    s_g, s_b = surprisal_bits(lp_g), surprisal_bits(lp_b)
    tokens = [{"id": i, "text": req.draft[a:b], "start": a, "end": b,
               "surprisal_gpt2_bits": round(float(g), 4), "surprisal_bdh_bits": round(float(bd), 4)}
              for i, (a, b), g, bd in zip(enc.ids, enc.offsets, s_g, s_b)]
    return {"consistent": not spans, "spans": spans, "tokens": tokens,
            "mean_surprisal_bits": {"gpt2": round(float(s_g.mean()), 4), "bdh": round(float(s_b.mean()), 4)}}
