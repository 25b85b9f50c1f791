"""A request's share of the gateway: its place under the concurrency limit (`Limiter`,
`Slot`), its generations' events merged (`Run`), and the watcher that cancels a
non-streaming request when its client leaves (`unless_disconnected`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request

from .errors import ClientGone, TooBusy
from .metrics import GatewayMetrics

log = logging.getLogger("plotarmour.gateway")


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
