"""The logic validator: which words of a draft does its context make less likely?

A contradiction is a draft word that the context makes *less* likely than it is without
that context ("Lily had a red ball." makes " blue" in " She threw the blue ball." less
likely than it is in the draft alone). Each draft word (its sub-word tokens merged: a
word is never split) is measured under each model m ∈ {gpt2, bdh}:

    context_bits_m   = log2 p(word | context + draft so far) − log2 p(word | <eot> + draft so far)
                       (negative: the context argues against the word; with no context, 0)
    surprisal_bits_m = −log2 p(word | context + draft so far)
    excess_bits_m    = surprisal_bits_m − the entropy of those positions
                       (how much more surprising the word is than the model's typical pick there)

A scoring `Variant` turns these into one score per word, in bits (higher: less consistent):

    weighted:  score = Σ_m w_m · [(1 − λ) · (−context_bits_m) + λ · term_m]
    max:       the larger of the two models' own scores (either model can raise it)

with term_m the surprisal (raw) or the excess surprisal. λ mixes in the surprisal term:
on the shipped pair the context effect alone ranks the consistent draft of a pair first
only about 2 times in 3, and the surprisal term lifts that to about 4 in 5.
bench/bench_validator.py measures every variant; DEFAULT_VARIANT is its pick:
GPT-2 and BDH weighed 3:1, λ = 0.5, raw surprisal.

The per-word score ranks drafts and colours the heatmap; it does not flag. A word is
flagged by a displaced expectation under GPT-2 (`displaced_bits`, `DEFAULT_DISPLACEMENT`):
at the word's first token, a word of the context that GPT-2 expected there instead (one
of its top-64, p ≥ 0.03 with the context, not occurring later in the draft) and that the
context boosted more than the draft's word:

    shift(e)     = [log2 p_ctx(e) − log2 p_noctx(e)] − [log2 p_ctx(w) − log2 p_noctx(w)]
    shortfall(e) = log2 p_ctx(e) − log2 p_ctx(w)
    displaced    = max over e of min(shift(e), shortfall(e)) bits, 0 when no e qualifies

("Lily had a red ball." then " She threw the blue ball.": at " blue", GPT-2 expected
" red", which the context boosted and which is likelier than " blue" there.) A word is
flagged when its displaced bits are positive and reach the bar that `sensitivity` sets
(`threshold_bits`): 1.8 bits at the default 0.5, the bar bench/bench_validator.py tunes on
half of its triples; higher sensitivity, lower bar, more flags (each 0.1 moves it by
0.3 bits, from 3.3 bits at 0 to 0.3 bits at 1). Adjacent flagged words (only spaces
between them) merge into one contradiction; runs of punctuation are never flagged. The
draft's score is the mean of the per-word scores above (all words and punctuation), so
drafts of different lengths for one context compare, plus 0.15 × the draft's
largest *slot substitution* (`substitution_bits`, `DEFAULT_SUBSTITUTION`): at a draft word w
that the context does not contain, a token c of the context (not a punctuation or function
word, not later in the draft) that the models put among their top-64 at that position
WITHOUT the context (a word that fits the same slot: a colour, a name, a place) and that the
context boosted there; its score is log2 p_ctx(c) − log2 p_ctx(w), summed over GPT-2 and
BDH, 0 where no c qualifies. That ranks the contradictory draft of a bench pair higher 85%
of the time instead of 79%; it does not flag (as a flag rule it caught no more than the
displaced expectations at the same false alarms).

Pure numpy and plain data: the route feeds it the Score answers; tests feed it made-up
log-probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from dataclasses import dataclass

import numpy as np

_LOG2 = float(np.log(2.0))
MODELS = ("gpt2", "bdh")
NAMES = {"gpt2": "GPT-2", "bdh": "BDH"}
# A word: letters and digits, with inner apostrophes ("Lily's", "don't"); or a run of
# punctuation, which is scored (the draft's probability includes it, and a sentence that
# ends where the context says it should not is evidence too) but never flagged.
_UNIT = re.compile(r"(\w+(?:['’]\w+)*)|[^\w\s]+")
EXPECTED_K = 5  # alternatives listed per model for each contradiction


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


# The shipped variant (the draft score and the per-word heatmap scores), chosen by
# bench/bench_validator.py on the tuning half of its triples (see its docstring).
DEFAULT_VARIANT = Variant("gpt2 3:1 bdh, λ=0.5 raw", gpt2=0.75, bdh=0.25, surprisal=0.5, term="raw")
DEFAULT_SENSITIVITY = 0.5
# The flag rule's bar on displaced bits at DEFAULT_SENSITIVITY (the bench's tuned bar) and
# how far sensitivity moves it: each 0.1 lowers it by 0.3 bits, 3.3 bits at 0, 0.3 at 1.
DEFAULT_THRESHOLD_BITS = 1.8
BITS_PER_SENSITIVITY = 3.0
EXPECT_TOP_K = 64  # alternatives the route asks Score for, with and without the context


def threshold_bits(sensitivity: float, at_default: float = DEFAULT_THRESHOLD_BITS) -> float:
    """The displaced bits a flag needs. Higher sensitivity, lower bar: flags are a superset."""
    return at_default + BITS_PER_SENSITIVITY * (DEFAULT_SENSITIVITY - sensitivity)


@dataclass(frozen=True)
class Word:
    start: int            # character offsets into the draft
    end: int
    tokens: tuple[int, ...]  # indices of the draft tokens it is made of (at least one)
    punctuation: bool = False  # a run of punctuation: scored, never flagged


def group_words(draft: str, offsets: Sequence[tuple[int, int]]) -> list[Word]:
    """The draft's words and runs of punctuation, each with the tokens that overlap it.

    A token that overlaps two of them (a tokenizer that merges across a hyphen, say)
    joins them into one, so a token always belongs to exactly one unit, or to none when
    it is only spaces. Tokens overlap a unit when their character ranges intersect.
    """
    spans = [[m.start(), m.end(), [], m.group(1) is None] for m in _UNIT.finditer(draft)]
    if not spans:
        return []
    starts = [s for s, *_ in spans]
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        # the words whose range intersects [a, b): from the last that starts before b
        k = int(np.searchsorted(starts, b, side="left")) - 1
        while k >= 0 and spans[k][1] > a:
            spans[k][2].append(t)
            k -= 1
    merged: list[list] = []
    for s, e, toks, punct in spans:
        if not toks:  # unreachable with a tokenizer whose offsets cover the text
            continue
        if merged and min(toks) <= max(merged[-1][2]):  # shares a token with the previous unit
            merged[-1][1] = e
            merged[-1][2] = sorted(set(merged[-1][2]) | set(toks))
            merged[-1][3] = merged[-1][3] and punct  # with a word in it, it is a word
        else:
            merged.append([s, e, sorted(toks), punct])
    return [Word(s, e, tuple(toks), punct) for s, e, toks, punct in merged]


def surprisal_bits_of(logprobs: np.ndarray) -> np.ndarray:
    """Natural-log log-probs → surprisal in bits."""
    return -np.asarray(logprobs, dtype=np.float64) / _LOG2


def word_sums(values: np.ndarray, words: Sequence[Word]) -> np.ndarray:
    """Per-token values (T,) summed over each word's tokens → (n_words,)."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([values[list(w.tokens)].sum() for w in words], dtype=np.float64)


