"""The gateway's side of the gRPC contract: one client per model server, and the pair.

Channels connect lazily (grpc does that by itself), so the gateway starts even when a
server is not up yet; `ModelPair.refresh` learns each server's info and tokenizer the
first time both answer, and refuses a pair whose tokenizers differ. Every call is
bounded by a timeout so a dead server becomes a `ModelUnavailable` (HTTP 503), never a hang.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

from .settings import GatewaySettings

ROLES = ("gpt2", "bdh")

# A 50k-token distribution is 200 kB and a tokenizer.json a few MB: lift grpc's 4 MB cap.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class GatewayError(Exception):
    """Base of the errors the routes turn into HTTP statuses."""

    status = 500


class ModelUnavailable(GatewayError):
    """A model server is unreachable, too slow, not serving, or incompatible with its partner."""

    status = 503


class ModelRejected(GatewayError):
    """A model server refused the request itself (bad ids, context too long): the caller's fault."""

    status = 422


class ModelBusy(GatewayError):
    """A model server is at its session limit."""

    status = 429


def _translate(role: str, address: str, err: BaseException, deadline: str = "its deadline") -> GatewayError:
    """A gRPC failure as the error the routes report; `deadline` names the bound that
    applied (e.g. "step_timeout_s = 10 s"), so an operator knows which setting fired."""
    where = f"{role} model server at {address}"
    late = ModelUnavailable(f"{where} did not answer in time ({deadline})")
    if isinstance(err, grpc.aio.AioRpcError):
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ModelRejected(f"{where} rejected the request: {details}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ModelBusy(f"{where} is busy: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return late
        return ModelUnavailable(f"{where} failed: {code.name} {details}".rstrip())
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)):
        return late
    return ModelUnavailable(f"{where} failed: {err!r}")


def to_logprobs(dist: pb.Distribution, vocab_size: int) -> np.ndarray:
    """Decode a Distribution into float32 log-probabilities (V,)."""
    x = np.frombuffer(dist.data, dtype="<f4")
    if x.size != vocab_size:
        raise ValueError(f"distribution has {x.size} values, expected vocab_size {vocab_size}")
    if dist.kind == pb.LOGITS:
        m = x.max()
        x = x - (m + np.log(np.exp(x - m).sum(dtype=np.float64))).astype(np.float32)
    return x


