"""The gateway's side of the gRPC contract: one client per model server, and the pair.

Channels connect lazily (grpc does that by itself), so the gateway starts even when a
server is not up yet; `ModelPair.refresh` learns each server's info and tokenizer the
first time both answer, and refuses a pair whose tokenizers differ. Every call is
bounded by a timeout so a dead server becomes a `ModelUnavailable` (HTTP 503), never a hang.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.roles import ROLES
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

from .errors import GatewayError, IncompatibleModels, ModelBusy, ModelFault, ModelGone, ModelRejected, ModelUnavailable
from .settings import GatewaySettings

# A step's answer: next-token log-probs (V,) by session, and errors by session.
Stepped = tuple[dict[int, np.ndarray], dict[int, GatewayError]]


def _read_outcome(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


# A 50k-token distribution is 200 kB and a tokenizer.json a few MB: lift grpc's 4 MB cap.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Each channel owns its connections. By default gRPC shares them between channels to the
    # same address in one process, so a new channel to a server that has just come up on a
    # port another channel saw refused inherits that connection's back-off and fails with
    # "Connection refused" for up to two minutes.
    ("grpc.use_local_subchannel_pool", 1),
]


_STATUS_LOST_BY_GRPC = "Internal error from Core"  # the details grpc's client sets itself


def _translate(role: str, address: str, err: BaseException, deadline: str = "its deadline") -> GatewayError:
    """A gRPC failure as the error the routes report; `deadline` names the bound that
    applied (e.g. "step_timeout_s = 10 s"), so an operator knows which setting fired."""
    where = f"{role} model server at {address}"
    late = ModelUnavailable(f"{where} did not answer in time ({deadline})", role)
    if isinstance(err, grpc.aio.AioRpcError):
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ModelRejected(f"{where} rejected the request: {details}", role)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ModelBusy(f"{where} is busy: {details}", role)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return late
        # grpc-python's aio client: a request written as the server ends the stream fails,
        # and the client then reports INTERNAL "Internal error from Core" in place of the
        # status the server sent (grpc/grpc#36066). Which status was lost is unknown (a
        # draining server's UNAVAILABLE, about half the time here); the stream is gone.
        if code == grpc.StatusCode.INTERNAL and details == _STATUS_LOST_BY_GRPC:
            return ModelGone(f"{where} ended the stream (grpc's client lost the status it sent)", role)
        kind = ModelGone if code == grpc.StatusCode.UNAVAILABLE else ModelUnavailable
        return kind(f"{where} failed: {code.name} {details}".rstrip(), role)
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return late
    return ModelGone(f"{where} failed: {err!r}", role)  # e.g. the server ended the stream


# A step's rows: what the gateway asks for (its step_rows setting), and what it reads.
_ASK_ROWS = {"float16": pb.LOG_PROBS_F16, "float32": pb.LOG_PROBS}
_ROW_TYPES = {pb.LOG_PROBS: np.dtype("<f4"), pb.LOG_PROBS_F16: np.dtype("<f2")}


def to_logprobs(dist: pb.Distribution, vocab_size: int) -> np.ndarray:
    """Decode a Distribution into float32 log-probabilities (V,)."""
    x = np.frombuffer(dist.data, dtype="<f4")
    if x.size != vocab_size:
        raise ValueError(f"distribution has {x.size} values, expected vocab_size {vocab_size}")
    if dist.kind == pb.LOGITS:
        m = x.max()
        x = x - (m + np.log(np.exp(x - m).sum(dtype=np.float64))).astype(np.float32)
    return x


def status_error(role: str, address: str, code: int, message: str) -> GatewayError:
    """A SessionError from a Batch stream as the error the routes report."""
    try:
        status = next(c for c in grpc.StatusCode if c.value[0] == code)
    except StopIteration:
        status = grpc.StatusCode.UNKNOWN
    return _translate(role, address, grpc.aio.AioRpcError(status, None, None, details=message))


class BatchStream:
    """One Batch stream to a model server: many sessions ride on it.

    Requests go out through a queue that grpc drains (one writer, in order); one reader
    task routes every answer to whoever waits for it. When the stream fails, every
    waiter gets the error and the stream is retired; the server frees its sessions.
    """

    def __init__(self, backend: ModelBackend):
        self.backend = backend
        self._outbox: asyncio.Queue[pb.BatchRequest | None] = asyncio.Queue()
        self.call = backend.stub.Batch(self._requests(), wait_for_ready=False)
        self.sessions: set[int] = set()  # open on this stream (what "least loaded" counts)
        self.opened = 0
        self.lost: dict[int, GatewayError] = {}  # sessions the server closed (idle timeout)
        self._opens: dict[int, asyncio.Future] = {}
        self._steps: dict[int, asyncio.Future] = {}
        self._step_ids = itertools.count(1)
        self.failure: GatewayError | None = None
        self._reader = asyncio.ensure_future(self._read())
        # A first message at once (closing nothing): the server ends a stream that stays silent
        # for first_message_timeout_s, and a spare stream may wait a while for its first story.
        self._outbox.put_nowait(pb.BatchRequest(close=pb.CloseSessions()))

    async def _requests(self):
        while (req := await self._outbox.get()) is not None:
            yield req

    async def _read(self) -> None:
        b = self.backend
        try:
            async for resp in self.call:
                kind = resp.WhichOneof("kind")
                if kind == "opened":
                    fut = self._opens.pop(resp.opened.session, None)
                    if fut is not None and not fut.done():
                        try:
                            fut.set_result(to_logprobs(resp.opened.next, b.vocab_size))
                        except ValueError as e:  # the server's fault, and this session's only
                            fut.set_exception(ModelFault(f"{b.role} model server at {b.address} sent {e}", b.role))
                elif kind == "stepped":
                    fut = self._steps.pop(resp.stepped.step, None)
                    if fut is not None and not fut.done():
                        fut.set_result(resp.stepped)
                elif kind == "error":
                    e = resp.error
                    err = status_error(b.role, b.address, e.code, e.message)
                    known = e.session in self.sessions
                    self.sessions.discard(e.session)
                    fut = self._opens.pop(e.session, None)
                    if fut is not None and not fut.done():
                        fut.set_exception(err)
                    elif known:  # an open session the server closed: its next step reports why
                        self.lost[e.session] = err
            raise RuntimeError("the server ended the stream")
        except asyncio.CancelledError:
            self._fail(ModelUnavailable(f"{b.role} model server at {b.address}: the stream was closed", b.role))
            raise
        except Exception as e:  # AioRpcError or the stream's end: nothing more will come
            self._fail(_translate(b.role, b.address, e, b.step_deadline))
            # End the request iterator too: grpc's task that drains it would otherwise wait
            # on the outbox for the gateway's whole life.
            self._outbox.put_nowait(None)

    def _fail(self, err: GatewayError) -> None:
        self.failure = self.failure or err
        for fut in [*self._opens.values(), *self._steps.values()]:
            if not fut.done():
                fut.set_exception(self.failure)
        self._opens.clear()
        self._steps.clear()

    async def open(self, session: int, prompt_ids: list[int], fingerprint: str) -> np.ndarray:
        """Prefill a prompt as `session`; returns the next-token log-probs (V,)."""
        if self.failure is not None:
            raise self.failure
        fut = asyncio.get_running_loop().create_future()
        self._opens[session] = fut
        self.sessions.add(session)
        self.opened += 1
        # The server refuses at once a prefill that would not end within the deadline we hold
        # it to (a 429 for the caller), rather than working on it until the deadline passes.
        self._outbox.put_nowait(pb.BatchRequest(open=pb.OpenSession(
            session=session, prompt_ids=prompt_ids, tokenizer_fingerprint=fingerprint,
            max_wait_ms=int(self.backend.settings.step_timeout_s * 1000))))
        try:
            return await self._answer(fut, "the prompt")
        except BaseException:
            self.close([session])
            raise

    def step(self, sessions: list[int], tokens: list[int]) -> Coroutine[Any, Any, Stepped]:
        """Step sessions by one token each, in one message → an awaitable of (log-probs by
        session, errors by session).

        The message is queued here, not when the awaitable first runs: grpc's writer is
        woken ahead of whatever the caller schedules next (the stories' SSE events), so
        the step is on its way one loop turn sooner. That turn is on every token's path."""
        fut, errors = asyncio.get_running_loop().create_future(), {}
        # Its awaiter may be cancelled before it first runs (the gateway stopping): the
        # failure the stream then sets is read here, so asyncio does not log it as lost.
        fut.add_done_callback(_read_outcome)
        if self.failure is not None:
            fut.set_exception(self.failure)
        else:
            # Sessions the server already closed (idle timeout) are not sent: their reason stands.
            errors = {s: self.lost.pop(s) for s in sessions if s in self.lost}
            sent = [(s, t) for s, t in zip(sessions, tokens) if s not in errors]
            step = next(self._step_ids)
            self._steps[step] = fut
            self._outbox.put_nowait(pb.BatchRequest(step=pb.StepSessions(
                step=step, sessions=[s for s, _ in sent], tokens=[t for _, t in sent],
                kind=_ASK_ROWS[self.backend.settings.step_rows])))
        return self._stepped(fut, errors)

    async def _stepped(self, fut: asyncio.Future, errors: dict[int, GatewayError]) -> Stepped:
        """A step's answer as rows by session, within step_timeout_s."""
        b = self.backend
        result = await self._answer(fut, "a step")
        n, V = len(result.sessions), b.vocab_size
        data = result.data  # read once: each read of a bytes field copies it (1 MB at 64 rows)
        dtype = _ROW_TYPES.get(result.kind)  # either kind is taken: a server may predate float16
        if dtype is None or len(data) != n * V * dtype.itemsize:
            err = ModelFault(f"{b.role} model server at {b.address} sent a malformed step answer "
                             f"({len(data)} bytes of kind {result.kind} for {n} rows of {V})", b.role)
            self.retire(err)
            raise err
        # Blending and sampling work in float32 (float16 arithmetic would round them again).
        rows = np.frombuffer(data, dtype=dtype).reshape(n, V).astype(np.float32, copy=False)
        for e in result.errors:
            errors.setdefault(e.session, status_error(b.role, b.address, e.code, e.message))
            self.sessions.discard(e.session)
        # Rows are checked for NaN and +inf where they are sampled, in the same pass.
        return dict(zip(result.sessions, rows)), errors

    async def _answer(self, fut: asyncio.Future, what: str):
        """The answer `fut` will hold, within step_timeout_s. A server that misses it is
        stalled: the stream is retired (the server frees its sessions) so that new
        sessions go to a fresh stream, which round_robin may put on another replica."""
        b = self.backend
        try:
            async with asyncio.timeout(b.settings.step_timeout_s):
                return await fut
        except TimeoutError:
            err = ModelUnavailable(f"{b.role} model server at {b.address} did not answer {what} in time "
                                   f"({b.step_deadline})", b.role)
            self.retire(err)
            raise err from None

    def retire(self, err: GatewayError) -> None:
        """Fail every waiter with err and end the stream."""
        self._fail(err)
        self.shutdown()

    def close(self, sessions: list[int]) -> None:
        """Free sessions on the server. Never blocks (it runs in `finally` blocks)."""
        sessions = [s for s in sessions if s in self.sessions or s in self._opens]
        for s in sessions:
            self.sessions.discard(s)
            self.lost.pop(s, None)
            fut = self._opens.pop(s, None)  # a prefill left behind: the server will not answer it
            if fut is not None:
                fut.cancel()
        if sessions and self.failure is None:
            self._outbox.put_nowait(pb.BatchRequest(close=pb.CloseSessions(sessions=sessions)))

    def shutdown(self) -> None:
        self._outbox.put_nowait(None)  # a clean end of the request stream
        self.call.cancel()
        self._reader.cancel()


@dataclass
class Scored:
    """A Score answer as arrays, one row per scored position (len(ids) − 1 of them):
    log p of each next token (natural log), the `top_k` likeliest tokens there with their
    log-probs (k columns; none when top_k was 0) and the entropy in nats (None unless asked)."""

    log_probs: np.ndarray                 # (T,)
    top_ids: np.ndarray                   # (T, k)
    top_log_probs: np.ndarray             # (T, k)
    entropies: np.ndarray | None = None   # (T,)

    @classmethod
    def from_proto(cls, r: pb.ScoreResponse) -> Scored:
        lp = np.frombuffer(r.log_probs, dtype="<f4")
        ids = np.frombuffer(r.top_ids, dtype="<u4")
        k = len(ids) // len(lp) if len(lp) else 0  # top_k, or fewer where the vocabulary is smaller
        return cls(lp, ids.reshape(len(lp), k), np.frombuffer(r.top_log_probs, dtype="<f4").reshape(len(lp), k),
                   np.frombuffer(r.entropies, dtype="<f4") if r.entropies else None)


@dataclass
class ServerInfo:
    """What GetInfo said, minus the tokenizer text."""

    name: str
    model_type: str
    vocab_size: int
    tokenizer_fingerprint: str
    max_context: int
    device: str
    dtype: str
    num_parameters: int
    eot_token_id: int
    max_sessions: int

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> ServerInfo:
        return cls(**{f: getattr(m, f) for f in cls.__dataclass_fields__})


class ModelBackend:
    """A client for one model server (the GPT-2 one or the BDH one)."""

    def __init__(self, role: str, address: str, settings: GatewaySettings):
        self.role, self.address, self.settings = role, address, settings
        # gRPC's own reconnect back-off grows to two minutes; held to retry_interval_s, a
        # restarted server is reached within that of coming up, as the setting promises.
        backoff_ms = max(1, round(settings.retry_interval_s * 1000))
        self.channel = grpc.aio.insecure_channel(address, options=[
            *_CHANNEL_OPTIONS, ("grpc.lb_policy_name", settings.lb_policy),
            ("grpc.initial_reconnect_backoff_ms", backoff_ms), ("grpc.max_reconnect_backoff_ms", backoff_ms)])
        self.stub = pb_grpc.LanguageModelStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.info: ServerInfo | None = None
        self.problem: str | None = "not contacted yet"  # why this server cannot be used now
        self.step_deadline = f"step_timeout_s = {settings.step_timeout_s:g} s"
        self.streams: list[BatchStream] = []
        self._session_ids = itertools.count(1)
        self.connect_deadline = f"connect_timeout_s = {settings.connect_timeout_s:g} s"

    @property
    def vocab_size(self) -> int:
        assert self.info is not None, "info is fetched before any session opens"
        return self.info.vocab_size

    async def fetch_info(self, include_tokenizer: bool) -> tuple[ServerInfo, str]:
        try:
            m = await self.stub.GetInfo(
                pb.InfoRequest(include_tokenizer=include_tokenizer), timeout=self.settings.connect_timeout_s
            )
        except grpc.aio.AioRpcError as e:
            raise _translate(self.role, self.address, e, self.connect_deadline) from None
        return ServerInfo.from_proto(m), m.tokenizer_json

    async def serving(self) -> str | None:
        """None when the server reports SERVING, else why not."""
        try:
            r = await self._health.Check(health_pb2.HealthCheckRequest(service=""),
                                         timeout=self.settings.connect_timeout_s)
        except grpc.aio.AioRpcError as e:
            return str(_translate(self.role, self.address, e, self.connect_deadline))
        if r.status != health_pb2.HealthCheckResponse.SERVING:
            return f"{self.role} model server at {self.address} is {health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)}"
        return None

    def stream(self) -> BatchStream:
        """The least-loaded healthy Batch stream, opening `streams_per_server` of them at
        first: with round_robin and several replicas behind one address, each stream
        lands on its own replica, so sessions spread over the replicas."""
        self.streams = [s for s in self.streams if s.failure is None]
        while len(self.streams) < self.settings.streams_per_server:
            self.streams.append(BatchStream(self))
        # Ties go to the stream that has opened fewest sessions, so that short
        # generations one after another still take turns over the replicas.
        return min(self.streams, key=lambda s: (len(s.sessions), s.opened))

    async def open(self, prompt_ids: list[int], fingerprint: str) -> tuple[BatchStream, int, np.ndarray]:
        """A new session on the least-loaded stream → (its stream, its id, next-token log-probs)."""
        stream, session = self.stream(), next(self._session_ids)
        return stream, session, await stream.open(session, prompt_ids, fingerprint)

    async def score(self, ids: list[int], top_k: int = 0, entropy: bool = False) -> Scored:
        """The server's Score of `ids`, bounded by step_timeout_s like every call to a server
        (a dead or silent one is a 503). Cancelling the caller cancels the call."""
        try:
            r = await self.stub.Score(pb.ScoreRequest(token_ids=ids, top_k=top_k, entropy=entropy),
                                      timeout=self.settings.step_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise _translate(self.role, self.address, e, self.step_deadline) from None
        return Scored.from_proto(r)

    async def aclose(self) -> None:
        for stream in self.streams:
            stream.shutdown()
        await self.channel.close()


def compatibility_problem(gpt2: ServerInfo, bdh: ServerInfo, gpt2_addr: str, bdh_addr: str) -> str | None:
    """Why two servers cannot be blended (naming both), or None when they can."""
    problems = []
    if gpt2.tokenizer_fingerprint != bdh.tokenizer_fingerprint:
        problems.append(f"tokenizer fingerprints differ: gpt2 {gpt2.name!r} at {gpt2_addr} has "
                        f"{gpt2.tokenizer_fingerprint[:16]}…, bdh {bdh.name!r} at {bdh_addr} has "
                        f"{bdh.tokenizer_fingerprint[:16]}…")
    if gpt2.vocab_size != bdh.vocab_size:
        problems.append(f"vocabulary sizes differ: gpt2 {gpt2.name!r} at {gpt2_addr} has {gpt2.vocab_size}, "
                        f"bdh {bdh.name!r} at {bdh_addr} has {bdh.vocab_size}")
    if gpt2.eot_token_id != bdh.eot_token_id:
        problems.append(f"end-of-text ids differ: gpt2 {gpt2.eot_token_id}, bdh {bdh.eot_token_id}")
    if not problems:
        return None
    return "cannot blend these model servers: " + "; ".join(problems)


class ModelPair:
    """Both model servers, plus the tokenizer they share. Each server is usable on its own
    (a story at w = 0 or 1 needs only one): each has its own `problem`, the tokenizer comes
    from whichever answers first, and the two are checked against each other once both have
    answered."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.gpt2 = ModelBackend("gpt2", settings.gpt2_address, settings)
        self.bdh = ModelBackend("bdh", settings.bdh_address, settings)
        self.tokenizer: Tokenizer | None = None
        self.fingerprint: str | None = None
        self.incompatible: str | None = None  # why the two cannot be blended, once both answered
        self._lock = asyncio.Lock()
        self._recheck: asyncio.Future | None = None

    def __iter__(self):
        return iter((self.gpt2, self.bdh))

    @property
    def problem(self) -> str | None:
        """What keeps the pair from serving every story (None: both servers are fine)."""
        problems = [self.incompatible] if self.incompatible else [b.problem for b in self if b.problem]
        return "; ".join(problems) or None

    def mark(self, error: GatewayError) -> None:
        """A request saw this failure: the server it names (else both) is re-checked first."""
        for b in self:
            if error.role in (None, b.role):
                b.problem = str(error)

    @property
    def _known(self) -> list[ModelBackend]:
        return [b for b in self if b.info is not None]

    @property
    def eot_id(self) -> int:
        return self._known[0].info.eot_token_id

    @property
    def max_context(self) -> int:
        return min(b.info.max_context for b in self._known)

    async def refresh(self) -> None:
        """Ask both servers who they are. A server that does not answer keeps its `problem`
        and the other is still usable; raises ModelUnavailable when neither answers and
        IncompatibleModels when the two cannot be blended."""
        async with self._lock:
            answers = await asyncio.gather(*(b.fetch_info(False) for b in self), return_exceptions=True)
            for b, answer in zip(self, answers):
                if isinstance(answer, GatewayError):
                    b.problem = str(answer)
                elif isinstance(answer, BaseException):
                    raise answer
            up = [(b, a[0]) for b, a in zip(self, answers) if not isinstance(a, BaseException)]
            if not up:
                raise next(a for a in answers if isinstance(a, GatewayError))
            if len(up) == 2:
                self.incompatible = compatibility_problem(up[0][1], up[1][1], self.gpt2.address, self.bdh.address)
                if self.incompatible:
                    raise IncompatibleModels(self.incompatible)
            # The tokenizer of whichever answered (both agree when both did); a server that
            # comes back with another one is caught by the check above once both answer.
            first, info = up[0]
            if info.tokenizer_fingerprint != self.fingerprint:
                # Only fetch the (possibly multi-MB) tokenizer text when it is new to us.
                _, text = await first.fetch_info(True)
                try:
                    self.tokenizer = Tokenizer.from_str(text)
                    # User text is always text: "<|endoftext|>" typed in a prompt is those
                    # characters, never the control token.
                    self.tokenizer.encode_special_tokens = True
                except Exception as e:
                    first.problem = f"{first.role} model server at {first.address} sent an unreadable tokenizer: {e}"
                    raise ModelUnavailable(first.problem, first.role) from None
                self.fingerprint = info.tokenizer_fingerprint
            for b, info in up:
                b.info, b.problem = info, None

    async def ensure_ready(self, roles: tuple[str, ...] = tuple(ROLES)) -> Tokenizer:
        """The shared tokenizer, once the servers `roles` names answer: contacting them first
        if they have not answered yet (or failed since); raises the first one's problem."""
        needed = [b for b in self if b.role in roles]
        if self.tokenizer is None or self.incompatible or any(b.problem for b in needed):
            await self.recheck()
        for b in needed:
            if b.problem:
                raise ModelUnavailable(b.problem, b.role)
        return self.tokenizer

    async def recheck(self) -> None:
        """`refresh`, shared: every caller that arrives while one runs waits for that one,
        so while a server hangs each request fails within connect_timeout_s, instead of
        queueing behind the others' checks one after another. Its errors are read from each
        server's `problem`, except an incompatible pair's."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self.refresh())
            # Read the outcome even if every waiter has left (else asyncio logs it as lost).
            self._recheck.add_done_callback(lambda f: f.cancelled() or f.exception())
        # shield: a waiter that leaves (its client disconnected) must not cancel the others' check.
        try:
            await asyncio.shield(self._recheck)
        except IncompatibleModels:
            raise
        except GatewayError:
            pass

    async def readiness(self) -> list[str]:
        """What keeps the gateway from serving every story (empty when both are up)."""
        health = await asyncio.gather(*(b.serving() for b in self))
        for b, problem in zip(self, health):
            if problem:
                b.problem = problem
        if not any(health):
            try:
                await self.recheck()
            except GatewayError as e:
                return [str(e)]
        problem = self.problem
        return problem.split("; ") if problem else []

    def up(self) -> dict[str, bool]:
        """Per role, whether its server can take stories now (what /ready reports)."""
        return {b.role: b.problem is None and b.info is not None and not self.incompatible for b in self}

    async def aclose(self) -> None:
        await asyncio.gather(*(b.aclose() for b in self))
