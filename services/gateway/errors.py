"""Every error the gateway answers with: the exceptions, one status table, the two body
shapes, and the handlers that write them.

Each router declares the shape its clients expect by its route class (`OpenAIErrors`,
`TgiErrors`), the way a model server's servicer declares `_STATUS`: native and `/v1`
routes answer in OpenAI's shape, `{"error": {message, type, param, code}}`, so the openai
package reports our messages as they are; TGI's route (`POST /`) answers in TGI's,
`{"error", "error_type"}`, which its clients turn into their own exceptions. `param` is
always a field name of the route that was called, never a character offset.

    install(app, ROUTERS)   # once, in create_app
"""

from __future__ import annotations

import logging
import math

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match

from plotarmour.roles import ROLES

log = logging.getLogger("plotarmour.gateway")


class GatewayError(Exception):
    """Base of the errors the routes turn into HTTP statuses (`STATUS`); `role` names the
    model server ("gpt2", "bdh") a failure came from, where one did."""

    def __init__(self, message: str = "", role: str | None = None):
        super().__init__(message)
        self.role = role

    @property
    def status(self) -> int:
        return next(STATUS[c] for c in type(self).__mro__ if c in STATUS)


class InvalidField(GatewayError):
    """A request that breaks a rule the schema cannot express (a configured limit, an
    unsupported combination); `field` is named as the route's client spells it."""

    def __init__(self, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotFound(InvalidField):
    pass


class UnknownModel(NotFound):
    """A `model` this gateway does not serve (vLLM and TGI answer 404 model_not_found too)."""

    def __init__(self, asked: str, served: str):
        super().__init__("model", f"the model {asked!r} does not exist; this gateway serves {served!r}")


class TooBusy(GatewayError):
    """The gateway is at its limit of concurrent requests."""


class InternalError(GatewayError):
    """A bug, reported as one plain error (never a traceback) to the client."""


class ClientGone(GatewayError):
    """The client closed the connection before the answer was ready (nobody reads this)."""


class ModelUnavailable(GatewayError):
    """A model server is unreachable, too slow, not serving, or incompatible with its partner."""


class ModelGone(ModelUnavailable):
    """A model server went away (its process died or restarted, its connection broke): a
    story can reopen its session there once it is back (scheduler.py, recover_timeout_s)."""


class ModelFault(ModelUnavailable):
    """A model server answered with something unusable (a NaN row, a malformed answer)."""


class IncompatibleModels(ModelUnavailable):
    """The two servers do not share one tokenizer; blending them would be meaningless."""


class ModelRejected(GatewayError):
    """A model server refused the request itself (bad ids, context too long): the caller's fault."""


class ModelBusy(GatewayError):
    """A model server is at its session limit."""


# The one table from error to HTTP status; an error takes its nearest listed ancestor's.
STATUS: dict[type[GatewayError], int] = {
    GatewayError: 500,
    InvalidField: 422, NotFound: 404, ModelRejected: 422,
    TooBusy: 429, ModelBusy: 429,
    ClientGone: 499,
    ModelUnavailable: 503,
}
# OpenAI's `code` where a client acts on it; other errors carry their class name, and a
# field's error none (its `param` says what is wrong).
_CODE = {UnknownModel: "model_not_found", ModelBusy: "busy", TooBusy: "busy",
         ModelRejected: "rejected_by_model_server"}


def _code(e: GatewayError) -> str | None:
    listed = next((_CODE[c] for c in type(e).__mro__ if c in _CODE), None)
    if listed is not None:
        return listed
    return None if isinstance(e, InvalidField) else type(e).__name__


# OpenAI's `type` for each status (its clients map statuses to exceptions themselves).
_OPENAI_TYPE = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
                429: "rate_limit_error", 499: "client_closed_request", 503: "service_unavailable"}
# TGI's `error_type` names (its clients pick an exception class by status, not by these).
_TGI_TYPE = {400: "validation", 401: "authentication", 404: "not_found", 405: "validation", 413: "validation",
             422: "validation", 429: "overloaded", 503: "unhealthy"}


def openai_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _OPENAI_TYPE.get(status, "server_error"),
                      "param": param, "code": code}}


def tgi_body(status: int, message: str) -> dict:
    return {"error": message, "error_type": _TGI_TYPE.get(status, "generation")}


class OpenAIErrors(APIRoute):
    """Routes whose errors are OpenAI-shaped: `APIRouter(route_class=OpenAIErrors)`."""

    error_format = "openai"


