"""The scheduler in-process, on real tiny engines: which steps share a forward pass,
chunked prefill and Score beside running sessions, limits, cancellation, the idle
timeout, and what happens when the loop dies.

asyncio runs ready tasks in order, so steps started together with gather() are all
parked before the scheduling loop wakes: the batch sizes below are exact, not timing
luck. Progress is counted in engine calls (feeds, steps), never in seconds.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import grpc
import numpy as np
import pytest
import torch

from plotarmour.checkpoint import load_checkpoint
from plotarmour.models import FAMILIES
from plotarmour.modelserver.errors import InvalidArgument, Overloaded, SchedulerDown, SessionGone, WorkFailed
from plotarmour.modelserver.metrics import Metrics
from plotarmour.modelserver.scheduler import Scheduler, _Wake
from plotarmour.modelserver.servicer import status_of

PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [15], [16, 17], [18, 19, 20, 21]]
# Generous: only turns a hang into a failure, measures nothing.
HANG = 60.0


@pytest.fixture(params=["bdh", "gpt2"])
def engine(request, tiny_pair):
    return load_checkpoint(tiny_pair[request.param]).engine()


@pytest.fixture
def bdh_engine(tiny_pair):
    return load_checkpoint(tiny_pair["bdh"]).engine()


class Spy:
    """Counts an engine's calls: the batch size of every step, every feed, in order. A
    step and a chunk in one pass (step_and_feed) counts as a step, then a feed."""

    def __init__(self, engine):
        self.steps: list[int] = []  # batch size of each engine.step
        self.feeds = 0
        self.fused = 0  # passes that ran a step and a chunk together
        self.events: list[str] = []  # "step" / "feed", in the order the worker ran them
        self.feeds_at_step: list[int] = []  # feeds run before each step
        step, feed, step_and_feed = engine.step, engine.feed, engine.step_and_feed

        def spy_step(tokens):
            self.steps.append(len(tokens))
            self.events.append("step")
            self.feeds_at_step.append(self.feeds)
            return step(tokens)

        def spy_feed(session, ids, want="last"):
            self.feeds += 1
            self.events.append("feed")
            return feed(session, ids, want)

        def spy_step_and_feed(tokens, session, ids, want="last"):
            out = step_and_feed(tokens, session, ids, want)  # first: an invalid pair counts as nothing
            self.fused += 1
            self.steps.append(len(tokens))
            self.feeds_at_step.append(self.feeds)
            self.feeds += 1
            self.events += ["step", "feed"]
            return out

        engine.step, engine.feed, engine.step_and_feed = spy_step, spy_feed, spy_step_and_feed


def run(engine, body, **settings):
    async def main():
        scheduler = Scheduler(engine, Metrics(), **settings)
        scheduler.start()
        try:
            return await asyncio.wait_for(body(scheduler), HANG)
        finally:
            await scheduler.stop()

    return asyncio.run(main())


def log_softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.log_softmax(logits.float(), -1).numpy()


def alone(engine, prompt: list[int], tokens: list[int]) -> list[np.ndarray]:
    """One session decoded by itself, straight on the engine: after the prompt, then per token."""
    sid, first = engine.open(prompt)
    out = [log_softmax(first)] + [log_softmax(engine.step({sid: t})[0]) for t in tokens]
    engine.close(sid)
    return out


async def settled(engine) -> None:
    """Until the loop has run the closes it was handed (it frees sessions at its next
    iteration)."""
    while engine.open_sessions:
        await asyncio.sleep(0.001)


def fresh(engine):
    """Another engine over the same weights, for reference results."""
    return type(engine)(engine.model, max_context=engine.max_context)


# -- batching ----------------------------------------------------------------------------


def test_sessions_that_step_together_share_one_forward_pass(engine):
    spy = Spy(engine)

    async def body(s: Scheduler):
        sessions = [(await s.open(p))[0] for p in PROMPTS]
        return sessions, await asyncio.gather(*(x.step(7 + i) for i, x in enumerate(sessions)))

    sessions, rows = run(engine, body)
    assert spy.steps == [len(PROMPTS)]
    assert [x.position for x in sessions] == [len(p) + 1 for p in PROMPTS]
    reference = fresh(engine)
    for i, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(rows[i], alone(reference, prompt, [7 + i])[1], atol=1e-5)


def test_batches_are_capped_at_max_batch_size(engine):
    spy = Spy(engine)

    async def body(s: Scheduler):
        sessions = [(await s.open(p))[0] for p in PROMPTS]
        await asyncio.gather(*(x.step(1) for x in sessions))

    run(engine, body, max_batch_size=3)
    assert spy.steps == [3, 3, 2]


@pytest.mark.parametrize("max_batch_size", [64, 3])
def test_a_callers_block_is_its_own_rows_in_order_however_the_batches_fall(engine, max_batch_size):
    """Three callers' blocks stepped at once: whole in one batch (each block a view of its
    run of the step's rows, the second's starting mid-batch), or split over batches of 3
    (copied in as they come); the third has a bad token in one row. Each block holds its
    own sessions' rows, in its order."""
    tokens = [[7, 8, 9, 10], [20, 21], [30, 10 ** 6]]

    async def body(s: Scheduler):
        sessions = [(await s.open(p))[0] for p in PROMPTS]
        blocks = [sessions[:4], sessions[4:6], sessions[6:]]
        return await asyncio.gather(*(s.step_block(b, t) for b, t in zip(blocks, tokens)))

    answers = run(engine, body, max_batch_size=max_batch_size)
    assert [list(errors) for _, errors, _ in answers] == [[], [], [1]]
    reference, first = fresh(engine), 0
    for (rows, errors, _), block_tokens in zip(answers, tokens):
        assert rows.shape[0] == len(block_tokens)
        for i, token in enumerate(block_tokens):
            if i not in errors:
                np.testing.assert_allclose(rows[i], alone(reference, PROMPTS[first + i], [token])[1], atol=1e-5)
        first += len(block_tokens)


