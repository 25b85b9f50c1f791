"""BDH: the exact math of DESIGN.md §4, its decode state, and the reference's numbers."""

import copy
import json
from pathlib import Path

import pytest
import torch

from plotarmour.models import BDH, BDHConfig, BDHEngine

GOLDEN = Path(__file__).resolve().parents[3] / "shared" / "bdh_golden"
TOL = 1e-4


def small_bdh(n_layer=2, seed=0, std=0.15) -> BDH:
    torch.manual_seed(seed)
    model = BDH(BDHConfig(n_layer=n_layer, n_embd=32, n_head=2, mlp_internal_dim_multiplier=4,
                          vocab_size=61, dropout=0.0)).eval()
    # Larger than the training init so every branch of the math matters to the logits.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=std)
    return model


def exact_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """The full forward in float64: the reference for float32 decoding.

    A float32 full forward over ~1000 tokens carries rounding error of its own, and how
    much depends on the matmul kernel the BLAS picks at run time (seen: 1e-5 in most
    processes, 5e-4 in some, for these large weights); float64 takes that noise out of
    the comparison, so a failure means the decode path is wrong, not unlucky.
    """
    with torch.no_grad():
        logits, _ = copy.deepcopy(model).double()(ids[None])
    return logits[0].float()


def decode_all(engine, ids, prefill):
    """Logits for positions prefill-1 .. T-1: prefill ids[:prefill], then one token at a time."""
    sid, first = engine.open(ids[:prefill])
    out = [first] + [engine.step({sid: t})[0] for t in ids[prefill:]]
    engine.close(sid)
    return torch.stack(out)


@pytest.mark.parametrize("prefill", [1, 7, 300])
def test_decode_matches_full_forward_up_to_1024(prefill):
    model = small_bdh()
    ids = torch.randint(0, 61, (1024,), generator=torch.Generator().manual_seed(1))
    full = exact_logits(model, ids)
    stepped = decode_all(BDHEngine(model), ids.tolist(), prefill)
    # stepped[i] is the distribution after position prefill-1+i, as full[prefill-1+i].
    assert (stepped - full[prefill - 1 :]).abs().max().item() <= TOL


def test_long_prefill_is_chunked_and_still_exact():
    model = small_bdh()
    ids = torch.randint(0, 61, (1300,), generator=torch.Generator().manual_seed(2))
    full = exact_logits(model, ids)
    engine = BDHEngine(model)
    sid, last = engine.open(ids.tolist())  # > chunk_size: goes through the state in chunks
    assert (last - full[-1]).abs().max().item() <= TOL
    assert engine.position(sid) == 1300


@pytest.mark.parametrize("pending", [2, 16])  # 2: the deferred writes are folded in mid-batch
def test_batched_step_equals_one_by_one_at_different_positions(pending):
    model = small_bdh()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 61, (n,), generator=g).tolist() for n in (3, 40, 17, 90)]
    follow = [torch.randint(0, 61, (5,), generator=g).tolist() for _ in prompts]

    alone = []
    for prompt, nxt in zip(prompts, follow):
        alone.append(decode_all(BDHEngine(model), prompt + nxt, len(prompt))[1:])  # after each follow-up token

    engine = BDHEngine(model, initial_slots=2, pending=pending)  # forces the pool to grow
    sids = [engine.open(p)[0] for p in prompts]
    engine.close(sids.pop(1))  # leave a hole: slots are no longer contiguous
    del alone[1], follow[1]
    batched = [[] for _ in sids]
    for k in range(5):
        order = list(reversed(range(len(sids)))) if k % 2 else list(range(len(sids)))
        logits = engine.step({sids[i]: follow[i][k] for i in order})
        for row, i in enumerate(order):
            batched[i].append(logits[row])
    for got, want in zip(batched, alone):
        assert (torch.stack(got) - want).abs().max().item() <= TOL


def test_parameter_count_is_shared_across_layers():
    for n_layer in (1, 3, 8):
        c = BDHConfig(n_layer=n_layer, n_embd=48, n_head=3, mlp_internal_dim_multiplier=4, vocab_size=100)
        m, D, V = c.mlp_internal_dim_multiplier, c.n_embd, c.vocab_size
        assert BDH(c).num_parameters() == 3 * m * D * D + 2 * V * D


