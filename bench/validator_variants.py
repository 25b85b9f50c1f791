"""The logic validator's search space: the alternatives bench/bench_validator.py measures
beside the rule that ships (services/gateway/validator.py), and what the bench needs to
rescore a /validate answer under them. How each measured: bench/VALIDATOR.md.

- `Variant`: how the per-model measures become one score per word (each model's weight,
  the surprisal term's share λ, raw or excess surprisal, a weighted sum or the larger of
  the two models' scores). `DEFAULT_VARIANT` is the validator's `score_words`.
- `Displacement`: which models' displaced expectations flag words (weighed and summed),
  the floor on an expectation's probability, context words only or any word.
  `DEFAULT_DISPLACEMENT` is the validator's `displacement_of`.
- `Substitution`: which models' slot substitutions count, the gate on the context's boost,
  the score (shortfall, shift or the smaller), the function words left out, and the weight
  in the draft score. `DEFAULT_SUBSTITUTION` is the validator's `substitution_of`.
- `flag_words` (with `PREVIOUS_BAR_BITS`): the flag rule shipped before displaced
  expectations; `one_in`: the wording of the reasons before them.
- `validate`: the validator's answer under any of these (the defaults give the shipped
  answer, exactly: tests/inprocess/test_validator.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.gateway.validator import (
    DEFAULT_SENSITIVITY,
    DEFAULT_THRESHOLD_BITS,
    EXPECTATION_FLOOR,
    FUNCTION_WORDS,
    MODELS,
    SCORE_WEIGHTS,
    SUBSTITUTION_WEIGHT,
    SURPRISAL_SHARE,
    Expected,
    Word,
    WordMeasures,
    answer,
    displaced_bits,
    function_ids,
    group_words,
    substitution_bits,
)


# ---- the per-word score ----------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """How the per-model measures become one score per word."""

    name: str
    gpt2: float = 1.0       # weight of each model's evidence (weighted) / which models count (max)
    bdh: float = 0.0
    surprisal: float = 0.0  # λ: the surprisal term's share; 0 = the context effect alone
    combine: str = "weighted"  # "weighted" | "max"
    term: str = "excess"    # the surprisal term: "excess" (beyond the entropy) or "raw" surprisal

    def weights(self) -> np.ndarray:
        w = np.array([self.gpt2, self.bdh], dtype=np.float64)
        return w / w.sum()


# The shipped per-word score (validator.score_words), as a variant.
DEFAULT_VARIANT = Variant("gpt2 3:1 bdh, λ=0.5 raw", gpt2=SCORE_WEIGHTS["gpt2"], bdh=SCORE_WEIGHTS["bdh"],
                          surprisal=SURPRISAL_SHARE, term="raw")

VARIANTS = [
    Variant("GPT-2 context only", gpt2=1, bdh=0),
    Variant("BDH context only", gpt2=0, bdh=1),
    Variant("sum, context only", gpt2=1, bdh=1),
    Variant("max, context only", gpt2=1, bdh=1, combine="max"),
    Variant("GPT-2, λ=0.5", gpt2=1, bdh=0, surprisal=0.5),
    Variant("BDH, λ=0.5", gpt2=0, bdh=1, surprisal=0.5),
    Variant("sum, λ=0.5", gpt2=1, bdh=1, surprisal=0.5),
    Variant("max, λ=0.5", gpt2=1, bdh=1, surprisal=0.5, combine="max"),
    Variant("gpt2 3:1 bdh, λ=0.25", gpt2=0.75, bdh=0.25, surprisal=0.25),
    Variant("gpt2 3:1 bdh, λ=0.5", gpt2=0.75, bdh=0.25, surprisal=0.5),
    Variant("gpt2 3:1 bdh, λ=0.75", gpt2=0.75, bdh=0.25, surprisal=0.75),
    DEFAULT_VARIANT,
    Variant("surprisal only (sum)", gpt2=1, bdh=1, surprisal=1.0),
]


def score_words(m: WordMeasures, variant: Variant = DEFAULT_VARIANT) -> tuple[np.ndarray, np.ndarray]:
    """(score (n,), combined context bits (n,)) for each word under `variant`."""
    if variant.term not in ("excess", "raw"):
        raise ValueError(f"term must be 'excess' or 'raw', got {variant.term!r}")
    term = m.excess_bits if variant.term == "excess" else m.surprisal_bits
    per_model = (1.0 - variant.surprisal) * -m.context_bits + variant.surprisal * term  # (2, n)
    w = variant.weights()
    if variant.combine == "weighted":
        return w @ per_model, w @ m.context_bits
    if variant.combine == "max":
        counted = per_model.copy()
        counted[w == 0] = -np.inf  # a model with no weight does not count
        pick = counted.argmax(axis=0)  # (n,)
        cols = np.arange(per_model.shape[1])
        return per_model[pick, cols], m.context_bits[pick, cols]
    raise ValueError(f"combine must be 'weighted' or 'max', got {variant.combine!r}")


def measures_of(word_rows: Sequence[dict]) -> WordMeasures:
    """The measures back from a /validate answer's `words` (to rescore it under another variant)."""
    def rows(key):
        return np.array([[w[key][name] for w in word_rows] for name in MODELS], dtype=np.float64).reshape(2, -1)
    return WordMeasures(rows("context_bits"), rows("surprisal_bits"), rows("excess_bits"))


