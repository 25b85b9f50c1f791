"""The scheduler: admission, blending and sampling, stepping, and context shift, for
every live generation together.

Per iteration it blends and samples all live rows in one vectorised call, sends one step
message per model-server stream, then hands each token to its client (a story that ends
on this token is told first: it sends no step). A story asks only the models its weight
needs (at w = 0 GPT-2 alone, at w = 1 BDH alone, else both): when its weight moves off an
end, the other model's session catches up on the story so far in one prefill, so a
steered story is exactly the one written at those weights from the start, and a
pure-model story goes on while the other server is down or stalled. A story that fills a
model's context has that model's session reopened on the story's last part (context
shift) in the same iteration. Stories wait for each other's answers to step as one batch,
but not for a late one: a stalled server holds up only the stories that need it.
`generate` admits one generation and yields its events (events.py builds them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from plotarmour import sampling
from plotarmour.tokenizer import IncrementalDetokenizer

from .backends import BatchStream, ModelPair
from .errors import GatewayError, ModelFault, ModelGone, ModelUnavailable
from .events import StopText, TokenTexts, end_event, token_event, top_k
from .params import GenerationParams
from .running import Generation, roles_for

log = logging.getLogger("plotarmour.gateway")

# Stories whose step answers are in wait for the others still in flight (one batch) only
# while those are not late: twice their server's usual round trip, and at least this long.
_GRACE_S = 0.05


@dataclass(eq=False)
class Live:
    """One generation inside the scheduler: its sessions, its next-token distributions,
    and what it has written so far."""

    gen: Generation
    params: GenerationParams
    rng: np.random.Generator
    sessions: list[tuple[BatchStream, int] | None]  # (stream, session id) on gpt2, bdh; None: not asked
    lp: list[np.ndarray | None]  # next-token log-probs (V,) of gpt2, then bdh; None: not asked
    detok: IncrementalDetokenizer
    stopper: StopText
    ids: list[int] = field(default_factory=list)  # the whole story so far, prompt included
    lengths: list[int] = field(default_factory=list)  # tokens each session holds (gpt2, bdh)
    shifted: list[str] = field(default_factory=list)  # roles whose window slid since the last token
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    text_parts: list[str] = field(default_factory=list)
    position: int = 0
    t_start: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    waited: float = 0.0  # seconds from its steps' sending to their answers (telling the tokens overlaps it)
    weight: float = 0.0  # the logic weight of the token being sampled
    gone: bool = False  # the client left: leave at the next step
    # The step in flight: answers still due, when it was sent, and what it brought back.
    pending: int = 0
    t_sent: float = 0.0
    failure: BaseException | None = None
    lost_roles: list[int] = field(default_factory=list)  # servers that went away
    full_roles: list[int] = field(default_factory=list)  # sessions that hold a whole context

    def close(self) -> None:
        for role in (0, 1):
            self.drop(role)

    def drop(self, role: int) -> None:
        """Free one model's session (its weight no longer needs it, or the story ended)."""
        if self.sessions[role] is not None:
            stream, sid = self.sessions[role]
            stream.close([sid])
        self.sessions[role], self.lp[role] = None, None

    def missing(self) -> list[int]:
        """The models the next token needs that this story has no session on."""
        return [role for role in roles_for(self.weight) if self.sessions[role] is None]


