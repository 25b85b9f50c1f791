"""Blending two next-token distributions and drawing a token: pure numpy functions.

The gateway turns each model's distribution into probabilities, blends them by the
logic weight w (0 = pure GPT-2, 1 = pure BDH), then applies temperature, top-k and
top-p and draws with a seeded generator. Every step takes the same path whatever w
is: the blend is always computed, and at w = 0 or w = 1 it is *exactly* (bit for bit)
one model's probabilities, because 1.0·x + 0.0·y == x in floating point. So a blended
generation at w = 0 reproduces `sample(probs(gpt2_logprobs))` token for token.

Everything works in float64: 50k float32 probabilities summed in float32 lose the
tail, and the draw compares a uniform number against a cumulative sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLENDS = ("linear", "geometric")

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


def _as_scores(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError(f"{name} contains NaN or +inf")
    return np.maximum(a, _LOG_FLOOR)


def probs(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """Softmax of log-probabilities (or logits: the same thing up to a constant) → float64."""
    s = _as_scores(scores, name)
    s = s - s.max()
    p = np.exp(s)
    return p / p.sum()


def _check_weight(w: float) -> float:
    w = float(w)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"logic_weight must be in [0, 1], got {w}")
    return w


def blend(gpt2: np.ndarray, bdh: np.ndarray, w: float, mode: str = "linear") -> np.ndarray:
    """Blend two distributions given as log-probs or logits (V,) → probabilities (V,).

    linear:    p = (1 − w)·p_gpt2 + w·p_bdh
    geometric: p ∝ p_gpt2^(1 − w) · p_bdh^w   (a product of experts; sharper than linear)
    """
    w = _check_weight(w)
    g, b = np.asarray(gpt2), np.asarray(bdh)
    if g.shape != b.shape:
        raise ValueError(f"distributions differ in size: gpt2 {g.shape} vs bdh {b.shape}")
    if mode == "linear":
        # Not renormalised: a mixture of two distributions already sums to 1 (up to
        # rounding, which the draw tolerates), and dividing again would break exactness
        # at the endpoints.
        return (1.0 - w) * probs(g, "gpt2") + w * probs(b, "bdh")
    if mode == "geometric":
        # Softmax of the weighted sum: each model's normalising constant cancels, so
        # logits and log-probs give the same result.
        return probs((1.0 - w) * _as_scores(g, "gpt2") + w * _as_scores(b, "bdh"))
    raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {mode!r}")


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T), renormalised. T = 1 returns p unchanged; T = 0 is handled by the caller (argmax)."""
    if temperature == 1.0:
        return p
    with np.errstate(divide="ignore", over="ignore"):
        logp = np.log(p)
        # Shift so the best token sits at 0 before dividing: with a tiny temperature the
        # others then run to -inf (greedy, as the limit should be) instead of every score
        # overflowing to -inf alike (which would read as uniform).
        return probs((logp - logp.max()) / temperature)


def top_k_mask(p: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k most probable tokens (ties broken by lower id). k = 0 keeps all."""
    if k <= 0 or k >= p.size:
        return np.ones(p.size, dtype=bool)
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(p.size, dtype=bool)
    keep[order[:k]] = True
    return keep


def top_p_mask(p: np.ndarray, top_p: float) -> np.ndarray:
    """Boolean mask of the smallest most-probable set whose mass reaches top_p (≥ 1 token)."""
    if top_p >= 1.0:
        return np.ones(p.size, dtype=bool)
    order = np.argsort(-p, kind="stable")
    mass_before = np.cumsum(p[order]) - p[order]  # mass of strictly more probable tokens
    keep = np.zeros(p.size, dtype=bool)
    keep[order[mass_before < top_p * p.sum()]] = True
    keep[order[0]] = True  # top_p tiny: still keep the single best token
    return keep


def filtered(p: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Temperature, then top-k, then top-p; returns the renormalised distribution."""
    q = apply_temperature(p, params.temperature) if params.temperature > 0 else p
    if params.top_k:
        q = np.where(top_k_mask(q, params.top_k), q, 0.0)
    if params.top_p < 1.0:
        q = np.where(top_p_mask(q, params.top_p), q, 0.0)  # nucleus within the top-k set
    return q / q.sum()


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw in token-id order with one uniform number per token."""
    c = np.cumsum(p)
    i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
    # Rounding can put u·total at the very end; never return an id past the vocabulary
    # or one with zero probability.
    i = min(i, p.size - 1)
    while p[i] == 0.0 and i > 0:
        i -= 1
    return i


def sample(p: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Choose the next token from a probability vector (already blended)."""
    if params.temperature == 0:
        return int(np.argmax(p))  # greedy: no randomness consumed
    return draw(filtered(p, params), rng)


def make_rng(seed: int) -> np.random.Generator:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    return np.random.default_rng(int(seed))