# ---- the flag rule and reasons shipped before displaced expectations ------------------
# The previous flag rule's bar: DEFAULT_VARIANT's word score ≥ this (at sensitivity 0.5)
# where the context lowers the word. The bench prints it for comparison.
PREVIOUS_BAR_BITS = 6.75


def flag_words(scores: np.ndarray, context_bits: np.ndarray, threshold: float,
               punctuation: Sequence[bool] | None = None) -> np.ndarray:
    """The previous flag rule: a word's score reaches the threshold and the context lowers
    it; punctuation never is."""
    flags = (np.asarray(scores) >= threshold) & (np.asarray(context_bits) < 0)
    return flags if punctuation is None else flags & ~np.asarray(punctuation, dtype=bool)


def one_in(bits: float) -> str:
    """A probability of 2**-bits in words, to two figures: "1 in 8.0", "1 in 340", "1 in 9,400"."""
    n = 2.0 ** bits
    if n < 9.95:
        return f"1 in {n:.1f}"
    return f"1 in {float(f'{n:.2g}'):,.0f}"


# ---- displaced expectations -------------------------------------------------------------
@dataclass(frozen=True)
class Displacement:
    """How displaced expectations flag words: which models count (their displaced bits
    are weighed and summed), the floor on p_ctx of an expectation, and whether only the
    context's own tokens count as expectations (validator.displaced_bits)."""

    name: str
    gpt2: float = 1.0
    bdh: float = 0.0
    floor: float = EXPECTATION_FLOOR
    context_only: bool = True


# The shipped flag rule (validator.displacement_of): GPT-2 alone, context words only, p ≥ 0.03.
DEFAULT_DISPLACEMENT = Displacement("displaced, GPT-2")

# /validate returns only the shipped rule's displaced bits per word, so for the others the
# bench takes the Score answers themselves (validation.score_draft, top-64 as the route asks).
DISPLACEMENTS = [
    Displacement("displaced, GPT-2", gpt2=1, bdh=0),
    Displacement("displaced, BDH", gpt2=0, bdh=1),
    Displacement("displaced, sum", gpt2=1, bdh=1),
    Displacement("displaced, GPT-2, p≥0.01", gpt2=1, bdh=0, floor=0.01),
    Displacement("displaced, GPT-2, any word", gpt2=1, bdh=0, context_only=False),
    Displacement("displaced, sum, any word", gpt2=1, bdh=1, context_only=False),
]


def displacement_of(words: Sequence[Word], token_ids: Sequence[int], with_context: dict[str, np.ndarray],
                    without_context: dict[str, np.ndarray], expected: dict[str, Expected] | None,
                    expected_without: dict[str, Expected] | None, context_ids: Sequence[int],
                    displacement: Displacement = DEFAULT_DISPLACEMENT) -> tuple[np.ndarray, list[tuple[str, int] | None]]:
    """Per word: the models' weighted displaced bits (n,), and for each word the (model,
    token id) whose expectation counts most there, None where nothing is displaced.
    Nothing is displaced without a context or without both models' top-k answers."""
    n = len(words)
    total = np.zeros(n)
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if len(context_ids) and expected and expected_without:
        for m, w in zip(MODELS, (displacement.gpt2, displacement.bdh)):
            if w:
                d, by = displaced_bits(words, token_ids, with_context[m], without_context[m], expected[m],
                                       expected_without[m], context_ids, displacement.floor,
                                       displacement.context_only)
                parts[m] = (w * d, by)
                total += w * d
    who: list[tuple[str, int] | None] = []
    for k in range(n):
        best = max(((wd[k], m, int(by[k])) for m, (wd, by) in parts.items() if by[k] >= 0), default=None)
        who.append(None if best is None else (best[1], best[2]))
    return total, who