class Scheduler:
    """One loop steps every live generation of a model pair together (TGI's router).

    Each iteration blends and samples every ready row at once, sends ONE step message per
    model-server stream (both servers asked at once, so a step costs the slower of the
    two), then hands each token to its client: the servers work while the clients are
    told. A row is ready again when all its answers have landed; ready rows wait for the
    rest of the batch, but not for an answer that is late, so a stalled server holds up
    only the stories that need it. A new generation
    prefills on its own (its open is answered whenever the servers finish it) and joins the
    next batch; a finished, failed or abandoned one leaves then.
    """

    def __init__(self, pair: ModelPair, on_join=None):
        self.pair = pair
        self.on_join = on_join  # called with each generation's seconds from arrival to its first step
        self.live: list[Live] = []
        self.joining: list[Live] = []
        self.reopening: dict[Live, asyncio.Task] = {}  # out of the batch while a full session reopens
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.texts = TokenTexts()  # the alternatives' texts
        # Step messages in flight → (role, stream, its rows (story, session, token), sent at).
        self.flight: dict[asyncio.Future, tuple[int, BatchStream, list[tuple[Live, int, int]], float]] = {}
        self._round_trip: list[float | None] = [None, None]  # each server's usual step, seconds

    async def admit(self, gen: Generation, params: GenerationParams) -> Live:
        """Prefill on both servers; the generation then waits for the next iteration.
        Raises (as an HTTP status) whatever fails before the first token."""
        pair, t_start = self.pair, time.perf_counter()
        roles = roles_for(gen.next_weight())  # a schedule may set the first token's weight
        windows = [self._window(params.prompt_ids, role) for role in range(2)]
        backends = (pair.gpt2, pair.bdh)
        opens = [asyncio.ensure_future(backends[r].open(windows[r], pair.fingerprint)) for r in roles]
        try:
            # Each open is bounded by step_timeout_s; the first failure is the answer.
            finished, _ = await asyncio.wait(opens, return_when=asyncio.FIRST_EXCEPTION)
            for task in finished:
                if task.exception() is not None:
                    raise task.exception()
            done = [task.result() for task in opens]
        except BaseException:
            # One failed or the caller left: close whatever the other opened.
            for task in opens:
                if task.done() and not task.cancelled() and task.exception() is None:
                    stream, sid, _ = task.result()
                    stream.close([sid])
                task.cancel()
            raise
        sessions: list = [None, None]
        lps: list = [None, None]
        for role, (st, sid, lp) in zip(roles, done):
            sessions[role], lps[role] = (st, sid), lp
        live = Live(gen, params, sampling.make_rng(params.seed), sessions=sessions, lp=lps,
                    detok=IncrementalDetokenizer(pair.tokenizer, params.prompt_ids),
                    stopper=StopText(params.stop), position=len(params.prompt_ids), t_start=t_start,
                    ids=list(params.prompt_ids), lengths=[len(w) for w in windows],
                    shifted=[backends[r].role for r in roles if len(windows[r]) < len(params.prompt_ids)],
                    weight=gen.logic_weight)
        self.joining.append(live)
        self.wake()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
        return live

    def wake(self) -> None:
        self._wake.set()

    # -- long stories: each model sees a sliding window of the story -----------------------
    def _limit(self, role: int) -> int:
        return (self.pair.gpt2, self.pair.bdh)[role].info.max_context

    def _window(self, ids: list[int], role: int) -> list[int]:
        """What a model's session is opened on: the whole story when it fits the model's
        context, else its last `context_shift` part (a fraction of that context), as story
        front-ends' "context shift" does. With context_shift 0, the whole story (a story
        that fills the context then ends with "length")."""
        limit, keep = self._limit(role), self.pair.settings.context_shift
        if len(ids) <= limit or not keep:
            return ids
        return ids[-max(1, int(limit * keep)):]

    async def _slide(self, x: Live, role: int) -> tuple[BatchStream, int, np.ndarray, int]:
        """Reopen a full session on the end of the story → (stream, session, next-token
        log-probs, tokens it holds). The old session is freed first."""
        x.drop(role)
        window = self._window(x.ids, role)
        stream, sid, lp = await (self.pair.gpt2, self.pair.bdh)[role].open(window, self.pair.fingerprint)
        return stream, sid, lp, len(window)

    async def stop(self) -> None:
        reopening = list(self.reopening)  # a cancelled reopening drops out of the dict
        tasks = [t for t in (self._task, *self.reopening.values(), *self.flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all(ModelUnavailable("the gateway is shutting down"), reopening)

    def _fail_all(self, error: BaseException, reopening: list[Live] = ()) -> None:
        in_flight = {x for _, _, rows, _ in self.flight.values() for x, _, _ in rows}
        for task in self.flight:
            task.cancel()
        for live in {*self.live, *self.joining, *self.reopening, *reopening, *in_flight}:
            live.events.put_nowait({"type": "error", "error": error})
            live.close()
        self.live, self.joining, self.flight = [], [], {}

    # -- the loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while True:
                await self._until_ready()
                if self.on_join:
                    now = time.perf_counter()
                    for x in self.joining:
                        if x.t_first is None:  # its first join (not back from a reopening)
                            self.on_join(now - x.t_start)
                self.live += self.joining
                self.joining = []
                for live in [x for x in self.live if x.gone]:
                    live.close()
                self.live = [x for x in self.live if not x.gone]
                self._catch_up_missing()
                if not self.live:
                    continue
                tokens, p_blend, tops, broken = await self._sample(self.live)
                for x, role in broken.items():  # a server's fault, and this story's only
                    b = self.pair.gpt2 if role == 0 else self.pair.bdh
                    x.events.put_nowait({"type": "error", "error": ModelFault(
                        f"{b.role} model server at {b.address} sent a distribution with NaN or +inf", b.role)})
                    x.close()
                # A client may have left while the batch was sampled (on a thread): skip it.
                later: list[tuple] = []
                stepping = [(x, t) for i, (x, t, p) in enumerate(zip(self.live, tokens, p_blend))
                            if x not in broken and not x.gone and self._emit(x, int(t), p, tops.get(i), later)]
                # The steps go out before the going stories' tokens are told: a told token
                # wakes its SSE writer, and grpc's writer would queue behind every one of them.
                self._send(stepping)  # (the rows are in flight now)
                for told in later:
                    self._tell(*told)
                self.live = []
        except Exception as e:  # a bug: no client may hang on it; the next story starts a new loop
            log.exception("the generation loop failed")
            self._fail_all(e)

    async def _until_ready(self) -> None:
        """Wait until there is a batch to sample: stories whose step answers have all landed
        (`self.live`) or that join. While answers are still in flight, the ready stories wait
        for them, so that every story steps in one batch, but only while they are not late
        (`_late`): a stalled server holds up only the stories that need it."""
        while True:
            self._wake.clear()
            for task in [t for t in self.flight if t.done()]:
                self._landed(task)
            pending = [t for t in self.flight if not t.done()]
            if self.live or self.joining:
                now = time.perf_counter()
                due = [self._late(t) - now for t in pending]
                if not any(d > 0 for d in due):
                    return
                await asyncio.wait(pending, timeout=max(due), return_when=asyncio.FIRST_COMPLETED)
                continue
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([waker, *pending], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()

    def _late(self, task: asyncio.Future) -> float:
        """When a step answer in flight is late: twice its server's usual round trip (a running
        average), and never sooner than _GRACE_S after it was sent."""
        role, _, _, sent = self.flight[task]
        usual = self._round_trip[role]
        return sent + (_GRACE_S if usual is None else max(_GRACE_S, 2 * usual))

    @property
    def waiting_for(self) -> set[str]:
        """The servers ("gpt2", "bdh") with a step answer still due."""
        return {stream.backend.role for task, (_, stream, _, _) in self.flight.items() if not task.done()}

    def _catch_up_missing(self) -> None:
        """Read each story's weight for its next token (once per step: a steer applies from
        the next token); a story whose weight needs a model it has no session on leaves the
        batch while that session catches up on the story (`_reopen`); a session its weight
        no longer needs is freed."""
        for x in self.live:
            x.weight = x.gen.next_weight()
            needed = roles_for(x.weight)
            for role in (0, 1):
                if role not in needed and x.sessions[role] is not None:
                    x.drop(role)
        behind = [x for x in self.live if x.missing()]
        for x in behind:
            self.reopening[x] = asyncio.ensure_future(self._reopen(x, x.missing(), catch_up=True))
        if behind:
            self.live = [x for x in self.live if x not in self.reopening]

    async def _sample(self, rows: list[Live]):
        """Blend and sample every row at once → (tokens (B,), blended probability of each,
        row index → the blend's likeliest tokens for rows that asked for alternatives,
        rows whose distribution holds NaN or +inf → the role (0 gpt2, 1 bdh) that sent it).
        A model a row did not ask (its weight is 0 there) stands in with the other's row: its
        share is multiplied by 0, so the blend is bit for bit that model's alone."""
        weights = [x.weight for x in rows]

        def work():
            g = np.stack([x.lp[0] if x.lp[0] is not None else x.lp[1] for x in rows])
            b = np.stack([x.lp[1] if x.lp[1] is not None else x.lp[0] for x in rows])
            # NaN and +inf show in a row's max: one cheap pass picks out broken rows, so one
            # bad distribution fails its own story, not the batch.
            bad_g, bad_b = ~np.isfinite(g.max(axis=1)), ~np.isfinite(b.max(axis=1))
            ok = ~(bad_g | bad_b)
            ids, p_tok = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows))
            if ok.any():
                keep = slice(None) if ok.all() else ok
                idx = np.flatnonzero(ok)
                p = sampling.blend_rows(g[keep], b[keep], [weights[i] for i in idx],
                                        [rows[i].params.blend for i in idx])
                ids[ok] = sampling.sample_rows(p, [rows[i].params.sampling for i in idx], [rows[i].rng for i in idx])
                p_tok[ok] = p[np.arange(len(idx)), ids[ok]]
                tops = {int(i): top_k(p[j], rows[i].params.top_alternatives)
                        for j, i in enumerate(idx) if rows[i].params.top_alternatives}
            broken = {rows[i]: 0 if bad_g[i] and rows[i].lp[0] is not None else 1 for i in np.flatnonzero(~ok)}
            return ids, p_tok, tops if ok.any() else {}, broken

        if len(rows) * self.pair.gpt2.vocab_size < _INLINE_SAMPLING:
            return work()
        return await asyncio.to_thread(work)  # large batches stay off the event loop

    def _emit(self, x: Live, token: int, p_token: float, top_blend, later: list[tuple]) -> bool:
        """Take the token into x's story; True when the generation goes on. Its token event
        is told now when the story ends here, else appended to `later` for `_tell` (x's
        distributions stay as they are until its next step lands, after that)."""
        params, index = x.params, x.gen.tokens_done
        eot, max_context = self.pair.eot_id, self.pair.max_context
        x.position += 1
        x.t_first = x.t_first or time.perf_counter()
        finish = None
        if token == eot:
            finish, piece = "eos_token", ""
        else:
            piece, hit = x.stopper.push(x.detok.push(token))
            if hit:
                finish = "stop_sequence"
            elif index + 1 == params.max_new_tokens or (x.position >= max_context and not self.pair.settings.context_shift):
                finish = "length"
        if finish in ("eos_token", "length"):
            # Nothing more will come: release what the detokenizer and stop check held back.
            tail, hit = x.stopper.push(x.detok.flush())
            piece += tail if hit else tail + x.stopper.flush()
            finish = "stop_sequence" if hit else finish
        x.text_parts.append(piece)
        x.gen.tokens_done = index + 1
        told = (x, index, token, piece, p_token, top_blend, x.shifted)
        x.shifted = []
        if not finish:
            later.append(told)
            return True
        self._tell(*told)
        x.events.put_nowait(end_event(x.gen.id, finish, "".join(x.text_parts), len(params.prompt_ids),
                                      x.gen.tokens_done, x.t_start, x.t_first, x.waited))
        x.close()
        return False

    def _tell(self, x: Live, index: int, token: int, piece: str, p_token: float, top_blend,
              shifted: list[str]) -> None:
        """Hand a token's event to its client: its text, each model's probability of it and,
        when asked, the likeliest alternatives."""
        alternatives = None
        if top_blend is not None:
            alternatives = self.texts.alternatives(self.pair.tokenizer, self.pair.fingerprint, top_blend, x.lp,
                                                   x.params.top_alternatives)
        x.events.put_nowait(token_event(index, token, piece, p_token, x.lp, x.weight, token == self.pair.eot_id,
                                        shifted, alternatives))

    def _send(self, stepping: list[tuple[Live, int]]) -> None:
        """One step message per stream for the rows just sampled; each row waits in flight
        until all its answers have landed (`_landed`). A row whose session is full steps its
        other model here and then reopens that session (`_reopen`), so a reopening's prefill
        never holds up the other stories."""
        calls: dict[tuple[int, BatchStream], list[tuple[Live, int, int]]] = {}
        t_sent = time.perf_counter()
        for x, token in stepping:
            x.ids.append(token)
            x.failure, x.lost_roles, x.full_roles, x.t_sent = None, [], [], t_sent
            for role, session in enumerate(x.sessions):
                if session is None:  # not asked at this weight: it catches up when it is needed
                    continue
                stream, sid = session
                if x.lengths[role] >= self._limit(role) and self.pair.settings.context_shift:
                    x.full_roles.append(role)
                else:
                    calls.setdefault((role, stream), []).append((x, sid, token))
                    x.gen.due.add(stream.backend.role)
                    x.pending += 1
        # Each step is bounded by step_timeout_s inside the stream (a stalled stream is retired).
        for (role, stream), rows in calls.items():
            task = asyncio.ensure_future(stream.step([sid for _, sid, _ in rows], [t for _, _, t in rows]))
            self.flight[task] = (role, stream, rows, t_sent)
        for x, _ in stepping:
            if not x.pending:  # every session it holds is full
                self._settle(x)

    def _landed(self, task: asyncio.Future) -> None:
        """One step message's answers: each row gets its new distribution or its error."""
        role, stream, rows, t_sent = self.flight[task]
        result = ModelUnavailable("the step was cancelled", stream.backend.role) if task.cancelled() \
            else task.exception()
        if result is not None and not isinstance(result, GatewayError):
            raise result  # a bug: _fail_all fails its rows (still in flight) with it
        del self.flight[task]
        backend, now = stream.backend, time.perf_counter()
        trip, took = self._round_trip[role], now - t_sent
        # A late answer counts as twice the usual: one stall must not make every later wait long.
        self._round_trip[role] = took if trip is None else 0.8 * trip + 0.2 * min(took, 2 * trip)
        recover = self.pair.settings.recover_timeout_s > 0
        answers, errors = ({}, {}) if result is not None else task.result()
        for x, sid, _ in rows:
            if result is not None and recover and isinstance(result, ModelGone):
                x.lost_roles.append(role)  # the server went away: reopened from the tokens when back
            elif result is not None:
                x.failure = x.failure or result
            elif sid in answers:
                x.lp[role] = answers[sid]
                x.lengths[role] += 1
            else:
                x.failure = x.failure or errors.get(sid) or ModelUnavailable(
                    f"{backend.role} model server at {backend.address} did not step session {sid}", backend.role)
            x.pending -= 1
            x.gen.due.discard(backend.role)
            if not x.pending:
                x.waited += now - x.t_sent
                self._settle(x)

    def _settle(self, x: Live) -> None:
        """A row whose answers are all in: back to the batch, or failed, or reopening."""
        if x.failure is not None:
            x.events.put_nowait({"type": "error", "error": x.failure})
            x.close()
        elif x.lost_roles:  # its sessions there are lost: reopen them from its tokens when back
            for role in x.lost_roles:
                x.drop(role)
            self.reopening[x] = asyncio.ensure_future(
                self._reopen(x, sorted({*x.lost_roles, *x.full_roles}), catch_up=True, recover=True))
        elif x.full_roles:
            self.reopening[x] = asyncio.ensure_future(self._reopen(x, x.full_roles))
        else:
            self.live.append(x)

    async def _reopen(self, x: Live, roles: list[int], catch_up: bool = False, recover: bool = False) -> None:
        """Reopen x's full sessions on the story's last part (or, `catch_up`, open the
        sessions its weight now needs on the story so far), then send x back to the batch
        (or fail it alone). `recover`: the server went away; try again until it is back (the
        same address may reach a restarted server or another replica), for up to
        recover_timeout_s, meanwhile naming it in the generation's `waiting`."""
        deadline = time.monotonic() + self.pair.settings.recover_timeout_s
        pause = 0.1
        try:
            while True:
                results = await asyncio.gather(*(self._slide(x, role) for role in roles), return_exceptions=True)
                lost = [r for r, res in zip(roles, results) if isinstance(res, ModelGone)]
                if not (recover and lost and time.monotonic() + pause < deadline and not x.gone):
                    break
                for role, result in zip(roles, results):  # keep what reopened; retry the rest
                    if not isinstance(result, BaseException):
                        stream, sid, x.lp[role], x.lengths[role] = result
                        x.sessions[role] = (stream, sid)
                roles = lost
                x.gen.waiting = {(self.pair.gpt2, self.pair.bdh)[r].role for r in lost}
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)
            x.gen.waiting = set()
            error = next((r for r in results if isinstance(r, BaseException)), None)
            for role, result in zip(roles, results):
                if not isinstance(result, BaseException):
                    stream, sid, x.lp[role], x.lengths[role] = result
                    x.sessions[role] = (stream, sid)  # a client gone meanwhile: the loop closes it
                    if not catch_up or x.lengths[role] < len(x.ids):  # its window slid
                        x.shifted.append(stream.backend.role)
            if error is not None:
                raise error
            self.joining.append(x)
        except Exception as e:  # a server's failure (or a bug): this story's alone
            x.events.put_nowait({"type": "error", "error": e if isinstance(e, GatewayError) else ModelUnavailable(
                f"reopening a model's session failed: {e!r}")})
            x.close()
        finally:
            self.reopening.pop(x, None)
            self.wake()


