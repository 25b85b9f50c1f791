"""Blending two next-token distributions and drawing tokens: pure numpy functions.

The gateway turns each model's distribution into probabilities, blends them by the
logic weight w (0 = pure GPT-2, 1 = pure BDH), then applies temperature, top-k and
top-p and draws with a seeded generator. It does so for a whole batch of stories at
once: every function here works on rows (B, V) with per-row parameters, and every
operation is row by row, so a story's tokens do not depend on which stories share its
batch. The one-row functions (`blend`, `sample`, ...) are the same code on a batch of one.

Every step takes the same path whatever w is: the blend is always computed, and at w = 0
or w = 1 it is *exactly* (bit for bit) one model's probabilities, because 1.0·x + 0.0·y
== x in floating point. So a blended generation at w = 0 reproduces
`sample(probs(gpt2_logprobs))` token for token.

Probabilities are float32 elements with float64 sums: 50k float32 probabilities summed
in float32 lose the tail, and the draw compares a uniform number against a cumulative
sum. Top-k and top-p never sort the whole vocabulary: only candidate tokens are sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The ways to blend, by name: the one registry the request schemas, the CLI and the page read.
BLENDS = {
    "linear": "(1 − w)·p_gpt2 + w·p_bdh: either model can put a word forward",
    "geometric": "p ∝ p_gpt2^(1 − w)·p_bdh^w: a word needs both models' support (sharper)",
}

# A log-probability of -inf times a weight of 0 is NaN; a very negative finite floor
# keeps 0·floor = 0 while exp(floor) is still exactly 0.
_LOG_FLOOR = -1e30


@dataclass(frozen=True)
class SamplingParams:
    """How to turn a blended distribution into one token.

    temperature 0 means greedy (argmax); top_k 0 means no top-k cut; top_p 1 means no
    nucleus cut.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not (np.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


# ---- distributions -------------------------------------------------------------------


def _as_scores(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim not in (1, 2) or a.shape[-1] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D (V,) or 2-D (B, V) array, got shape {a.shape}")
    return a


def probs(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """Softmax of log-probabilities (or logits: the same thing up to a constant), per row.

    float32 elements (exp in float32 is 4x cheaper than in float64 and its 1e-7 relative
    error is far below anything sampling can tell), normalised by a float64 sum."""
    s = np.array(_as_scores(scores, name), dtype=np.float32)  # a copy we may overwrite
    m = s.max(axis=-1, keepdims=True)
    if not np.isfinite(m).all():  # NaN propagates into the max, and so does +inf
        raise ValueError(f"{name} contains NaN or +inf")
    s -= m
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    return s


def _check_weights(w) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if not (np.all(w >= 0.0) and np.all(w <= 1.0)):  # NaN fails both
        raise ValueError(f"logic_weight must be in [0, 1], got {w.tolist()}")
    return w


def blend_rows(gpt2: np.ndarray, bdh: np.ndarray, weights, modes: Sequence[str]) -> np.ndarray:
    """Blend rows of two distributions (log-probs or logits, (B, V)) → probabilities (B, V).

    linear:    p = (1 − w)·p_gpt2 + w·p_bdh
    geometric: p ∝ p_gpt2^(1 − w) · p_bdh^w   (a product of experts; sharper than linear)
    """
    g, b = _as_scores(gpt2, "gpt2"), _as_scores(bdh, "bdh")
    if g.shape != b.shape:
        raise ValueError(f"distributions differ in size: gpt2 {g.shape} vs bdh {b.shape}")
    w = _check_weights(weights).reshape(-1, 1)
    bad = [m for m in modes if m not in BLENDS]
    if bad:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {bad[0]!r}")
    geometric = np.array([m == "geometric" for m in modes])
    out = np.empty(g.shape, dtype=np.float32)
    lin = ~geometric
    if lin.all():  # the common case, without row copies
        # Not renormalised: a mixture of two distributions already sums to 1 (up to
        # rounding, which the draw tolerates), and dividing again would break exactness
        # at the endpoints.
        pb = probs(b, "bdh")
        np.multiply(probs(g, "gpt2"), 1.0 - w, out=out)
        out += np.multiply(pb, w, out=pb)
        return out
    if lin.any():
        out[lin] = (1.0 - w[lin]) * probs(g[lin], "gpt2") + w[lin] * probs(b[lin], "bdh")
    if geometric.any():
        # Softmax of the weighted sum: each model's normalising constant cancels, so
        # logits and log-probs give the same result. The floor keeps 0·(−inf) out.
        gg = np.maximum(_finite_scores(g[geometric], "gpt2"), _LOG_FLOOR)
        bb = np.maximum(_finite_scores(b[geometric], "bdh"), _LOG_FLOOR)
        out[geometric] = probs((1.0 - w[geometric]) * gg + w[geometric] * bb)
    return out


def _finite_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """scores as float32, refusing NaN and +inf (what `probs` checks on its own)."""
    a = np.asarray(scores, dtype=np.float32)
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError(f"{name} contains NaN or +inf")
    return a


def blend(gpt2: np.ndarray, bdh: np.ndarray, w: float, mode: str = "linear") -> np.ndarray:
    """blend_rows for one pair of distributions (V,) → probabilities (V,)."""
    g, b = np.asarray(gpt2), np.asarray(bdh)
    if g.shape != b.shape:
        raise ValueError(f"distributions differ in size: gpt2 {g.shape} vs bdh {b.shape}")
    if g.ndim != 1:
        raise ValueError(f"blend takes one distribution (V,), got shape {g.shape}; use blend_rows")
    return blend_rows(g[None], b[None], [w], [mode])[0]


# ---- temperature, top-k, top-p ---------------------------------------------------------
#
# A row's filters leave either the whole vocabulary or a set of kept token ids with their
# (tempered) weights. Top-k and top-p only need the most probable tokens, and their
# order does not change with temperature, so candidates are found first (argpartition
# for top-k, a mass bound for top-p: O(V) passes over the batch), and only they are
# sorted and tempered. The weights need no normalising: the draw scales its uniform
# number by their sum.


def _top(q: np.ndarray, k: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable tokens of q (V,), most probable first, ties broken by lower id,
    as (ids, float64 values); `candidates` holds at least k ids, among them the k largest."""
    vals = q[candidates].astype(np.float64)
    kth = np.partition(vals, len(vals) - k)[len(vals) - k]  # the k-th largest value
    # Exact ties at the k-th value may sit outside the candidates: take them from the row.
    ids = np.union1d(candidates[vals > kth], np.flatnonzero(q == q.dtype.type(kth)))
    vals = q[ids].astype(np.float64)
    order = np.argsort(-vals, kind="stable")[:k]  # ids are ascending, so ties go to the lower id
    return ids[order], vals[order]


# The nucleus is found by a mass histogram over log-probability: tokens fall into _BINS
# buckets _SPAN_NATS wide in all (those further below the best token share the lowest);
# the running mass from the top bucket down shows which bucket the nucleus ends in, and
# only that bucket's tokens are sorted. O(V) passes, however many tokens the nucleus holds
# (sorting them cost 1.6 ms a row for a heavy-tailed 50,257-token row).
_BINS = 4096
_SPAN_NATS = 48.0


def _nucleus(q: np.ndarray, need: float, logq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The smallest most-probable set of q (V,) whose mass reaches `need` (at least one
    token; among equal values the lower ids first), as (ids ascending, float64 values).
    logq: log q up to a constant, when the caller has it."""
    if not np.isfinite(need):
        raise ValueError("the distribution holds NaN or infinite values")
    if logq is None:
        with np.errstate(divide="ignore"):
            logq = np.log(q)
    scale = _BINS / _SPAN_NATS
    # Bucket of each token (higher is more probable); -inf and the far tail go to bucket 0.
    bucket = ((logq - logq.max()) * scale + (_BINS - 1)).clip(0, _BINS - 1).astype(np.intp)
    mass = np.bincount(bucket, weights=q, minlength=_BINS)[::-1]  # from the top bucket down
    from_top = np.cumsum(mass)
    k = min(int(np.searchsorted(from_top, need, side="left")), _BINS - 1)
    edge = _BINS - 1 - k  # the bucket the nucleus ends in: every bucket above is kept whole
    cand = np.flatnonzero(bucket == edge)
    vals = q[cand].astype(np.float64)
    order = np.lexsort((cand, -vals))  # most probable first, ties to the lower id
    mass_before = (from_top[k - 1] if k else 0.0) + np.cumsum(vals[order]) - vals[order]
    keep = bucket > edge
    keep[cand[order][: max(int((mass_before < need).sum()), 0 if keep.any() else 1)]] = True
    ids = np.flatnonzero(keep)
    return ids, q[ids].astype(np.float64)


def _kept(p: np.ndarray, sp: SamplingParams, top_k_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """One row's filters → (kept ids sorted by id, their weights), or None to keep all.

    p (V,) is the row's blended probabilities; top_k_ids, when top-k applies, holds at
    least its k most probable ids (from one argpartition over the batch)."""
    V = p.shape[0]
    k = sp.top_k if 0 < sp.top_k < V else 0
    tempered = sp.temperature not in (0.0, 1.0)
    if not k and sp.top_p >= 1.0:
        return None
    if k:
        ids, vals = _top(p, k, top_k_ids)
        if tempered:  # top-k's choice does not depend on temperature, so only k values are tempered
            vals = _tempered(vals, sp.temperature)
        if sp.top_p < 1.0:
            mass_before = np.cumsum(vals) - vals
            n = max(int((mass_before < sp.top_p * vals.sum()).sum()), 1)
            ids, vals = ids[:n], vals[:n]
        order = np.argsort(ids)
        return ids[order], vals[order]
    # The nucleus's mass needs every token: temper the whole row (its logs serve the buckets).
    with np.errstate(divide="ignore", over="ignore"):
        logq = np.log(p)
        if tempered:
            logq = _scaled(logq - logq.max(), sp.temperature)
    q = np.exp(logq) if tempered else p
    return _nucleus(q, sp.top_p * q.sum(dtype=np.float64), logq)


def _tempered(vals: np.ndarray, temperature: float) -> np.ndarray:
    """vals^(1/T) up to a constant, in vals' own precision (float32 for whole rows)."""
    with np.errstate(divide="ignore", over="ignore"):
        logv = np.log(vals)
        return np.exp(_scaled(logv - logv.max(), temperature))


def _scaled(shifted: np.ndarray, temperature: float) -> np.ndarray:
    """Log-probabilities shifted so the best is 0, divided by T. A temperature below the
    row's precision (1e-87 is 0 in float32) would make the best 0/0: they stay at 0, the
    rest go to -inf (greedy, as the limit is)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(shifted == 0, shifted, shifted / temperature)


def _top_k_candidates(p: np.ndarray, params: Sequence[SamplingParams]) -> list[np.ndarray | None]:
    """Per row, at least its top_k most probable ids (one argpartition over the batch)."""
    V = p.shape[1]
    ks = [sp.top_k if 0 < sp.top_k < V else 0 for sp in params]
    rows = [i for i, k in enumerate(ks) if k]
    out: list[np.ndarray | None] = [None] * len(params)
    if rows:
        kmax = max(ks)
        cand = np.argpartition(-p[rows], kmax - 1, axis=1)[:, :kmax]
        for r, c in zip(rows, cand):
            out[r] = c
    return out


# ---- the draw ----------------------------------------------------------------------------


def _draw(ids: np.ndarray | None, weights: np.ndarray, u: float) -> int:
    """Inverse-CDF draw in token-id order over weights (ids None: the whole vocabulary)."""
    c = np.cumsum(weights, dtype=np.float64)
    i = int(np.searchsorted(c, u * c[-1], side="right"))
    # Rounding can put u·total at the very end; never return an id past the vocabulary
    # or one with zero probability.
    i = min(i, len(weights) - 1)
    while weights[i] == 0.0 and i > 0:
        i -= 1
    return i if ids is None else int(ids[i])


def sample_rows(p: np.ndarray, params: Sequence[SamplingParams], rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Choose the next token of each row of p (B, V), already blended → ids (B,).

    Greedy rows (temperature 0) take the argmax and consume no randomness; every other
    row takes exactly one number from its own generator, so its story depends on its
    seed alone.
    """
    ids = np.empty(len(params), dtype=np.int64)
    candidates = _top_k_candidates(p, params)
    for row, sp in enumerate(params):
        if sp.temperature == 0:
            ids[row] = int(np.argmax(p[row]))
            continue
        kept = _kept(p[row], sp, candidates[row])
        u = rngs[row].random()
        if kept is None:
            q = p[row] if sp.temperature == 1.0 else _tempered(p[row], sp.temperature)
            ids[row] = _draw(None, q, u)
        else:
            ids[row] = _draw(*kept, u)
    return ids


def sample(p: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """sample_rows for one distribution (V,)."""
    return int(sample_rows(np.asarray(p)[None], [params], [rng])[0])


def make_rng(seed: int) -> np.random.Generator:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    return np.random.default_rng(int(seed))