def test_batched_scheduling_equals_one_by_one_decoding_as_sessions_join_and_leave(engine):
    """Sessions at mixed positions join (their prefill runs beside the batch) and leave
    (closed between steps) mid-run; every row is what the session gets decoding alone."""
    rng = np.random.default_rng(1)
    # (prompt, tokens, the round it joins at); a session leaves after its last token.
    plan = [([int(t) for t in rng.integers(1, 300, n)], [int(t) for t in rng.integers(1, 300, k)], join)
            for n, k, join in [(3, 9, 0), (1, 4, 0), (17, 6, 0), (5, 8, 2), (40, 3, 3), (2, 5, 5), (9, 2, 7)]]
    spy = Spy(engine)

    async def body(s: Scheduler):
        got: dict[int, list[np.ndarray]] = {i: [] for i in range(len(plan))}
        live: dict[int, object] = {}
        batches = []

        async def join(i):
            session, row = await s.open(plan[i][0])
            got[i].append(row)
            live[i] = session

        for rnd in range(12):
            joining = [join(i) for i, (_, _, at) in enumerate(plan) if at == rnd]
            stepping = sorted(live)
            batches.append(len(stepping))
            steps = [live[i].step(plan[i][1][len(got[i]) - 1]) for i in stepping]
            rows = await asyncio.gather(*steps, *joining)
            for i, row in zip(stepping, rows):
                got[i].append(row)
                if len(got[i]) == len(plan[i][1]) + 1:  # its last token: it leaves
                    live.pop(i).close()
        assert not live
        await settled(engine)
        return got, batches

    got, batches = run(engine, body, chunk_size=8)
    assert spy.steps == [b for b in batches if b]  # every live session in one batch per round
    assert max(spy.steps) >= 4
    reference = fresh(engine)
    for i, (prompt, tokens, _) in enumerate(plan):
        expected = alone(reference, prompt, tokens)
        assert len(got[i]) == len(expected)
        for a, b in zip(got[i], expected):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert engine.open_sessions == 0


# -- chunked prefill and Score ---------------------------------------------------------------


