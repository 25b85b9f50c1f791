"""Fuzzing the model servers over real gRPC: random and out-of-range token ids, oversized
messages, garbage bytes, streams that end early or start wrong. Whatever comes in, the
server must answer with a status (OK or a caller's-mistake code), keep running, report
SERVING, free every session, and still give the same answer to a good request."""

from __future__ import annotations

import os
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

pytest.importorskip("torch")
pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

UINT32_MAX = 2**32 - 1
# What a caller's mistake may get back; never INTERNAL/UNKNOWN, and never a dead server.
CALLER_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=int(os.environ.get("PLOTARMOUR_FUZZ_EXAMPLES", "60")), deadline=None,
                derandomize=True, database=None, suppress_health_check=list(HealthCheck))
DECODE = "/plotarmour.v1.LanguageModel/Decode"
SCORE = "/plotarmour.v1.LanguageModel/Score"


@pytest.fixture(params=["bdh", "gpt2"])
def server(request, bdh_server, gpt2_server):
    return {"bdh": bdh_server, "gpt2": gpt2_server}[request.param]


@pytest.fixture
def channel(server):
    # The client may send more than the server accepts: that is one of the things tried.
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1),
                                                        ("grpc.max_receive_message_length", 64 << 20)]) as ch:
        yield ch


def info(channel) -> pb.ModelInfo:
    return pb_grpc.LanguageModelStub(channel).GetInfo(pb.InfoRequest(), timeout=10)


def decode_all(channel, requests, timeout: float = 30) -> tuple[grpc.StatusCode, list[pb.DecodeResponse]]:
    """Send all requests on one Decode stream and read every answer; (status, answers)."""
    out = []
    try:
        for r in pb_grpc.LanguageModelStub(channel).Decode(iter(requests), timeout=timeout):
            out.append(r)
    except grpc.RpcError as e:
        return e.code(), out
    return grpc.StatusCode.OK, out


def reference(channel) -> list[bytes]:
    code, out = decode_all(channel, [pb.DecodeRequest(prompt=pb.Prompt(token_ids=[1, 2, 3])),
                                     pb.DecodeRequest(token=4), pb.DecodeRequest(token=5)])
    assert code == grpc.StatusCode.OK and len(out) == 3
    return [r.next.data for r in out]


def assert_healthy(server, channel, expected: list[bytes]) -> None:
    assert server.proc.poll() is None, f"server died:\n{server.log()[-3000:]}"
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    deadline = time.monotonic() + 10
    while info(channel).open_sessions != 0:
        assert time.monotonic() < deadline, f"{info(channel).open_sessions} sessions still open"
        time.sleep(0.05)
    assert reference(channel) == expected, "the server answers a good request differently after the fuzzing"


ids = st.lists(st.one_of(st.integers(0, 400), st.integers(0, UINT32_MAX)), max_size=40)


def test_random_token_ids_get_an_answer_or_invalid_argument(server, channel):
    expected, v = reference(channel), info(channel).vocab_size

    @FUZZ
    @given(prompt=ids, steps=st.lists(st.integers(0, UINT32_MAX), max_size=4), score=ids)
    def run(prompt, steps, score):
        reqs = [pb.DecodeRequest(prompt=pb.Prompt(token_ids=prompt))] + [pb.DecodeRequest(token=t) for t in steps]
        code, out = decode_all(channel, reqs)
        assert code in CALLER_CODES, (code, prompt, steps)
        prompt_ok = bool(prompt) and max(prompt) < v
        assert (code == grpc.StatusCode.OK) == (prompt_ok and all(t < v for t in steps))
        if prompt_ok:  # every token before the first bad one was answered
            good = next((i for i, t in enumerate(steps) if t >= v), len(steps))
            assert len(out) == 1 + good
            for r in out:
                lp = np.frombuffer(r.next.data, dtype="<f4")
                assert lp.shape == (v,) and np.isfinite(lp).all()
        try:
            pb_grpc.LanguageModelStub(channel).Score(pb.ScoreRequest(token_ids=score), timeout=30)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), score)
            assert len(score) < 2 or max(score) >= v, e.details()

    run()
    assert_healthy(server, channel, expected)