@dataclass
class WordMeasures:
    """Per-word measures in bits, rows in MODELS order: each (2, n_words)."""

    context_bits: np.ndarray
    surprisal_bits: np.ndarray
    excess_bits: np.ndarray

    @classmethod
    def from_token_logprobs(cls, words: Sequence[Word], with_context: dict[str, np.ndarray],
                            without_context: dict[str, np.ndarray],
                            entropies: dict[str, np.ndarray] | None = None) -> WordMeasures:
        """From natural-log token log-probs (T,) per model (and entropies in nats, when known)."""
        lw = np.stack([word_sums(with_context[m], words) for m in MODELS]) / _LOG2
        lwo = np.stack([word_sums(without_context[m], words) for m in MODELS]) / _LOG2
        if entropies is None:
            ent = np.zeros_like(lw)
        else:
            ent = np.stack([word_sums(entropies[m], words) for m in MODELS]) / _LOG2
        return cls(context_bits=lw - lwo, surprisal_bits=-lw, excess_bits=-lw - ent)


def measures_of(word_rows: Sequence[dict]) -> WordMeasures:
    """The measures back from a /validate answer's `words` (to rescore it under another variant)."""
    def rows(key):
        return np.array([[w[key][name] for w in word_rows] for name in MODELS], dtype=np.float64).reshape(2, -1)
    return WordMeasures(rows("context_bits"), rows("surprisal_bits"), rows("excess_bits"))


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