# Below this many (rows × vocabulary) values (8 rows at a 4,096-token vocabulary, none at
# GPT-2's 50,257), sampling on the event loop costs less than a hop to a thread (~0.1 ms).
_INLINE_SAMPLING = 32 * 1024


async def generate(loop: Scheduler, gen: Generation, params: GenerationParams) -> AsyncIterator[dict]:
    """Yield {"type": "start"|"token"|"end", ...} events for one generation.

    Errors are raised, never swallowed: the caller decides between an HTTP status and an
    SSE `error` event. Leaving early (the client disconnected) frees both servers'
    sessions at once; the scheduler drops the generation at its next step."""
    live = await loop.admit(gen, params)
    try:
        # With the seed, the sampling it drew with: all a caller needs to write the story again.
        sp = params.sampling
        yield {"type": "start", "id": gen.id, "logic_weight": gen.logic_weight, "blend": params.blend,
               "seed": params.seed, "temperature": sp.temperature, "top_k": sp.top_k, "top_p": sp.top_p,
               "prompt_tokens": len(params.prompt_ids)}
        while True:
            ev = await live.events.get()
            if ev["type"] == "error":
                raise ev["error"]
            yield ev
            if ev["type"] == "end":
                return
    finally:
        # Free both servers' sessions now, not at the next step: a step may be waiting on
        # a stalled server, and the other server should not hold this story meanwhile.
        live.gone = True
        live.close()
        loop.wake()
