"""The validator's arithmetic on made-up log-probabilities (numpy only, no servers):
words from tokens, the per-word measures, the flag rule, merging, reasons and
sensitivity; and the bench's variants (bench/validator_variants.py), whose defaults must
give the shipped answer. The route over fake servers: test_gateway.py; over real ones:
integration."""

from __future__ import annotations

import numpy as np
import pytest

from bench import validator_variants as variants
from bench.validator_variants import DEFAULT_VARIANT, Displacement, Substitution, Variant, flag_words, one_in
from services.gateway.validator import (
    DEFAULT_SENSITIVITY,
    DEFAULT_THRESHOLD_BITS,
    MODELS,
    SUBSTITUTION_WEIGHT,
    Expected,
    Word,
    WordMeasures,
    displaced_bits,
    function_ids,
    group_words,
    merge_flags,
    reason,
    score_words,
    substitution_bits,
    threshold_bits,
    times,
    validate,
)

LN2 = np.log(2)


def tokenize(pieces: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """A draft from its token texts, with each token's character offsets."""
    offsets, pos = [], 0
    for p in pieces:
        offsets.append((pos, pos + len(p)))
        pos += len(p)
    return "".join(pieces), offsets


def test_words_merge_their_pieces_and_punctuation_is_its_own_unit():
    draft, offsets = tokenize([" Li", "ly", "'s", " qu", "ill", " was", " red", ".", '"', " Ok"])
    words = group_words(draft, offsets)
    assert [draft[w.start: w.end] for w in words] == ["Lily's", "quill", "was", "red", '."', "Ok"]
    assert [w.tokens for w in words] == [(0, 1, 2), (3, 4), (5,), (6,), (7, 8), (9,)]
    assert [w.punctuation for w in words] == [False, False, False, False, True, False]
    assert group_words(" ...", [(0, 4)]) == [Word(1, 4, (0,), punctuation=True)]


def test_a_token_across_two_words_joins_them():
    # A tokenizer that merges across a hyphen: "well-known" is then one word, never a piece.
    draft, offsets = tokenize([" we", "ll-kn", "own", " cat"])
    words = group_words(draft, offsets)
    assert [(draft[w.start: w.end], w.tokens) for w in words] == [("well-known", (0, 1, 2)), ("cat", (3,))]
    assert not words[0].punctuation
    # A token holding a word and its full stop makes them one word too.
    draft, offsets = tokenize([" ball.", " Ok"])
    assert [(draft[w.start: w.end], w.punctuation) for w in group_words(draft, offsets)] == [("ball.", False), ("Ok", False)]


def test_measures_sum_a_words_tokens_in_bits():
    words = [Word(0, 3, (0,)), Word(3, 9, (1, 2))]
    with_ctx = {m: np.log([0.5, 0.25, 0.5]) for m in MODELS}
    without = {"gpt2": np.log([0.5, 0.5, 0.5]), "bdh": np.log([0.25, 0.25, 0.5])}
    ent = {m: np.full(3, LN2) for m in MODELS}  # 1 bit expected at each position
    m = WordMeasures.from_token_logprobs(words, with_ctx, without, ent)
    np.testing.assert_allclose(m.surprisal_bits, [[1, 3], [1, 3]])
    np.testing.assert_allclose(m.context_bits, [[0, -1], [1, 0]])
    np.testing.assert_allclose(m.excess_bits, [[0, 1], [0, 1]])


def test_variants_weigh_the_models_and_the_surprisal_term():
    m = WordMeasures(context_bits=np.array([[-4.0, 2.0], [0.0, -6.0]]), surprisal_bits=np.zeros((2, 2)),
                     excess_bits=np.array([[2.0, 0.0], [2.0, 4.0]]))
    score, ctx = variants.score_words(m, Variant("gpt2", gpt2=1, bdh=0))
    np.testing.assert_allclose(score, [4, -2])
    np.testing.assert_allclose(ctx, [-4, 2])
    score, ctx = variants.score_words(m, Variant("sum", gpt2=1, bdh=1, surprisal=0.5))
    np.testing.assert_allclose(score, [0.5 * (0.5 * 4 + 0.5 * 2) + 0.5 * (0.5 * 0 + 0.5 * 2),
                                       0.5 * (0.5 * -2 + 0) + 0.5 * (0.5 * 6 + 0.5 * 4)])
    np.testing.assert_allclose(ctx, [-2, -2])
    score, ctx = variants.score_words(m, Variant("max", gpt2=1, bdh=1, combine="max"))
    np.testing.assert_allclose(score, [4, 6])  # each word: the model that objects more
    np.testing.assert_allclose(ctx, [-4, -6])
    score, _ = variants.score_words(m, Variant("max of gpt2 only", gpt2=1, bdh=0, combine="max"))
    np.testing.assert_allclose(score, [4, -2])  # a model with no weight does not count
    with pytest.raises(ValueError, match="combine"):
        variants.score_words(m, Variant("x", combine="min"))


def test_a_word_the_context_supports_and_punctuation_are_never_flagged():
    scores, ctx = np.array([9.0, 9.0, 1.0, 9.0]), np.array([-0.5, 0.0, -8.0, -3.0])
    assert flag_words(scores, ctx, threshold=2.0).tolist() == [True, False, False, True]
    assert flag_words(scores, ctx, 2.0, punctuation=[False, False, False, True]).tolist() == [True, False, False, False]


def test_adjacent_flags_merge_but_not_across_punctuation():
    draft, offsets = tokenize(["The", " blue", " big", " ball", ",", " red", " hat", "."])
    words = group_words(draft, offsets)  # The blue big ball , red hat .
    flags = [False, True, True, True, False, True, False, False]
    assert merge_flags(draft, words, flags) == [(1, 3), (5, 5)]  # "blue big ball" | "red"
    assert merge_flags(draft, words, [False] * 8) == []
    # Two flagged words with a character other than a space between them stay apart.
    draft, offsets = tokenize(["blue", "-", "red"])
    words = [Word(0, 4, (0,)), Word(5, 8, (2,))]
    assert merge_flags(draft, words, [True, True]) == [(0, 0), (1, 1)]


def test_reasons_name_the_displaced_expectation():
    r = reason(" blue", " red", bits=np.log2(40))
    assert r == "'blue' where GPT-2 expected 'red' (this context makes 'red' 40× likelier than 'blue')"
    assert reason("He", " Lily", 1.5, "bdh") == "'He' where BDH expected 'Lily' (this context makes 'Lily' 2.8× likelier than 'He')"
    assert times(3.6) == "12×" and times(0.5) == "1.4×"
    assert [one_in(np.log2(n)) for n in (3, 42, 9399, 371844)] == ["1 in 3.0", "1 in 42", "1 in 9,400", "1 in 370,000"]


def test_sensitivity_sets_the_bar_on_displaced_bits():
    assert threshold_bits(DEFAULT_SENSITIVITY) == DEFAULT_THRESHOLD_BITS == 1.8  # the bench's tuned bar
    assert threshold_bits(0.0) == pytest.approx(3.3) and threshold_bits(1.0) == pytest.approx(0.3)


def test_expected_leaves_out_the_drafts_own_token():
    e = Expected(ids=np.array([[7, 3, 9, 4, 5, 6]]), log_probs=np.log([[0.4, 0.2, 0.1, 0.05, 0.04, 0.03]]))
    alts = e.at(0, own=3, decode=lambda ids: f"<{ids[0]}>")
    assert [a["text"] for a in alts] == ["<7>", "<9>", "<4>", "<5>", "<6>"]
    assert [a["p"] for a in alts] == pytest.approx([0.4, 0.1, 0.05, 0.04, 0.03])


CONTEXT = list(range(1, 11))  # the context's token ids in the synthetic drafts


def synthetic(seed: int, n: int = 12, with_context: bool = True, k: int = 8):
    """Random per-token log-probs for a draft of n one-token words (ids 100..), with each
    position's top-k with and without the context drawn from context words and others."""
    rng = np.random.default_rng(seed)
    draft, offsets = tokenize([f" w{i}" for i in range(n)])
    lw = {m: -rng.gamma(2.0, 2.0, n) for m in MODELS}
    lwo = {m: lw[m] + rng.normal(0, 2, n) for m in MODELS} if with_context else lw
    ent = {m: rng.uniform(1, 5, n) for m in MODELS}

    def top(scale):
        ids = np.stack([rng.choice(np.arange(1, 40), k, replace=False) for _ in range(n)])
        lp = np.sort(np.log(rng.dirichlet(np.full(k, scale), n) * 0.9), axis=1)[:, ::-1]
        return Expected(ids, lp)
    expected = {m: top(0.5) for m in MODELS}
    expected_without = {m: top(2.0) for m in MODELS} if with_context else expected
    return draft, offsets, list(range(100, 100 + n)), lw, lwo, ent, expected, expected_without


def run(seed: int, sensitivity: float, fn=validate, **kw) -> dict:
    """`fn` (the shipped validate, or the bench's under other variants) on synthetic(seed)."""
    draft, offsets, ids, lw, lwo, ent, ex, exo = synthetic(seed)
    return fn(draft, offsets, ids, lw, lwo, ent, ex, lambda t: f" t{t[0]}", expected_without=exo,
              context_ids=CONTEXT, sensitivity=sensitivity, **kw)


@pytest.mark.parametrize("displacement", [Displacement("gpt2"), Displacement("both", 1, 1),
                                          Displacement("any", context_only=False)])
def test_higher_sensitivity_flags_at_least_as_much(displacement):
    levels = np.linspace(0, 1, 11)
    assert all(np.diff([threshold_bits(s) for s in levels]) < 0)
    first, last = set(), set()
    for seed in range(20):
        flagged = [{(seed, w["start"]) for w in run(seed, s, variants.validate, displacement=displacement)["words"]
                    if w["flagged"]}
                   for s in levels]
        assert all(a <= b for a, b in zip(flagged, flagged[1:]))
        first |= flagged[0]
        last |= flagged[-1]
    assert first != last  # and the range means something


def test_flags_follow_the_displaced_bits_and_the_draft_score_is_the_mean_plus_the_substitution():
    for seed in range(10):
        body = run(seed, 0.7)
        bar = body["threshold_bits"]
        assert bar == pytest.approx(threshold_bits(0.7))
        for w in body["words"]:
            assert w["flagged"] == (w["displaced_bits"] > 0 and w["displaced_bits"] >= bar - 1e-4)
        sub = max(w["substitution_bits"] for w in body["words"])
        assert body["score"] == pytest.approx(np.mean([w["score"] for w in body["words"]])
                                              + SUBSTITUTION_WEIGHT * sub, abs=1e-3)
        # the draft and word scores do not depend on the flag rule's sensitivity
        other = run(seed, 0.1)
        assert other["score"] == body["score"] and [w["score"] for w in other["words"]] == [w["score"] for w in body["words"]]


def test_without_a_context_nothing_is_flagged():
    draft, offsets, ids, lw, lwo, ent, ex, exo = synthetic(3, with_context=False)
    body = validate(draft, offsets, ids, lw, lwo, ent, ex, str, expected_without=exo, sensitivity=1.0)
    assert body["consistent"] and not any(w["flagged"] or w["displaced_bits"] for w in body["words"])
    body = validate(draft, offsets, ids, lw, lwo, ent, None, str, sensitivity=1.0)  # no alternatives either
    assert body["consistent"]


def she_threw_the_blue_ball(blue_as=(" bl", "ue"), big: bool = False):
    """Context "Lily had a red ball." (ids 20 " red", 30 " ball"); draft " She threw the blue
    ball." (optionally " big blue"). At " blue", GPT-2 expected " ball" (later in the draft:
    deferred), then " red" (0.16 with the context, at most 0.001 without), where " blue" is
    0.01 with and 0.005 without: min(shift ≥ log2 80, shortfall log2 16) = 4 bits."""
    pieces = [" She", " threw", " the"] + ([" big"] if big else []) + list(blue_as) + [" ball", "."]
    draft, offsets = tokenize(pieces)
    n = len(pieces)
    ids = list(range(10, 10 + n))
    b = pieces.index(blue_as[0])
    ids[b + len(blue_as)] = 30  # " ball"
    p_with, p_without = np.full(n, 0.5), np.full(n, 0.5)
    p_with[b], p_without[b] = 0.01, 0.005
    top = np.array([[i, 40, 41, 42, 43, 44, 45] for i in ids])  # elsewhere: the draft's own token first
    lp = np.log(np.tile([0.5, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001], (n, 1)))
    top[b], lp[b] = [30, 20, 40, ids[b], 41, 42, 43], np.log([0.4, 0.16, 0.1, 0.01, 0.009, 0.005, 0.004])
    top_no = np.tile([50, 51, 52, 53, 54, 55, 56], (n, 1))
    lp_no = np.log(np.tile([0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001], (n, 1)))
    if big:  # " big" displaces " red" too (3 bits), so "big blue" is one contradiction
        top[b - 1], lp[b - 1] = [20, 40, ids[b - 1], 41, 42, 43, 44], np.log([0.4, 0.2, 0.05, 0.01, 0.009, 0.005, 0.004])
        p_with[b - 1], p_without[b - 1] = 0.05, 0.05
    lw = {m: np.log(p_with) for m in MODELS}
    lwo = {m: np.log(p_without) for m in MODELS}
    ent = {m: np.full(n, 1.0) for m in MODELS}
    expected = {m: Expected(top, lp) for m in MODELS}
    expected_without = {m: Expected(top_no, lp_no) for m in MODELS}
    names = {20: " red", 30: " ball", 40: " green", 41: " pink", 42: " old", 43: " new", 44: " sad"}
    decode = lambda t: names.get(t[0], f" <{t[0]}>")  # noqa: E731
    return draft, offsets, ids, lw, lwo, ent, expected, expected_without, decode


def test_validate_flags_the_whole_word_and_names_the_displaced_expectation():
    draft, offsets, ids, lw, lwo, ent, ex, exo, decode = she_threw_the_blue_ball()
    context = [1, 2, 3, 20, 30, 4]
    body = validate(draft, offsets, ids, lw, lwo, ent, ex, decode, expected_without=exo, context_ids=context)
    assert not body["consistent"] and body["threshold_bits"] == 1.8
    (c,) = body["contradictions"]
    assert (c["start"], c["end"], c["text"]) == (15, 19, "blue")  # the whole word, not " bl"
    assert c["reason"] == "'blue' where GPT-2 expected 'red' (this context makes 'red' 16× likelier than 'blue')"
    assert c["score"] == pytest.approx(4.0, abs=1e-3)
    # each model's top-5 other than the draft's own token, listed as the models ranked them
    assert [a["text"] for a in c["expected"]["gpt2"]] == [" ball", " red", " green", " pink", " old"]
    assert [a["p"] for a in c["expected"]["bdh"]] == pytest.approx([0.4, 0.16, 0.1, 0.009, 0.005])
    words = {w["text"]: w for w in body["words"]}
    assert list(words) == ["She", "threw", "the", "blue", "ball", "."]
    assert words["blue"]["flagged"] and not any(w["flagged"] for t, w in words.items() if t != "blue")
    assert words["blue"]["displaced_bits"] == pytest.approx(4.0, abs=1e-3)
    # the heatmap's per-word scores keep their meaning: the variant's score of each word
    # (here the context makes " blue" 2× likelier: the old rule, "the context lowers it", missed it)
    assert words["blue"]["context_bits"]["gpt2"] == pytest.approx(1.0, abs=1e-3)
    assert words["blue"]["surprisal_bits"]["gpt2"] == pytest.approx(-np.log2(0.01 * 0.5), abs=1e-3)
    m = WordMeasures.from_token_logprobs(group_words(draft, offsets), lw, lwo, ent)
    assert [w["score"] for w in body["words"]] == pytest.approx(score_words(m).tolist(), abs=1e-3)
    assert body["score"] == pytest.approx(np.mean([w["score"] for w in body["words"]]), abs=1e-3)
    # the strictest setting (a 3.3-bit bar) still flags 4 bits; a 4.5-bit default bar does not
    assert not validate(draft, offsets, ids, lw, lwo, ent, ex, decode, expected_without=exo, context_ids=context,
                        sensitivity=0.0)["consistent"]
    assert validate(draft, offsets, ids, lw, lwo, ent, ex, decode, expected_without=exo, context_ids=context,
                    threshold_at_default=4.5)["consistent"]
    # " red" is not a word of this context: nothing is displaced
    assert validate(draft, offsets, ids, lw, lwo, ent, ex, decode, expected_without=exo, context_ids=[1, 2, 30],
                    sensitivity=1.0)["consistent"]


def test_adjacent_flagged_words_are_one_contradiction_named_by_the_worst():
    draft, offsets, ids, lw, lwo, ent, ex, exo, decode = she_threw_the_blue_ball(blue_as=(" blue",), big=True)
    body = validate(draft, offsets, ids, lw, lwo, ent, ex, decode, expected_without=exo, context_ids=[20, 30])
    assert [w["text"] for w in body["words"] if w["flagged"]] == ["big", "blue"]
    (c,) = body["contradictions"]
    assert c["text"] == "big blue" and c["score"] == pytest.approx(4.0, abs=1e-3)
    assert c["reason"].startswith("'blue' where GPT-2 expected 'red'")
    assert next(w for w in body["words"] if w["text"] == "big")["displaced_bits"] == pytest.approx(3.0, abs=1e-3)


def test_displaced_expectation_is_the_context_word_the_draft_pushed_aside():
    # Context "Lily had a red ball." (ids 20 " red", 30 " ball"); draft " She threw the blue ball".
    draft, offsets = tokenize([" She", " threw", " the", " blue", " ball"])
    words = group_words(draft, offsets)
    ids = [10, 11, 12, 13, 30]
    lw = np.log([0.8, 0.1, 0.6, 0.01, 0.5])     # with the context
    lwo = np.log([0.01, 0.1, 0.6, 0.005, 0.1])  # without: " blue" only 2× likelier with the context
    k = 4
    # elsewhere the model expected the draft's own token; at " blue": " ball", " red", " blue", " big"
    top = np.array([[i, 40, 41, 42] for i in ids])
    lp = np.log(np.tile([0.9, 0.01, 0.005, 0.001], (5, 1)))
    top[3], lp[3] = [30, 20, 13, 40], np.log([0.4, 0.16, 0.01, 0.005])
    top_no = np.tile([50, 13, 30, 41], (5, 1))    # " red" is not in the no-context top-k:
    lp_no = np.log(np.tile([0.2, 0.005, 0.1, 0.001], (5, 1)))  # its p there is at most the k-th, 0.001
    ctx = [1, 2, 3, 20, 30, 4]
    d, by = displaced_bits(words, ids, lw, lwo, Expected(top, lp), Expected(top_no, lp_no), ctx)
    # at " blue": " ball" comes later in the draft (deferred, not displaced); " red" was boosted
    # ≥ 0.16/0.001 = 160× against 2× for " blue" (shift ≥ log2 80) and is 16× likelier than " blue"
    # here: min(6.32, 4) = 4 bits. " big" (40) is not a context word and does not count.
    assert by.tolist() == [-1, -1, -1, 20, -1]
    assert d[3] == pytest.approx(4.0) and d[[0, 1, 2, 4]].tolist() == [0, 0, 0, 0]
    # without the context-word restriction, " big" still loses to " red" (0.005 < floor 0.03)
    d2, by2 = displaced_bits(words, ids, lw, lwo, Expected(top, lp), Expected(top_no, lp_no), ctx,
                             context_only=False)
    assert by2[3] == 20 and d2[3] == pytest.approx(4.0)
    # the consistent draft (" red" in that place) has nothing displaced at the word
    ids_ok = [10, 11, 12, 20, 30]
    lw_ok, lwo_ok = lw.copy(), lwo.copy()
    lw_ok[3], lwo_ok[3] = np.log(0.16), np.log(0.001)
    d3, _ = displaced_bits(words, ids_ok, lw_ok, lwo_ok, Expected(top, lp), Expected(top_no, lp_no), ctx)
    assert d3.tolist() == [0, 0, 0, 0, 0]
    # a floor above p(" red") leaves nothing to be displaced by
    assert displaced_bits(words, ids, lw, lwo, Expected(top, lp), Expected(top_no, lp_no), ctx,
                          floor=0.2)[0].tolist() == [0, 0, 0, 0, 0]
    assert k == top.shape[1]


def test_slot_substitution_is_a_context_word_that_fits_the_slot_without_the_context():
    # Context "Lily had a red ball." (ids 20 " red", 30 " ball", 5 " had"); draft " She threw the blue ball."
    draft, offsets = tokenize([" She", " threw", " the", " blue", " ball", "."])
    words = group_words(draft, offsets)
    ids = [10, 11, 12, 13, 30, 31]
    lw = np.log([0.8, 0.1, 0.6, 0.01, 0.5, 0.9])      # with the context
    lwo = np.log([0.01, 0.1, 0.6, 0.005, 0.1, 0.9])   # without
    top = np.array([[i, 40, 41, 42] for i in ids])
    lp = np.log(np.tile([0.9, 0.01, 0.005, 0.001], (6, 1)))
    top[3], lp[3] = [30, 20, 13, 40], np.log([0.4, 0.16, 0.01, 0.005])  # " red" 0.16 with the context
    # without the context the slot holds colours: " ball" (later in the draft), " red" 0.002,
    # " had" (a context word the context does not boost there: 0.2 → at most 0.005), "!" (punctuation)
    top_no = np.tile([50, 51, 52, 53], (6, 1))
    lp_no = np.log(np.tile([0.2, 0.1, 0.05, 0.02], (6, 1)))
    top_no[3], lp_no[3] = [30, 5, 20, 6], np.log([0.3, 0.2, 0.002, 0.001])
    ctx = [1, 2, 5, 20, 30, 6, 4]
    names = {5: " had", 6: "!", 20: " red", 30: " ball"}
    decode = lambda t: names.get(t[0], f" w{t[0]}")  # noqa: E731
    ex, exo = Expected(top, lp), Expected(top_no, lp_no)
    s, by = substitution_bits(words, ids, lw, lwo, ex, exo, ctx, decode)
    # at " blue": " red" boosted 0.16/0.002 = 80× and 16× likelier than " blue": 4 bits
    assert by.tolist() == [-1, -1, -1, 20, -1, -1] and s[3] == pytest.approx(4.0)
    assert s[[0, 1, 2, 4, 5]].tolist() == [0, 0, 0, 0, 0]
    # the other scores: shift = log2 80 − log2 2; min of the two
    assert substitution_bits(words, ids, lw, lwo, ex, exo, ctx, decode, score="shift")[0][3] == pytest.approx(np.log2(40))
    assert substitution_bits(words, ids, lw, lwo, ex, exo, ctx, decode, score="min")[0][3] == pytest.approx(4.0)
    # a boost of log2 80 = 6.3 bits passes a 6-bit gate, not a 7-bit one
    assert substitution_bits(words, ids, lw, lwo, ex, exo, ctx, decode, gate=6.0)[0][3] == pytest.approx(4.0)
    assert substitution_bits(words, ids, lw, lwo, ex, exo, ctx, decode, gate=7.0)[0].tolist() == [0] * 6
    # a function word never substitutes; nor does a token outside the context
    assert substitution_bits(words, ids, lw, lwo, ex, exo, ctx, decode, skip_ids={20})[0].tolist() == [0] * 6
    assert substitution_bits(words, ids, lw, lwo, ex, exo, [1, 2, 30], decode)[0].tolist() == [0] * 6
    # the consistent draft (" red" in that place, a word of the context) substitutes nothing
    ids_ok = [10, 11, 12, 20, 30, 31]
    assert substitution_bits(words, ids_ok, lw, lwo, ex, exo, ctx, decode)[0].tolist() == [0] * 6
    # nor does any word of the context in that place (" had" there: another context word, not a swap)
    ids_had = [10, 11, 12, 5, 30, 31]
    assert substitution_bits(words, ids_had, lw, lwo, ex, exo, ctx, decode)[0].tolist() == [0] * 6
    with pytest.raises(ValueError):
        substitution_bits(words, ids, lw, lwo, ex, exo, ctx, decode, score="max")


def test_function_words_are_the_vocabularys_first_whole_words():
    vocab = {256: "he", 257: " the", 258: " t", 259: "ing", 260: " was", 261: " ,", 262: " Lily"}
    decode = lambda t: vocab[t[0]]  # noqa: E731  (a KeyError past the end)
    assert function_ids(decode, 3) == {256, 257, 258}
    assert function_ids(decode, 50) == {256, 257, 258, 259, 260, 262}


def test_the_draft_score_adds_the_largest_substitution_and_flags_do_not_change():
    draft, offsets, ids, lw, lwo, ent, ex, exo, decode = she_threw_the_blue_ball()
    context = [1, 2, 3, 20, 30, 4]
    b = ids.index(10 + 3)  # " bl" of " blue"
    exo = {m: Expected(e.ids.copy(), e.log_probs.copy()) for m, e in exo.items()}
    for e in exo.values():  # without the context, " red" (20) fits the slot at 0.001
        e.ids[b, -1] = 20
    body = validate(draft, offsets, ids, lw, lwo, ent, ex, decode, expected_without=exo, context_ids=context)
    words = {w["text"]: w for w in body["words"]}
    # per model: 0.16 against 0.01 = 4 bits; GPT-2 and BDH summed
    assert words["blue"]["substitution_bits"] == pytest.approx(8.0, abs=1e-3)
    assert all(w["substitution_bits"] == 0 for t, w in words.items() if t != "blue")
    mean = np.mean([w["score"] for w in body["words"]])
    assert body["score"] == pytest.approx(mean + 0.15 * 8.0, abs=1e-3)
    assert SUBSTITUTION_WEIGHT == 0.15
    plain = variants.validate(draft, offsets, ids, lw, lwo, ent, ex, decode, expected_without=exo,
                              context_ids=context, substitution=Substitution("off", weight=0.0))
    assert plain["score"] == pytest.approx(mean, abs=1e-3)
    assert [c["text"] for c in body["contradictions"]] == [c["text"] for c in plain["contradictions"]] == ["blue"]


def test_the_benchs_default_variants_are_the_shipped_rule_exactly():
    # bench/validator_variants.py rescores answers under other variants; its defaults must be
    # what ships, to the bit: the per-word score, the flag rule and the substitution term.
    m = WordMeasures(context_bits=np.array([[-4.0, 2.0, 0.3], [0.0, -6.0, 1.7]]),
                     surprisal_bits=np.array([[3.0, 0.5, 9.1], [2.2, 4.0, 0.1]]),
                     excess_bits=np.array([[2.0, 0.0, 1.0], [2.0, 4.0, 0.5]]))
    assert np.array_equal(variants.score_words(m, DEFAULT_VARIANT)[0], score_words(m))
    assert DEFAULT_VARIANT in variants.VARIANTS
    assert variants.DEFAULT_DISPLACEMENT in variants.DISPLACEMENTS
    for seed in range(10):
        for sensitivity in (0.0, 0.5, 1.0):
            assert run(seed, sensitivity, variants.validate) == run(seed, sensitivity)
    draft, offsets, ids, lw, lwo, ent, ex, exo, decode = she_threw_the_blue_ball()
    for e in exo.values():  # " red" fits the slot without the context too: a substitution
        e.ids[ids.index(13), -1] = 20
    kw = dict(expected_without=exo, context_ids=[1, 2, 3, 20, 30, 4])
    shipped = validate(draft, offsets, ids, lw, lwo, ent, ex, decode, **kw)
    assert shipped["contradictions"] and any(w["substitution_bits"] for w in shipped["words"])
    assert variants.validate(draft, offsets, ids, lw, lwo, ent, ex, decode, **kw) == shipped
