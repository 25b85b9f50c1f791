"""One scheduling loop owns the engine (TGI's and vLLM's design).

Engines are not thread-safe and torch work must not block the event loop, so the loop
hands each iteration to ONE worker thread. (One exception: a lone story's step, with
nothing else to do and measured under 10 ms, runs on the loop; see `_run`.) An iteration is

    every decode row waiting now (up to max_batch_size), stepped as one batch
    + at most one chunk of pending prefill or Score work (chunk_size tokens; beside
      running stories, only as many as cost about 1.25 decode steps)

so a long prompt or Score delays a running story by one chunk at most (vLLM's chunked
prefill). Where the engine can (BDH: `fuses_chunks`), the rows and the chunk run as one
pass (vLLM's mixed batch: the chunk adds its tokens' work, not a second pass over the
weights), and a chunk waits up to two steps for running stories' next steps so that they
ride in its pass; a step that does more than usual (BDH folds every 16 tokens) runs
alone, its chunk waiting for the next pass (once in a row at most). Otherwise the rows
are answered as soon as they are stepped, before the chunk runs.
Prompts are prefilled first come, first served, each to its end before the next (two
long prompts at once finish one after the other, rather than both at twice the time),
and ahead of Score work, so a story's prompt is not queued behind a 20,000-token Score;
Score calls take turns among themselves. A prompt whose prefill would not end within its
caller's deadline (its place in line at the measured cost per token) is refused at once
(Overloaded) instead of failing when the deadline passes. Work whose caller has gone is
dropped at the next chunk boundary.

Limits: a running session's steps are never refused; only new sessions
(`max_sessions`) and Score calls (`max_scores`) meet a bound. Sessions nobody steps for
`idle_timeout_s` are freed. If the loop dies, every waiter gets the error at once, later
calls fail at once, and `on_fatal` lets the server turn its health NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from plotarmour.models import DecodeEngine, InvalidInput
from plotarmour.models.base import expected_chunk, score_chunk

from .errors import InvalidArgument, Overloaded, SchedulerDown, SessionGone, WorkFailed
from .metrics import Metrics
from .work import Block, Scored, Session, Work, log_probs

log = logging.getLogger(__name__)


# The smallest chunk beside running stories: below it, per-chunk overhead dominates and a
# long prompt would crawl.
_MIN_CHUNK = 8
# Beside running stories a chunk may cost this many decode steps: a story's gap is then
# its step plus the chunk, about 2.25 steps, while a long prompt still moves on.
_CHUNK_STEPS = 1.25
# How long a chunk waits, in steps, for running stories' next steps to share its pass.
_AWAIT_STEPS = 2.0
# _step_with_chunk's answer when a step and a chunk could not share a pass.
_APART = object()
# The longest measured step a lone story may run on the loop itself (`_inline`): the
# loop answers nothing else meanwhile, so a health check waits at most this long.
_INLINE_STEP_S = 0.01
# The most alternatives a Score call may ask for per position.
MAX_SCORE_TOP_K = 64


class _Wake:
    """asyncio.Event's set and clear, and a wait with a timeout that costs one future.

    One waiter at a time: the loop, which waits on it once per step. Event.wait in a task
    under asyncio.wait (a timeout without asyncio.wait_for, which on Python 3.11 swallows
    a cancellation that arrives as the event is set: cpython gh-86296) cost a task and two
    more turns of the event loop between a step's arrival and its engine pass."""

    def __init__(self):
        self._set = False
        self._waiter: asyncio.Future | None = None

    def set(self) -> None:
        self._set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self, timeout: float | None) -> None:
        """Until set, or `timeout` s pass (None: no limit). A cancellation always raises."""
        if self._set:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class _PassFailed(Exception):
    """A pass that stepped rows failed (its __cause__ says how): unlike a chunk alone,
    it takes the loop down, as a failed step does."""


