"""GPT-2 through transformers: cached decoding from the KV pool equals the full forward, alone and batched."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from plotarmour.models import GPT2Engine, InvalidInput, gpt2_config

TOL = 1e-4
V = 97


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2LMHeadModel(gpt2_config(vocab_size=V, eot_id=0, n_layer=2, n_embd=32, n_head=2,
                                    n_positions=1024, dropout=0.0)).eval()
    with torch.no_grad():  # larger weights: sharper distributions, so mistakes show
        for p in m.parameters():
            p.mul_(5)
    return m


def full_logits(model, ids) -> torch.Tensor:
    """The reference: one uncached forward over ids → logits (T, V)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits[0]


def rand_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() <= TOL


def test_config_uses_end_of_text_as_bos_and_eos():
    c = gpt2_config(vocab_size=V, eot_id=5)
    assert (c.bos_token_id, c.eos_token_id) == (5, 5)


@pytest.mark.slow  # 1,024 steps, each checked against a full forward pass
@pytest.mark.parametrize("prefill", [1, 500])
def test_cached_decode_matches_full_forward_up_to_1024(model, prefill):
    ids = rand_ids(1024, 1)
    full = full_logits(model, ids)
    engine = GPT2Engine(model)
    sid, first = engine.open(ids[:prefill])
    stepped = torch.stack([first] + [engine.step({sid: t})[0] for t in ids[prefill:-1]])
    assert engine.position(sid) == 1023
    assert close(stepped, full[prefill - 1 : -1])


@pytest.mark.parametrize("chunk", [1, 7, 256])
def test_chunked_feed_equals_one_pass_prefill(model, chunk):
    prompt, follow = rand_ids(300, 3), rand_ids(5, 4)
    one = GPT2Engine(model)
    a = one.begin()
    whole = one.feed(a, prompt, "all")  # (T, V)
    engine = GPT2Engine(model)
    b = engine.begin()
    parts = [engine.feed(b, prompt[i : i + chunk], "all") for i in range(0, len(prompt), chunk)]
    assert close(torch.cat(parts), whole)
    assert close(whole, full_logits(model, prompt))
    # ...and the cache it leaves decodes on the same.
    for t in follow:
        assert close(engine.step({b: t}), one.step({a: t}))


def test_want_shapes_and_none_skips_the_head(model):
    calls = []
    hook = model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        ids = rand_ids(12, 5)
        engine = GPT2Engine(model)
        sid = engine.begin()
        assert engine.feed(sid, ids[:5], "none") is None
        assert calls == []  # no lm_head for a chunk nobody reads
        last = engine.feed(sid, ids[5:9], "last")
        assert last.shape == (V,) and last.dtype == torch.float32
        every = engine.feed(sid, ids[9:], "all")
        assert every.shape == (3, V)
        full = full_logits(model, ids)
        assert close(last, full[8]) and close(every, full[9:])
        assert engine.position(sid) == 12
        with pytest.raises(ValueError, match="want"):
            engine.feed(sid, [1], "some")
    finally:
        hook.remove()


def test_batched_step_equals_one_by_one_at_different_positions(model):
    prompts = [rand_ids(n, 10 + n) for n in (2, 33, 9)]
    follow = [rand_ids(4, 20 + i) for i in range(len(prompts))]
    alone = []
    for prompt, nxt in zip(prompts, follow):
        e = GPT2Engine(model)
        sid, _ = e.open(prompt)
        alone.append(torch.stack([e.step({sid: t})[0] for t in nxt]))
    engine = GPT2Engine(model)
    sids = [engine.open(p)[0] for p in prompts]
    for k in range(4):
        logits = engine.step({sid: follow[i][k] for i, sid in enumerate(sids)})
        for i in range(len(sids)):
            assert close(logits[i], alone[i][k])


def test_sessions_joining_and_leaving_mid_batch_equal_one_by_one(model):
    """Mixed positions, shuffled batch orders, sparse batches, releases that move a slot, pool growth.

    Each session's logits are checked against the full forward of everything it has
    been fed (what decoding it alone gives, to within TOL)."""
    engine = GPT2Engine(model, initial_slots=2)
    g = torch.Generator().manual_seed(7)
    history: dict[int, list[int]] = {}

    def open_one(n):
        prompt = rand_ids(n, 100 + len(history))
        sid, logits = engine.open(prompt)
        history[sid] = prompt
        assert close(logits, full_logits(model, prompt)[-1])
        return sid

    def step(sids):
        tokens = {s: int(torch.randint(0, V, (1,), generator=g)) for s in sids}
        logits = engine.step(tokens)
        for row, (s, t) in enumerate(tokens.items()):
            history[s].append(t)
            assert close(logits[row], full_logits(model, history[s])[-1]), f"session {s}"

    a, b, c = open_one(5), open_one(40), open_one(17)  # a third session grows 2 slots to 4
    assert engine.pool.capacity == 4
    step([c, a, b])
    step([b, a])
    d = open_one(1)  # joins mid-batch
    step([a, b, c, d])
    step([d, b])  # slots 3 and 1: a sparse batch, gathered
    moved = engine._sessions[d].state
    assert moved.index == 3
    engine.close(b)  # slot 1 freed: d, the highest, moves into it
    assert moved.index == 1
    step([d, c, a])
    step([d])
    e, f = open_one(3), open_one(60)  # e reuses slot 3; f grows the pool to 8
    assert engine._sessions[e].state.index == 3 and engine.pool.capacity == 8
    step([f, e, d, c, a])
    engine.close(a)  # the highest (f) moves into slot 0
    engine.close(f)  # now f is the highest: nothing moves
    step([c, e, d])
    for _ in range(3):
        step(list(engine._sessions))
    assert sorted(s.state.index for s in engine._sessions.values()) == [0, 1, 2]


