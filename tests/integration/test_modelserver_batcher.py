"""The batcher in-process, on a real engine: which steps share a forward pass, bounds,
and that cancelled or failing sessions leave the others (and no state) behind.

asyncio runs ready tasks in order, so steps started together with gather() are all
parked before the batching loop wakes: the batch sizes below are exact, not timing luck.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from plotarmour.checkpoint import load_checkpoint
from plotarmour.modelserver.batcher import Batcher
from plotarmour.modelserver.errors import InvalidArgument, Overloaded
from plotarmour.modelserver.metrics import Metrics

PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15], [16, 17], [18, 19, 20, 21]]


@pytest.fixture(params=["bdh", "gpt2"])
def engine(request, tiny_pair):
    torch.manual_seed(0)
    return load_checkpoint(tiny_pair[request.param]).engine()


def spy_on_steps(engine) -> list[int]:
    sizes: list[int] = []
    step = engine.step

    def recording_step(tokens):
        sizes.append(len(tokens))
        return step(tokens)

    engine.step = recording_step
    return sizes


def run(coro):
    return asyncio.run(coro)


async def with_batcher(engine, body, **limits):
    batcher = Batcher(engine, Metrics(), **limits)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def as_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")


def test_sessions_that_step_together_share_one_forward_pass(engine):
    sizes = spy_on_steps(engine)

    async def body(b: Batcher):
        sessions = [(await b.open(p))[0] for p in PROMPTS]
        out = await asyncio.gather(*(s.step(7 + i) for i, s in enumerate(sessions)))
        return sessions, out

    sessions, batched = run(with_batcher(engine, body))
    assert sizes == [len(PROMPTS)]
    assert [s.position for s in sessions] == [len(p) + 1 for p in PROMPTS]
    # Each row is the distribution that session would get stepping alone.
    for i, prompt in enumerate(PROMPTS):
        sid, _ = engine.open(prompt)
        alone = torch.log_softmax(engine.step({sid: 7 + i})[0], -1).numpy()
        engine.close(sid)
        np.testing.assert_allclose(as_array(batched[i]), alone, atol=1e-5)


def test_batches_are_capped_at_max_batch_size(engine):
    sizes = spy_on_steps(engine)

    async def body(b: Batcher):
        sessions = [(await b.open(p))[0] for p in PROMPTS]
        await asyncio.gather(*(s.step(1) for s in sessions))

    run(with_batcher(engine, body, max_batch_size=3))
    assert sizes == [3, 3, 2]


def test_work_beyond_max_queued_is_refused(engine):
    async def body(b: Batcher):
        sessions = [(await b.open(p))[0] for p in PROMPTS[:3]]
        parked = [asyncio.ensure_future(s.step(1)) for s in sessions[:2]]
        await asyncio.sleep(0)  # both admitted; neither can have finished yet
        with pytest.raises(Overloaded, match="limit 2"):
            await sessions[2].step(1)
        with pytest.raises(Overloaded):
            await b.score([1, 2, 3])
        await asyncio.gather(*parked)
        return await sessions[2].step(1)  # room again once they are answered

    assert len(run(with_batcher(engine, body, max_queued=2))) == 4 * engine.vocab_size


def test_a_bad_token_fails_only_its_own_session(engine):
    sizes = spy_on_steps(engine)

    async def body(b: Batcher):
        good, _ = await b.open([1, 2])
        bad, _ = await b.open([3, 4])
        return await asyncio.gather(good.step(5), bad.step(engine.vocab_size), return_exceptions=True)

    ok, err = run(with_batcher(engine, body))
    assert isinstance(ok, bytes) and len(ok) == 4 * engine.vocab_size
    assert isinstance(err, InvalidArgument) and "outside the vocabulary" in str(err)
    assert sizes == [1]


def test_stepping_past_the_context_limit_is_invalid(engine):
    engine.max_context = 4

    async def body(b: Batcher):
        s, _ = await b.open([1, 2, 3])
        await s.step(4)  # position 4: the limit
        with pytest.raises(InvalidArgument, match="context limit of 4"):
            await s.step(5)
        with pytest.raises(InvalidArgument, match="context limit is 4"):
            await b.open([1, 2, 3, 4, 5])

    run(with_batcher(engine, body))


def test_closing_a_parked_session_drops_its_step_and_frees_it(engine):
    async def body(b: Batcher):
        s, _ = await b.open([1, 2])
        other, _ = await b.open([3])
        parked = asyncio.ensure_future(s.step(3))
        running = asyncio.ensure_future(other.step(4))
        await asyncio.sleep(0)
        s.close()
        with pytest.raises(asyncio.CancelledError):
            await parked
        assert len(await running) == 4 * engine.vocab_size
        other.close()
        assert b.open_sessions == 0

    run(with_batcher(engine, body))
    assert engine.open_sessions == 0  # the worker has run the closes


def test_a_prefill_cancelled_midway_leaves_no_session(engine):
    async def body(b: Batcher):
        task = asyncio.ensure_future(b.open(list(range(1, 50))))
        await asyncio.sleep(0)  # submitted to the worker
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(with_batcher(engine, body))
    assert engine.open_sessions == 0


def test_batch_wait_holds_a_step_for_the_other_open_sessions(engine):
    sizes = spy_on_steps(engine)

    async def body(b: Batcher):
        first, _ = await b.open([1, 2])
        second, _ = await b.open([3])
        early = asyncio.ensure_future(first.step(4))
        await asyncio.sleep(0.05)  # far inside the 60 s window: `early` is still held
        assert not early.done()
        await asyncio.gather(early, second.step(5))

    run(with_batcher(engine, body, batch_wait=60.0))
    assert sizes == [2]


def test_batch_wait_never_holds_a_session_that_is_alone(engine):
    async def body(b: Batcher):
        alone, _ = await b.open([1, 2])
        # With every open session parked there is no one to wait for: this returns at once
        # (wait_for only turns a hang into a failure; it measures nothing).
        return await asyncio.wait_for(alone.step(3), timeout=30)

    assert len(run(with_batcher(engine, body, batch_wait=60.0))) == 4 * engine.vocab_size
