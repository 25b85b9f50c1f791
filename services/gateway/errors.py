"""One error body for every status and route.

Native and `/v1` routes answer in OpenAI's shape, `{"error": {message, type, param, code}}`,
so the openai package reports our messages as they are; TGI's route (`POST /`) answers
in TGI's, `{"error", "error_type"}`, which its clients turn into their own exceptions.
`param` is always a field name of the route that was called, never a character offset.

    install(app)   # once, in create_app
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .backends import GatewayError, ModelBusy, ModelFault, ModelRejected, ModelUnavailable

log = logging.getLogger("plotarmour.gateway")


class InvalidField(GatewayError):
    """A request that breaks a rule the schema cannot express (a configured limit, an
    unsupported combination); `field` is named as the route's client spells it."""

    status = 422

    def __init__(self, field: str | None, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class NotFound(InvalidField):
    status = 404


class UnknownModel(NotFound):
    """A `model` this gateway does not serve (vLLM and TGI answer 404 model_not_found too)."""

    def __init__(self, asked: str, served: str):
        super().__init__("model", f"the model {asked!r} does not exist; this gateway serves {served!r}")


class TooBusy(GatewayError):
    status = 429


class InternalError(GatewayError):
    """A bug, reported as one plain error (never a traceback) to the client."""


class ClientGone(GatewayError):
    """The client closed the connection before the answer was ready (nobody reads this)."""

    status = 499


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


def is_tgi(scope) -> bool:
    # TGI clients post to the server's root; GET / is the page.
    return scope["path"] == "/" and scope["method"] == "POST"


def error_response(request: Request, status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = tgi_body(status, message) if is_tgi(request.scope) else openai_body(status, message, param, code)
    return JSONResponse(body, status_code=status, headers=headers)


def logprob(p: float) -> float:
    """A probability as a log-probability for JSON, which has no -inf."""
    return math.log(p) if p > 0 else -9999.0


# The blend's roles as the page names them, and what a storyteller can do without each.
ROLE_WORDS = {"gpt2": "the creativity model (GPT-2)", "bdh": "the logic model (BDH)"}
WITHOUT = {"gpt2": "a story at 100% logic needs only the logic model (BDH)",
           "bdh": "a story at 0% logic needs only the creativity model (GPT-2)"}


def public_message(e: GatewayError) -> str:
    """What a person is told: a model server's failure in words, naming the model and what
    to do, never its address or gRPC text (those go to the log, here)."""
    role = getattr(e, "role", None)
    if role not in ROLE_WORDS:
        return str(e)
    log.warning("%s", e)
    who = ROLE_WORDS[role]
    if isinstance(e, ModelRejected):  # the server's own words about the request: no internals
        return f"{who[0].upper()}{who[1:]} refused this request: {str(e).split(': ', 1)[-1]}"
    if isinstance(e, ModelFault):
        return (f"{who[0].upper()}{who[1:]} gave an unusable answer for this story (a fault in the model "
                "server, in its log); try again, or with another seed.")
    if isinstance(e, ModelBusy):
        return f"{who[0].upper()}{who[1:]} is busy with other stories; try again in a moment."
    if isinstance(e, ModelUnavailable):
        return (f"{who[0].upper()}{who[1:]} is not answering. PlotArmour keeps trying to reach it; "
                f"try again in a minute. Meanwhile {WITHOUT[role]}.")
    return str(e)


def gateway_error_body(e: GatewayError, tgi: bool = False) -> dict:
    """The body of an error raised mid-stream (an SSE event), in the route's shape."""
    if tgi:
        return tgi_body(e.status, public_message(e))
    return openai_body(e.status, public_message(e), getattr(e, "field", None), _code(e))


def _code(e: GatewayError) -> str | None:
    if isinstance(e, UnknownModel):
        return "model_not_found"
    if isinstance(e, ModelBusy | TooBusy):
        return "busy"
    if isinstance(e, ModelRejected):
        return "rejected_by_model_server"
    return None if isinstance(e, InvalidField) else type(e).__name__


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


def install(app: FastAPI) -> None:
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
