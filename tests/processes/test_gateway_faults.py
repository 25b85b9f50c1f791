"""Faults against the real model servers: a server killed with SIGKILL mid-stream and
started again on the same port, a server that stops answering (SIGSTOP) so the
gateway's per-step deadline has to fire, and a draining server refusing new streams.
Nothing may hang and no session may leak."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import httpx
import pytest
from harness import long_story_seed, open_sessions, sse_events, wait_until

from services.gateway.settings import GatewaySettings
from fake_servers import GatewayThread

pytest.importorskip("torch")

PROMPT = "Once upon a time, Lily found"
LONG = 200  # tokens: long enough that the generation is still running when the fault hits


@contextlib.contextmanager
def gateway_over_own_bdh(tiny_pair, gpt2_server, start_model_server, **settings):
    """A BDH server of the test's own (so it may be frozen with SIGSTOP) and a gateway over
    it and the session's GPT-2 server → (bdh, gateway); on the way out BDH is let go on
    (SIGCONT, harmless if it was not stopped) and the gateway stopped."""
    bdh = start_model_server(tiny_pair["bdh"], "bdh")
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh.address, port=0,
                                       **settings))
    try:
        yield bdh, gw
    finally:
        if bdh.proc.poll() is None:
            os.kill(bdh.proc.pid, signal.SIGCONT)
        gw.stop()


def stream_request(seed: int) -> dict:
    return {"prompt": PROMPT, "seed": seed, "max_new_tokens": LONG}


def signalled_mid_story(c: httpx.Client, seed: int, pid: int, *signals: int) -> tuple[list, float]:
    """Stream the long story of `seed`, send `signals` to `pid` after its first token, and
    read what comes: (the rest of its events, seconds from the signals to the stream's end)."""
    with c.stream("POST", "/generate_stream", json=stream_request(seed)) as r:
        events = sse_events(r)
        assert next(events)[0] == "start" and next(events)[0] == "token"
        for sig in signals:
            os.kill(pid, sig)
        t0 = time.monotonic()
        rest = list(events)
        return rest, time.monotonic() - t0


def test_killed_server_errors_fast_then_gateway_reconnects_on_same_port(tiny_pair, gpt2_server,
                                                                       start_model_server):
    bdh = start_model_server(tiny_pair["bdh"], "bdh")
    # recover_timeout_s 1: the story waits a second for the server to come back, then fails
    # (tests/processes/test_stack.py has one that comes back in time).
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh.address, port=0,
                                       step_timeout_s=30, connect_timeout_s=2, retry_interval_s=0.2,
                                       recover_timeout_s=1))
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            seed = long_story_seed(c.base_url, LONG, tries=40, prompt=PROMPT)
            # Freeze it first so the kill surely lands mid-generation, then kill -9 there.
            rest, waited = signalled_mid_story(c, seed, bdh.proc.pid, signal.SIGSTOP, signal.SIGKILL)
            assert rest and rest[-1][0] == "error", [e for e, _ in rest]
            assert waited < 5, f"error event after {waited:.1f} s"
            assert rest[-1][1]["status"] == 503 and "The logic model (BDH)" in rest[-1][1]["error"]["message"]
            bdh.proc.wait(10)

            ready = c.get("/ready")
            assert ready.status_code == 503 and any("bdh" in p for p in ready.json()["problems"])
            assert c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 4}).status_code == 503

            # The same server back on the same port: the gateway must find it by itself.
            # /info only reports (it never contacts the servers), so this waits on the
            # gateway's own reconnecting, not on a probe that would reconnect for it.
            again = start_model_server(tiny_pair["bdh"], "bdh", port=bdh.port)
            assert again.port == bdh.port
            assert wait_until(lambda: c.get("/info").json()["gateway"]["problem"] is None, 20), c.get("/info").text
            assert c.get("/ready").status_code == 200
            for s in (seed, seed + 1):
                r = c.post("/generate", json={"prompt": PROMPT, "seed": s, "max_new_tokens": 8})
                assert r.status_code == 200, r.text
            with c.stream("POST", "/generate_stream", json={**stream_request(seed), "max_new_tokens": 8}) as r:
                assert [e for e, _ in sse_events(r)][-1] == "end"
        assert wait_until(lambda: open_sessions(gpt2_server) == 0 and open_sessions(again) == 0, 5), \
            f"sessions left open: gpt2 {open_sessions(gpt2_server)}, bdh {open_sessions(again)}"
    finally:
        gw.stop()


