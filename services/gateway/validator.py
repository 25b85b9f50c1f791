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

These become one score per word, in bits (higher: less consistent; `score_words`):

    score = Σ_m w_m · [(1 − λ) · (−context_bits_m) + λ · surprisal_bits_m]

with GPT-2 and BDH weighed 3:1 (`SCORE_WEIGHTS`) and λ = 0.5 (`SURPRISAL_SHARE`). λ mixes
in the surprisal term: on the shipped pair the context effect alone ranks the consistent
draft of a pair first only about 2 times in 3, and the surprisal term lifts that to about
4 in 5.

The per-word score ranks drafts and colours the heatmap; it does not flag. A word is
flagged by a displaced expectation under GPT-2 (`displaced_bits`, `displacement_of`):
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
largest *slot substitution* (`substitution_bits`, `substitution_of`): at a draft word w
that the context does not contain, a token c of the context (not a punctuation or function
word, not later in the draft) that the models put among their top-64 at that position
WITHOUT the context (a word that fits the same slot: a colour, a name, a place) and that the
context boosted there; its score is log2 p_ctx(c) − log2 p_ctx(w), summed over GPT-2 and
BDH, 0 where no c qualifies. That ranks the contradictory draft of a bench pair higher 85%
of the time instead of 79%; it does not flag (as a flag rule it caught no more than the
displaced expectations at the same false alarms).

Each choice here is bench/bench_validator.py's pick among the alternatives that
bench/validator_variants.py holds (other weights and terms, other flag rules); how they
measured is in bench/VALIDATOR.md.

Pure numpy and plain data: the validation service (validation.py) feeds it the Score
answers; tests feed it made-up log-probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from dataclasses import dataclass

import numpy as np

from plotarmour.roles import ROLES

_LOG2 = float(np.log(2.0))
MODELS = tuple(ROLES)  # the roles, in the order the gateway asks them: rows of every measure
NAMES = {name: role.family for name, role in ROLES.items()}  # "GPT-2" in a reason's words
# A word: letters and digits, with inner apostrophes ("Lily's", "don't"); or a run of
# punctuation, which is scored (the draft's probability includes it, and a sentence that
# ends where the context says it should not is evidence too) but never flagged.
_UNIT = re.compile(r"(\w+(?:['’]\w+)*)|[^\w\s]+")
EXPECTED_K = 5  # alternatives listed per model for each contradiction


# The per-word score (the draft score and the heatmap): each model's evidence weighed
# GPT-2 3:1 BDH, half the context effect and half the raw surprisal (bench/bench_validator.py's
# pick on the tuning half of its triples; bench/VALIDATOR.md).
SCORE_WEIGHTS = {"gpt2": 0.75, "bdh": 0.25}
SURPRISAL_SHARE = 0.5  # λ: the surprisal term's share; 0 would be the context effect alone
DEFAULT_SENSITIVITY = 0.5
# The flag rule's bar on displaced bits at DEFAULT_SENSITIVITY (the bench's tuned bar) and
# how far sensitivity moves it: each 0.1 lowers it by 0.3 bits, 3.3 bits at 0, 0.3 at 1.
DEFAULT_THRESHOLD_BITS = 1.8
BITS_PER_SENSITIVITY = 3.0
EXPECT_TOP_K = 64  # alternatives the validation service asks Score for, with and without the context


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


def score_words(m: WordMeasures) -> np.ndarray:
    """Each word's score (n,): Σ_m w_m · [(1 − λ) · (−context_bits_m) + λ · surprisal_bits_m]."""
    per_model = (1.0 - SURPRISAL_SHARE) * -m.context_bits + SURPRISAL_SHARE * m.surprisal_bits  # (2, n)
    return np.array([SCORE_WEIGHTS[name] for name in MODELS], dtype=np.float64) @ per_model


def flags_at(displaced: np.ndarray, threshold: float, punctuation: Sequence[bool]) -> np.ndarray:
    """The flag rule: a word's displaced bits are positive and reach the bar; punctuation never is."""
    displaced = np.asarray(displaced, dtype=np.float64)
    return (displaced > 0) & (displaced >= threshold) & ~np.asarray(punctuation, dtype=bool).reshape(-1)


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


# The flag rule (the bench's pick): GPT-2's displaced expectations alone, among the
# context's own words, each at least this likely with the context.
DISPLACING_MODEL = "gpt2"
EXPECTATION_FLOOR = 0.03


