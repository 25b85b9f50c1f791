"""The gateway's guards, as plain ASGI middleware: a request-body size cap, an optional
API key, and CORS for the origins the settings name (none by default).

Plain ASGI rather than Starlette's BaseHTTPMiddleware: nothing buffers the SSE responses,
and the size cap sees the body as it arrives, before FastAPI reads or parses any of it.

    install(app, settings)   # once, in create_app
"""

from __future__ import annotations

import hmac
import json

from starlette.middleware.cors import CORSMiddleware

from .errors import error_body, error_format
from .settings import GatewaySettings

# Reachable without the API key: what load balancers, orchestrators and the web page's
# own files need. Everything else (generation, /info, /metrics, the schema) needs it.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/"})
PUBLIC_PREFIXES = ("/static/",)


def is_public(scope) -> bool:
    if scope["path"] == "/":  # the page is public; TGI's POST / generates, so it is not
        return scope["method"] in ("GET", "HEAD")
    return scope["path"] in PUBLIC_PATHS or scope["path"].startswith(PUBLIC_PREFIXES)


async def send_error(scope, send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON error in the shape the route's clients expect, sent straight over ASGI."""
    body = json.dumps(error_body(error_format(scope), status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def header(scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return None


class _Refused(Exception):
    pass


# Python's json.loads reads UTF-16 and UTF-32 bytes as well (it sniffs the first four bytes
# for their BOMs or zero bytes); the API is UTF-8 only, like every JSON API it imitates.
_NOT_UTF8 = (b"\xff\xfe", b"\xfe\xff")


class BodySizeLimit:
    """413 for a body over `max_bytes`: at once when Content-Length says so, else as soon
    as the bytes received (chunked uploads) pass the limit; 400 for a body in UTF-16 or
    UTF-32 (a zero byte or their byte-order mark at its start). The app never parses either."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body is over the limit of {self.max_bytes} bytes"
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_error(scope, send, 413, too_large)

        seen, refused, started, head = 0, None, False, b""

        async def counting_receive():
            nonlocal seen, refused, head
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if len(head) < 4:  # the first four bytes, however the body is cut into chunks
                    head += chunk[: 4 - len(head)]
                    if b"\x00" in head or head.startswith(_NOT_UTF8):
                        refused = (400, "request body is not valid UTF-8 (it looks like UTF-16 or UTF-32)")
                seen += len(chunk)
                if seen > self.max_bytes:
                    refused = (413, too_large)
                if refused:
                    raise _Refused
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # whatever the app makes of the cut-off body, the answer is ours
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # FastAPI may wrap our exception in its own; once refused, any of them is ours.
            if not refused:
                raise
        if refused and not started:
            await send_error(scope, send, *refused)


def key_matches(scope, expected: bytes) -> bool:
    given = header(scope, b"authorization") or b""
    scheme, _, token = given.partition(b" ")
    # compare_digest: the time taken does not tell how much of the key was right.
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), expected)


def authorized(request, settings: GatewaySettings) -> bool:
    """Whether a request on a public route may see details: no key is configured, or it
    carries the key."""
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    return not key or key_matches(request.scope, key.encode())


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on every route but the public ones; 401 otherwise.
    The OpenAI client sends exactly that header from its `api_key`."""

    def __init__(self, app, api_key: str):
        self.app = app
        self._expected = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_public(scope):
            return await self.app(scope, receive, send)
        if key_matches(scope, self._expected):
            return await self.app(scope, receive, send)
        why = "missing API key" if not header(scope, b"authorization") else "invalid API key"
        await send_error(scope, send, 401, f"{why}: send the header 'Authorization: Bearer <key>'",
                         [(b"www-authenticate", b'Bearer realm="plotarmour"')])


def install(app, settings: GatewaySettings) -> None:
    """Add the guards. Starlette runs the middleware added last first, so the order here is
    inner to outer: size cap, then the key check, then CORS (so that a browser's preflight
    is answered, and error responses carry the CORS headers it needs to read them)."""
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if key:
        app.add_middleware(ApiKeyAuth, api_key=key)
    origins = settings.cors_origin_list
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Generation-Id"], max_age=600)