def flag_words(scores: np.ndarray, context_bits: np.ndarray, threshold: float,
               punctuation: Sequence[bool] | None = None) -> np.ndarray:
    """The previous flag rule, kept for the bench to measure: a word's score reaches the
    threshold and the context lowers it; punctuation never is."""
    flags = (np.asarray(scores) >= threshold) & (np.asarray(context_bits) < 0)
    return flags if punctuation is None else flags & ~np.asarray(punctuation, dtype=bool)


def merge_flags(draft: str, words: Sequence[Word], flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Runs of flagged words with only spaces between them, as (first, last) word indices."""
    runs: list[tuple[int, int]] = []
    for i, flagged in enumerate(flags):
        if not flagged:
            continue
        if runs and runs[-1][1] == i - 1 and not draft[words[i - 1].end: words[i].start].strip():
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def times(bits: float) -> str:
    """A factor of 2**bits in words: "12×", "3.4×"."""
    f = 2.0 ** bits
    return f"{f:.0f}×" if f >= 9.95 else f"{f:.1f}×"


def one_in(bits: float) -> str:
    """A probability of 2**-bits in words, to two figures: "1 in 8.0", "1 in 340", "1 in 9,400"."""
    n = 2.0 ** bits
    if n < 9.95:
        return f"1 in {n:.1f}"
    return f"1 in {float(f'{n:.2g}'):,.0f}"


def reason(word: str, expected: str, bits: float, model: str = "gpt2") -> str:
    """A plain sentence naming the displaced expectation: "'blue' where GPT-2 expected
    'red' (this context makes 'red' 16× likelier than 'blue')". The factor is 2**bits, the
    displaced bits: after the context the expectation is at least that much likelier than
    the word, and the context raised its odds against the word at least that much."""
    w, e = word.strip(), expected.strip()
    return f"{w!r} where {NAMES[model]} expected {e!r} (this context makes {e!r} {times(bits)} likelier than {w!r})"


@dataclass
class Expected:
    """A model's top alternatives at each draft position: ids and log-probs (T, k)."""

    ids: np.ndarray
    log_probs: np.ndarray

    def at(self, position: int, own: int, decode: Callable[[list[int]], str],
           k: int = EXPECTED_K) -> list[dict]:
        """The k likeliest tokens at `position` other than the draft's own token `own`."""
        out = []
        for i, lp in zip(self.ids[position], self.log_probs[position]):
            if int(i) == own:
                continue
            out.append({"text": decode([int(i)]), "p": round(float(np.exp(lp)), 6)})
            if len(out) == k:
                break
        return out


@dataclass(frozen=True)
class Displacement:
    """How displaced expectations flag words: which models count (their displaced bits
    are weighed and summed), the floor on p_ctx of an expectation, and whether only the
    context's own tokens count as expectations. See `displaced_bits`.

    p_noctx(e) comes from the no-context top-k; where e is not in it, the k-th value there
    is an upper bound on it, so shift(e) is then a lower bound. `context_only` keeps only
    expectations that are tokens of the context itself ('red', 'Lily', 'park', 'two');
    an e that occurs at or after this position in the draft is deferred, not displaced
    ("the black cat" after a context about a cat: " cat" comes later, so " black" did not
    push it aside).
    """

    name: str
    gpt2: float = 1.0
    bdh: float = 0.0
    floor: float = 0.03
    context_only: bool = True


# The shipped flag rule: GPT-2 alone, context words only, p ≥ 0.03 (the bench's pick).
DEFAULT_DISPLACEMENT = Displacement("displaced, GPT-2")


def displaced_bits(words: Sequence[Word], token_ids: Sequence[int], with_context: np.ndarray,
                   without_context: np.ndarray, expected: Expected, expected_without: Expected,
                   context_ids: Sequence[int] = (), floor: float = 0.03,
                   context_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One model's displaced expectation per word, in bits (n,), and the displacing token
    id (n,), −1 where none; punctuation gets 0. Inputs as for `validate`, for one model."""
    ctx = set(int(i) for i in context_ids)
    ids = [int(i) for i in token_ids]
    out = np.zeros(len(words))
    by = np.full(len(words), -1, dtype=np.int64)
    for k, wd in enumerate(words):
        if wd.punctuation:
            continue
        t = wd.tokens[0]
        later = set(ids[t:])
        lwc, lwn = float(with_context[t]), float(without_context[t])
        no = dict(zip(expected_without.ids[t].tolist(), expected_without.log_probs[t].tolist()))
        bound = float(expected_without.log_probs[t][-1])
        for e, lec in zip(expected.ids[t].tolist(), expected.log_probs[t].tolist()):
            if np.exp(lec) < floor:
                break  # likeliest first: the rest are rarer still
            if e in later or (context_only and e not in ctx):
                continue
            shift = ((lec - no.get(e, bound)) - (lwc - lwn)) / _LOG2
            s = min(shift, (lec - lwc) / _LOG2)
            if s > out[k]:
                out[k], by[k] = s, e
    return out, by


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


@dataclass(frozen=True)
class Substitution:
    """How slot substitutions count (see `substitution_bits`): which models (their bits are
    weighed and summed per word), how much the context must boost the context token c at
    the slot (`gate`, bits), the score ("shortfall": log2 p_ctx(c) − log2 p_ctx(w); "shift":
    the context's boost of c minus its boost of w; "min": the smaller), how many of the
    vocabulary's first whole-word tokens count as function words, and the weight of the
    draft's largest substitution in the draft score."""

    name: str
    gpt2: float = 1.0
    bdh: float = 1.0
    gate: float = 0.0
    score: str = "shortfall"
    function_words: int = 50
    weight: float = 0.15


# The shipped draft-score term: both models summed, shortfall, weight 0.15 (the bench's pick
# on its tuning half).
DEFAULT_SUBSTITUTION = Substitution("substitution, sum, shortfall")
_WORD_TOKEN = re.compile(r" ?[A-Za-z]+")
_FIRST_MERGE = 256  # byte-level BPE: the first 256 ids are bytes, merges follow in frequency order


def function_ids(decode: Callable[[list[int]], str], n: int = 50, search: int = 2000) -> frozenset[int]:
    """The first n whole-word tokens (" the", " was", " He"...) in the vocabulary's order
    after its 256 bytes: a byte-level BPE learns its merges most frequent first."""
    try:
        return _function_ids_cached(decode, n, search)
    except TypeError:  # an unhashable decode
        return _function_ids_cached.__wrapped__(decode, n, search)


@lru_cache(maxsize=16)
def _function_ids_cached(decode, n: int, search: int) -> frozenset[int]:
    out: list[int] = []
    for i in range(_FIRST_MERGE, _FIRST_MERGE + search):
        if len(out) >= n:
            break
        try:
            text = decode([i])
        except Exception:  # past the vocabulary's end
            break
        if _WORD_TOKEN.fullmatch(text):
            out.append(i)
    return frozenset(out)


def substitution_bits(words: Sequence[Word], token_ids: Sequence[int], with_context: np.ndarray,
                      without_context: np.ndarray, expected: Expected, expected_without: Expected,
                      context_ids: Sequence[int], decode: Callable[[list[int]], str],
                      skip_ids: Collection[int] = frozenset(), gate: float = 0.0,
                      score: str = "shortfall") -> tuple[np.ndarray, np.ndarray]:
    """One model's slot substitution per word, in bits (n,), and the substituted context
    token id (n,), −1 where none; punctuation and words whose first token occurs in the
    context get 0. At the word's first token t (draft token w): each c of the no-context
    top-k at t that is a context token, not w, not at or after t in the draft, not in
    `skip_ids` and not punctuation, whose context boost log p_ctx(c) − log p_noctx(c)
    exceeds `gate` bits, scores by `score`; the word takes the largest positive score.
    p_ctx(c) comes from the with-context top-k; outside it, the k-th value there (an upper
    bound). Inputs as for `displaced_bits`."""
    if score not in ("shortfall", "shift", "min"):
        raise ValueError(f"score must be 'shortfall', 'shift' or 'min', got {score!r}")
    ctx = set(int(i) for i in context_ids)
    ids = [int(i) for i in token_ids]
    out = np.zeros(len(words))
    by = np.full(len(words), -1, dtype=np.int64)
    for k, wd in enumerate(words):
        t = wd.tokens[0]
        if wd.punctuation or ids[t] in ctx:
            continue
        later = set(ids[t:])
        lwc, lwn = float(with_context[t]), float(without_context[t])
        wc = dict(zip(expected.ids[t].tolist(), expected.log_probs[t].tolist()))
        bound = float(expected.log_probs[t][-1])
        for c, lcn in zip(expected_without.ids[t].tolist(), expected_without.log_probs[t].tolist()):
            if c not in ctx or c in later or c in skip_ids or not re.search(r"\w", decode([c])):
                continue
            lcc = wc.get(c, bound)
            boost = (lcc - lcn) / _LOG2
            if boost <= gate:
                continue
            shortfall, shift = (lcc - lwc) / _LOG2, boost - (lwc - lwn) / _LOG2
            s = {"shortfall": shortfall, "shift": shift, "min": min(shortfall, shift)}[score]
            if s > out[k]:
                out[k], by[k] = s, c
    return out, by


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


def _r(x: float) -> float:
    return round(float(x), 4)


def validate(draft: str, offsets: Sequence[tuple[int, int]], token_ids: Sequence[int],
             with_context: dict[str, np.ndarray], without_context: dict[str, np.ndarray],
             entropies: dict[str, np.ndarray] | None, expected: dict[str, Expected] | None,
             decode: Callable[[list[int]], str], *, expected_without: dict[str, Expected] | None = None,
             context_ids: Sequence[int] = (), sensitivity: float = DEFAULT_SENSITIVITY,
             variant: Variant = DEFAULT_VARIANT, displacement: Displacement = DEFAULT_DISPLACEMENT,
             substitution: Substitution = DEFAULT_SUBSTITUTION, threshold_at_default: float = DEFAULT_THRESHOLD_BITS) -> dict:
    """The /validate answer for one draft.

    with_context / without_context: per model, natural-log log p of each draft token (T,)
    after the context / after <eot> alone; entropies: per model, nats at each draft
    position (T,) with the context; expected / expected_without: per model, the top
    alternatives at each draft position with / without the context (top-64 for the flag
    rule; the first five other than the draft's token are listed); context_ids: the
    context's token ids (empty: no context, nothing is flagged or substituted). The draft
    score is the words' mean score plus `substitution.weight` × the largest substitution.
    """
    words = group_words(draft, offsets)
    threshold = threshold_bits(sensitivity, threshold_at_default)
    m = WordMeasures.from_token_logprobs(words, with_context, without_context, entropies)
    scores, _ = score_words(m, variant) if words else (np.zeros(0), np.zeros(0))
    displaced, who = displacement_of(words, token_ids, with_context, without_context, expected,
                                     expected_without, context_ids, displacement)
    substituted = substitution_of(words, token_ids, with_context, without_context, expected, expected_without,
                                  context_ids, decode, substitution)
    punct = np.array([wd.punctuation for wd in words], dtype=bool)
    flags = (displaced > 0) & (displaced >= threshold) & ~punct

    contradictions = []
    for i, j in merge_flags(draft, words, flags):
        worst = i + int(np.argmax(displaced[i: j + 1]))
        wd = words[worst]
        first = wd.tokens[0]
        alts = {name: expected[name].at(first, int(token_ids[first]), decode) for name in MODELS} \
            if expected else {name: [] for name in MODELS}
        model, e = who[worst]
        start, end = words[i].start, words[j].end
        contradictions.append({
            "start": start, "end": end, "text": draft[start:end],
            "reason": reason(draft[wd.start: wd.end], decode([e]), displaced[worst], model),
            "score": _r(displaced[worst]),
            "expected": alts,
        })

    word_rows = [{
        "start": wd.start, "end": wd.end, "text": draft[wd.start: wd.end], "score": _r(scores[k]),
        "flagged": bool(flags[k]), "punctuation": wd.punctuation, "displaced_bits": _r(displaced[k]),
        "substitution_bits": _r(substituted[k]),
        "surprisal_bits": {name: _r(m.surprisal_bits[r, k]) for r, name in enumerate(MODELS)},
        "context_bits": {name: _r(m.context_bits[r, k]) for r, name in enumerate(MODELS)},
        "excess_bits": {name: _r(m.excess_bits[r, k]) for r, name in enumerate(MODELS)},
    } for k, wd in enumerate(words)]
    return {
        "consistent": not contradictions,
        "score": _r(scores.mean() + substitution.weight * substituted.max()) if words else 0.0,
        "sensitivity": sensitivity,
        "threshold_bits": _r(threshold),
        "contradictions": contradictions,
        "words": word_rows,
    }
