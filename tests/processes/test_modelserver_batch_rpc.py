"""The Batch RPC over real gRPC on loopback: many sessions on one stream, one buffer per
step, sessions freed with their stream, the fingerprint check, the context cap, a long
Score beside running sessions, and health when the scheduling loop dies."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_modelserver import SESSIONS, V, decode, stub
from harness import open_sessions, wait_until

from plotarmour.checkpoint import load_checkpoint
from plotarmour.modelserver.server import create_server
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc
from plotarmour.tokenizer import fingerprint
from services.bdh import Settings as BDHSettings

MODELS = ["bdh", "gpt2"]
SHIPPED_BDH = Path(__file__).resolve().parents[2] / "checkpoints" / "bdh"
SERVICE = "plotarmour.v1.LanguageModel"


@pytest.fixture
def server(request, bdh_server, gpt2_server):
    return {"bdh": bdh_server, "gpt2": gpt2_server}[request.param]


def rows_of(result: pb.StepResult, vocab: int) -> np.ndarray:
    assert result.kind == pb.LOG_PROBS
    return np.frombuffer(result.data, dtype="<f4").reshape(len(result.sessions), vocab)


class Batch:
    """A client's side of one Batch stream (grpc.aio)."""

    def __init__(self, channel):
        self.call = pb_grpc.LanguageModelStub(channel).Batch()
        self.steps = 0

    async def open(self, sessions: dict[int, list[int]], fp: str = "") -> dict[int, pb.BatchResponse]:
        """Open sessions (id → prompt); their answers (opened or error) by id, whatever their order."""
        for sid, prompt in sessions.items():
            await self.call.write(pb.BatchRequest(open=pb.OpenSession(session=sid, prompt_ids=prompt,
                                                                      tokenizer_fingerprint=fp)))
        answers = {}
        while len(answers) < len(sessions):
            r = await self.call.read()
            kind = r.WhichOneof("kind")
            assert kind in ("opened", "error"), r
            answers[getattr(r, kind).session] = r
        return answers

    async def step(self, tokens: dict[int, int], kind: int = 0) -> pb.StepResult:
        self.steps += 1
        await self.call.write(pb.BatchRequest(step=pb.StepSessions(step=self.steps, sessions=list(tokens),
                                                                   tokens=list(tokens.values()), kind=kind)))
        r = await self.call.read()
        assert r.WhichOneof("kind") == "stepped" and r.stepped.step == self.steps, r
        return r.stepped