def test_strictly_causal():
    model = small_bdh(n_layer=3)
    ids = torch.randint(0, 61, (1, 64), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        base, _ = model(ids)
        for j in (0, 10, 63):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 1) % 61
            other, _ = model(changed)
            assert torch.equal(other[0, :j], base[0, :j])  # bit-identical before j
            assert not torch.equal(other[0, j:], base[0, j:])  # and it does matter after


def test_rope_keeps_phase_exact_at_large_positions():
    from plotarmour.models.bdh import rope, rope_frequencies

    v = torch.rand(1, 1, 1, 8)
    freqs = rope_frequencies(8)
    big = torch.tensor([[4099]])
    # Turning a vector preserves its norm and pairs rotate independently.
    out = rope(v, big, freqs)
    pairs_in = v.view(4, 2).norm(dim=-1)
    pairs_out = out.view(4, 2).norm(dim=-1)
    assert torch.allclose(pairs_in, pairs_out, atol=1e-5)
    # Phase computed in float64 as ground truth.
    turns = (4099 * freqs.double()) % 1.0 * 2 * torch.pi
    x0, x1 = v.view(4, 2).double().unbind(-1)
    want = torch.stack([x0 * turns[::2].cos() - x1 * turns[::2].sin(), x1 * turns[::2].cos() + x0 * turns[::2].sin()], -1)
    assert torch.allclose(out.view(4, 2).double(), want, atol=1e-3)


def test_engine_rejects_bad_input():
    from plotarmour.models import InvalidInput, UnknownSession

    engine = BDHEngine(small_bdh(), max_context=10)
    with pytest.raises(InvalidInput, match="empty"):
        engine.open([])
    with pytest.raises(InvalidInput, match="token id 61 outside"):
        engine.open([1, 61])
    with pytest.raises(InvalidInput, match="context limit"):
        engine.open(list(range(11)))
    sid, _ = engine.open(list(range(9)))
    other, _ = engine.open([1, 2])
    with pytest.raises(InvalidInput, match="token id -1"):
        engine.step({sid: 3, other: -1})
    assert engine.position(sid) == 9 and engine.position(other) == 2  # nothing advanced
    engine.step({sid: 3})
    with pytest.raises(InvalidInput, match="context limit"):
        engine.step({sid: 3})
    engine.close(sid)
    with pytest.raises(UnknownSession):
        engine.step({sid: 1})


# -- the reference implementation's numbers ------------------------------------------

needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/bdh_golden is absent")


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    config = BDHConfig.from_dict(json.loads((GOLDEN / "config.json").read_text()))
    model = BDH(config).eval()
    model.load_reference_state_dict(load_file(GOLDEN / "weights.safetensors"))
    return model, load_file(GOLDEN / "cases.safetensors")


@needs_golden
@pytest.mark.parametrize("case", ["short", "long"])
def test_golden_full_forward(golden, case):
    model, cases = golden
    with torch.no_grad():
        logits, _ = model(cases[f"{case}_ids"])
    assert (logits - cases[f"{case}_logits"]).abs().max().item() <= TOL


@needs_golden
@pytest.mark.parametrize("case,prefill", [("short", 1), ("short", 20), ("long", 600)])
def test_golden_prefill_then_steps(golden, case, prefill):
    model, cases = golden
    engine = BDHEngine(model)
    for ids, want in zip(cases[f"{case}_ids"], cases[f"{case}_logits"]):
        got = decode_all(engine, ids.tolist(), prefill)
        assert (got - want[prefill - 1 :]).abs().max().item() <= TOL


@needs_golden
def test_golden_loss(golden):
    model, cases = golden
    ids = cases["short_ids"]
    with torch.no_grad():
        _, loss = model(ids[:, :-1], ids[:, 1:])
    assert abs(loss.item() - cases["short_loss_next_token"].item()) <= 1e-4


@pytest.mark.parametrize("length", [40, 700])  # 700: longer than a prefill chunk, scored through a state
def test_score_is_teacher_forced_log_probs(length):
    model = small_bdh()
    ids = torch.randint(0, 61, (length,), generator=torch.Generator().manual_seed(5))
    logp = torch.log_softmax(exact_logits(model, ids), dim=-1)
    want = logp[:-1].gather(1, ids[1:, None]).squeeze(1)
    assert (BDHEngine(model).score(ids.tolist()) - want).abs().max().item() <= TOL