def test_long_prefill_and_score_run_chunk_by_chunk_while_sessions_keep_stepping(engine):
    spy = Spy(engine)
    chunk = 8
    long_prompt = [1 + i % 250 for i in range(200)]  # 25 chunks
    long_score = [1 + (7 * i) % 250 for i in range(201)]  # 200 tokens fed: 25 chunks

    async def body(s: Scheduler):
        a, _ = await s.open([1, 2, 3])
        b, _ = await s.open([4])
        spy.feeds = 0  # from here on: the long prompt's and the Score's chunks
        submitted: list[int] = []  # feeds run when each step was asked for
        opening = asyncio.ensure_future(s.open(long_prompt))
        scoring = asyncio.ensure_future(s.score(long_score))
        while not (opening.done() and scoring.done()):
            submitted.append(spy.feeds)
            await asyncio.gather(a.step(5), b.step(6))
        (c, _), _ = opening.result(), scoring.result()
        return submitted, c

    submitted, c = run(engine, body, chunk_size=chunk)
    assert c.position == len(long_prompt)
    assert spy.feeds == 25 + 25  # both ran chunk by chunk, nothing more
    # The running sessions stepped all along, one batch of both per round ...
    assert set(spy.steps) == {2} and len(spy.steps) == len(submitted) >= 50 // 3
    # ... each step ran with at most one chunk (the one in flight) between its request
    # and its turn, its own iteration runs it before that iteration's chunk ...
    assert all(ran - asked <= 1 for asked, ran in zip(submitted, spy.feeds_at_step))
    # ... so from one step to the next the engine ran two chunks at most.
    assert max(np.diff(spy.feeds_at_step)) <= 2


def test_on_bdh_a_story_rides_in_the_chunks_pass_except_when_it_folds(engine):
    """BDH runs a story's step and a Score's chunk as one pass (vLLM's mixed batch), the
    chunk waiting a moment for the story's next step rather than running alone; a step
    that folds (every 16th) runs alone. GPT-2 runs them apart. Either way every row and
    the Score equal what each gets alone."""
    spy = Spy(engine)
    heavy = []  # at each fused pass: whether its step would fold
    fused_pass = engine.step_and_feed

    def watched(tokens, session, ids, want="last"):
        heavy.append(engine.step_does_more(list(tokens)))
        return fused_pass(tokens, session, ids, want)

    engine.step_and_feed = watched
    prompt, tokens = [1, 2, 3], [5 + i % 40 for i in range(200)]
    ids = [1 + (7 * i) % 250 for i in range(161)]  # 160 tokens fed: 20 chunks of 8

    async def body(s: Scheduler):
        story, first = await s.open(prompt)
        rows = [first]
        scoring = asyncio.ensure_future(s.score(ids))
        for t in tokens:
            if scoring.done():
                break
            rows.append(await story.step(t))
        return rows, await scoring

    rows, scored = run(engine, body, chunk_size=8)
    reference = fresh(engine)
    for got, want in zip(rows, alone(reference, prompt, tokens[: len(rows) - 1])):
        np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(scored, reference.score(ids).numpy(), atol=1e-4)
    if engine.fuses_chunks:
        assert spy.fused >= 10 and not any(heavy)  # most chunks shared a pass; no fold did
    else:
        assert spy.fused == 0


def test_a_prompt_after_the_last_story_ended_waits_for_no_step(bdh_engine, monkeypatch):
    """A chunk waits a few steps for the running stories' next steps, but a story that has
    ended sends none: a prompt opened right after it is prefilled at once (it waited out
    the whole wait, which doubled the time to first token of a story after another)."""
    from plotarmour.modelserver import scheduler as module

    monkeypatch.setattr(module, "_AWAIT_STEPS", 10**6)  # a wait would now outlast the test

    async def body(s: Scheduler):
        story, _ = await s.open([1, 2, 3])
        for t in range(5):
            await story.step(4 + t)
        story.close()
        return await asyncio.wait_for(s.open([5, 6, 7, 8]), 30)

    _, first = run(bdh_engine, body, chunk_size=2)  # chunked: the chunk is what would wait
    assert first.shape == (bdh_engine.vocab_size,)


