"""The LanguageModel RPCs. Thin: protocol checks, limits and status codes; the batcher
and the engine behind it do the model work.

Status codes: a caller's mistake is INVALID_ARGUMENT, a full server RESOURCE_EXHAUSTED,
a server still loading or shutting down UNAVAILABLE; INTERNAL only for real faults.
"""

from __future__ import annotations

import contextlib
import logging

import grpc

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

from .errors import InvalidArgument, Overloaded
from .metrics import Metrics

log = logging.getLogger(__name__)


class LanguageModelServicer(pb_grpc.LanguageModelServicer):
    def __init__(self, *, max_sessions: int, metrics: Metrics):
        self.max_sessions = max_sessions
        self.metrics = metrics
        self.batcher = None  # set by attach() once the model has loaded
        self.info: pb.ModelInfo | None = None
        self.tokenizer_json = ""
        self.draining = False  # after SIGTERM: no new sessions
        self.active = 0  # Decode streams in progress

    def attach(self, batcher, info: pb.ModelInfo, tokenizer_json: str) -> None:
        self.batcher, self.info, self.tokenizer_json = batcher, info, tokenizer_json

    # -- RPCs ----------------------------------------------------------------------
    async def GetInfo(self, request: pb.InfoRequest, context) -> pb.ModelInfo:
        await self._require_loaded(context, "GetInfo")
        info = pb.ModelInfo()
        info.CopyFrom(self.info)
        info.open_sessions = self.active
        if request.include_tokenizer:
            info.tokenizer_json = self.tokenizer_json
        return info

    async def Decode(self, requests, context):
        await self._require_loaded(context, "Decode")
        if self.draining:
            await self._abort(context, "Decode", grpc.StatusCode.UNAVAILABLE,
                              "the server is shutting down and takes no new sessions")
        if self.active >= self.max_sessions:
            await self._abort(context, "Decode", grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self.active} sessions are open, the limit is {self.max_sessions}; retry later")
        self.active += 1
        session = None
        try:
            async with self._errors(context, "Decode"):
                async for request in requests:
                    given = request.WhichOneof("input")
                    if session is None:
                        if given != "prompt":
                            raise InvalidArgument(
                                f"the first DecodeRequest of a stream must carry `prompt`, got {given or 'nothing'}")
                        session, data = await self.batcher.open(list(request.prompt.token_ids))
                    else:
                        if given != "token":
                            raise InvalidArgument(
                                f"after the prompt every DecodeRequest must carry `token`, got {given or 'nothing'}"
                                " (one stream is one session: open a new stream for a new prompt)")
                        data = await session.step(request.token)
                    yield pb.DecodeResponse(next=pb.Distribution(data=data, kind=pb.LOG_PROBS),
                                            position=session.position)
        finally:
            # Runs when the stream ends, fails, or is cancelled (client gone): the
            # session's state is freed in every case.
            self.active -= 1
            if session is not None:
                session.close()

    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        await self._require_loaded(context, "Score")
        async with self._errors(context, "Score"):
            return pb.ScoreResponse(log_probs=await self.batcher.score(list(request.token_ids)))

    # -- helpers -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _errors(self, context, rpc: str):
        try:
            yield
        except InvalidArgument as e:
            await self._abort(context, rpc, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Overloaded as e:
            await self._abort(context, rpc, grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    async def _require_loaded(self, context, rpc: str) -> None:
        if self.batcher is None:
            await self._abort(context, rpc, grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry shortly")

    async def _abort(self, context, rpc: str, code: grpc.StatusCode, message: str):
        self.metrics.errors.labels(rpc, code.name).inc()
        await context.abort(code, message)
