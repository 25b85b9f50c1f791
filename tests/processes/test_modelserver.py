"""The model servers over real gRPC on loopback: results, concurrency, cancellation, errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import urllib.request

import grpc
import numpy as np
import pytest
import torch

from plotarmour.checkpoint import load_checkpoint
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc
from plotarmour.tokenizer import eot_id, fingerprint
from harness import wait_until

MODELS = ["bdh", "gpt2"]
rng = np.random.default_rng(0)
# Eight sessions with prompts of different lengths and their own continuations.
SESSIONS = [([int(t) for t in rng.integers(1, 300, size=n)], [int(t) for t in rng.integers(1, 300, size=6)])
            for n in (1, 2, 3, 5, 8, 13, 4, 7)]


@pytest.fixture
def server(request, bdh_server, gpt2_server):
    return {"bdh": bdh_server, "gpt2": gpt2_server}[request.param]


def prompt(ids) -> pb.DecodeRequest:
    return pb.DecodeRequest(prompt=pb.Prompt(token_ids=ids))


def token(t: int) -> pb.DecodeRequest:
    return pb.DecodeRequest(token=t)


def as_array(dist: pb.Distribution) -> np.ndarray:
    assert dist.kind == pb.LOG_PROBS
    return np.frombuffer(dist.data, dtype="<f4")


async def decode(address: str, prompt_ids, tokens) -> list[np.ndarray]:
    """One session: the distribution after the prompt, then after each token."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = pb_grpc.LanguageModelStub(ch).Decode()
        await call.write(prompt(prompt_ids))
        out = [await call.read()]
        for t in tokens:
            await call.write(token(t))
            out.append(await call.read())
        await call.done_writing()
    assert [r.position for r in out] == list(range(len(prompt_ids), len(prompt_ids) + len(tokens) + 1))
    return [as_array(r.next) for r in out]


def in_process(checkpoint, prompt_ids, tokens) -> list[np.ndarray]:
    engine = load_checkpoint(checkpoint).engine()
    sid, logits = engine.open(prompt_ids)
    out = [logits]
    for t in tokens:
        out.append(engine.step({sid: t})[0])
    return [torch.log_softmax(x.float(), -1).numpy() for x in out]


def stub(srv) -> pb_grpc.LanguageModelStub:
    return pb_grpc.LanguageModelStub(grpc.insecure_channel(srv.address))


