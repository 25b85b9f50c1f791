"""The decode engine behind an asyncio front: one worker thread, continuous batching.

Engines are not thread-safe and torch work must not block the event loop, so every
engine call (prefill, step, close, score) runs on ONE worker thread, in the order it
was submitted. Steps do not go to the worker one by one: each session parks its next
token in `_pending`, and a single loop takes everything parked at that moment (up to
max_batch_size) and runs it as one `engine.step({session: token, ...})`. Tokens that
arrive while a batch runs make up the next batch, so batches grow with load by
themselves, with no waiting window (TGI and vLLM schedule the same way).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from plotarmour.models import DecodeEngine, InvalidInput

from .errors import InvalidArgument, Overloaded
from .metrics import Metrics

log = logging.getLogger(__name__)


def log_prob_bytes(logits: torch.Tensor) -> list[bytes]:
    """logits (B, V) → B rows of V little-endian float32 log-probabilities."""
    logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()  # (B, V) float32
    return [row.astype("<f4", copy=False).tobytes() for row in logp]


@dataclass
class Session:
    """One open decode session; `position` counts the tokens it has consumed."""

    id: int
    position: int
    batcher: Batcher

    async def step(self, token: int) -> bytes:
        data = await self.batcher.step(self, token)
        self.position += 1
        return data

    def close(self) -> None:
        self.batcher.close(self)


class Batcher:
    def __init__(self, engine: DecodeEngine, metrics: Metrics, *, max_batch_size: int = 32, max_queued: int = 256,
                 batch_wait: float = 0.0):
        self.engine = engine
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_queued = max_queued
        self.batch_wait = batch_wait
        self.vocab_size = engine.vocab_size
        self.max_context = engine.max_context
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._pending: dict[int, tuple[int, asyncio.Future]] = {}  # session id → (token, its result)
        self._wake = asyncio.Event()
        self._inflight = 0  # accepted work not yet answered: what max_queued bounds
        self._open = 0
        self._loop_task: asyncio.Task | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop(), name="batcher")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        for _, fut in self._pending.values():
            fut.cancel()
        self._pending.clear()
        await asyncio.to_thread(self._worker.shutdown, wait=True)  # queued closes still run

    @property
    def open_sessions(self) -> int:
        return self._open

    # -- the operations ----------------------------------------------------------
    async def open(self, prompt: list[int]) -> tuple[Session, bytes]:
        """Prefill a prompt; returns the session and the distribution after the prompt."""
        self._admit()
        opened: list[int] = []  # the worker puts the session id here
        try:
            sid, data = await self._submit(self._prefill, prompt, opened)
        except asyncio.CancelledError:
            # The caller left mid-prefill, but the worker still opens the session. The
            # worker runs jobs in order, so a close queued now runs after that prefill.
            self._submit_nowait(lambda: opened and self.engine.close(opened[0]))
            raise
        finally:
            self._done()
        self._open += 1
        self.metrics.open_sessions.set(self._open)
        return Session(sid, len(prompt), self), data

    async def step(self, session: Session, token: int) -> bytes:
        """The distribution after feeding `token` to `session`, computed in a batch."""
        # Checked here, per session, so a bad token never reaches a batch it would fail.
        if not 0 <= token < self.vocab_size:
            raise InvalidArgument(f"token id {token} is outside the vocabulary [0, {self.vocab_size})")
        if session.position >= self.max_context:
            raise InvalidArgument(f"the session has reached the context limit of {self.max_context} tokens")
        if session.id in self._pending:
            raise InvalidArgument("a step for this session is already waiting")
        self._admit()
        fut = asyncio.get_running_loop().create_future()
        self._pending[session.id] = (token, fut)
        self._wake.set()
        try:
            return await fut
        finally:
            self._pending.pop(session.id, None)
            self._done()

    def close(self, session: Session) -> None:
        """Free the session's state. Never blocks: the worker closes it after any step
        of this session already running, and a parked step is dropped first."""
        entry = self._pending.pop(session.id, None)
        if entry is not None:
            entry[1].cancel()
        self._open -= 1
        self.metrics.open_sessions.set(self._open)
        self._close_id(session.id)

    async def score(self, ids: list[int]) -> bytes:
        """log p(ids[t] | ids[:t]) for t ≥ 1 as little-endian float32 bytes."""
        self._admit()
        try:
            return await self._submit(self._score, ids)
        finally:
            self._done()

    # -- the batching loop ---------------------------------------------------------
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._gather_stragglers(loop)
                batch = {}
                for sid, (token, fut) in list(self._pending.items())[: self.max_batch_size]:
                    del self._pending[sid]
                    if not fut.done():  # a cancelled caller is skipped
                        batch[sid] = (token, fut)
                if not batch:
                    continue
                try:
                    results = await loop.run_in_executor(
                        self._worker, self._step_batch, {sid: tok for sid, (tok, _) in batch.items()})
                except Exception as e:  # a server fault: fail this batch, keep serving
                    log.exception("batched step failed")
                    results = [e] * len(batch)
                for (_, fut), result in zip(batch.values(), results):
                    if fut.done():
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)

    async def _gather_stragglers(self, loop) -> None:
        """With batch_wait > 0: when fewer sessions are parked than are open, wait up
        to batch_wait seconds for the others, so they share this forward pass."""
        want = min(self._open, self.max_batch_size)
        deadline = loop.time() + self.batch_wait
        while len(self._pending) < want and (left := deadline - loop.time()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    # -- on the worker thread ----------------------------------------------------
    def _prefill(self, prompt: list[int], opened: list[int]) -> tuple[int, bytes]:
        t0 = time.perf_counter()
        try:
            sid, logits = self.engine.open(prompt)  # logits (V,)
        except InvalidInput as e:
            raise InvalidArgument(str(e)) from None
        opened.append(sid)
        data = log_prob_bytes(logits[None])[0]
        self.metrics.prefill_latency.observe(time.perf_counter() - t0)
        self.metrics.prompt_tokens.inc(len(prompt))
        return sid, data

    def _step_batch(self, tokens: dict[int, int]) -> list[bytes | Exception]:
        t0 = time.perf_counter()
        try:
            rows = log_prob_bytes(self.engine.step(tokens))  # logits (B, V)
        except InvalidInput:
            # Pre-checks make this unreachable for caller mistakes we know of; should one
            # slip through, step the sessions one by one so only its own session fails.
            rows = [self._step_one(sid, tok) for sid, tok in tokens.items()]
        self.metrics.step_latency.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(tokens))
        self.metrics.steps.inc(len(tokens))
        return rows

    def _step_one(self, sid: int, token: int) -> bytes | Exception:
        try:
            return log_prob_bytes(self.engine.step({sid: token}))[0]
        except InvalidInput as e:
            return InvalidArgument(str(e))

    def _score(self, ids: list[int]) -> bytes:
        try:
            logp = self.engine.score(ids)  # (T-1,)
        except InvalidInput as e:
            raise InvalidArgument(str(e)) from None
        return logp.float().numpy().astype("<f4", copy=False).tobytes()

    # -- helpers -------------------------------------------------------------------
    def _submit(self, fn, *args) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def _close_id(self, sid: int) -> None:
        self._submit_nowait(self.engine.close, sid)

    def _submit_nowait(self, fn, *args) -> None:
        try:
            self._worker.submit(fn, *args)
        except RuntimeError:  # the worker has shut down: the engine goes with it
            pass

    def _admit(self) -> None:
        if self._inflight >= self.max_queued:
            raise Overloaded(f"the server has {self._inflight} requests queued (limit {self.max_queued}); retry later")
        self._inflight += 1
        self.metrics.queued.set(self._inflight)

    def _done(self) -> None:
        self._inflight -= 1
        self.metrics.queued.set(self._inflight)
