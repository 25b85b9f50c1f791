"""GPT-2 through transformers: cached decoding equals the full forward, alone and batched."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from plotarmour.models import GPT2Engine, InvalidInput, gpt2_config

TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT2LMHeadModel(gpt2_config(vocab_size=97, eot_id=0, n_layer=2, n_embd=32, n_head=2,
                                    n_positions=1024, dropout=0.0)).eval()
    with torch.no_grad():  # larger weights: sharper distributions, so mistakes show
        for p in m.parameters():
            p.mul_(5)
    return m


def test_config_uses_end_of_text_as_bos_and_eos():
    c = gpt2_config(vocab_size=97, eot_id=5)
    assert (c.bos_token_id, c.eos_token_id) == (5, 5)


@pytest.mark.parametrize("prefill", [1, 500])
def test_cached_decode_matches_full_forward_up_to_1024(model, prefill):
    ids = torch.randint(0, 97, (1024,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids=ids[None]).logits[0]
    engine = GPT2Engine(model)
    sid, first = engine.open(ids[:prefill].tolist())
    stepped = torch.stack([first] + [engine.step({sid: int(t)})[0] for t in ids[prefill:-1]])
    assert (stepped - full[prefill - 1 : -1]).abs().max().item() <= TOL


def test_batched_step_equals_one_by_one_at_different_positions(model):
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (2, 33, 9)]
    follow = [torch.randint(0, 97, (4,), generator=g).tolist() for _ in prompts]
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
            assert (logits[i] - alone[i][k]).abs().max().item() <= TOL


def test_score_is_teacher_forced_log_probs(model):
    ids = [3, 14, 15, 92, 65, 35]
    engine = GPT2Engine(model)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    want = torch.stack([logp[t - 1, ids[t]] for t in range(1, len(ids))])
    assert torch.allclose(engine.score(ids), want, atol=1e-5)


def test_context_limit_is_the_position_table(model):
    engine = GPT2Engine(model, max_context=5000)
    assert engine.max_context == 1024
    with pytest.raises(InvalidInput, match="context limit"):
        engine.open([1] * 1025)
