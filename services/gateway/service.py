"""What every route shares: the model pair, the generation loop, the concurrency limit,
and turning a request into running generations.

A route builds `GenerationParams` (params.py; one per story to write) and hands them to
`Gateway.open`, which takes one slot, checks and tokenizes them (`prepare`), prefills every
story and returns a `Run`: its events, merged, with one `aclose` that frees everything.
Steering and a story's state go through the service too (`steer`, `state`), on whichever
replica runs the story. Routes get the pieces as FastAPI dependencies
(`GatewayDep`, `SettingsDep`, `PairDep`, `LimiterDep`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated

from fastapi import Depends, Request

from .backends import ModelPair
from .errors import ClientGone, GatewayError, InvalidField, ModelUnavailable, NotFound, TooBusy
from .params import GenerationParams
from .running import Registry, roles_for
from .scheduler import GenerationLoop, generate
from .replicas import Peers, owner_part
from .metrics import GatewayMetrics, StepTimer
from .settings import GatewaySettings

log = logging.getLogger("plotarmour.gateway")


# How a surface's client spells the fields a limit may name (errors use its words).
NATIVE_NAMES = {"prompt": "prompt", "max_new_tokens": "max_new_tokens", "stop": "stop"}


class Slot:
    """One place under the concurrency limit; release is idempotent."""

    def __init__(self, limiter: Limiter):
        self._limiter, self._held = limiter, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.active -= 1
            self._limiter.metrics.active.set(self._limiter.active)


class Limiter:
    """At most `limit` requests at once; beyond that 429 at once (no queue: a client that
    is refused can retry elsewhere, one that waits in a queue only times out)."""

    def __init__(self, limit: int, metrics: GatewayMetrics):
        self.limit, self.metrics, self.active = limit, metrics, 0

    def acquire(self) -> Slot:
        if self.active >= self.limit:
            self.metrics.rejected.inc()
            raise TooBusy(f"the gateway is running its limit of {self.limit} requests; retry shortly")
        self.active += 1
        self.metrics.active.set(self.active)
        return Slot(self)


class Run:
    """The generations of one request: `first[i]` is job i's start event; `events()` yields
    (i, event) as the jobs write; `aclose()` frees every session and the slot, once."""

    def __init__(self, first: list[dict], streams: list[AsyncIterator[dict]], slot: Slot):
        self.first, self._streams, self._slot = first, streams, slot
        self._pumps: list[asyncio.Task] = []

    async def events(self) -> AsyncIterator[tuple[int, dict]]:
        if len(self._streams) == 1:  # the common case, without a task per stream
            async for ev in self._streams[0]:
                yield 0, ev
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, stream: AsyncIterator[dict]) -> None:
            try:
                async for ev in stream:
                    await queue.put((i, ev))
            except Exception as e:
                await queue.put((i, e))
            finally:
                await queue.put((i, None))

        # The pumps belong to the Run: aclose stops them before it closes their streams.
        self._pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(self._streams)]
        open_streams = len(self._pumps)
        while open_streams:
            i, ev = await queue.get()
            if ev is None:
                open_streams -= 1
            elif isinstance(ev, BaseException):
                raise ev
            else:
                yield i, ev

    async def collect(self) -> list[tuple[list[dict], dict]]:
        """Every job's (token events, end event), in job order."""
        tokens: list[list[dict]] = [[] for _ in self.first]
        ends: list[dict | None] = [None] * len(self.first)
        try:
            async for i, ev in self.events():
                if ev["type"] == "token":
                    tokens[i].append(ev)
                else:
                    ends[i] = ev
        finally:
            await self.aclose()
        return list(zip(tokens, ends))

    async def aclose(self) -> None:
        try:
            for pump in self._pumps:  # a stream a pump is reading cannot be closed under it
                pump.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            for result in await asyncio.gather(*(s.aclose() for s in self._streams), return_exceptions=True):
                if isinstance(result, Exception):
                    log.warning("closing a generation failed: %r", result)
        finally:
            self._slot.release()