class Scheduler:
    def __init__(self, engine: DecodeEngine, metrics: Metrics, *, max_batch_size: int = 64, chunk_size: int = 256,
                 max_sessions: int = 64, max_scores: int = 16, idle_timeout_s: float = 300.0,
                 batch_wait_s: float = 0.0, on_fatal: Callable[[BaseException], None] | None = None):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.chunk_size = chunk_size
        self.max_sessions = max_sessions
        self.max_scores = max_scores
        self.idle_timeout_s = idle_timeout_s
        self.batch_wait_s = batch_wait_s
        self.on_fatal = on_fatal
        self.vocab_size = engine.vocab_size
        self.max_context = engine.max_context
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._rows: dict[Session, tuple[int, Block, int]] = {}  # waiting decode rows: session → (token, its block, row)
        self._work: deque[Work] = deque()  # prefill and score, taking turns
        self._sessions: set[Session] = set()
        self._admitted = 0  # sessions open or being prefilled: what max_sessions bounds
        self._scores = 0
        self._closing: list[int] = []  # engine sessions to free on the next iteration
        # What the worker runs now: out of _rows and _work, yet its waiters must hear
        # of it if the loop dies or stops mid-iteration.
        self._inflight: tuple[dict, Work | None] = ({}, None)
        # The gauges are read when /metrics is scraped, so they tell the truth between events.
        self.metrics.open_sessions.set_function(lambda: self._admitted)
        self.metrics.queued.set_function(self._queued)
        # Measured costs (moving averages, seconds) that size a chunk beside running stories.
        self._step_s: float | None = None  # one decode step
        # One token of a chunk, per kind of work: a Score's chunk also computes every
        # position's logits and log-softmax, which a prompt's skips.
        self._token_s: dict[str, float] = {}
        self._skipped = False  # the last iteration kept a chunk off a heavier step (worker side)
        self._stepped_at = 0.0  # monotonic time of the last rows delivered (loop side)
        self._stories = False  # whether a story is being written (read by the worker for this iteration)
        self.last_step_s = 0.0  # the engine's time for the latest decode step (what a step's caller waited on)
        self._wake = _Wake()
        self._task: asyncio.Task | None = None
        self.failure: BaseException | None = None  # what killed the loop
        self._down: SchedulerDown | None = None  # set once nothing more will run

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        self._down = self._down or SchedulerDown("the server is shutting down")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_all(self._down)
        await asyncio.to_thread(self._worker.shutdown, wait=True)

    @property
    def open_sessions(self) -> int:
        return self._admitted

    # -- the operations (event loop side) ----------------------------------------------
    async def open(self, prompt: list[int], max_wait_s: float | None = None) -> tuple[Session, np.ndarray]:
        """Prefill a prompt; returns the session and the log-probs (V,) after it.
        max_wait_s: the caller's deadline; a prefill that would end later is refused now."""
        self._check_up()
        ids = self._checked(self.engine.check_prompt, prompt)
        if self._admitted >= self.max_sessions:
            raise Overloaded(f"{self._admitted} sessions are open, the limit is {self.max_sessions}; retry later")
        self._check_wait(len(ids), max_wait_s)
        self._admitted += 1
        work = self._submit("prefill", ids)
        try:
            sid, row = await work.future
        except BaseException:
            # Cancelled or failed: the loop drops the work and frees its engine session,
            # or, when the prefill had just finished, the session it opened.
            self._admitted -= 1
            fut = work.future
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._closing.append(fut.result()[0])
                self._wake.set()
            raise
        session = Session(sid, len(ids), self)
        self._sessions.add(session)
        return session, row

    async def step(self, sessions: list[Session], tokens: list[int]) -> list[np.ndarray | Exception]:
        """`step_block`, as one log-probs row (V,) or error per session."""
        rows, errors, _ = await self.step_block(sessions, tokens)
        return [errors.get(i, rows[i]) for i in range(len(sessions))]

    async def step_block(self, sessions: list[Session],
                         tokens: list[int]) -> tuple[np.ndarray, dict[int, Exception], float]:
        """Feed one token to each session; all of them join the next batch together.

        Returns their log-probs as one float32 array (n, V) in the sessions' order; by index,
        the error that closed a session instead (its row is then meaningless); and the
        seconds of engine steps its rows took part in.
        Never refused for load: a running story always gets its step.
        """
        self._check_up()
        block = Block(asyncio.get_running_loop().create_future(), len(sessions), self.vocab_size)
        now = time.monotonic()
        for i, (s, token) in enumerate(zip(sessions, tokens)):
            problem = self._step_problem(s, token)
            if problem is not None:
                block.errors[i] = problem
                continue
            self._rows[s] = (token, block, i)
            s.last_active = now
            block.pending += 1
        if block.pending:
            self._wake.set()
            try:
                await block.future
            except asyncio.CancelledError:
                for s in sessions:  # the caller left: its rows need not run
                    if s in self._rows and self._rows[s][1] is block:
                        del self._rows[s]
                raise
        return block.answer(), block.errors, block.engine_s

    def close(self, session: Session) -> None:
        """Free a session. Never blocks: the loop frees it at its next iteration."""
        if session.closed:
            return
        session.closed = True
        entry = self._rows.pop(session, None)
        if entry is not None:
            entry[1].fail(entry[2], SessionGone("the session was closed while its step waited"))
        self._sessions.discard(session)
        self._admitted -= 1
        self._closing.append(session.id)
        self._wake.set()

    async def score(self, ids: list[int]) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t ≥ 1, float32 (T-1,), computed chunk by chunk."""
        return (await self.score_expected(ids)).log_probs

    async def score_expected(self, ids: list[int], *, top_k: int = 0, entropy: bool = False,
                             max_wait_s: float | None = None) -> Scored:
        """Like `score`, plus each position's top_k likeliest tokens and its entropy when asked."""
        self._check_up()
        ids = self._checked(self.engine.check_score, ids)
        if not 0 <= top_k <= MAX_SCORE_TOP_K:
            raise InvalidArgument(f"top_k is {top_k}; it must be between 0 and {MAX_SCORE_TOP_K}")
        top_k = min(top_k, self.vocab_size)
        if self._scores >= self.max_scores:
            raise Overloaded(f"{self._scores} Score calls are running, the limit is {self.max_scores}; retry later")
        self._check_wait(len(ids), max_wait_s, score=True)
        self._scores += 1
        try:
            work = self._submit("score", ids)
            work.top_k, work.entropy = top_k, entropy
            return await work.future
        finally:
            self._scores -= 1

    # -- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not (self._rows or self._work or self._closing):
                    self._wake.clear()
                    await self._woken(self._idle_check_interval())
                    self._expire_idle()
                    continue
                await self._gather_stragglers(loop)
                await self._await_next_steps(loop)
                rows = self._take_rows()
                work = self._take_work()
                closing, self._closing = self._closing, []
                self._stories = bool(rows) or self._stepped_lately()
                self._inflight = (rows, work)
                if self._inline(rows, work, closing):
                    result = self._iterate(loop, closing, rows, work)
                else:
                    result = await loop.run_in_executor(self._worker, self._iterate, loop, closing, rows, work)
                self._inflight = ({}, None)
                self._deliver_work(work, result)
                self._expire_idle()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug or a device fault: nobody may hang on us
            log.exception("the scheduling loop died")
            self.failure = e
            self._down = SchedulerDown(f"the model server's scheduler failed: {e!r}")
            self._fail_all(self._down)
            if self.on_fatal is not None:
                self.on_fatal(e)

    def _inline(self, rows: dict, work: Work | None, closing: list[int]) -> bool:
        """Whether this iteration runs on the loop: one story, nothing else to do, and a
        step measured short. Its client waits for this answer, so nothing would overlap
        the step, and the hand-off to the worker and back cost 0.15-0.3 ms of GPT-2's
        ~3 ms served step. Meanwhile the loop answers nothing (health, GetInfo, a new
        stream, a signal), so only a step known to be short (`_INLINE_STEP_S`) runs here."""
        return (bool(rows) and work is None and not closing and len(self._sessions) == 1
                and self._step_s is not None and self._step_s < _INLINE_STEP_S)

    def _take_rows(self) -> dict[Session, tuple[int, Block, int]]:
        rows = {}
        for s in list(self._rows)[: self.max_batch_size]:
            entry = self._rows.pop(s)
            if not entry[1].future.done():  # a caller that left is skipped
                rows[s] = entry
        return rows

    def _next_work(self) -> Work | None:
        """The work whose chunk is next: the oldest prompt (first come, first served), else
        the Score whose turn it is."""
        return next((w for w in self._work if w.kind == "prefill"), self._work[0]) if self._work else None

    def _take_work(self) -> Work | None:
        """Take the next chunk's work (`_next_work`), passing over any whose caller has gone."""
        while self._work:
            work = self._next_work()
            self._work.remove(work)
            if not work.future.done():
                return work
            self._drop(work)  # its caller has gone: stop at this chunk boundary
        return None

    def _check_wait(self, tokens: int, max_wait_s: float | None, score: bool = False) -> None:
        """Overloaded when work of `tokens` would not end within max_wait_s: the prompts ahead
        of it in line (and, for a Score, the Scores too), then its own tokens, at the
        measured cost per token; beside running stories each chunk also waits a step."""
        token_s = self._token_s.get("score" if score else "prefill") or self._token_s.get("prefill")
        if not max_wait_s or token_s is None:  # no deadline, or nothing measured yet
            return
        running = self._inflight[1]
        line = [*self._work, *([running] if running is not None else [])]
        ahead = sum(w.end - w.done for w in line if (score or w.kind == "prefill") and not w.future.done())
        per_token = token_s * (1 + 1 / _CHUNK_STEPS if self._stories else 1)
        eta = (ahead + tokens) * per_token
        if eta > max_wait_s:
            what = "Score" if score else "prompt"
            raise Overloaded(f"this {what} would be done in about {eta:.1f} s ({ahead} tokens of other work "
                             f"ahead of its {tokens}), past its deadline of {max_wait_s:.1f} s; retry later")

    def _drop(self, work: Work) -> None:
        if work.sid is not None:
            self._closing.append(work.sid)
            work.sid = None

    async def _gather_stragglers(self, loop) -> None:
        """With batch_wait_s > 0 and fewer rows waiting than sessions open, wait a little
        for the others (per-session Decode streams arrive out of phase)."""
        if not self.batch_wait_s or not self._rows:
            return
        want = min(len(self._sessions), self.max_batch_size)
        deadline = loop.time() + self.batch_wait_s
        while len(self._rows) < want and (left := deadline - loop.time()) > 0:
            self._wake.clear()
            await self._woken(left)

    async def _await_next_steps(self, loop) -> None:
        """While stories are being written and only a chunk waits, wait up to two steps for
        their next steps (a client's round trip away): on an engine that fuses, they then
        ride in the chunk's pass instead of queueing behind a chunk run alone (a story
        silent for longer is not running)."""
        if not (self._work and not self._rows and self.engine.fuses_chunks and self._step_s
                and time.monotonic() - self._stepped_at < (_AWAIT_STEPS + 1) * self._step_s
                and self._stepped_lately()):  # (a story that has ended sends no next step)
            return
        self._wake.clear()
        work = self._next_work()
        if work is not None and work.sid is None:
            # Open its session meanwhile (BDH: zeroing a state slot, ~2 ms), off the pass
            # the steps will share with its first chunk.
            await loop.run_in_executor(self._worker, self._begin, work)
        if not self._rows:
            await self._woken(_AWAIT_STEPS * self._step_s)

    def _begin(self, work: Work) -> None:
        """On the worker: open work's session ahead of its first chunk. A failure is left
        for that chunk to meet and report."""
        try:
            if work.sid is None:
                work.sid = self.engine.begin()
        except Exception:
            pass

    async def _woken(self, timeout: float | None) -> None:
        """Until `_wake` is set or `timeout` s pass (None: no limit)."""
        await self._wake.wait(timeout)

    # -- on the worker thread (or the loop: _inline) -------------------------------------
    def _iterate(self, loop, closing: list[int], rows: dict, work: Work | None):
        for sid in closing:
            self.engine.close(sid)
        if rows and work is not None and self.engine.fuses_chunks:
            # A heavier step (BDH folds every 16 tokens) runs alone: with a chunk beside it,
            # it would be the stories' longest gap. The chunk keeps its place, but only
            # once in a row: stories at other fold phases would otherwise starve it.
            skip = not self._skipped and self.engine.step_does_more([s.id for s in rows])
            self._skipped = skip
            if not skip:
                return self._run_chunk(work, loop, rows)  # the rows ride in the chunk's pass
            stepped = self._step_rows(rows, usual=False)
            loop.call_soon_threadsafe(self._deliver_rows, rows, stepped, self.last_step_s)
            return None
        if rows:
            # Answer the steps before the chunk runs: their callers get their rows (and
            # can send their next step) one chunk sooner. Callbacks run in order, so
            # these rows are delivered before this iteration's end is seen.
            stepped = self._step_rows(rows)
            loop.call_soon_threadsafe(self._deliver_rows, rows, stepped, self.last_step_s)
        return self._run_chunk(work) if work is not None else None

    def _step_rows(self, rows: dict, usual: bool = True) -> tuple[np.ndarray | None, dict | None]:
        """Step the rows as one batch. A step that is not `usual` (it does more, see
        step_does_more) stays out of the step cost that chunks are sized by."""
        t0 = time.perf_counter()
        tokens = {s.id: token for s, (token, _, _) in rows.items()}
        try:
            out = log_probs(self.engine.step(tokens)), None
        except InvalidInput:
            # Pre-checks make this unreachable for caller mistakes we know of; should one
            # slip through, step the rows one by one so only its own session fails.
            out = None, {s: self._step_one(s.id, token) for s, (token, _, _) in rows.items()}
        took = self.last_step_s = time.perf_counter() - t0
        if usual:
            self._step_s = took if self._step_s is None else 0.8 * self._step_s + 0.2 * took
        self.metrics.step_latency.observe(took)
        self.metrics.batch_size.observe(len(rows))
        self.metrics.steps.inc(len(rows))
        return out

    def _stepped_lately(self) -> bool:
        """Whether an open session was stepped (or opened) within the last second: between
        its steps no row of it waits, yet a long chunk would delay the next one. A story
        that has ended does not count (its session is closed): a prompt that arrives just
        after it is prefilled whole, not in step-sized chunks."""
        cutoff = time.monotonic() - 1.0
        return any(s.last_active > cutoff for s in self._sessions)

    def _chunk_budget(self, kind: str = "prefill", beside_rows: bool = False) -> int:
        """Tokens for this iteration's chunk (vLLM's per-iteration token budget).

        While stories are being written (`_stepped_lately`), a chunk may cost about 1.25
        decode steps, so a running story's gap between tokens stays within about 2.25
        times its usual; with no story running, the full chunk_size goes at once. A chunk
        in a pass with steps (`beside_rows`) starts small while no step is measured yet.
        """
        token_s = self._token_s.get(kind)
        if not self._stories or (self._step_s is None and not beside_rows):
            return self.chunk_size
        if self._step_s is None or not token_s:  # a step or a chunk not measured yet: start small
            return min(self.chunk_size, _MIN_CHUNK)
        return min(self.chunk_size, max(_MIN_CHUNK, int(_CHUNK_STEPS * self._step_s / token_s)))

    def _step_one(self, sid: int, token: int) -> np.ndarray | Exception:
        try:
            return log_probs(self.engine.step({sid: token}))[0]
        except InvalidInput as e:
            return InvalidArgument(str(e))

    def _run_chunk(self, work: Work, loop=None, rows: dict | None = None) -> np.ndarray | Exception | None:
        """One chunk of `work`; returns its result when finished, None while not. With
        `rows`, the engine steps them in the same pass and they are delivered from here
        (alone, if the chunk fails before its pass)."""
        waiting = rows  # rows not yet delivered
        try:
            if work.sid is None:
                work.sid = self.engine.begin()
            a = work.done
            b = min(a + self._chunk_budget(work.kind, beside_rows=bool(rows)), work.end)
            last = b == work.end
            want = "all" if work.kind == "score" else "last" if last else "none"
            t0 = time.perf_counter()
            logits = self._step_with_chunk(loop, rows, work.sid, work.ids[a:b], want) if rows else _APART
            waiting = None
            if logits is _APART:
                t0 = time.perf_counter()  # (after a fallback, the rows' own step is not the chunk's)
                logits = self.engine.feed(work.sid, work.ids[a:b], want)
            else:
                # The chunk's own cost is what the pass took beyond a step (at least half of it:
                # the step cost measured earlier may be a larger batch's).
                t0 += min(self._step_s or 0.0, 0.5 * (time.perf_counter() - t0))
            if work.kind == "score":
                if work.logp is None:
                    work.logp = np.empty(work.end, dtype="<f4")
                work.logp[a:b] = score_chunk(logits, work.ids, a).numpy()
                if work.top_k or work.entropy:
                    self._expected_chunk(work, logits, a, b)
            work.done = b
            per_token = (time.perf_counter() - t0) / (b - a)
            known = self._token_s.get(work.kind)
            self._token_s[work.kind] = per_token if known is None else 0.8 * known + 0.2 * per_token
            self.metrics.prompt_tokens.inc(b - a)
            if not last:
                return None
            if work.kind == "prefill":
                self.metrics.prefill_latency.observe(time.perf_counter() - work.t0)
                return log_probs(logits[None])[0]
            self.engine.close(work.sid)
            work.sid = None
            if work.expected is None:
                return Scored(work.logp)
            work.expected.log_probs = work.logp
            return work.expected
        except _PassFailed as e:
            raise e.__cause__  # a pass that carried steps failed as a step does: the loop fails everyone
        except Exception as e:
            if waiting:
                stepped = self._step_rows(waiting)
                loop.call_soon_threadsafe(self._deliver_rows, waiting, stepped, self.last_step_s)
            if isinstance(e, InvalidInput):
                return InvalidArgument(str(e))
            # e.g. out of memory in one long chunk: fail this work, not the server
            log.exception("a %s chunk failed", work.kind)
            return WorkFailed(f"the {work.kind} failed inside the model server: {e!r}")

    def _step_with_chunk(self, loop, rows: dict, sid: int, ids: list[int], want: str):
        """The rows' step and a chunk as one pass (vLLM's mixed batch: the chunk adds its
        tokens' work, not a second pass over the weights); the rows are delivered here.
        Returns the chunk's logits, or _APART where either part is invalid: the rows have
        then stepped alone (each invalid row failing alone) and the chunk is still to run."""
        tokens = {s.id: token for s, (token, _, _) in rows.items()}
        t0 = time.perf_counter()
        try:
            stepped, logits = self.engine.step_and_feed(tokens, sid, ids, want)
        except InvalidInput:
            step = self._step_rows(rows)
            loop.call_soon_threadsafe(self._deliver_rows, rows, step, self.last_step_s)
            return _APART
        except Exception as e:
            raise _PassFailed from e
        took = self.last_step_s = time.perf_counter() - t0
        self.metrics.step_latency.observe(took)
        self.metrics.batch_size.observe(len(rows))
        self.metrics.steps.inc(len(rows))
        loop.call_soon_threadsafe(self._deliver_rows, rows, (log_probs(stepped), None), took)
        return logits

    @staticmethod
    def _expected_chunk(work: Work, logits: torch.Tensor, a: int, b: int) -> None:
        """Fill rows a:b of what the model expected (arrays made up front, as for logp)."""
        e = work.expected
        if e is None:
            k = work.top_k
            e = work.expected = Scored(
                work.logp,
                np.empty((work.end, k), dtype="<u4") if k else None,
                np.empty((work.end, k), dtype="<f4") if k else None,
                np.empty(work.end, dtype="<f4") if work.entropy else None)
        top_ids, top_lp, ent = expected_chunk(logits, work.top_k, work.entropy)
        if top_ids is not None:
            e.top_ids[a:b] = top_ids.numpy()
            e.top_log_probs[a:b] = top_lp.numpy()
        if ent is not None:
            e.entropies[a:b] = ent.numpy()

    # -- back on the event loop --------------------------------------------------------------
    def _deliver_rows(self, rows: dict, stepped, took: float) -> None:
        self._stepped_at = time.monotonic()
        batch, singles = stepped
        for block in {block for _, block, _ in rows.values()}:
            block.engine_s += took
        into: dict[Block, tuple[list[int], list[int]]] = {}  # block → (its rows, the batch's rows)
        for j, (s, (_, block, i)) in enumerate(rows.items()):
            value = batch[j] if batch is not None else singles[s]
            if not isinstance(value, Exception):
                # The engine has advanced, whether or not its caller still waits:
                # keep the session's position in step with the engine's.
                s.position += 1
            if block.future.done():
                continue
            if isinstance(value, Exception):
                block.fail(i, value)
            elif batch is None:
                block.answer()[i] = value
                block.done_one()
            else:
                dst, src = into.setdefault(block, ([], []))
                dst.append(i)
                src.append(j)
        for block, (dst, src) in into.items():  # at most one copy per caller, not one per row
            block.put(dst, batch, src)

    def _deliver_work(self, work: Work | None, result) -> None:
        if work is None:
            return
        if result is None:  # more chunks to go: a prompt keeps its place, a Score goes to the back
            if work.future.done():
                self._drop(work)
            elif work.kind == "prefill":
                self._work.appendleft(work)
            else:
                self._work.append(work)
            return
        if isinstance(result, Exception):
            self._drop(work)
            if not work.future.done():
                work.future.set_exception(result)
            return
        if work.kind == "prefill":
            if work.future.done():  # the caller left during the last chunk
                self._drop(work)
            else:
                work.future.set_result((work.sid, result))
        elif not work.future.done():
            work.future.set_result(result)

    # -- helpers ---------------------------------------------------------------------------
    def _submit(self, kind: str, ids: list[int]) -> Work:
        work = Work(kind, ids, asyncio.get_running_loop().create_future())
        self._work.append(work)
        self._wake.set()
        return work

    def _checked(self, check, ids):
        try:
            return check(ids)
        except InvalidInput as e:
            raise InvalidArgument(str(e)) from None

    def _step_problem(self, s: Session, token: int) -> Exception | None:
        if s.closed:
            return SessionGone("the session is closed")
        if not 0 <= token < self.vocab_size:
            return InvalidArgument(f"token id {token} is outside the vocabulary [0, {self.vocab_size})")
        if s.position >= self.max_context:
            return InvalidArgument(f"the session has reached the context limit of {self.max_context} tokens")
        if s in self._rows:
            return InvalidArgument("a step for this session is already waiting")
        return None

    def _expire_idle(self) -> None:
        if not self.idle_timeout_s:
            return
        cutoff = time.monotonic() - self.idle_timeout_s
        for s in [s for s in self._sessions if s.last_active < cutoff and s not in self._rows]:
            log.info("closing session %d: no step for %.0f s (idle_timeout_s)", s.id, self.idle_timeout_s)
            self.close(s)
            if s.on_expire is not None:
                s.on_expire(s, f"the session was closed after {self.idle_timeout_s:g} s without a step "
                               "(idle_timeout_s)")

    def _idle_check_interval(self) -> float | None:
        # _admitted, not _sessions: a prefill that has just finished is admitted but its
        # Session is made only when open() resumes, after the loop has gone idle; with no
        # timeout then, a session opened and never stepped would never expire.
        return min(1.0, self.idle_timeout_s) if self.idle_timeout_s and self._admitted else None

    def _check_up(self) -> None:
        if self._down is not None:
            raise SchedulerDown(str(self._down))  # a fresh one: raising one instance again grows its traceback

    def _fail_all(self, err: Exception) -> None:
        rows, work = self._inflight
        self._inflight = ({}, None)
        for _, block, i in [*self._rows.values(), *rows.values()]:
            if not block.future.done():
                block.fail(i, err)  # every row of a caller answers: this one with the failure
        self._rows.clear()
        for w in [*self._work, *([work] if work is not None else [])]:
            if not w.future.done():
                w.future.set_exception(err)
        self._work.clear()

    def _queued(self) -> int:
        """Prefills, steps and scores waiting or running now."""
        rows, work = self._inflight
        return len(self._rows) + len(self._work) + len(rows) + (work is not None)
