"""The logic validator's route: which draft words does the context make less likely?

Four Score calls, all at once: each model scores context + draft (with each position's
top-64 and entropy, for the flag rule, the reasons and the surprisal term) and <eot> +
draft (the draft without its context, with its top-64: how much the context boosted each
expectation). With no context the two are the same sequence, so two calls do, and
nothing is flagged. The arithmetic is in ../validator.py.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..backends import ModelUnavailable, Scored
from ..errors import InvalidField
from ..schemas import ValidateRequest
from ..service import GatewayDep, LimiterDep, PairDep, unless_disconnected
from ..validator import EXPECT_TOP_K, EXPECTED_K, MODELS, Expected, surprisal_bits_of, validate as validate_draft

router = APIRouter(tags=["validate"])

# Without a context only the listed alternatives are needed: one more than those shown,
# since the draft's own token is left out of them.
LISTED_K = EXPECTED_K + 1


def _expected(a: Scored, skip: int, n: int) -> Expected:
    """A Score answer's top alternatives at the draft's n positions (after `skip`)."""
    return Expected(a.top_ids[skip: skip + n], a.top_log_probs[skip: skip + n])


@router.post("/validate")
async def validate(req: ValidateRequest, gw: GatewayDep, pair: PairDep, limiter: LimiterDep, request: Request):
    limit = gw.settings.max_prompt_chars
    if len(req.context) + len(req.draft) > limit:
        raise InvalidField("draft", f"context + draft is over the limit of {limit} characters")

    async def run():
        p = pair
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
        top_k = EXPECT_TOP_K if req.context else LISTED_K
        calls = [b.score(ids, top_k=top_k, entropy=True) for b in backends]
        if req.context:
            calls += [b.score(alone + enc.ids, top_k=EXPECT_TOP_K) for b in backends]
        answers = await asyncio.gather(*calls)
        return tok, enc, prefix if req.context else [], len(prefix) - 1, answers

    # Leaving cancels every Score call; the servers drop them at their next chunk.
    slot = limiter.acquire()
    try:
        tok, enc, context_ids, skip, answers = await unless_disconnected(request, run())
    except ModelUnavailable as e:
        gw.note_failure(e)
        raise
    finally:
        slot.release()
    n = len(enc.ids)
    with_ctx = {m: a.log_probs[skip: skip + n] for m, a in zip(MODELS, answers)}
    # <eot> + draft: the draft's values start at once (with no context, that was the only call)
    alone = answers[len(MODELS):] or answers[: len(MODELS)]
    without = {m: a.log_probs[:n] for m, a in zip(MODELS, alone)}
    entropies = {m: a.entropies[skip: skip + n] for m, a in zip(MODELS, answers)}
    expected = {m: _expected(a, skip, n) for m, a in zip(MODELS, answers)}
    expected_without = {m: _expected(a, 0, n) for m, a in zip(MODELS, alone)}

    body = validate_draft(req.draft, enc.offsets, enc.ids, with_ctx, without, entropies, expected,
                          tok.decode, expected_without=expected_without, context_ids=context_ids,
                          sensitivity=req.sensitivity)
    s = {m: surprisal_bits_of(with_ctx[m]) for m in MODELS}
    body["tokens"] = [{"id": i, "text": req.draft[a:b], "start": a, "end": b,
                       "surprisal_gpt2_bits": round(float(s["gpt2"][k]), 4),
                       "surprisal_bdh_bits": round(float(s["bdh"][k]), 4)}
                      for k, (i, (a, b)) in enumerate(zip(enc.ids, enc.offsets))]
    return body
