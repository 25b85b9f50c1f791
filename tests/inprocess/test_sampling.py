"""Blending and sampling math (plotarmour.sampling): numpy only, no models."""

from __future__ import annotations

import numpy as np
import pytest

from plotarmour import sampling as S


def logp(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p / p.sum()).astype(np.float32)


G = logp([0.5, 0.3, 0.2, 0.0])
B = logp([0.1, 0.1, 0.2, 0.6])


# -- the filter and draw steps one at a time, through the functions sample_rows uses ----------


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T), renormalised, as the sampler tempers a row."""
    if temperature == 1.0:
        return p
    q = S._tempered(np.asarray(p, dtype=np.float64), temperature)
    return q / q.sum()


def _mask(p: np.ndarray, sp: S.SamplingParams) -> np.ndarray:
    kept = S._kept(p, sp, S._top_k_candidates(p[None], [sp])[0])
    keep = np.ones(p.size, dtype=bool)
    if kept is not None:
        keep[:] = False
        keep[kept[0]] = True
    return keep


def top_k_mask(p: np.ndarray, k: int) -> np.ndarray:
    return _mask(np.asarray(p), S.SamplingParams(top_k=k))


def top_p_mask(p: np.ndarray, top_p: float) -> np.ndarray:
    return _mask(np.asarray(p), S.SamplingParams(top_p=top_p))


def filtered(p: np.ndarray, params: S.SamplingParams) -> np.ndarray:
    """Temperature, then top-k, then top-p (within the top-k set); renormalised (V,) float64."""
    p = np.asarray(p)
    kept = S._kept(p, params, S._top_k_candidates(p[None], [params])[0])
    if kept is None:
        q = p if params.temperature in (0.0, 1.0) else S._tempered(p, params.temperature)
        q = q.astype(np.float64)
    else:
        q = np.zeros(p.size)
        q[kept[0]] = kept[1]
    return q / q.sum()


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    return S._draw(None, np.asarray(p), rng.random())



def test_probs_of_logprobs_and_logits_agree():
    logits = np.array([2.0, 1.0, -3.0, 0.5])
    lp = logits - np.log(np.exp(logits).sum())
    np.testing.assert_allclose(S.probs(logits), S.probs(lp), rtol=1e-12)
    assert S.probs(logits).sum() == pytest.approx(1.0)


def test_linear_blend_is_the_weighted_mixture():
    p = S.blend(G, B, 0.25, "linear")
    expected = 0.75 * S.probs(G) + 0.25 * S.probs(B)
    np.testing.assert_allclose(p, expected, rtol=1e-6)  # float32 elements


def test_geometric_blend_is_the_normalised_product():
    w = 0.4
    p = S.blend(G, B, w, "geometric")
    with np.errstate(divide="ignore"):
        raw = np.exp((1 - w) * np.log(S.probs(G))) * np.exp(w * np.log(S.probs(B)))
    np.testing.assert_allclose(p, raw / raw.sum(), rtol=1e-6)
    assert p[3] == 0.0  # GPT-2 gives token 3 zero mass: the product is zero too


@pytest.mark.parametrize("mode", S.BLENDS)
def test_endpoints_are_exactly_one_model(mode):
    # Bit-for-bit: this is what makes w=0 reproduce GPT-2 alone token for token.
    assert np.array_equal(S.blend(G, B, 0.0, mode), S.probs(G))
    assert np.array_equal(S.blend(G, B, 1.0, mode), S.probs(B))


def test_blend_rejects_bad_input():
    with pytest.raises(ValueError, match="logic_weight"):
        S.blend(G, B, 1.5)
    with pytest.raises(ValueError, match="blend"):
        S.blend(G, B, 0.5, "harmonic")
    with pytest.raises(ValueError, match="differ in size"):
        S.blend(G, B[:3], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        S.blend(np.array([np.nan, 0.0]), np.zeros(2), 0.5)


def test_temperature_sharpens_and_flattens():
    p = S.probs(logp([0.6, 0.3, 0.1]))
    cold, hot = apply_temperature(p, 0.5), apply_temperature(p, 2.0)
    assert cold[0] > p[0] > hot[0]
    np.testing.assert_allclose(cold, p**2 / (p**2).sum())
    assert apply_temperature(p, 1.0) is p


def test_top_k_and_top_p_masks():
    p = np.array([0.1, 0.4, 0.3, 0.2])
    assert top_k_mask(p, 2).tolist() == [False, True, True, False]
    assert top_k_mask(p, 0).all()
    # 0.4 + 0.3 = 0.7 reaches 0.7: the nucleus stops there.
    assert top_p_mask(p, 0.7).tolist() == [False, True, True, False]
    assert top_p_mask(p, 0.71).tolist() == [False, True, True, True]
    assert top_p_mask(p, 1e-9).tolist() == [False, True, False, False]


def test_filtered_applies_top_p_within_top_k():
    p = np.array([0.1, 0.4, 0.3, 0.2])
    q = filtered(p, S.SamplingParams(top_k=3, top_p=0.6))
    # Within the top 3 (renormalised 0.444, 0.333, 0.222) 0.6 needs two tokens.
    assert (q > 0).tolist() == [False, True, True, False]
    assert q.sum() == pytest.approx(1.0)


def test_draw_follows_the_distribution_and_never_picks_zero_mass():
    rng = S.make_rng(0)
    p = np.array([0.0, 0.7, 0.0, 0.3, 0.0])
    counts = np.bincount([draw(p, rng) for _ in range(4000)], minlength=5)
    assert counts[0] == counts[2] == counts[4] == 0
    assert 0.65 < counts[1] / 4000 < 0.75


def test_same_seed_same_tokens_and_greedy_is_argmax():
    p = S.blend(G, B, 0.5)
    params = S.SamplingParams(temperature=0.8, top_k=3)
    a = [S.sample(p, params, r) for r in [S.make_rng(7)] for _ in range(50)]
    b = [S.sample(p, params, r) for r in [S.make_rng(7)] for _ in range(50)]
    assert a == b and len(set(a)) > 1
    assert S.sample(p, S.SamplingParams(temperature=0), S.make_rng(1)) == int(np.argmax(p))


def test_sampling_params_validate():
    with pytest.raises(ValueError, match="top_p"):
        S.SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        S.SamplingParams(top_k=-1)
    with pytest.raises(ValueError, match="temperature"):
        S.SamplingParams(temperature=-0.1)
    with pytest.raises(ValueError, match="seed"):
        S.make_rng(-3)


def test_tiny_temperature_tends_to_greedy_not_uniform():
    p = np.array([0.1, 0.6, 0.3])
    q = apply_temperature(p, 1e-300)
    assert q.tolist() == [0.0, 1.0, 0.0]


# ---- batches --------------------------------------------------------------------------


def _naive_keep(p: np.ndarray, sp: S.SamplingParams) -> np.ndarray:
    """Top-k then top-p by full stable sorts, as written in the textbook."""
    q = np.asarray(p, dtype=np.float64)
    if sp.temperature not in (0, 1):
        q = q ** (1 / sp.temperature)
    keep = np.ones(q.size, dtype=bool)
    if sp.top_k:
        keep[:] = False
        keep[np.argsort(-q, kind="stable")[: sp.top_k]] = True
    q = np.where(keep, q, 0.0)
    if sp.top_p < 1:
        order = np.argsort(-q, kind="stable")
        before = np.cumsum(q[order]) - q[order]
        nucleus = np.zeros(q.size, dtype=bool)
        nucleus[order[before < sp.top_p * q.sum()]] = True
        nucleus[order[0]] = True
        keep &= nucleus
    return keep


@pytest.mark.parametrize("sp", [S.SamplingParams(top_k=5), S.SamplingParams(top_p=0.8),
                                S.SamplingParams(temperature=0.7, top_k=50, top_p=0.9),
                                S.SamplingParams(temperature=1.5, top_p=0.5)])
def test_candidate_filters_equal_full_sorts(sp):
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = S.probs(rng.standard_normal(3000) * rng.uniform(0.5, 4))
        assert np.array_equal(filtered(p, sp) > 0, _naive_keep(p, sp))


def test_ties_at_the_cut_go_to_the_lower_ids():
    p = np.array([0.1, 0.2, 0.2, 0.2, 0.3])
    assert top_k_mask(p, 2).tolist() == [False, True, False, False, True]
    assert top_p_mask(np.full(4, 0.25), 0.5).tolist() == [True, True, False, False]


@pytest.mark.parametrize("sp", [S.SamplingParams(temperature=0.8, top_p=0.95), S.SamplingParams(top_p=0.999),
                                S.SamplingParams(temperature=2.0, top_p=0.3)])
def test_the_nucleus_of_heavy_tailed_rows_equals_a_full_sort(sp):
    """Zipf-like rows over GPT-2's vocabulary (a nucleus of thousands of tokens), float32 as
    the servers send them, some with long runs of equal values: the bucketed nucleus keeps
    exactly what a full stable sort keeps."""
    rng = np.random.default_rng(3)
    for exponent in (0.9, 1.1, 1.5):
        rank = rng.permutation(50257) + 1
        logits = -exponent * np.log(rank) + 0.3 * rng.standard_normal(50257)
        logits[rng.choice(50257, 5000, replace=False)] = logits.min()  # a tail of ties
        p = S.probs(logits).astype(np.float32)
        assert np.array_equal(filtered(p, sp) > 0, _naive_keep(p, sp))


def test_a_row_samples_the_same_alone_and_in_any_batch():
    rng = np.random.default_rng(1)
    g, b = rng.standard_normal((2, 8, 500)) * 3
    weights = rng.uniform(0, 1, 8)
    modes = ["linear", "geometric"] * 4
    params = [S.SamplingParams(), S.SamplingParams(temperature=0), S.SamplingParams(top_k=7),
              S.SamplingParams(temperature=0.6, top_p=0.9)] * 2
    p = S.blend_rows(g, b, weights, modes)
    together = S.sample_rows(p, params, [S.make_rng(i) for i in range(8)])
    for i in range(8):
        alone = S.blend(g[i], b[i], weights[i], modes[i])
        assert np.array_equal(alone, p[i])
        assert S.sample(alone, params[i], S.make_rng(i)) == together[i]


def test_a_temperature_below_float32s_range_is_greedy_not_nan():
    """5e-87 is 0 in float32, the servers' rows' precision: every filter path still draws
    the likeliest token (it was 0/0 = NaN for it)."""
    p = S.probs(np.random.default_rng(0).standard_normal(320)).astype(np.float32)
    for sp in (S.SamplingParams(temperature=5e-87), S.SamplingParams(temperature=5e-87, top_p=0.65),
               S.SamplingParams(temperature=5e-87, top_k=5, top_p=0.5)):
        assert S.sample(p, sp, np.random.default_rng(1)) == int(np.argmax(p)), sp
