"""Server-Sent Events over a running request, in whichever dialect a route speaks."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.responses import StreamingResponse

from .errors import GatewayError, InternalError
from .service import Run

log = logging.getLogger("plotarmour.gateway")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def data_line(data: dict | str) -> bytes:
    return b"data: " + (data if isinstance(data, str) else json.dumps(data)).encode() + b"\n\n"


class ManagedStream(StreamingResponse):
    """A streaming response that always runs its cleanup, even if the client left before
    the first byte (Starlette then never iterates the body, so a generator's `finally`
    alone would not run)."""

    def __init__(self, content, cleanup, **kwargs):
        super().__init__(content, **kwargs)
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()


def event_stream(run: Run, encode: Callable[[int, dict], bytes | None], error: Callable[[GatewayError], bytes],
                 head: bytes = b"", tail: Callable[[], bytes] | None = None, headers: dict | None = None) -> ManagedStream:
    """SSE over `run`: `head`, then `encode(job index, event)` for each event (None skips
    it), then `tail()`; a failure ends the stream with `error(e)`, never a hang or a cut."""

    async def body():
        if head:
            yield head
        try:
            async for i, ev in run.events():
                chunk = encode(i, ev)
                if chunk:
                    yield chunk
        except GatewayError as e:
            yield error(e)
            return
        except Exception as e:  # a bug must still end the stream with an event
            log.exception("generation failed")
            yield error(InternalError(f"internal error: {type(e).__name__}"))
            return
        if tail:
            yield tail()

    return ManagedStream(body(), run.aclose, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})
