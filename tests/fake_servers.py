"""Test helpers: a fake model server (numpy, no torch) and a gateway running on a thread.

The fake speaks the real gRPC contract with made-up but deterministic distributions, so
gateway tests and the web page's tests can run without loading any model. Its knobs
(a per-step delay, a step after which it fails) produce the error cases on demand, and
others say how a story goes instead of a test hunting for a seed: `end_at` (end-of-text
certain from that context length on), `never_end` (never drawn) and `certain` (the token
that comes next at a given context length).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import NamedTuple

import grpc
import numpy as np
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc
from plotarmour.tokenizer import eot_id, fingerprint

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def fake_logprobs(salt: int, last_token: int, position: int, vocab_size: int) -> np.ndarray:
    """A deterministic, peaked next-token distribution (float32 log-probs)."""
    rng = np.random.default_rng([salt, last_token, position])
    logits = rng.standard_normal(vocab_size) * 3.0
    logits = logits - logits.max()
    return (logits - np.log(np.exp(logits).sum())).astype("<f4")


class FakeLanguageModel(pb_grpc.LanguageModelServicer):
    def __init__(self, tokenizer: Tokenizer, *, model_type: str, salt: int, max_context: int = 512,
                 step_delay_s: float = 0.0, fail_at_step: int | None = None, fingerprint_override: str | None = None,
                 poison_token: int | None = None, score_delay_s: float = 0.0, end_at: int | None = None,
                 never_end: bool = False, certain: dict[int, int] | None = None):
        self.tok, self.model_type, self.salt = tokenizer, model_type, salt
        # From this many tokens of story on, end-of-text is certain: a test says when a
        # story ends instead of hunting for a seed that ends it.
        self.end_at = end_at
        self.never_end = never_end  # end-of-text never drawn: a story runs to its length
        self.certain = certain or {}  # context length -> the token that comes next, for sure
        self.vocab_size = tokenizer.get_vocab_size()
        self.max_context = max_context
        self.step_delay_s, self.fail_at_step = step_delay_s, fail_at_step
        self.poison_token = poison_token  # a session whose prompt holds it steps to NaN rows
        self.score_delay_s = score_delay_s  # Score takes this long, unless its caller cancels
        self.scores_cancelled = 0
        self.fp = fingerprint_override or fingerprint(tokenizer)
        self.open_sessions = 0
        self.sessions_opened = 0
        self.last_prompt: list[int] = []
        self._lock = threading.Lock()

    def dist(self, last_token: int, position: int) -> np.ndarray:
        if self.end_at is not None and position >= self.end_at:
            return self._sure(eot_id(self.tok))
        if position in self.certain:
            return self._sure(self.certain[position])
        row = fake_logprobs(self.salt, last_token, position, self.vocab_size)
        if self.never_end:
            row[eot_id(self.tok)] = -1e4
            row -= np.logaddexp.reduce(row)  # the rest, renormalised
        return row

    def _sure(self, token: int) -> np.ndarray:
        row = np.full(self.vocab_size, -1e4, dtype="<f4")
        row[token] = 0.0
        return row

    def GetInfo(self, request, context):
        return pb.ModelInfo(
            name=f"fake-{self.model_type}", model_type=self.model_type, vocab_size=self.vocab_size,
            tokenizer_fingerprint=self.fp, max_context=self.max_context, device="cpu", dtype="float32",
            num_parameters=0, eot_token_id=eot_id(self.tok), max_sessions=64,
            tokenizer_json=self.tok.to_str() if request.include_tokenizer else "")

    def Decode(self, request_iterator, context):
        with self._lock:
            self.open_sessions += 1
            self.sessions_opened += 1
        try:
            position, steps = 0, 0
            for req in request_iterator:
                if req.WhichOneof("input") == "prompt":
                    ids = list(req.prompt.token_ids)
                    if not ids or max(ids) >= self.vocab_size:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad prompt")
                    position, last = len(ids), ids[-1]
                else:
                    position, last = position + 1, req.token
                    steps += 1
                if self.fail_at_step is not None and steps >= self.fail_at_step:
                    context.abort(grpc.StatusCode.INTERNAL, f"fake failure at step {steps}")
                if self.step_delay_s:
                    time.sleep(self.step_delay_s)
                yield pb.DecodeResponse(
                    next=pb.Distribution(data=self.dist(last, position).tobytes(), kind=pb.LOG_PROBS),
                    position=position)
        finally:
            with self._lock:
                self.open_sessions -= 1

    def Batch(self, request_iterator, context):
        sessions: dict[int, list[int]] = {}  # id → [position, last token, steps]
        try:
            for req in request_iterator:
                kind = req.WhichOneof("kind")
                if kind == "open":
                    o = req.open
                    ids = list(o.prompt_ids)
                    if o.tokenizer_fingerprint and o.tokenizer_fingerprint != self.fp:
                        yield pb.BatchResponse(error=pb.SessionError(
                            session=o.session, code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
                            message=f"tokenizer mismatch: client {o.tokenizer_fingerprint}, server {self.fp}"))
                        continue
                    if not ids or max(ids) >= self.vocab_size or len(ids) > self.max_context:
                        yield pb.BatchResponse(error=pb.SessionError(
                            session=o.session, code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                            message=f"bad prompt ({len(ids)} tokens, context {self.max_context})"))
                        continue
                    with self._lock:
                        self.open_sessions += 1
                        self.sessions_opened += 1
                    sessions[o.session] = [len(ids), ids[-1], 0, self.poison_token in ids]
                    self.last_prompt = ids
                    yield pb.BatchResponse(opened=pb.SessionOpened(session=o.session, position=len(ids), next=pb.Distribution(
                        data=self.dist(ids[-1], len(ids)).tobytes(), kind=pb.LOG_PROBS)))
                elif kind == "step":
                    rows = []
                    for sid, token in zip(req.step.sessions, req.step.tokens):
                        state = sessions[sid]
                        state[0], state[1], state[2] = state[0] + 1, token, state[2] + 1
                        if state[0] > self.max_context:  # as the real servers: a full session takes no more
                            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"session {sid} is past its context")
                        if self.fail_at_step is not None and state[2] >= self.fail_at_step:
                            context.abort(grpc.StatusCode.INTERNAL, f"fake failure at step {state[2]}")
                        row = self.dist(token, state[0])
                        rows.append(np.full_like(row, np.nan) if state[3] else row)
                    if self.step_delay_s:
                        time.sleep(self.step_delay_s)
                    yield pb.BatchResponse(stepped=pb.StepResult(
                        step=req.step.step, sessions=list(req.step.sessions), kind=pb.LOG_PROBS,
                        data=np.stack(rows).tobytes() if rows else b""))
                else:
                    for sid in req.close.sessions:
                        if sessions.pop(sid, None) is not None:
                            with self._lock:
                                self.open_sessions -= 1
        finally:
            with self._lock:
                self.open_sessions -= len(sessions)

    def Score(self, request, context):
        deadline = time.monotonic() + self.score_delay_s
        while time.monotonic() < deadline:
            if not context.is_active():  # the caller cancelled: stop, as the real scheduler does
                with self._lock:
                    self.scores_cancelled += 1
                return pb.ScoreResponse()
            time.sleep(0.01)
        ids = list(request.token_ids)
        if len(ids) < 2:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scoring needs at least 2 tokens")
        rows = [self.dist(ids[t - 1], t) for t in range(1, len(ids))]
        lp = np.asarray([row[i] for row, i in zip(rows, ids[1:])], dtype="<f4")
        top = np.stack([np.argsort(-row, kind="stable")[: request.top_k] for row in rows]).astype("<u4")
        return pb.ScoreResponse(
            log_probs=lp.tobytes(), top_ids=top.tobytes(),
            top_log_probs=np.take_along_axis(np.stack(rows), top.astype(np.int64), 1).astype("<f4").tobytes(),
            entropies=np.asarray([-(np.exp(r) * r).sum() for r in rows], dtype="<f4").tobytes() if request.entropy else b"")


class FakeServer:
    """A FakeLanguageModel served on 127.0.0.1, any free port."""

    def __init__(self, model: FakeLanguageModel, port: int = 0):
        self.model = model
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_LanguageModelServicer_to_server(model, self.server)
        self.health = health.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()


class HangingServer:
    """A TCP port that accepts connections and never answers: a model server that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)  # read nothing, write nothing

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.held:
            conn.close()