# -- stepping many sessions in one message -------------------------------------------------


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_one_message_steps_many_sessions_and_answers_with_one_buffer(server, tiny_tokenizer):
    prompts = {10 + i: p for i, (p, _) in enumerate(SESSIONS[:5])}
    tokens = {sid: SESSIONS[i][1][0] for i, sid in enumerate(prompts)}

    async def scenario():
        async with grpc.aio.insecure_channel(server.address) as ch:
            b = Batch(ch)
            opened = await b.open(prompts, fingerprint(tiny_tokenizer))
            first = await b.step(tokens)
            # A bad token fails its own session only; the others' rows stay in request order.
            second = await b.step({14: 3, 12: V, 10: 4})
            await b.call.done_writing()
            assert await b.call.read() == grpc.aio.EOF
            return opened, first, second

    opened, first, second = asyncio.run(scenario())
    alone = asyncio.run(_decode_all(server.address, prompts, tokens))
    for sid, r in opened.items():
        assert r.opened.position == len(prompts[sid])
        np.testing.assert_allclose(np.frombuffer(r.opened.next.data, "<f4"), alone[sid][0], atol=1e-5)
    assert list(first.sessions) == list(prompts) and not first.errors
    assert len(first.data) == 4 * V * len(prompts)  # one contiguous float32 buffer
    for sid, row in zip(first.sessions, rows_of(first, V)):
        np.testing.assert_allclose(row, alone[sid][1], atol=1e-5)
    assert list(second.sessions) == [14, 10]
    ((error,),) = [second.errors]
    assert (error.session, error.code) == (12, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert "outside the vocabulary" in error.message
    assert wait_until(lambda: open_sessions(server) == 0)


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_rows_asked_for_in_float16_are_the_float32_rows_rounded_in_half_the_bytes(server):
    prompts = {1: SESSIONS[0][0], 2: SESSIONS[1][0]}

    async def scenario():
        async with grpc.aio.insecure_channel(server.address) as ch:
            wide, half = Batch(ch), Batch(ch)  # the same prompts and tokens on two streams
            for b in (wide, half):
                await b.open(prompts)
            rows = await wide.step({1: 5, 2: 7}, pb.LOG_PROBS), await half.step({1: 5, 2: 7}, pb.LOG_PROBS_F16)
            for b in (wide, half):
                b.call.cancel()
            return rows

    wide, half = asyncio.run(scenario())
    assert half.kind == pb.LOG_PROBS_F16 and len(half.data) == 2 * V * 2 == len(wide.data) // 2
    np.testing.assert_array_equal(np.frombuffer(half.data, "<f2").reshape(2, V),
                                  rows_of(wide, V).astype(np.float16))


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_a_step_asking_for_rows_of_an_unknown_kind_ends_the_stream_naming_it(server):
    async def scenario():
        async with grpc.aio.insecure_channel(server.address) as ch:
            b = Batch(ch)
            await b.open({1: SESSIONS[0][0]})
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await b.step({1: 5}, pb.LOGITS)
            return e.value

    e = asyncio.run(scenario())
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kind 2" in e.details() and "LOG_PROBS_F16" in e.details()
    assert wait_until(lambda: open_sessions(server) == 0)


async def _decode_all(address, prompts, tokens):
    outs = await asyncio.gather(*(decode(address, prompts[sid], [tokens[sid]]) for sid in prompts))
    return dict(zip(prompts, outs))


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_a_fingerprint_mismatch_is_failed_precondition_naming_both(server, tiny_tokenizer):
    theirs = "0123abcd" * 8

    async def scenario():
        async with grpc.aio.insecure_channel(server.address) as ch:
            b = Batch(ch)
            refused = (await b.open({1: [1, 2]}, theirs))[1]
            accepted = (await b.open({2: [1, 2]}, fingerprint(tiny_tokenizer)))[2]  # the stream goes on
            b.call.cancel()
            return refused, accepted

    refused, accepted = asyncio.run(scenario())
    assert refused.WhichOneof("kind") == "error"
    assert refused.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert theirs in refused.error.message and fingerprint(tiny_tokenizer) in refused.error.message
    assert accepted.WhichOneof("kind") == "opened"
    assert wait_until(lambda: open_sessions(server) == 0)


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_ending_or_cancelling_the_stream_frees_every_session(server):
    assert wait_until(lambda: open_sessions(server) == 0)

    async def scenario():
        async with grpc.aio.insecure_channel(server.address) as ch:
            ended, cancelled = Batch(ch), Batch(ch)
            await ended.open({1: [1, 2], 2: [3], 3: [4, 5, 6]})
            await cancelled.open({1: [1, 2], 2: [3]})
            await cancelled.step({1: 7, 2: 8})
            during = await pb_grpc.LanguageModelStub(ch).GetInfo(pb.InfoRequest(), timeout=5)
            await ended.call.done_writing()  # the client's clean end, sessions still open
            assert await ended.call.read() == grpc.aio.EOF
            cancelled.call.cancel()
            return during.open_sessions

    assert asyncio.run(scenario()) == 5
    assert wait_until(lambda: open_sessions(server) == 0)


@pytest.mark.parametrize("server, cap", [("bdh", 8192), ("gpt2", 256)], indirect=["server"])
def test_get_info_reports_the_context_cap_and_longer_prompts_are_refused_at_once(server, cap):
    # BDH: its service's default_max_context; GPT-2: the checkpoint's n_positions.
    assert stub(server).GetInfo(pb.InfoRequest(), timeout=10).max_context == cap

    async def scenario():
        async with grpc.aio.insecure_channel(server.address) as ch:
            b = Batch(ch)
            answers = await b.open({1: [1] * (cap + 1), 2: [1] * cap})
            b.call.cancel()
            return answers

    answers = asyncio.run(scenario())
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert f"context limit is {cap}" in answers[1].error.message
    assert answers[2].opened.position == cap  # exactly the cap is fine


# -- a long Score beside running sessions ---------------------------------------------------


def _vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# The shipped BDH (vocabulary 4096): holding the logits of a 20,000-token pass would take
# 20,000 × 4096 × 4 B = 328 MB (320 MiB), and their log-softmax as much again. Chunk by
# chunk (256 tokens: 4 MiB of logits) the peak may grow by this much at most:
RSS_BOUND_MIB = 64


def test_a_20k_token_score_beside_running_sessions(start_model_server):
    srv = start_model_server(SHIPPED_BDH, service="bdh", max_context=32768, prefill_chunk=256)
    info = stub(srv).GetInfo(pb.InfoRequest(), timeout=10)
    vocab = info.vocab_size
    long = [1 + (7 * i) % (vocab - 1) for i in range(20_000)]

    async def scenario():
        async with grpc.aio.insecure_channel(srv.address) as ch:
            lm = pb_grpc.LanguageModelStub(ch)
            b = Batch(ch)
            await b.open({1: [5, 6, 7], 2: [8]})
            await lm.Score(pb.ScoreRequest(token_ids=long[:600]), timeout=60)  # warm: chunk-sized buffers
            for t in range(3):
                await b.step({1: 9 + t, 2: 10 + t})
            before = _vm_hwm_kib(srv.proc.pid)
            score = asyncio.ensure_future(lm.Score(pb.ScoreRequest(token_ids=long), timeout=600))
            gaps, steps_during = [], 0
            last = time.perf_counter()
            while not score.done():
                result = await b.step({1: 11, 2: 12})
                assert list(result.sessions) == [1, 2] and not result.errors
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
                steps_during += 1
            b.call.cancel()
            return (await score).log_probs, steps_during, gaps, before, _vm_hwm_kib(srv.proc.pid)

    data, steps_during, gaps, before, after = asyncio.run(scenario())
    logp = np.frombuffer(data, "<f4")
    assert logp.shape == (len(long) - 1,) and np.isfinite(logp).all() and (logp <= 0).all()
    # Chunks are exact: a prefix scores the same alone as inside the long sequence.
    prefix = load_checkpoint(SHIPPED_BDH).engine().score(long[:600]).numpy()
    np.testing.assert_allclose(logp[:599], prefix, atol=1e-4)
    # The running sessions kept stepping: about one step per chunk or two of the 79.
    assert steps_during >= 20, steps_during
    growth_mib = (after - before) / 1024
    print(f"\n20k-token Score: {steps_during} steps beside it; step gaps median "
          f"{statistics.median(gaps) * 1e3:.0f} ms, max {max(gaps) * 1e3:.0f} ms; peak RSS "
          f"{before / 1024:.0f} -> {after / 1024:.0f} MiB (+{growth_mib:.1f}, bound {RSS_BOUND_MIB})")
    assert growth_mib <= RSS_BOUND_MIB


# -- the loop dies ----------------------------------------------------------------------------


def test_health_turns_not_serving_when_the_scheduler_dies(tiny_pair):
    def broken_step(tokens):
        raise SystemError("a bug in the engine")

    async def scenario():
        server = create_server(BDHSettings(checkpoint=tiny_pair["bdh"], port=0, metrics_port=-1))
        await server.start()
        await server.load()
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                health = health_pb2_grpc.HealthStub(ch)

                async def status():
                    return (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)).status

                serving = await status()
                b = Batch(ch)
                await b.open({1: [1, 2], 2: [3], 3: [4]})
                decode_call = pb_grpc.LanguageModelStub(ch).Decode()
                await decode_call.write(pb.DecodeRequest(prompt=pb.Prompt(token_ids=[4, 5])))
                await decode_call.read()

                server.scheduler.engine.step = broken_step
                dying = await b.step({1: 6, 2: 7})  # the batch that kills the loop
                while await status() != health_pb2.HealthCheckResponse.NOT_SERVING:
                    await asyncio.sleep(0.01)  # the test's own timeout turns a hang into a failure
                await decode_call.write(pb.DecodeRequest(token=8))  # after: refused at once
                with pytest.raises(grpc.aio.AioRpcError) as decode_err:
                    await decode_call.read()
                later_step = await b.step({3: 9})
                later_open = (await b.open({4: [1]}))[4]
                return serving, dying, decode_err.value, later_step, later_open
        finally:
            await server.stop()

    serving, dying, decode_err, later_step, later_open = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert serving == health_pb2.HealthCheckResponse.SERVING
    # The rows in flight, later steps and later opens: each session gets UNAVAILABLE at once.
    errors = [*dying.errors, *later_step.errors, later_open.error]
    assert not dying.sessions and not later_step.sessions
    assert [e.session for e in errors] == [1, 2, 3, 4]
    assert {e.code for e in errors} == {grpc.StatusCode.UNAVAILABLE.value[0]}
    assert all("scheduler failed: SystemError" in e.message for e in errors)
    assert decode_err.code() == grpc.StatusCode.UNAVAILABLE and "scheduler failed" in decode_err.details()