def test_oversized_and_over_context_messages(server, channel):
    expected = reference(channel)
    # Over the server's receive limit (5 bytes an id of its context cap, plus 1 MB): refused
    # by gRPC itself before any work.
    huge = [UINT32_MAX] * (4 << 20)  # 5 bytes a varint: ~20 MB
    code, _ = decode_all(channel, [pb.DecodeRequest(prompt=pb.Prompt(token_ids=huge))])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.LanguageModelStub(channel).Score(pb.ScoreRequest(token_ids=huge), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Under the byte limit but over the context: refused by the server's own check. (BDH
    # has no positional limit, so it reports a huge max_context and takes long prompts.)
    max_context = info(channel).max_context
    if max_context < 1_000_000:
        long = [1] * (max_context + 1)
        code, _ = decode_all(channel, [pb.DecodeRequest(prompt=pb.Prompt(token_ids=long))])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.LanguageModelStub(channel).Score(pb.ScoreRequest(token_ids=long), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_healthy(server, channel, expected)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads a process's memory from /proc")
def test_huge_requests_are_refused_unread_and_cost_no_memory(server, channel):
    """3-5M token ids in one Score: under 16 MB, but far over what the context cap allows.
    gRPC refuses them before they are parsed, so a run of them leaves the server's memory
    where it was (parsed and then refused, each left ~20 MB behind: 15 took BDH 478 -> 781 MB)."""
    expected = reference(channel)
    score = pb_grpc.LanguageModelStub(channel).Score
    before = rss_mb(server.proc.pid)
    for n in (3_000_000, 5_000_000) * 4:
        with pytest.raises(grpc.RpcError) as e:
            score(pb.ScoreRequest(token_ids=[5] * n), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in e.value.details()
    assert rss_mb(server.proc.pid) - before < 40, "refused requests kept memory"
    assert_healthy(server, channel, expected)


def test_garbage_and_wrong_first_messages(server, channel):
    expected = reference(channel)
    wrong_starts = [
        [pb.DecodeRequest()],                                   # no input at all
        [pb.DecodeRequest(token=3)],                            # a token before any prompt
        [pb.DecodeRequest(prompt=pb.Prompt(token_ids=[1])), pb.DecodeRequest(prompt=pb.Prompt(token_ids=[2]))],
        [pb.DecodeRequest(prompt=pb.Prompt(token_ids=[1])), pb.DecodeRequest()],
    ]
    for reqs in wrong_starts:
        code, _ = decode_all(channel, reqs)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, reqs
    assert decode_all(channel, [])[0] == grpc.StatusCode.OK  # opened and closed with nothing said

    # Raw bytes that are not a DecodeRequest (or are one by chance): any status, no crash.
    rng = np.random.default_rng(0)
    raw_decode = channel.stream_stream(DECODE, request_serializer=None, response_deserializer=None)
    raw_score = channel.unary_unary(SCORE, request_serializer=None, response_deserializer=None)
    for n in (1, 2, 7, 64, 1000, 100_000):
        blob = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        try:
            list(raw_decode(iter([blob, blob]), timeout=30))
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.UNAVAILABLE, e.details()
        try:
            raw_score(blob, timeout=30)
        except grpc.RpcError as e:
            assert e.code() != grpc.StatusCode.UNAVAILABLE, e.details()
    assert_healthy(server, channel, expected)


def test_streams_closed_early(server, channel):
    expected = reference(channel)
    stub = pb_grpc.LanguageModelStub(channel)
    first = pb.DecodeRequest(prompt=pb.Prompt(token_ids=[5, 6, 7]))

    # Cancelled right after the prompt went out, before any answer was read.
    call = stub.Decode(iter([first]), timeout=30)
    call.cancel()
    # Cancelled after one answer, with a step in flight.
    call = stub.Decode(iter([first, pb.DecodeRequest(token=8), pb.DecodeRequest(token=9)]), timeout=30)
    next(call)
    call.cancel()
    # Many sessions opened and abandoned at once, their prefills still running.
    calls = [stub.Decode(iter([first]), timeout=30) for _ in range(16)]
    for c in calls:
        c.cancel()
    # A deadline that expires mid-stream.
    with pytest.raises(grpc.RpcError):
        list(stub.Decode(iter([first] + [pb.DecodeRequest(token=1)] * 2000), timeout=0.05))

    def writer_that_hangs_up():  # the request side raises: grpc cancels the call
        yield first
        raise RuntimeError("client gave up")

    with pytest.raises(grpc.RpcError):
        list(stub.Decode(writer_that_hangs_up(), timeout=30))
    assert_healthy(server, channel, expected)