class Gateway:
    """The state behind every route, built once per app."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics):
        self.settings, self.metrics = settings, metrics
        self.limiter = Limiter(settings.max_concurrent, metrics)
        self.peers = Peers(settings)
        # With peers, each story's id names this replica, so the others can forward to it.
        self.registry = Registry(owner_part(self.peers.me) if self.peers.enabled else "")
        self.pair = ModelPair(settings)
        self.loop = GenerationLoop(self.pair, on_join=metrics.queue_wait.observe)

    def note_failure(self, e: GatewayError) -> None:
        self.metrics.model_errors.labels(type(e).__name__).inc()
        if isinstance(e, ModelUnavailable):
            self.pair.mark(e)  # the next request that needs that server re-checks it first

    async def prepare(self, job: GenerationParams, names: dict[str, str]) -> GenerationParams:
        """Settings-dependent checks (no server needed), then tokenize with the servers'
        tokenizer. Errors name fields as `names` spells them for the route's client."""
        s = self.settings
        max_new = job.max_new_tokens or min(s.default_max_new_tokens, s.max_new_tokens_limit)
        if max_new > s.max_new_tokens_limit:
            raise InvalidField(names["max_new_tokens"], f"{max_new} is over the limit of {s.max_new_tokens_limit}")
        if len(job.prompt) > s.max_prompt_chars:
            raise InvalidField(names["prompt"], f"{len(job.prompt)} characters is over the limit of "
                                                f"{s.max_prompt_chars}")
        if len(job.stop) > s.max_stop_sequences:
            raise InvalidField(names["stop"], f"{len(job.stop)} stop sequences; at most {s.max_stop_sequences}")
        # Only the servers this story's weights need (a story at 0 or 1 goes on with one down).
        weights = [job.logic_weight, *(w for _, w in job.steering)]
        tok = await self.pair.ensure_ready(tuple({("gpt2", "bdh")[r] for w in weights for r in roles_for(w)}))
        ids = tok.encode(job.prompt).ids
        if job.truncate:
            ids = ids[-job.truncate:]
        # With context shift each model reads its last window of a long prompt.
        limit = s.max_prompt_tokens if s.context_shift else min(s.max_prompt_tokens, self.pair.max_context - 1)
        if len(ids) > limit:
            raise InvalidField(names["prompt"], f"{len(ids)} tokens is over the limit of {limit}")
        if not ids:
            raise InvalidField(names["prompt"], "the prompt holds no tokens")
        self.metrics.prompt_tokens.observe(len(ids))
        return dataclasses.replace(job, prompt_ids=ids, max_new_tokens=max_new,
                                   seed=job.seed if job.seed is not None else secrets.randbits(63))

    async def open(self, jobs: list[GenerationParams], names: dict[str, str] = NATIVE_NAMES) -> Run:
        """Take a slot, prefill every job, and return the running request. Everything that
        can fail before the first token fails here, as an HTTP status."""
        slot = self.limiter.acquire()
        streams: list[AsyncIterator[dict]] = []
        starts: list[asyncio.Future] = []
        try:
            params = [await self.prepare(job, names) for job in jobs]
            streams = [self._events(p) for p in params]
            # Prefill all at once; the first failure is the answer.
            starts = [asyncio.ensure_future(anext(s)) for s in streams]
            first = list(await asyncio.gather(*starts))
        except BaseException:
            try:
                for start in starts:  # the others stop, then every job's sessions are freed
                    start.cancel()
                await asyncio.gather(*starts, return_exceptions=True)
                await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
            finally:
                slot.release()  # even if a cancellation lands during the cleanup
            raise
        return Run(first, streams, slot)

    async def complete(self, jobs: list[GenerationParams], names: dict[str, str] = NATIVE_NAMES
                       ) -> tuple[list[dict], list[tuple[list[dict], dict]]]:
        """`open`, then every job to its end: (start events, (token events, end event) per
        job). Wrap it in `unless_disconnected` so a client that leaves cancels it."""
        run = await self.open(jobs, names)
        return run.first, await run.collect()

    async def steer(self, gen_id: str, logic_weight: float, request: Request):
        """Set a running story's weight from its next token; on another replica, ask that one."""
        if self.registry.get(gen_id) is None and (there := await self.peers.elsewhere(gen_id, request)) is not None:
            return there  # that replica's answer, as it gave it (replicas.py)
        gen = self._running(gen_id)
        gen.steer(logic_weight)
        return {"id": gen.id, "logic_weight": gen.logic_weight, "applies_from_token": gen.tokens_done}

    async def state(self, gen_id: str, request: Request):
        """Where a running story is; `waiting_for` names the model servers whose answer to its
        current step is still due, or that it waits to come back."""
        if self.registry.get(gen_id) is None and (there := await self.peers.elsewhere(gen_id, request)) is not None:
            return there
        gen = self._running(gen_id)
        return {"id": gen.id, "logic_weight": gen.logic_weight, "tokens_done": gen.tokens_done,
                "waiting_for": sorted(gen.due | gen.waiting)}

    def _running(self, gen_id: str):
        gen = self.registry.get(gen_id)
        if gen is None:
            raise NotFound("gen_id", f"no running generation with id {gen_id!r} (unknown or finished)")
        return gen

    async def _events(self, params: GenerationParams) -> AsyncIterator[dict]:
        gen = self.registry.start(params.logic_weight, params.steering)
        t0, timer = time.perf_counter(), StepTimer(self.metrics.step)
        try:
            async for ev in generate(self.loop, gen, params):
                if ev["type"] == "token":
                    self.metrics.tokens.inc()
                    timer.tick()
                    if ev["index"] == 0:
                        self.metrics.ttft.observe(time.perf_counter() - t0)
                elif ev["type"] == "end":
                    self.metrics.finished.labels(ev["finish_reason"]).inc()
                    self.metrics.generated_tokens.observe(ev["usage"]["completion_tokens"])
                yield ev
        except GatewayError as e:
            self.note_failure(e)
            raise
        finally:
            self.registry.finish(gen)


async def unless_disconnected(request: Request, work: Awaitable):
    """Await `work`, cancelling it the moment the client disconnects: a non-streaming
    request must not keep its slot and both servers' sessions for the rest of a story
    nobody will read (OpenAI clients retry on timeout, which would pile these up).

    The body has been read by now, so the next ASGI message can only be the disconnect."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this wait itself is cancelled (shutdown, a timeout): stop both
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():  # the watcher won
        raise ClientGone
    return task.result()


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.gateway.settings


def get_pair(request: Request) -> ModelPair:
    return request.app.state.gateway.pair


def get_limiter(request: Request) -> Limiter:
    return request.app.state.gateway.limiter


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
PairDep = Annotated[ModelPair, Depends(get_pair)]
LimiterDep = Annotated[Limiter, Depends(get_limiter)]