def test_stories_folding_in_turn_do_not_starve_a_score(bdh_engine):
    """With 16 stories at 16 different fold phases every step folds; a chunk kept off a
    folding step waits one pass at most, so the Score still moves (it waited for ever)."""
    async def body(s: Scheduler):
        stories = [(await s.open([1 + i, 2]))[0] for i in range(16)]
        for i, story in enumerate(stories):  # story i has i pending pairs: a fold each step
            for t in range(i):
                await story.step(3 + t)
        scoring = asyncio.ensure_future(s.score([1 + i % 50 for i in range(41)]))  # 5 chunks of 8
        rounds = 0
        while not scoring.done() and rounds < 40:
            await s.step(stories, [7] * 16)
            rounds += 1
        return scoring.done(), rounds

    done, rounds = run(bdh_engine, body, chunk_size=8)
    assert done and rounds <= 20


def test_a_chunk_that_fails_beside_steps_fails_only_its_own_call(bdh_engine):
    """Outside the shared pass (here: opening the Score's session) a failure is the chunk's
    alone; the stories beside it go on."""
    def broken_begin():
        raise RuntimeError("out of memory (a stand-in)")

    async def body(s: Scheduler):
        story, _ = await s.open([1, 2])
        await story.step(4)  # a step measured: the chunk may also wait for the story's steps
        bdh_engine.begin = broken_begin
        scoring = asyncio.ensure_future(s.score(list(range(1, 30))))
        rows = []
        while not scoring.done():
            rows.append(await story.step(5))
        with pytest.raises(WorkFailed, match="out of memory"):
            await scoring
        rows.append(await story.step(6))
        return rows

    rows = run(bdh_engine, body, chunk_size=8)
    assert all(r.shape == (bdh_engine.vocab_size,) for r in rows)


def test_score_equals_the_full_forward_across_chunks(engine):
    ids = [1 + (13 * i) % 300 for i in range(61)]
    model = copy.deepcopy(engine.model).double()  # float64: no kernel rounding in the reference
    family = FAMILIES[engine.model_type]
    with torch.no_grad():
        logits = family.logits(model, torch.tensor([ids]))[0]
    full = torch.log_softmax(logits, -1)[torch.arange(60), torch.tensor(ids[1:])].float().numpy()
    spy = Spy(engine)

    got = run(engine, lambda s: s.score(ids), chunk_size=7)
    assert spy.feeds == 9  # 60 tokens fed, 7 at a time
    assert got.dtype == np.dtype("<f4") and got.shape == (60,)
    np.testing.assert_allclose(got, full, atol=1e-4)
    assert engine.open_sessions == 0  # its scratch session is gone