def test_a_stalled_server_holds_up_only_the_stories_that_need_it(tiny_pair, gpt2_server, start_model_server):
    """BDH's server frozen (SIGSTOP) under a blended story: a story at w = 0 is written
    meanwhile, token for token the one written before; the blended story waits for BDH and,
    once BDH goes on (SIGCONT), ends as it would have."""
    with gateway_over_own_bdh(tiny_pair, gpt2_server, start_model_server, step_timeout_s=60,
                              connect_timeout_s=2) as (bdh, gw), httpx.Client(base_url=gw.url, timeout=60) as c:
        seed = long_story_seed(c.base_url, LONG, tries=40, prompt=PROMPT)
        whole = c.post("/generate", json=stream_request(seed)).json()
        creative = {"prompt": PROMPT, "seed": seed, "max_new_tokens": 30, "logic_weight": 0.0}
        before = c.post("/generate", json=creative).json()
        with c.stream("POST", "/generate_stream", json=stream_request(seed)) as r:
            events = sse_events(r)
            gen_id = next(events)[1]["id"]
            got = [next(events)[1]]
            os.kill(bdh.proc.pid, signal.SIGSTOP)
            assert wait_until(lambda: c.get(f"/generations/{gen_id}").json()["waiting_for"] == ["bdh"], 10)
            assert c.post("/generate", json=creative).json()["tokens"] == before["tokens"]
            assert c.get(f"/generations/{gen_id}").json()["waiting_for"] == ["bdh"]
            os.kill(bdh.proc.pid, signal.SIGCONT)
            rest = list(events)
        got += [ev for e, ev in rest if e == "token"]
        assert rest[-1][0] == "end", rest[-1]
        assert [t["id"] for t in got] == [t["id"] for t in whole["tokens"]]


def test_stalled_server_hits_the_step_deadline_with_a_clear_error(tiny_pair, gpt2_server, start_model_server):
    with gateway_over_own_bdh(tiny_pair, gpt2_server, start_model_server, step_timeout_s=1.0,
                              connect_timeout_s=1.0) as (bdh, gw):
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            seed = long_story_seed(c.base_url, LONG, tries=40, prompt=PROMPT)

            # Mid-stream: the error event names the server and the deadline.
            rest, waited = signalled_mid_story(c, seed, bdh.proc.pid, signal.SIGSTOP)
            assert rest[-1][0] == "error", [e for e, _ in rest]
            err = rest[-1][1]
            assert err["status"] == 503
            # In words, naming the model and what to do; the address and the deadline go to the log.
            assert err["error"]["message"].startswith("The logic model (BDH) is not answering")
            assert bdh.address not in err["error"]["message"] and "0% logic" in err["error"]["message"]
            assert waited < 1.0 + 4, f"deadline of 1 s fired after {waited:.1f} s"

            # Before the first token: a plain 503 with the same message.
            r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 4})
            assert r.status_code == 503
            assert r.json()["error"]["message"] == err["error"]["message"]

            os.kill(bdh.proc.pid, signal.SIGCONT)
            assert wait_until(lambda: c.get("/ready").status_code == 200, 10)
            r = c.post("/generate", json={"prompt": PROMPT, "seed": seed, "max_new_tokens": 8})
            assert r.status_code == 200, r.text
        assert wait_until(lambda: open_sessions(gpt2_server) == 0 and open_sessions(bdh) == 0, 5), \
            f"sessions left open: gpt2 {open_sessions(gpt2_server)}, bdh {open_sessions(bdh)}"


def test_a_draining_servers_refusal_always_reads_as_the_server_gone(tiny_pair):
    """A draining server refuses a new Batch stream at its start, while the gateway is
    writing its first requests on it. grpc's client then often reports INTERNAL "Internal
    error from Core" in place of the UNAVAILABLE the server sent (about half the time
    here). Either way the gateway must read it as the server gone, which a story waits out
    (reopening when a server is back), never as a fault that ends the story."""
    import asyncio

    from plotarmour.modelserver.server import create_server
    from services.bdh import Settings as BDHSettings
    from services.gateway.backends import BatchStream, ModelBackend
    from services.gateway.errors import GatewayError, ModelGone

    async def refusals(n: int) -> list[GatewayError]:
        server = create_server(BDHSettings(checkpoint=tiny_pair["bdh"], port=0, metrics_port=-1))
        await server.start()
        await server.load()
        backend = ModelBackend("bdh", server.address, GatewaySettings())
        seen = []
        try:
            server.servicer.draining = True  # as after SIGTERM, before the grace period ends
            for session in range(1, n + 1):
                stream = BatchStream(backend)
                with pytest.raises(GatewayError) as refused:
                    await stream.open(session, [1, 2, 3], "")
                seen.append(refused.value)
                stream.shutdown()
        finally:
            await backend.aclose()
            await server.stop(0)
        return seen

    seen = asyncio.run(asyncio.wait_for(refusals(40), 60))
    assert all(isinstance(e, ModelGone) for e in seen), sorted({f"{type(e).__name__}: {e}" for e in seen})