def test_pool_is_written_in_place_without_per_step_copies(model):
    engine = GPT2Engine(model, initial_slots=4)
    sids = [engine.open(rand_ids(n, 30 + n))[0] for n in (3, 11, 6, 20)]
    ptrs = (engine.pool.keys.data_ptr(), engine.pool.values.data_ptr())
    seen = []
    layer = engine._cache.layers[0]
    update = layer.update

    def spy(*args, **kwargs):
        k, v = update(*args, **kwargs)
        seen.append((k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr(), k.shape))
        return k, v

    layer.update = spy
    for t in range(5):
        engine.step({s: t for s in reversed(sids)})  # the order does not matter to the view
    engine.feed(sids[0], [1, 2, 3], "none")
    assert (engine.pool.keys.data_ptr(), engine.pool.values.data_ptr()) == ptrs
    # Every read was a view of the pool itself (contiguous slots): no copy of any cache.
    pool = (engine.pool.keys.untyped_storage().data_ptr(), engine.pool.values.untyped_storage().data_ptr())
    assert [s[:2] for s in seen] == [pool] * 6
    # ...sliced to the batch's longest length, not the pool's.
    assert seen[0][2] == (4, 2, 21, 16) and seen[4][2] == (4, 2, 25, 16)


def test_slots_are_reused_lowest_first(model):
    with torch.inference_mode():  # a pool made of inference tensors still grows and compacts
        engine = GPT2Engine(model)
    sids = [engine.open([1, 2])[0] for _ in range(3)]
    engine.close(sids[0])
    engine.close(sids[1])
    again = engine.open([3])[0]
    assert [slot.index for slot in engine.pool.live] == [0, 1]  # the survivor moved to 0; the newcomer took 1
    assert engine._sessions[again].state.index == 1
    engine.close(sids[2])
    engine.close(again)
    assert engine.pool.live == [] and engine.open([4])[1].shape == (V,) and engine.pool.live[0].index == 0


def test_score_across_chunks_is_teacher_forced_log_probs(model):
    ids = rand_ids(40, 8)
    engine = GPT2Engine(model)
    engine.chunk_size = 7  # six chunks
    logp = torch.log_softmax(full_logits(model, ids), -1)
    want = torch.stack([logp[t - 1, ids[t]] for t in range(1, len(ids))])
    assert torch.allclose(engine.score(ids), want, atol=1e-5)
    assert engine.open_sessions == 0 and engine.pool.live == []


def test_context_limit_is_the_position_table(model):
    engine = GPT2Engine(model, max_context=5000)
    assert engine.max_context == 1024 and engine.pool.keys.shape[3] == 1024
    with pytest.raises(InvalidInput, match="context limit"):
        engine.open([1] * 1025)
    small = GPT2Engine(model, max_context=8)
    sid, _ = small.open([1] * 7)
    with pytest.raises(InvalidInput, match="context limit"):
        small.feed(sid, [1, 2], "none")
    small.step({sid: 3})
    with pytest.raises(InvalidInput, match="context limit"):
        small.step({sid: 4})
    assert small.position(sid) == 8


def test_eager_attention_and_the_pool_in_the_models_dtype():
    torch.manual_seed(1)
    m = GPT2LMHeadModel(gpt2_config(vocab_size=V, eot_id=0, n_layer=2, n_embd=32, n_head=2, dropout=0.0)).eval()
    ids = rand_ids(30, 9)
    full = full_logits(m, ids)
    m.set_attn_implementation("eager")  # the additive mask works for eager attention as for sdpa
    engine = GPT2Engine(m)
    sid, first = engine.open(ids[:20])
    stepped = torch.stack([first] + [engine.step({sid: t})[0] for t in ids[20:-1]])
    assert close(stepped, full[19:-1])
    half = GPT2Engine(m.to(torch.bfloat16))
    assert half.pool.keys.dtype == half.pool.values.dtype == torch.bfloat16
    sid, first = half.open(ids[:20])
    assert first.dtype == torch.float32 and half.step({sid: ids[20]}).shape == (1, V)


def test_a_step_and_a_chunk_are_both_checked_before_either_runs(model):
    """GPT-2 runs step_and_feed as a step, then a chunk: an invalid chunk must be refused
    before the step advances anything (the step ran first, then the chunk failed)."""
    engine = GPT2Engine(model)
    a, _ = engine.open(rand_ids(5, 1))
    b = engine.begin()
    with pytest.raises(InvalidInput):
        engine.step_and_feed({a: 3}, b, [model.config.vocab_size])
    assert (engine.position(a), engine.position(b)) == (5, 0)
    stepped, fed = engine.step_and_feed({a: 3}, b, rand_ids(4, 2), "last")
    assert stepped.shape == (1, model.config.vocab_size) and fed.shape == (model.config.vocab_size,)
    assert (engine.position(a), engine.position(b)) == (6, 4)