def test_score_expected_fills_every_chunk(engine):
    ids = [1 + (13 * i) % 300 for i in range(61)]
    with torch.no_grad():
        logp = torch.log_softmax(FAMILIES[engine.model_type].logits(engine.model, torch.tensor([ids[:-1]]))[0], -1)
    got = run(engine, lambda s: s.score_expected(ids, top_k=3, entropy=True), chunk_size=7)
    want_lp, want_ids = logp.topk(3, dim=-1)
    assert got.top_ids.shape == got.top_log_probs.shape == (60, 3) and got.entropies.shape == (60,)
    np.testing.assert_array_equal(got.top_ids, want_ids.numpy())
    np.testing.assert_allclose(got.top_log_probs, want_lp.numpy(), atol=1e-4)
    np.testing.assert_allclose(got.entropies, -(logp.exp() * logp).sum(-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(got.log_probs, logp[torch.arange(60), torch.tensor(ids[1:])].numpy(), atol=1e-4)
    assert run(engine, lambda s: s.score_expected(ids[:5])).top_ids is None  # nothing asked, nothing made


def test_a_cancelled_long_prefill_stops_at_the_next_chunk(engine):
    spy = Spy(engine)
    at_cancel = []

    async def body(s: Scheduler):
        other, _ = await s.open([1, 2])
        task = asyncio.ensure_future(s.open([1 + i % 250 for i in range(240)]))  # 60 chunks of 4
        while spy.feeds < 4:  # the other session's prefill, then some chunks of this one
            await other.step(3)
        at_cancel.append(spy.feeds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(5):  # the loop goes on: several more iterations
            await other.step(3)
        assert s.open_sessions == 1
        other.close()
        await settled(engine)

    run(engine, body, chunk_size=4)
    assert spy.feeds <= at_cancel[0] + 1  # the chunk in flight at most, then dropped
    assert engine.open_sessions == 0  # no session left behind


def test_a_prefill_cancelled_before_it_ran_leaves_no_session(engine):
    async def body(s: Scheduler):
        task = asyncio.ensure_future(s.open(list(range(1, 50))))
        await asyncio.sleep(0)  # submitted
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert s.open_sessions == 0
        await settled(engine)

    run(engine, body, chunk_size=4)
    assert engine.open_sessions == 0


# -- limits --------------------------------------------------------------------------------


def test_limits_refuse_only_new_sessions_and_scores(bdh_engine):
    engine = bdh_engine

    async def body(s: Scheduler):
        sessions = [(await s.open(p))[0] for p in PROMPTS[:2]]
        with pytest.raises(Overloaded, match="2 sessions are open, the limit is 2") as new_session:
            await s.open([1])
        scoring = asyncio.ensure_future(s.score(list(range(1, 200))))
        await asyncio.sleep(0)  # admitted, running chunk by chunk
        with pytest.raises(Overloaded, match="1 Score calls are running, the limit is 1") as score:
            await s.score([1, 2, 3])
        # Running sessions step whatever is queued: many rounds while the Score runs.
        for i in range(10):
            rows = await asyncio.gather(*(x.step(1 + i) for x in sessions))
            assert all(r.shape == (engine.vocab_size,) for r in rows)
        await scoring
        sessions[0].close()
        again, _ = await s.open([1])  # a freed place is usable again
        assert len(await s.score([1, 2, 3])) == 2
        return new_session.value, score.value, again

    new_session, score, again = run(engine, body, max_sessions=2, max_scores=1, chunk_size=4)
    assert status_of(new_session) == status_of(score) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert again.position == 1


def test_a_bad_token_fails_only_its_own_session(engine):
    spy = Spy(engine)
    V = engine.vocab_size

    async def body(s: Scheduler):
        good, _ = await s.open([1, 2])
        bad, _ = await s.open([3, 4])
        apart = await asyncio.gather(good.step(5), bad.step(V), return_exceptions=True)
        together = await s.step([good, bad], [6, V + 1])  # one call, one row each
        return apart, together, good

    (ok, err), (ok2, err2), good = run(engine, body)
    assert ok.shape == ok2.shape == (V,)
    for e in (err, err2):
        assert isinstance(e, InvalidArgument) and "outside the vocabulary" in str(e)
        assert status_of(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert spy.steps == [1, 1]  # the bad rows never reached the engine
    assert good.position == 4


def test_the_context_cap_is_invalid_argument_before_any_work(engine):
    engine.max_context = 4
    spy = Spy(engine)

    async def body(s: Scheduler):
        with pytest.raises(InvalidArgument, match="context limit is 4"):
            await s.open([1, 2, 3, 4, 5])
        with pytest.raises(InvalidArgument, match="context limit is 4"):
            await s.score([1, 2, 3, 4, 5])
        assert (spy.feeds, engine.open_sessions, s.open_sessions) == (0, 0, 0)  # no work, nothing admitted
        x, _ = await s.open([1, 2, 3])
        await x.step(4)  # position 4: the limit
        with pytest.raises(InvalidArgument, match="context limit of 4"):
            await x.step(5)

    run(engine, body)
    assert spy.steps == [1]


# -- closing, cancelling, idle -----------------------------------------------------------------


def test_closing_a_parked_session_drops_its_step_and_frees_it(engine):
    async def body(s: Scheduler):
        x, _ = await s.open([1, 2])
        other, _ = await s.open([3])
        parked = asyncio.ensure_future(x.step(3))
        running = asyncio.ensure_future(other.step(4))
        await asyncio.sleep(0)
        x.close()
        with pytest.raises(SessionGone):
            await parked
        assert (await running).shape == (engine.vocab_size,)
        with pytest.raises(SessionGone, match="closed"):
            await x.step(5)
        other.close()
        assert s.open_sessions == 0
        await settled(engine)

    run(engine, body)
    assert engine.open_sessions == 0  # the worker has run the closes


def test_a_step_cancelled_while_it_runs_keeps_the_position_in_step_with_the_engine(bdh_engine):
    engine = bdh_engine
    running, release = threading.Event(), threading.Event()
    step = engine.step

    def slow_step(tokens):
        running.set()
        release.wait(HANG)
        return step(tokens)

    async def body(s: Scheduler):
        x, _ = await s.open([1, 2])
        await s.open([5])  # a second story: the step goes to the worker (a lone one may run on the loop)
        engine.step = slow_step
        task = asyncio.ensure_future(x.step(3))
        await asyncio.to_thread(running.wait, HANG)  # on the worker now
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        engine.step = step
        await x.step(4)  # the loop has delivered the cancelled step by now
        return x

    x = run(engine, body)
    assert x.position == 4  # the cancelled step was fed all the same, and counted


def test_idle_sessions_are_freed_after_the_timeout(engine):
    expired = []

    async def body(s: Scheduler):
        x, _ = await s.open([1, 2])
        x.on_expire = lambda session, why: expired.append(why)
        while s.open_sessions:  # the loop checks every min(1 s, idle_timeout_s)
            await asyncio.sleep(0.02)
        with pytest.raises(SessionGone):
            await x.step(3)
        await settled(engine)

    run(engine, body, idle_timeout_s=0.1)
    assert len(expired) == 1 and "idle_timeout_s" in expired[0]
    assert engine.open_sessions == 0


# -- batch_wait --------------------------------------------------------------------------------


def test_batch_wait_holds_a_step_for_the_other_open_sessions(engine):
    spy = Spy(engine)

    async def body(s: Scheduler):
        first, _ = await s.open([1, 2])
        second, _ = await s.open([3])
        early = asyncio.ensure_future(first.step(4))
        await asyncio.sleep(0.05)  # far inside the 60 s window: `early` is still held
        assert not early.done()
        await asyncio.gather(early, second.step(5))

    run(engine, body, batch_wait_s=60.0)
    assert spy.steps == [2]


def test_batch_wait_never_holds_a_session_that_is_alone(engine):
    async def body(s: Scheduler):
        x, _ = await s.open([1, 2])
        return await x.step(3)  # every open session waits: nothing to wait for

    assert run(engine, body, batch_wait_s=60.0).shape == (engine.vocab_size,)


# -- the loop dies -----------------------------------------------------------------------------


def test_when_the_loop_dies_every_waiter_fails_at_once_and_so_do_later_calls(engine):
    fatal = []

    def broken_step(*_):
        raise SystemError("a bug in the engine")

    async def body(s: Scheduler):
        a, _ = await s.open([1, 2])
        b, _ = await s.open([3])
        engine.step = engine.step_and_feed = broken_step  # alone or beside a chunk (BDH fuses them)
        waiters = [
            asyncio.ensure_future(s.step([a, b], [4, 5])),  # the batch that breaks
            asyncio.ensure_future(s.open(list(range(1, 100)))),  # its prefill chunk in the same iteration
            asyncio.ensure_future(s.score(list(range(1, 100)))),  # queued behind it
        ]
        done, pending = await asyncio.wait(waiters, timeout=HANG)
        assert not pending
        rows, opened, scored = (w.result() if w is waiters[0] else w.exception() for w in waiters)
        later = []
        for call in (lambda: s.open([1]), lambda: a.step(6), lambda: s.score([1, 2])):
            with pytest.raises(SchedulerDown) as err:
                await call()
            later.append(err.value)
        return rows, opened, scored, later, s

    rows, opened, scored, later, s = run(engine, body, chunk_size=4, on_fatal=fatal.append)
    for e in [*rows, opened, scored, *later]:
        assert isinstance(e, SchedulerDown) and "SystemError" in str(e)
        assert status_of(e) == grpc.StatusCode.UNAVAILABLE
    assert len(fatal) == 1 and isinstance(fatal[0], SystemError)
    assert isinstance(s.failure, SystemError)


def test_after_stop_calls_fail_at_once(bdh_engine):
    async def main():
        s = Scheduler(bdh_engine, Metrics())
        s.start()
        x, _ = await s.open([1, 2])
        await s.stop()
        for call in (lambda: s.open([1]), lambda: x.step(3), lambda: s.score([1, 2])):
            with pytest.raises(SchedulerDown, match="shutting down"):
                await asyncio.wait_for(call(), HANG)

    asyncio.run(main())


def test_chunks_beside_running_stories_cost_about_a_step_and_a_quarter(engine):
    s = Scheduler(engine, Metrics(), chunk_size=256)
    assert s._chunk_budget() == 256  # nothing measured, nobody stepping: the whole chunk
    s._step_s, s._stories = 0.005, True
    assert s._chunk_budget() == 8  # stories running, chunk cost unknown: start small
    s._token_s["prefill"] = 0.0001  # 50 tokens cost one step
    assert s._chunk_budget() == 62
    s._token_s["prefill"] = 0.002  # 2.5 tokens cost one step: never below the floor
    assert s._chunk_budget() == 8
    s._token_s["prefill"] = 1e-6
    assert s._chunk_budget() == 256  # never above chunk_size
    s._token_s["prefill"] = 0.0  # a chunk measured at no cost is not believed
    assert s._chunk_budget() == 8
    s._step_s, s._token_s["prefill"] = None, 0.0001  # no step measured yet: in a pass with steps, start small
    assert s._chunk_budget(beside_rows=True) == 8 and s._chunk_budget() == 256
    s._step_s = 0.005
    assert s._chunk_budget("score") == 8  # a Score's chunks are measured on their own
    s._stories = False  # no story being written: full chunks again
    assert s._chunk_budget() == 256


def test_a_prompt_just_after_a_story_ended_is_prefilled_whole(bdh_engine):
    """Chunks are cut to step size only while a story is being written: one that has ended
    (its session closed) no longer counts, however recently it stepped, so the next prompt
    runs in one chunk (it ran in step-sized pieces for a second, slowing time to first token)."""
    spy = Spy(bdh_engine)

    async def body(s: Scheduler):
        story, _ = await s.open([1, 2, 3])
        for t in range(5):
            await story.step(t)
        story.close()
        feeds = spy.feeds
        await s.open(list(range(1, 65)))
        during_story = spy.feeds - feeds
        other, _ = await s.open([4, 5])
        await other.step(1)
        feeds = spy.feeds
        await s.open(list(range(1, 65)))  # beside a story that is being written: in pieces
        return during_story, spy.feeds - feeds

    alone, beside = run(bdh_engine, body, chunk_size=256)
    assert alone == 1 and beside > 1


def test_a_failing_chunk_fails_only_its_own_call(bdh_engine):
    feed = bdh_engine.feed

    def feed_that_fails_on_long_prompts(session, ids, want="last"):
        if len(ids) > 4:
            raise RuntimeError("out of memory (a stand-in)")
        return feed(session, ids, want)

    bdh_engine.feed = feed_that_fails_on_long_prompts

    async def body(s: Scheduler):
        running, _ = await s.open([1, 2])
        with pytest.raises(WorkFailed, match="prefill failed.*out of memory"):
            await s.open(list(range(1, 30)))
        stepped = await running.step(5)  # the loop lives on, and so does the other session
        return stepped, s.open_sessions

    stepped, open_after = run(bdh_engine, body, chunk_size=8)
    assert stepped.shape == (bdh_engine.vocab_size,)
    assert open_after == 1


def test_the_gauges_tell_the_truth_between_events(bdh_engine):
    """Read while work is queued, and again once it is done with nothing else happening: the
    gauges follow (they were set only on admission and close, so one stayed at the work
    queued when the last session opened)."""
    metrics = Metrics()

    async def body(s: Scheduler):
        scores = [asyncio.ensure_future(s.score_expected(list(range(1, 200)))) for _ in range(3)]
        await asyncio.sleep(0)  # the scores are queued before the session opens
        queued = gauge(metrics, "plotarmour_queued_work")
        session, _ = await s.open([1, 2, 3])
        await asyncio.gather(*scores)
        return queued, session

    async def main():
        s = Scheduler(bdh_engine, metrics)
        s.start()
        try:
            queued, session = await asyncio.wait_for(body(s), HANG)
            text = metrics_text(metrics)
            session.close()
            return queued, text, metrics_text(metrics)
        finally:
            await s.stop()

    queued, with_session, after_close = asyncio.run(main())
    assert queued >= 3
    assert "plotarmour_queued_work 0.0" in with_session and "plotarmour_open_sessions 1.0" in with_session
    assert "plotarmour_open_sessions 0.0" in after_close


def gauge(metrics: Metrics, name: str) -> float:
    return next(s.value for m in metrics.registry.collect() for s in m.samples if s.name == name)


def metrics_text(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_prompts_go_first_come_first_served_and_a_late_one_is_refused_at_once(bdh_engine):
    """Two long prompts at once: the first is prefilled to its end before the second starts
    (taking turns, both ended at about twice the time, and both missed a deadline one alone
    would meet). A prompt whose place in line would end past its deadline is refused at
    once, saying so, instead of failing when the deadline passes."""
    feed, fed = bdh_engine.feed, []

    def slow_feed(session, ids, want="last"):  # about 1 ms a token: a cost the line is measured in
        fed.append(session)
        time.sleep(0.001 * len(ids))
        return feed(session, ids, want)

    bdh_engine.feed = slow_feed

    async def body(s: Scheduler):
        await s.open([1, 2, 3])  # measures the cost per token
        first = asyncio.ensure_future(s.open(list(range(1, 101))))
        second = asyncio.ensure_future(s.open(list(range(1, 101))))
        await asyncio.sleep(0)  # both in line
        with pytest.raises(Overloaded, match=r"would be done in about .* past its deadline of 0.1 s"):
            await s.open(list(range(1, 101)), max_wait_s=0.1)
        roomy, _ = await s.open([4, 5], max_wait_s=30)  # within its deadline: taken
        return await asyncio.gather(first, second), roomy

    ((a, _), (b, _)), _ = run(bdh_engine, body, chunk_size=16)
    chunks = [sid for sid in fed if sid in (a.id, b.id)]
    assert chunks == [a.id] * 7 + [b.id] * 7, chunks  # 100 tokens in chunks of 16, one prompt after the other


def test_the_loops_wake_waits_until_set_or_timeout_and_a_cancellation_always_raises():
    async def main():
        wake = _Wake()
        wake.set()
        await asyncio.wait_for(wake.wait(None), HANG)  # already set: at once
        wake.clear()
        waiter = asyncio.ensure_future(wake.wait(0.05))  # nobody sets it: the timeout ends the wait
        await asyncio.sleep(0)
        assert not waiter.done()
        await asyncio.wait_for(waiter, HANG)
        waiter = asyncio.ensure_future(wake.wait(None))
        await asyncio.sleep(0)
        wake.set()
        await asyncio.wait_for(waiter, HANG)
        # set() and cancel() in the same turn: the cancellation is not swallowed (the
        # asyncio.wait_for bug _Wake exists to avoid), so stop() can never hang on the loop.
        wake.clear()
        waiter = asyncio.ensure_future(wake.wait(None))
        await asyncio.sleep(0)
        wake.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        wake.clear()
        waiter = asyncio.ensure_future(wake.wait(10.0))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