def displaced_bits(words: Sequence[Word], token_ids: Sequence[int], with_context: np.ndarray,
                   without_context: np.ndarray, expected: Expected, expected_without: Expected,
                   context_ids: Sequence[int] = (), floor: float = EXPECTATION_FLOOR,
                   context_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One model's displaced expectation per word, in bits (n,), and the displacing token
    id (n,), −1 where none; punctuation gets 0. Inputs as for `validate`, for one model.

    p_noctx(e) comes from the no-context top-k; where e is not in it, the k-th value there
    is an upper bound on it, so shift(e) is then a lower bound. Expectations below `floor`
    (p_ctx) do not count; `context_only` keeps only expectations that are tokens of the
    context itself ('red', 'Lily', 'park', 'two'); an e that occurs at or after this
    position in the draft is deferred, not displaced ("the black cat" after a context
    about a cat: " cat" comes later, so " black" did not push it aside)."""
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
                    expected_without: dict[str, Expected] | None,
                    context_ids: Sequence[int]) -> tuple[np.ndarray, list[tuple[str, int] | None]]:
    """Per word: the flag rule's displaced bits (n,) (DISPLACING_MODEL's, at EXPECTATION_FLOOR,
    context words only), and for each word the (model, token id) of the expectation it
    displaced, None where nothing is displaced. Nothing is displaced without a context or
    without both models' top-k answers."""
    n = len(words)
    if not (len(context_ids) and expected and expected_without):
        return np.zeros(n), [None] * n
    m = DISPLACING_MODEL
    d, by = displaced_bits(words, token_ids, with_context[m], without_context[m], expected[m],
                           expected_without[m], context_ids, EXPECTATION_FLOOR)
    return d, [None if b < 0 else (m, int(b)) for b in by]


# The draft-score term (the bench's pick on its tuning half): both models' slot substitutions
# summed, scored by their shortfall, the vocabulary's first 50 whole-word tokens left out as
# function words, and the draft's largest weighed 0.15.
SUBSTITUTION_WEIGHT = 0.15
FUNCTION_WORDS = 50
_WORD_TOKEN = re.compile(r" ?[A-Za-z]+")
_FIRST_MERGE = 256  # byte-level BPE: the first 256 ids are bytes, merges follow in frequency order


def function_ids(decode: Callable[[list[int]], str], n: int = FUNCTION_WORDS, search: int = 2000) -> frozenset[int]:
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
                    decode: Callable[[list[int]], str]) -> np.ndarray:
    """Per word: both models' slot-substitution bits summed (n,) (shortfall, no gate, the
    first FUNCTION_WORDS whole-word tokens skipped); zeros without a context or without
    both models' top-k answers."""
    total = np.zeros(len(words))
    if len(context_ids) and expected and expected_without:
        skip = function_ids(decode, FUNCTION_WORDS)
        for m in MODELS:
            total += substitution_bits(words, token_ids, with_context[m], without_context[m], expected[m],
                                       expected_without[m], context_ids, decode, skip)[0]
    return total


def _r(x: float) -> float:
    return round(float(x), 4)


def validate(draft: str, offsets: Sequence[tuple[int, int]], token_ids: Sequence[int],
             with_context: dict[str, np.ndarray], without_context: dict[str, np.ndarray],
             entropies: dict[str, np.ndarray] | None, expected: dict[str, Expected] | None,
             decode: Callable[[list[int]], str], *, expected_without: dict[str, Expected] | None = None,
             context_ids: Sequence[int] = (), sensitivity: float = DEFAULT_SENSITIVITY,
             threshold_at_default: float = DEFAULT_THRESHOLD_BITS) -> dict:
    """The /validate answer for one draft.

    with_context / without_context: per model, natural-log log p of each draft token (T,)
    after the context / after <eot> alone; entropies: per model, nats at each draft
    position (T,) with the context; expected / expected_without: per model, the top
    alternatives at each draft position with / without the context (top-64 for the flag
    rule; the first five other than the draft's token are listed); context_ids: the
    context's token ids (empty: no context, nothing is flagged or substituted). The draft
    score is the words' mean score plus SUBSTITUTION_WEIGHT × the largest substitution.
    """
    words = group_words(draft, offsets)
    m = WordMeasures.from_token_logprobs(words, with_context, without_context, entropies)
    scores = score_words(m) if words else np.zeros(0)
    displaced, who = displacement_of(words, token_ids, with_context, without_context, expected,
                                     expected_without, context_ids)
    substituted = substitution_of(words, token_ids, with_context, without_context, expected, expected_without,
                                  context_ids, decode)
    return answer(draft, words, token_ids, m, scores, displaced, who, substituted, expected, decode,
                  sensitivity=sensitivity, threshold_at_default=threshold_at_default)


def answer(draft: str, words: Sequence[Word], token_ids: Sequence[int], m: WordMeasures, scores: np.ndarray,
           displaced: np.ndarray, who: Sequence[tuple[str, int] | None], substituted: np.ndarray,
           expected: dict[str, Expected] | None, decode: Callable[[list[int]], str], *,
           sensitivity: float = DEFAULT_SENSITIVITY, threshold_at_default: float = DEFAULT_THRESHOLD_BITS,
           substitution_weight: float = SUBSTITUTION_WEIGHT) -> dict:
    """The answer's body from each word's measures, score, displaced bits (with who
    displaced what) and substitution bits: the flags at the bar `sensitivity` sets, merged
    into contradictions with their reasons, and the draft score."""
    threshold = threshold_bits(sensitivity, threshold_at_default)
    flags = flags_at(displaced, threshold, [wd.punctuation for wd in words])

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
        "score": _r(scores.mean() + substitution_weight * substituted.max()) if words else 0.0,
        "sensitivity": sensitivity,
        "threshold_bits": _r(threshold),
        "contradictions": contradictions,
        "words": word_rows,
    }