class TgiErrors(APIRoute):
    """Routes whose errors are TGI-shaped: `APIRouter(route_class=TgiErrors)`."""

    error_format = "tgi"


def error_format(scope) -> str:
    """The error shape the called route declares. The middleware runs before routing, so
    the route is looked up as the router will, among the routes `install` was given; a
    request no route takes (404, 405) answers in OpenAI's shape."""
    routes = scope["app"].state.error_routes if "app" in scope else ()
    route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "error_format", "openai")


def error_body(fmt: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return tgi_body(status, message) if fmt == "tgi" else openai_body(status, message, param, code)


def error_response(request: Request, status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = error_body(error_format(request.scope), status, message, param, code)
    return JSONResponse(body, status_code=status, headers=headers)


def logprob(p: float) -> float:
    """A probability as a log-probability for JSON, which has no -inf."""
    return math.log(p) if p > 0 else -9999.0


def public_message(e: GatewayError) -> str:
    """What a person is told: a model server's failure in words, naming the model and what
    to do, never its address or gRPC text (those go to the log, here)."""
    role = ROLES.get(getattr(e, "role", None))
    if role is None:
        return str(e)
    log.warning("%s", e)
    who = role.words
    if isinstance(e, ModelRejected):  # the server's own words about the request: no internals
        return f"{who[0].upper()}{who[1:]} refused this request: {str(e).split(': ', 1)[-1]}"
    if isinstance(e, ModelFault):
        return (f"{who[0].upper()}{who[1:]} gave an unusable answer for this story (a fault in the model "
                "server, in its log); try again, or with another seed.")
    if isinstance(e, ModelBusy):
        return f"{who[0].upper()}{who[1:]} is busy with other stories; try again in a moment."
    if isinstance(e, ModelUnavailable):
        return (f"{who[0].upper()}{who[1:]} is not answering. PlotArmour keeps trying to reach it; "
                f"try again in a minute. Meanwhile {role.without}.")
    return str(e)


def gateway_error_body(e: GatewayError, fmt: str = "openai") -> dict:
    """The body of an error raised mid-stream (an SSE event), in the route's shape."""
    return error_body(fmt, e.status, public_message(e), getattr(e, "field", None), _code(e))


def _field(loc) -> str | None:
    """A pydantic location as a field name: ("body", "messages", 0, "content") →
    "messages[0].content"; the body itself → None."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, str) and not part.isidentifier():
            continue  # which member of a union pydantic tried ("list[str]"), not a field
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


def _unreadable_body(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body, from the exception it raised the 400 from (the
    body is never read again: a body the size guard cut off would wait for bytes that
    never come)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply to be parsed as JSON"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return f"request body holds a number that is too long: {cause}"
    return "request body could not be parsed as JSON"


def install(app: FastAPI, routers: list[APIRouter]) -> None:
    """The handlers, and the routers' routes for `error_format`."""
    app.state.error_routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors() or [{"loc": ("body",), "msg": "invalid request", "type": ""}]
        # With a union (a prompt or a list of prompts), pydantic reports every member it
        # tried; the member the value was meant for fails on something else than its type.
        first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
        if first["type"] == "json_invalid":  # its location is a character offset, not a field
            message = f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
            return error_response(request, 400, message)
        field = _field(first["loc"])
        if field is None and first["type"] in ("model_attributes_type", "dict_type"):
            return error_response(request, 422, "request body must be a JSON object "
                                                "(sent with Content-Type: application/json)")
        # The message names the field; never the raw input, which may be NaN, an infinity
        # or a lone surrogate that no JSON encoder can write back.
        message = str(first["msg"]).removeprefix("Value error, ")
        if field is None and first["type"] == "missing":
            return error_response(request, 400, "request body is empty: send a JSON object")
        if first["type"] == "string_unicode":  # pydantic's words for a lone surrogate
            message = "holds a lone surrogate, which is not text"
        if first["type"] == "extra_forbidden":
            message = "not a field of this route, or an option PlotArmour does not support; leave it out"
        if field is None:
            return error_response(request, 422, f"request body: {message}")
        return error_response(request, 422, f"{field}: {message}", field)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError):
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return error_response(request, exc.status, public_message(exc), getattr(exc, "field", None), _code(exc),
                              headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = _unreadable_body(exc.__cause__)
        elif exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(request, exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, 500, f"internal error: {type(exc).__name__}")
