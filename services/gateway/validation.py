"""The logic validator as a service: what /validate does between parsing and answering,
as `Gateway.open` is for generation (service.py).

Four Score calls, all at once: each model scores context + draft (with each position's
top-64 and entropy, for the flag rule, the reasons and the surprisal term) and <eot> +
draft (the draft without its context, with its top-64: how much the context boosted each
expectation). With no context the two are the same sequence, so two calls do, and
nothing is flagged. `score_draft` makes those calls and cuts the answers to the draft's
positions (bench/bench_validator.py calls it too); `validate` adds the limits, a slot
under the concurrency limit and the failure note, and answers. The arithmetic is in
validator.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .backends import ModelPair, Scored
from .errors import InvalidField, ModelUnavailable
from .service import Gateway
from .validator import EXPECT_TOP_K, EXPECTED_K, MODELS, Expected, surprisal_bits_of, validate as validate_draft

# Without a context only the listed alternatives are needed: one more than those shown,
# since the draft's own token is left out of them.
LISTED_K = EXPECTED_K + 1


def _expected(a: Scored, skip: int, n: int) -> Expected:
    """A Score answer's top alternatives at the draft's n positions (after `skip`)."""
    return Expected(a.top_ids[skip: skip + n], a.top_log_probs[skip: skip + n])


@dataclass
class DraftScores:
    """Both models' Score answers for one draft, cut to the draft's positions; per model:
    natural-log log p of each draft token with and without the context, the entropies
    with it (nats), and the top alternatives with and without it."""

    draft: str
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    context_ids: list[int]  # empty without a context
    with_context: dict[str, np.ndarray]
    without_context: dict[str, np.ndarray]
    entropies: dict[str, np.ndarray]
    expected: dict[str, Expected]
    expected_without: dict[str, Expected]
    decode: Callable[[list[int]], str]

    def answer(self, sensitivity: float) -> dict:
        """The /validate body: the validator's answer, plus each draft token's surprisal."""
        body = validate_draft(self.draft, self.offsets, self.token_ids, self.with_context, self.without_context,
                              self.entropies, self.expected, self.decode, expected_without=self.expected_without,
                              context_ids=self.context_ids, sensitivity=sensitivity)
        s = {m: surprisal_bits_of(self.with_context[m]) for m in MODELS}
        body["tokens"] = [{"id": i, "text": self.draft[a:b], "start": a, "end": b,
                           "surprisal_gpt2_bits": round(float(s["gpt2"][k]), 4),
                           "surprisal_bdh_bits": round(float(s["bdh"][k]), 4)}
                          for k, (i, (a, b)) in enumerate(zip(self.token_ids, self.offsets))]
        return body


async def score_draft(pair: ModelPair, context: str, draft: str) -> DraftScores:
    """Both models' Scores of the draft after the context and after <eot> alone (one call
    each without a context). Raises InvalidField when context + draft is over the models'
    limit; cancelling it cancels every Score call (the servers drop them at their next chunk)."""
    tok = await pair.ensure_ready()
    # The first draft token needs something to be conditioned on: end-of-text stands
    # for "the start of a story", as in training; it is also the draft without context.
    alone = [pair.eot_id]
    prefix = tok.encode(context).ids if context else alone
    enc = tok.encode(draft)
    ids = prefix + enc.ids
    if len(ids) > pair.max_context:
        raise InvalidField("draft", f"context + draft is {len(ids)} tokens; the models' limit is {pair.max_context}")
    backends = [getattr(pair, m) for m in MODELS]
    top_k = EXPECT_TOP_K if context else LISTED_K
    calls = [b.score(ids, top_k=top_k, entropy=True) for b in backends]
    if context:
        calls += [b.score(alone + enc.ids, top_k=EXPECT_TOP_K) for b in backends]
    answers = await asyncio.gather(*calls)

    n, skip = len(enc.ids), len(prefix) - 1
    # <eot> + draft: the draft's values start at once (with no context, that was the only call)
    without = answers[len(MODELS):] or answers[: len(MODELS)]
    return DraftScores(
        draft=draft, token_ids=enc.ids, offsets=enc.offsets, context_ids=prefix if context else [],
        with_context={m: a.log_probs[skip: skip + n] for m, a in zip(MODELS, answers)},
        without_context={m: a.log_probs[:n] for m, a in zip(MODELS, without)},
        entropies={m: a.entropies[skip: skip + n] for m, a in zip(MODELS, answers)},
        expected={m: _expected(a, skip, n) for m, a in zip(MODELS, answers)},
        expected_without={m: _expected(a, 0, n) for m, a in zip(MODELS, without)},
        decode=tok.decode)


async def validate(gw: Gateway, context: str, draft: str, sensitivity: float) -> dict:
    """The /validate answer: the length limit, then one slot under the concurrency limit
    while both servers score the draft (a server's failure is noted, so the next request
    re-checks it), then the validator's arithmetic. Wrap it in `unless_disconnected` so a
    client that leaves cancels the Score calls and frees the slot."""
    limit = gw.settings.max_prompt_chars
    if len(context) + len(draft) > limit:
        raise InvalidField("draft", f"context + draft is over the limit of {limit} characters")
    slot = gw.limiter.acquire()
    try:
        scores = await score_draft(gw.pair, context, draft)
    except ModelUnavailable as e:
        gw.note_failure(e)
        raise
    finally:
        slot.release()
    return scores.answer(sensitivity)