class DecodeSession:
    """One long-lived Decode stream: the server keeps this generation's state while it is open."""

    def __init__(self, backend: ModelBackend):
        self._backend = backend
        self._call = backend.stub.Decode(wait_for_ready=False)
        self.position = 0

    async def send_prompt(self, ids: list[int]) -> None:
        await self._write(pb.DecodeRequest(prompt=pb.Prompt(token_ids=ids)))

    async def send_token(self, token: int) -> None:
        await self._write(pb.DecodeRequest(token=token))

    async def _write(self, req: pb.DecodeRequest) -> None:
        b = self._backend
        try:
            async with asyncio.timeout(b.settings.step_timeout_s):
                await self._call.write(req)
        except Exception as e:  # AioRpcError, TimeoutError, or a write to a call that already ended
            raise await self._failure(e) from None

    async def receive(self) -> np.ndarray:
        """The next-token log-probs (V,) the server sends after each write."""
        b = self._backend
        try:
            async with asyncio.timeout(b.settings.step_timeout_s):
                resp = await self._call.read()
        except (grpc.aio.AioRpcError, TimeoutError) as e:
            raise await self._failure(e) from None
        if resp is grpc.aio.EOF:
            raise await self._failure(RuntimeError("stream ended early"))
        self.position = resp.position
        return to_logprobs(resp.next, b.vocab_size)

    async def _failure(self, e: BaseException) -> GatewayError:
        # A failed write hides the reason; the call's own status carries the server's message.
        if not isinstance(e, (grpc.aio.AioRpcError, TimeoutError)) and self._call.done():
            code = await self._call.code()
            if code != grpc.StatusCode.OK:
                e = grpc.aio.AioRpcError(code, None, None, details=await self._call.details())
        b = self._backend
        return _translate(b.role, b.address, e, b.step_deadline)

    def close(self) -> None:
        """End the stream so the server frees the session. Synchronous on purpose: it runs in
        `finally` blocks of cancelled tasks, where awaiting is no longer possible."""
        self._call.cancel()


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
        self.channel = grpc.aio.insecure_channel(
            address, options=[*_CHANNEL_OPTIONS, ("grpc.lb_policy_name", settings.lb_policy)])
        self.stub = pb_grpc.LanguageModelStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.info: ServerInfo | None = None
        self.step_deadline = f"step_timeout_s = {settings.step_timeout_s:g} s"
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

    def session(self) -> DecodeSession:
        return DecodeSession(self)

    async def score(self, ids: list[int]) -> np.ndarray:
        try:
            r = await self.stub.Score(pb.ScoreRequest(token_ids=ids), timeout=self.settings.step_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise _translate(self.role, self.address, e, self.step_deadline) from None
        return np.frombuffer(r.log_probs, dtype="<f4")

    async def aclose(self) -> None:
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


class IncompatibleModels(ModelUnavailable):
    """The two servers do not share one tokenizer; blending them would be meaningless."""


class ModelPair:
    """Both model servers, plus the tokenizer they share once both have answered."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.gpt2 = ModelBackend("gpt2", settings.gpt2_address, settings)
        self.bdh = ModelBackend("bdh", settings.bdh_address, settings)
        self.tokenizer: Tokenizer | None = None
        self.fingerprint: str | None = None
        self.problem: str | None = "model servers not contacted yet"
        self._lock = asyncio.Lock()

    def __iter__(self):
        return iter((self.gpt2, self.bdh))

    @property
    def eot_id(self) -> int:
        return self.gpt2.info.eot_token_id

    @property
    def max_context(self) -> int:
        return min(self.gpt2.info.max_context, self.bdh.info.max_context)

    async def refresh(self) -> None:
        """Ask both servers who they are; raise ModelUnavailable/IncompatibleModels if unusable."""
        async with self._lock:
            try:
                (gi, _), (bi, _) = await asyncio.gather(self.gpt2.fetch_info(False), self.bdh.fetch_info(False))
            except GatewayError as e:
                self.problem = str(e)
                raise
            problem = compatibility_problem(gi, bi, self.gpt2.address, self.bdh.address)
            if problem:
                self.problem = problem
                raise IncompatibleModels(problem)
            if gi.tokenizer_fingerprint != self.fingerprint:
                # Only fetch the (possibly multi-MB) tokenizer text when it is new to us.
                _, text = await self.gpt2.fetch_info(True)
                try:
                    self.tokenizer = Tokenizer.from_str(text)
                except Exception as e:
                    self.problem = f"gpt2 model server at {self.gpt2.address} sent an unreadable tokenizer: {e}"
                    raise ModelUnavailable(self.problem) from None
                self.fingerprint = gi.tokenizer_fingerprint
            self.gpt2.info, self.bdh.info = gi, bi
            self.problem = None

    async def ensure_ready(self) -> Tokenizer:
        """The shared tokenizer, contacting the servers first if they have not answered yet."""
        if self.problem is not None or self.tokenizer is None:
            await self.refresh()
        return self.tokenizer

    async def readiness(self) -> list[str]:
        """What keeps the gateway from serving (empty when ready)."""
        problems = [p for p in await asyncio.gather(*(b.serving() for b in self)) if p]
        if problems:
            self.problem = "; ".join(problems)
            return problems
        try:
            await self.refresh()
        except GatewayError as e:
            return [str(e)]
        return []

    async def aclose(self) -> None:
        await asyncio.gather(*(b.aclose() for b in self))