def metric(srv, name: str) -> float:
    text = urllib.request.urlopen(srv.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not in {srv.metrics_url}")


# -- what a server serves ---------------------------------------------------------


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_get_info_describes_the_checkpoint(server, tiny_pair, tiny_tokenizer):
    info = stub(server).GetInfo(pb.InfoRequest(include_tokenizer=True), timeout=10)
    ckpt = load_checkpoint(tiny_pair[server.service])
    assert info.model_type == server.service and info.name == server.service
    assert info.vocab_size == ckpt.config["vocab_size"]
    assert info.tokenizer_fingerprint == fingerprint(tiny_tokenizer)
    assert info.eot_token_id == eot_id(tiny_tokenizer)
    assert info.num_parameters == sum(p.numel() for p in ckpt.model.parameters())
    assert (info.device, info.dtype, info.max_sessions) == ("cpu", "float32", 64)
    assert json.loads(info.tokenizer_json) == json.loads(tiny_tokenizer.to_str())
    assert stub(server).GetInfo(pb.InfoRequest(), timeout=10).tokenizer_json == ""


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_distributions_over_grpc_equal_the_in_process_engine(server, tiny_pair):
    prompt_ids, tokens = SESSIONS[5]
    remote = asyncio.run(decode(server.address, prompt_ids, tokens))
    local = in_process(tiny_pair[server.service], prompt_ids, tokens)
    assert len(remote) == len(local) == len(tokens) + 1
    for r, l in zip(remote, local):
        assert r.shape == l.shape
        np.testing.assert_allclose(r, l, atol=1e-5)
        assert np.isclose(np.exp(r).sum(), 1.0, atol=1e-4)  # log-probabilities, not logits


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_score_equals_the_in_process_engine(server, tiny_pair):
    ids = SESSIONS[5][0] + SESSIONS[5][1]
    remote = np.frombuffer(stub(server).Score(pb.ScoreRequest(token_ids=ids), timeout=10).log_probs, "<f4")
    local = load_checkpoint(tiny_pair[server.service]).engine().score(ids).numpy()
    np.testing.assert_allclose(remote, local, atol=1e-5)


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_score_tells_what_the_model_expected_at_each_position(server, tiny_pair):
    ids = SESSIONS[5][0] + SESSIONS[5][1]
    r = stub(server).Score(pb.ScoreRequest(token_ids=ids, top_k=4, entropy=True), timeout=10)
    engine = load_checkpoint(tiny_pair[server.service]).engine()
    with torch.inference_mode():
        logp = torch.log_softmax(engine.feed(engine.begin(), ids[:-1], "all"), dim=-1)  # (T-1, V)
    want_lp, want_ids = logp.topk(4, dim=-1)
    n = len(ids) - 1
    np.testing.assert_array_equal(np.frombuffer(r.top_ids, "<u4").reshape(n, 4), want_ids.numpy())
    np.testing.assert_allclose(np.frombuffer(r.top_log_probs, "<f4").reshape(n, 4), want_lp.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.frombuffer(r.entropies, "<f4"), -(logp.exp() * logp).sum(-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.frombuffer(r.log_probs, "<f4"), engine.score(ids).numpy(), atol=1e-5)
    plain = stub(server).Score(pb.ScoreRequest(token_ids=ids), timeout=10)  # nothing asked, nothing sent
    assert plain.top_ids == plain.top_log_probs == plain.entropies == b""
    with pytest.raises(grpc.RpcError) as err:
        stub(server).Score(pb.ScoreRequest(token_ids=ids, top_k=65), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in err.value.details()


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_concurrent_sessions_give_what_they_give_one_after_another(server):
    async def sequential():
        return [await decode(server.address, p, t) for p, t in SESSIONS]

    async def concurrent():
        return await asyncio.gather(*(decode(server.address, p, t) for p, t in SESSIONS))

    steps_before = metric(server, "plotarmour_decode_steps_total")
    one_by_one, together = asyncio.run(sequential()), asyncio.run(concurrent())
    for a, b in zip(one_by_one, together):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=1e-5)
    assert metric(server, "plotarmour_decode_steps_total") - steps_before == 2 * sum(len(t) for _, t in SESSIONS)


# -- sessions end with their streams ------------------------------------------------


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_cancelling_a_stream_frees_its_session(server):
    s = stub(server)

    async def open_and_cancel():
        async with grpc.aio.insecure_channel(server.address) as ch:
            calls = [pb_grpc.LanguageModelStub(ch).Decode() for _ in range(3)]
            for call in calls:
                await call.write(prompt([1, 2, 3]))
                await call.read()
            await calls[0].write(token(4))
            await calls[0].read()
            assert s.GetInfo(pb.InfoRequest(), timeout=5).open_sessions == 3
            for call in calls:
                call.cancel()

    asyncio.run(open_and_cancel())
    assert wait_until(lambda: s.GetInfo(pb.InfoRequest(), timeout=5).open_sessions == 0), "sessions still open"
    assert wait_until(lambda: metric(server, "plotarmour_open_sessions") == 0), "the open-sessions gauge never read 0"


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_a_client_that_vanishes_frees_its_session(server):
    # A process that opens a session and is killed: no cancel, no goodbye, just a closed socket.
    client = textwrap.dedent(f"""
        import grpc, sys, time
        from plotarmour.rpc import language_model_pb2 as pb, language_model_pb2_grpc as pb_grpc
        def requests():
            yield pb.DecodeRequest(prompt=pb.Prompt(token_ids=[1, 2, 3]))
            time.sleep(600)
        responses = pb_grpc.LanguageModelStub(grpc.insecure_channel("{server.address}")).Decode(requests())
        next(responses)
        print("open", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", client], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        s = stub(server)
        assert s.GetInfo(pb.InfoRequest(), timeout=5).open_sessions == 1
        proc.kill()
        proc.wait()
        assert wait_until(lambda: s.GetInfo(pb.InfoRequest(), timeout=5).open_sessions == 0), "sessions still open"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- errors ------------------------------------------------------------------------


def decode_error(address: str, *requests: pb.DecodeRequest) -> grpc.RpcError:
    """Send requests on one stream, read all responses, return the error it ends with."""
    with grpc.insecure_channel(address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            for _ in pb_grpc.LanguageModelStub(ch).Decode(iter(requests), timeout=10):
                pass
    return err.value


V = 320  # vocabulary of the tiny checkpoints


@pytest.mark.parametrize("server", MODELS, indirect=True)
@pytest.mark.parametrize("requests, message", [
    ([prompt([1, V, 2])], "token id 320 outside the vocabulary"),
    ([prompt([])], "prompt is empty"),
    ([token(3)], "first DecodeRequest of a stream must carry `prompt`, got token"),
    ([pb.DecodeRequest()], "must carry `prompt`, got nothing"),
    ([prompt([1]), token(V + 5)], "token id 325 is outside the vocabulary"),
    ([prompt([1]), token(2), prompt([3])], "after the prompt every DecodeRequest must carry `token`"),
], ids=["prompt-token-id", "empty-prompt", "token-first", "empty-request", "step-token-id", "second-prompt"])
def test_caller_mistakes_are_invalid_argument(server, requests, message):
    err = decode_error(server.address, *requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert message in err.details()


@pytest.mark.parametrize("server", MODELS, indirect=True)
@pytest.mark.parametrize("ids, message", [([5], "at least 2 tokens"), ([1, 2, 999], "token id 999")])
def test_bad_score_requests_are_invalid_argument(server, ids, message):
    with pytest.raises(grpc.RpcError) as err:
        stub(server).Score(pb.ScoreRequest(token_ids=ids), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


@pytest.mark.parametrize("server", MODELS, indirect=True)
def test_a_failing_session_does_not_disturb_the_others(server, tiny_pair):
    prompt_ids, tokens = SESSIONS[3]

    async def together():
        good = decode(server.address, prompt_ids, tokens)
        bad = asyncio.to_thread(decode_error, server.address, prompt([1, 2]), token(3), token(V))
        return await asyncio.gather(good, bad)

    good, err = asyncio.run(together())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for r, l in zip(good, in_process(tiny_pair[server.service], prompt_ids, tokens)):
        np.testing.assert_allclose(r, l, atol=1e-5)


@pytest.fixture(scope="module")
def small_bdh(tiny_pair, tmp_path_factory):
    from plotarmour.modelserver.launch import start_model_server

    srv = start_model_server("bdh", tiny_pair["bdh"], workdir=tmp_path_factory.mktemp("small-bdh"), threads=1,
                             max_sessions=2, max_context=6)
    yield srv
    srv.terminate()


def test_context_over_the_limit_is_invalid_argument(small_bdh):
    err = decode_error(small_bdh.address, prompt([1] * 7))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "context limit is 6" in err.details()
    err = decode_error(small_bdh.address, prompt([1] * 5), token(1), token(1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "context limit of 6" in err.details()


def test_sessions_beyond_the_limit_are_resource_exhausted(small_bdh):
    async def scenario():
        async with grpc.aio.insecure_channel(small_bdh.address) as ch:
            s = pb_grpc.LanguageModelStub(ch)
            held = [s.Decode() for _ in range(2)]
            for call in held:
                await call.write(prompt([1]))
                await call.read()
            third = s.Decode()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await third.write(prompt([1]))  # the refusal may come before the write lands
                await third.read()
            held[0].cancel()
            while (await s.GetInfo(pb.InfoRequest(), timeout=5)).open_sessions > 1:
                await asyncio.sleep(0.02)  # until the server has seen the cancel
            fourth = s.Decode()
            await fourth.write(prompt([1]))
            position = (await fourth.read()).position
            for call in (held[1], fourth):
                call.cancel()
            return err.value, position

    err, position = asyncio.run(scenario())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 sessions are open, the limit is 2" in err.details()
    assert position == 1  # a freed place is usable again