# ---- slot substitutions -----------------------------------------------------------------
@dataclass(frozen=True)
class Substitution:
    """How slot substitutions count (validator.substitution_bits): which models (their bits
    are weighed and summed per word), how much the context must boost the context token c
    at the slot (`gate`, bits), the score ("shortfall": log2 p_ctx(c) − log2 p_ctx(w);
    "shift": the context's boost of c minus its boost of w; "min": the smaller), how many
    of the vocabulary's first whole-word tokens count as function words, and the weight of
    the draft's largest substitution in the draft score."""

    name: str
    gpt2: float = 1.0
    bdh: float = 1.0
    gate: float = 0.0
    score: str = "shortfall"
    function_words: int = FUNCTION_WORDS
    weight: float = SUBSTITUTION_WEIGHT


# The shipped draft-score term (validator.substitution_of): both models summed, shortfall, weight 0.15.
DEFAULT_SUBSTITUTION = Substitution("substitution, sum, shortfall")

# From the same Score answers: as a flag rule alone, OR the shipped displaced rule (its bar
# tuned with the shipped flags kept), and as a draft-score term (the shipped mean + a weight
# × the draft's largest, the weight tuned).
SUBSTITUTIONS = [
    Substitution("subst, GPT-2, shortfall", gpt2=1, bdh=0),
    Substitution("subst, BDH, shortfall", gpt2=0, bdh=1),
    Substitution("subst, sum, shortfall", gpt2=1, bdh=1),
    Substitution("subst, sum, shortfall, no f.w.", gpt2=1, bdh=1, function_words=0),
    Substitution("subst, sum, shift", gpt2=1, bdh=1, score="shift"),
    Substitution("subst, sum, min", gpt2=1, bdh=1, score="min"),
    Substitution("subst, GPT-2, min, gate 1", gpt2=1, bdh=0, score="min", gate=1.0),
    Substitution("subst, GPT-2, shift, gate 3", gpt2=1, bdh=0, score="shift", gate=3.0),
    Substitution("subst, BDH, shift", gpt2=0, bdh=1, score="shift"),
    Substitution("subst, sum, shift, gate 2", gpt2=1, bdh=1, score="shift", gate=2.0),
]
# The draft-score term's weights tried ...
WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0)
# ... and as a per-word term (each word's score + a weight × its substitution, so that the
# draft score stays the words' mean, as the gateway's contract says): weights tried
WORD_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)


def substitution_of(words: Sequence[Word], token_ids: Sequence[int], with_context: dict[str, np.ndarray],
                    without_context: dict[str, np.ndarray], expected: dict[str, Expected] | None,
                    expected_without: dict[str, Expected] | None, context_ids: Sequence[int],
                    decode: Callable[[list[int]], str],
                    substitution: Substitution = DEFAULT_SUBSTITUTION) -> np.ndarray:
    """Per word: the models' weighted slot-substitution bits (n,); zeros without a context
    or without both models' top-k answers."""
    total = np.zeros(len(words))
    if len(context_ids) and expected and expected_without:
        skip = function_ids(decode, substitution.function_words) if substitution.function_words else frozenset()
        for m, w in zip(MODELS, (substitution.gpt2, substitution.bdh)):
            if w:
                total += w * substitution_bits(words, token_ids, with_context[m], without_context[m], expected[m],
                                               expected_without[m], context_ids, decode, skip, substitution.gate,
                                               substitution.score)[0]
    return total


# ---- the answer under any of them ---------------------------------------------------------
def validate(draft: str, offsets: Sequence[tuple[int, int]], token_ids: Sequence[int],
             with_context: dict[str, np.ndarray], without_context: dict[str, np.ndarray],
             entropies: dict[str, np.ndarray] | None, expected: dict[str, Expected] | None,
             decode: Callable[[list[int]], str], *, expected_without: dict[str, Expected] | None = None,
             context_ids: Sequence[int] = (), sensitivity: float = DEFAULT_SENSITIVITY,
             variant: Variant = DEFAULT_VARIANT, displacement: Displacement = DEFAULT_DISPLACEMENT,
             substitution: Substitution = DEFAULT_SUBSTITUTION,
             threshold_at_default: float = DEFAULT_THRESHOLD_BITS) -> dict:
    """validator.validate's answer with the per-word score, the flag rule and the
    substitution term of the given variants (inputs as there)."""
    words = group_words(draft, offsets)
    m = WordMeasures.from_token_logprobs(words, with_context, without_context, entropies)
    scores = score_words(m, variant)[0] if words else np.zeros(0)
    displaced, who = displacement_of(words, token_ids, with_context, without_context, expected,
                                     expected_without, context_ids, displacement)
    substituted = substitution_of(words, token_ids, with_context, without_context, expected, expected_without,
                                  context_ids, decode, substitution)
    return answer(draft, words, token_ids, m, scores, displaced, who, substituted, expected, decode,
                  sensitivity=sensitivity, threshold_at_default=threshold_at_default,
                  substitution_weight=substitution.weight)
