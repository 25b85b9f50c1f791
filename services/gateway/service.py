"""What every route shares: the model pair, the scheduler, the concurrency limit, and
turning a request into running generations.

A route builds `GenerationParams` (params.py; one per story to write) and hands them to
`Gateway.open`, which takes one slot, checks and tokenizes them (`prepare`), prefills every
story and returns a `Run` (runs.py): its events, merged, with one `aclose` that frees
everything. Steering and a story's state go through the service too (`steer`, `state`), on
whichever replica runs the story. Routes get the pieces as FastAPI dependencies
(`GatewayDep`, `SettingsDep`, `PairDep`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from .backends import ModelPair
from .errors import GatewayError, InvalidField, ModelUnavailable, NotFound
from .metrics import GatewayMetrics, StepTimer
from .params import GenerationParams
from .replicas import Peers, owner_part
from .running import ROLE_ORDER, Registry, roles_for
from .runs import Limiter, Run
from .scheduler import Scheduler, generate
from .settings import GatewaySettings

log = logging.getLogger("plotarmour.gateway")


# How a surface's client spells the fields a limit may name (errors use its words).
NATIVE_NAMES = {"prompt": "prompt", "max_new_tokens": "max_new_tokens", "stop": "stop"}


class Gateway:
    """The state behind every route, built once per app."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics):
        self.settings, self.metrics = settings, metrics
        self.limiter = Limiter(settings.max_concurrent, metrics)
        self.peers = Peers(settings)
        # With peers, each story's id names this replica, so the others can forward to it.
        self.registry = Registry(owner_part(self.peers.me) if self.peers.enabled else "")
        self.pair = ModelPair(settings)
        self.loop = Scheduler(self.pair, on_join=metrics.queue_wait.observe)
        self._readiness_logged = ""  # the problems last written to the log

    def note_failure(self, e: GatewayError) -> None:
        self.metrics.model_errors.labels(type(e).__name__).inc()
        if isinstance(e, ModelUnavailable):
            self.pair.mark(e)  # the next request that needs that server re-checks it first

    async def readiness(self) -> list[str]:
        """What keeps the gateway from serving every story (empty: ready), written to the log
        once per change rather than once per probe."""
        problems = await self.pair.readiness()
        said = "; ".join(problems)
        if said != self._readiness_logged:
            log.warning("not ready: %s", said) if problems else log.info("ready")
            self._readiness_logged = said
        return problems

    def token_limits(self) -> tuple[int | None, int, int | None]:
        """(the models' context, None until both have answered; the longest prompt in tokens;
        the longest prompt plus story). With context shift a prompt may be longer than the
        contexts (each model reads its last window) and a story runs to the prompt plus
        max_new_tokens."""
        s, p = self.settings, self.pair
        context = p.max_context if p.problem is None and all(b.info for b in p) else None
        total = s.max_prompt_tokens + s.max_new_tokens_limit if s.context_shift else context
        return context, self._prompt_limit(context), total

    def _prompt_limit(self, context: int | None) -> int:
        """The longest prompt in tokens. With context shift each model reads its last window
        of a longer one; without, a prompt must leave room in the smaller context (None:
        not known yet) for one token to be written."""
        s = self.settings
        return s.max_prompt_tokens if s.context_shift or context is None else min(s.max_prompt_tokens, context - 1)

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
        tok = await self.pair.ensure_ready(tuple({ROLE_ORDER[r] for w in weights for r in roles_for(w)}))
        ids = tok.encode(job.prompt).ids
        if job.truncate:
            ids = ids[-job.truncate:]
        limit = self._prompt_limit(self.pair.max_context)
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


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def get_settings(request: Request) -> GatewaySettings:
    return request.app.state.gateway.settings


def get_pair(request: Request) -> ModelPair:
    return request.app.state.gateway.pair


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
PairDep = Annotated[ModelPair, Depends(get_pair)]