class ClosingPort:
    """A TCP port that closes every connection at once, counting them: a server that is not
    up yet, as seen by a client's reconnect attempts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        self.sock.close()


class GatewayThread:
    """The gateway app under uvicorn on a background thread (port 0 unless settings say otherwise)."""

    def __init__(self, settings: GatewaySettings):
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=settings.port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {self.error or 'timed out'}")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as e:  # surfaced by __init__
            self.error = e

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_gateway(gpt2: str, bdh: str, **overrides) -> GatewayThread:
    """A gateway in front of two model servers, on a free port, with settings overridden."""
    return GatewayThread(GatewaySettings(gpt2_address=gpt2, bdh_address=bdh, port=0, **overrides))


class FakeStack(NamedTuple):
    """A gateway over a fake GPT-2 and a fake BDH; unpacks as (gateway, gpt2, bdh)."""

    gateway: GatewayThread
    gpt2: FakeServer
    bdh: FakeServer

    @property
    def url(self) -> str:
        return self.gateway.url

    def stop(self) -> None:
        self.gateway.stop()
        self.gpt2.stop()
        self.bdh.stop()


def start_fake_stack(tokenizer: Tokenizer, gpt2: dict | None = None, bdh: dict | None = None,
                     **settings) -> FakeStack:
    """Two fake servers (FakeLanguageModel options per model) and a gateway with `settings`."""
    g = FakeServer(FakeLanguageModel(tokenizer, model_type="gpt2", salt=1, **(gpt2 or {})))
    b = FakeServer(FakeLanguageModel(tokenizer, model_type="bdh", salt=2, **(bdh or {})))
    try:
        return FakeStack(start_gateway(g.address, b.address, **settings), g, b)
    except BaseException:
        g.stop()
        b.stop()
        raise


@contextlib.contextmanager
def fake_stack(tokenizer: Tokenizer, gpt2: dict | None = None, bdh: dict | None = None,
               **settings) -> Iterator[FakeStack]:
    """`start_fake_stack` for a `with` block: all three stopped at its end, whatever happens."""
    stack = start_fake_stack(tokenizer, gpt2, bdh, **settings)
    try:
        yield stack
    finally:
        stack.stop()

