"""The gateway over HTTP against fake model servers (numpy, no torch): the blending loop,
SSE, steering, limits and every error path. Real model servers: tests/processes."""

from __future__ import annotations

import concurrent.futures
import re
import time

import httpx
import numpy as np
import pytest

from plotarmour import sampling
from services.gateway.presets import NATIVE_DEFAULTS
from services.gateway.settings import GatewaySettings
from fake_servers import ClosingPort, FakeLanguageModel, FakeServer, fake_stack, start_gateway
from harness import closes_soon, free_port, sse_events, wait_until


PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def gateway(fakes):
    gw = start_gateway(fakes[0].address, fakes[1].address, max_new_tokens_limit=64, max_prompt_tokens=40)
    yield gw
    gw.stop()


def expected_tokens(tok, fakes, prompt: str, w, n: int, seed: int, blend="linear", **params) -> list[int]:
    """What the gateway must sample: the same functions run here on the fakes' distributions,
    both models asked at every token; `w` is one weight or one per token."""
    ids = tok.encode(prompt).ids
    g, b = fakes[0].model, fakes[1].model
    rng, sp = sampling.make_rng(seed), sampling.SamplingParams(**{**NATIVE_DEFAULTS, **params})
    last, pos, out = ids[-1], len(ids), []
    weights = [w] * n if isinstance(w, (int, float)) else list(w)
    for i in range(n):
        t = sampling.sample(sampling.blend(g.dist(last, pos), b.dist(last, pos), weights[i], blend), sp, rng)
        out.append(t)
        if t == 0:  # end-of-text (id 0 in the tiny tokenizer)
            break
        last, pos = t, pos + 1
    return out


def error_param(r: httpx.Response) -> str:
    return r.json()["error"]["param"]


# ---- the blending loop ---------------------------------------------------------------


@pytest.mark.parametrize("w,blend", [(0.0, "linear"), (1.0, "linear"), (0.3, "linear"), (0.7, "geometric")])
def test_tokens_are_the_blend_sampled_with_the_seed(client, tiny_tokenizer, fakes, w, blend):
    r = client.post("/generate", json={"prompt": PROMPT, "logic_weight": w, "blend": blend, "max_new_tokens": 24,
                                       "seed": 11, "top_k": 50, "temperature": 0.9})
    assert r.status_code == 200, r.text
    got = [t["id"] for t in r.json()["tokens"]]
    assert got == expected_tokens(tiny_tokenizer, fakes, PROMPT, w, 24, 11, blend, top_k=50, temperature=0.9)


def test_reported_probabilities_are_each_models(client, fakes):
    body = client.post("/generate", json={"prompt": PROMPT, "logic_weight": 0.25, "max_new_tokens": 5,
                                          "seed": 3}).json()
    for t in body["tokens"]:
        assert t["p_blend"] == pytest.approx(0.75 * t["p_gpt2"] + 0.25 * t["p_bdh"], rel=1e-5)
        assert t["logic_weight"] == 0.25
    assert body["usage"]["completion_tokens"] == len(body["tokens"])
    assert body["usage"]["prompt_tokens"] > 0 and body["timings"]["total_ms"] > 0


def test_same_seed_same_story_other_seed_other_story(client):
    req = {"prompt": PROMPT, "max_new_tokens": 30}
    a, b = (client.post("/generate", json={**req, "seed": 5}).json() for _ in range(2))
    c = client.post("/generate", json={**req, "seed": 6}).json()
    assert a["text"] == b["text"] and a["tokens"] == b["tokens"]
    assert [t["id"] for t in a["tokens"]] != [t["id"] for t in c["tokens"]]
    # No seed: one is chosen and reported, and it reproduces the story.
    d = client.post("/generate", json=req).json()
    assert client.post("/generate", json={**req, "seed": d["seed"]}).json()["text"] == d["text"]


def test_the_answer_reports_the_sampling_it_drew_with(client):
    """Defaults (the page's default preset) or the request's own, in the JSON answer and
    the stream's start event: with the seed, what writes the story again."""
    body = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 3}).json()
    assert {k: body[k] for k in NATIVE_DEFAULTS} == NATIVE_DEFAULTS
    req = {"prompt": PROMPT, "max_new_tokens": 3, "temperature": 1.3, "top_k": 7, "top_p": 0.5}
    with client.stream("POST", "/generate_stream", json=req) as r:
        start = next(d for e, d in sse_events(r) if e == "start")
    assert (start["temperature"], start["top_k"], start["top_p"]) == (1.3, 7, 0.5)


def test_stop_sequence_cuts_the_text(client):
    full = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 40, "seed": 9}).json()["text"]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    r = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 40, "seed": 9, "stop": stop}).json()
    assert r["finish_reason"] == "stop_sequence"
    assert r["text"] == full[: full.index(stop)]


def test_sse_events_concatenate_to_the_final_text(client):
    req = {"prompt": PROMPT, "max_new_tokens": 40, "seed": 9, "logic_weight": 0.6}
    with client.stream("POST", "/generate_stream", json=req) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r))
    kinds = [e for e, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"token"}
    start, end = events[0][1], events[-1][1]
    assert start["id"].startswith("gen-") and r.headers["x-generation-id"] == start["id"]
    assert "".join(d["text"] for e, d in events if e == "token") == end["text"]
    assert end["text"] == client.post("/generate", json=req).json()["text"]
    assert end["usage"]["completion_tokens"] == len(kinds) - 2


def test_end_of_text_ends_the_story(tiny_tokenizer):
    # Both fakes make end-of-text (id 0) certain from the story's 10th token on.
    prompt_len = len(tiny_tokenizer.encode("Tom").ids)
    ends = dict(end_at=prompt_len + 9)
    with fake_stack(tiny_tokenizer, gpt2=ends, bdh=ends) as stack:
        exp = expected_tokens(tiny_tokenizer, (stack.gpt2, stack.bdh), "Tom", 0.5, 64, 3, temperature=3.0)
        with httpx.Client(base_url=stack.gateway.url, timeout=30) as c:
            r = c.post("/generate", json={"prompt": "Tom", "max_new_tokens": 64, "seed": 3,
                                          "temperature": 3.0}).json()
    assert r["finish_reason"] == "eos_token"
    assert [t["id"] for t in r["tokens"]] == exp and r["tokens"][-1]["special"]


def test_stories_sharing_a_batch_and_ending_at_different_tokens_each_come_whole(tiny_tokenizer):
    # The loop sends the going stories' steps before it tells them their tokens, and tells a
    # story that ends on this token at once: each story's events must still come whole and
    # in order (start, its tokens, end), each the story it would be alone.
    lengths = {1: 2, 2: 5, 3: 9}  # seed -> max_new_tokens: three stories, three different ends
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=0.01), bdh=dict(step_delay_s=0.01)) as stack:
        def story(seed: int) -> list:
            with httpx.Client(base_url=stack.gateway.url, timeout=30) as c, \
                    c.stream("POST", "/generate_stream", json={"prompt": PROMPT, "max_new_tokens": lengths[seed],
                                                               "seed": seed}) as r:
                return list(sse_events(r))

        with concurrent.futures.ThreadPoolExecutor(len(lengths)) as pool:
            told = dict(zip(lengths, pool.map(story, lengths)))
        for seed, events in told.items():
            kinds = [e for e, _ in events]
            tokens = [d for e, d in events if e == "token"]
            assert kinds == ["start"] + ["token"] * len(tokens) + ["end"], (seed, kinds)
            assert [t["index"] for t in tokens] == list(range(len(tokens)))
            exp = expected_tokens(tiny_tokenizer, (stack.gpt2, stack.bdh), PROMPT, 0.5, lengths[seed], seed)
            assert [t["id"] for t in tokens] == exp
            assert "".join(t["text"] for t in tokens) == events[-1][1]["text"]


# ---- live steering ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_gateway(tiny_tokenizer):
    """A gateway over fakes that take 20 ms a step: time to steer a story mid-way."""
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=0.02), bdh=dict(step_delay_s=0.02)) as stack:
        yield stack.gateway


def steer_mid_stream(c: httpx.Client, body: dict, after: int, weight: float) -> tuple[list[dict], dict]:
    """Stream a story, steer it to `weight` once `after` tokens have arrived: (every token
    event, the steer's answer)."""
    with c.stream("POST", "/generate_stream", json=body) as r:
        events = sse_events(r)
        gen_id = next(events)[1]["id"]
        tokens = [next(events)[1] for _ in range(after)]
        steered = c.post(f"/generations/{gen_id}", json={"logic_weight": weight})
        assert steered.status_code == 200, steered.text
        tokens += [d for e, d in events if e == "token"]
    return tokens, steered.json()


def test_steering_changes_the_weight_from_the_next_token(slow_gateway):
    with httpx.Client(base_url=slow_gateway.url, timeout=20) as c:
        tokens, s = steer_mid_stream(c, {"prompt": PROMPT, "max_new_tokens": 30, "logic_weight": 0.0}, 1, 1.0)
        weights, changed_from = [t["logic_weight"] for t in tokens], s["applies_from_token"]
        assert s["logic_weight"] == 1.0
        assert weights[0] == 0.0 and weights[changed_from:] == [1.0] * (len(weights) - changed_from)
        gen_id = s["id"]
        assert c.post(f"/generations/{gen_id}", json={"logic_weight": 0.5}).status_code == 404  # finished
        assert c.post("/generations/gen-nope", json={"logic_weight": 0.5}).status_code == 404
        assert c.post(f"/generations/{gen_id}", json={"logic_weight": 3}).status_code == 422


def test_a_steering_schedule_writes_a_live_steered_story_again(slow_gateway):
    """Steer a story live, then ask again with its seed and, as `steering`, the weights its
    token events carry: the same tokens at the same weights (what the page's Share link does)."""
    body = {"prompt": PROMPT, "max_new_tokens": 30, "logic_weight": 0.0, "seed": 7, "temperature": 2.0}
    with httpx.Client(base_url=slow_gateway.url, timeout=20) as c:
        live, _ = steer_mid_stream(c, body, 3, 0.8)
        weights = [t["logic_weight"] for t in live]
        schedule = [{"at": i, "logic_weight": w} for i, w in enumerate(weights) if i and w != weights[i - 1]]
        assert [p["logic_weight"] for p in schedule] == [0.8]  # the steer landed mid-story
        again = c.post("/generate", json={**body, "steering": schedule}).json()
        assert [t["id"] for t in again["tokens"]] == [t["id"] for t in live]
        assert [t["logic_weight"] for t in again["tokens"]] == weights
        # without the schedule the same seed writes another story
        plain = c.post("/generate", json=body).json()
        assert [t["id"] for t in plain["tokens"]] != [t["id"] for t in live]


@pytest.mark.parametrize("w,asked,idle", [(1.0, "p_bdh", "p_gpt2"), (0.0, "p_gpt2", "p_bdh")])
def test_a_story_asks_only_the_models_its_weight_needs(tiny_tokenizer, w, asked, idle):
    """At an end of the slider the other model's share is 0: it gets no session and no step,
    and the story is the same one, token for token, as when both were asked."""
    with fake_stack(tiny_tokenizer) as (gw, g, b):
        body = {"prompt": PROMPT, "logic_weight": w, "max_new_tokens": 20, "seed": 5}
        r = httpx.post(gw.url + "/generate", json=body, timeout=20).json()
        assert [t["id"] for t in r["tokens"]] == expected_tokens(tiny_tokenizer, (g, b), PROMPT, w, 20, 5)
        assert all(t[asked] is not None and t[idle] is None for t in r["tokens"])
        idle_server = g if idle == "p_gpt2" else b
        assert idle_server.model.sessions_opened == 0 and (b if idle_server is g else g).model.sessions_opened == 1


def test_a_story_steered_off_an_end_catches_the_other_model_up_exactly(tiny_tokenizer):
    """From 1.0 to 0.5 at token 10 (by schedule; a live steer takes the same path): GPT-2's
    session opens then, on the prompt and the ten tokens written, in one prefill, and the
    story is the one written with both models asked from the start."""
    weights = [1.0] * 10 + [0.5] * 20
    with fake_stack(tiny_tokenizer) as (gw, g, b):
        r = httpx.post(gw.url + "/generate", timeout=20, json={
            "prompt": PROMPT, "logic_weight": 1.0, "max_new_tokens": 30, "seed": 8, "temperature": 1.5,
            "steering": [{"at": 10, "logic_weight": 0.5}]}).json()
        ids = [t["id"] for t in r["tokens"]]
        assert ids == expected_tokens(tiny_tokenizer, (g, b), PROMPT, weights, 30, 8, temperature=1.5)
        assert len(ids) > 10, "the story ended before the steer"
        assert g.model.sessions_opened == 1 and g.model.last_prompt == tiny_tokenizer.encode(PROMPT).ids + ids[:10]
        assert [t["p_gpt2"] is None for t in r["tokens"]] == [w == 1.0 for w in weights[:len(ids)]]
        # And back to an end: the session it no longer needs is freed at once.
        r = httpx.post(gw.url + "/generate", timeout=20, json={
            "prompt": PROMPT, "logic_weight": 0.5, "max_new_tokens": 30, "seed": 8, "temperature": 1.5,
            "steering": [{"at": 5, "logic_weight": 0.0}]}).json()
        assert [t["id"] for t in r["tokens"]] == expected_tokens(
            tiny_tokenizer, (g, b), PROMPT, [0.5] * 5 + [0.0] * 25, 30, 8, temperature=1.5)
        assert b.model.sessions_opened == 2 and closes_soon(g, b)


def test_with_one_server_down_stories_that_need_only_the_other_go_on(tiny_tokenizer):
    """GPT-2 stopped: a story at w = 1 is still written (the same one as before), one that
    needs GPT-2 gets a 503 naming it, and /ready says which role is up."""
    with fake_stack(tiny_tokenizer, connect_timeout_s=1, retry_interval_s=0.2) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            body = {"prompt": PROMPT, "logic_weight": 1.0, "max_new_tokens": 12, "seed": 2}
            before = c.post("/generate", json=body).json()
            g.stop()
            assert c.post("/generate", json=body).json()["tokens"] == before["tokens"]
            r = c.post("/generate", json={**body, "logic_weight": 0.5})
            assert r.status_code == 503 and "The creativity model (GPT-2) is not answering" in r.text, r.text
            assert g.address not in r.text and "100% logic" in r.text
            ready = c.get("/ready")
            assert ready.status_code == 503 and ready.json()["models"] == {"gpt2": False, "bdh": True}
            # Still accepted after the failure was seen, and the schedule's weights count too.
            assert c.post("/generate", json=body).status_code == 200
            steered = c.post("/generate", json={**body, "steering": [{"at": 3, "logic_weight": 0.5}]})
            assert steered.status_code == 503 and "creativity model (GPT-2)" in steered.json()["error"]["message"]


def test_a_stalled_server_holds_up_only_the_stories_that_need_it(tiny_tokenizer):
    """GPT-2 freezes (each step now takes 3 s) under a blended story: a story at w = 1 is
    written meanwhile, the same one as with nothing else running, while the blended one
    waits where it was and says for which model."""
    body = {"prompt": PROMPT, "logic_weight": 1.0, "max_new_tokens": 20, "seed": 2, "temperature": 1.5}
    with fake_stack(tiny_tokenizer) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            before = c.post("/generate", json=body).json()
            assert before["usage"]["completion_tokens"] == 20
            blended = {**body, "logic_weight": 0.5, "max_new_tokens": 60}
            with c.stream("POST", "/generate_stream", json=blended) as r:
                events = sse_events(r)
                gen_id = next(events)[1]["id"]
                next(events)
                g.model.step_delay_s = 3.0
                seen = []  # the answer that showed the stall, for the bound below and a failure's message
                assert wait_until(lambda: seen.append(c.get(f"/generations/{gen_id}").json())
                                  or seen[-1]["waiting_for"] == ["gpt2"]), seen[-1:]
                stalled = seen[-1]
                alone = c.post("/generate", json=body).json()
                assert alone["tokens"] == before["tokens"]
                now = c.get(f"/generations/{gen_id}").json()
                assert now["waiting_for"] == ["gpt2"] and now["tokens_done"] <= stalled["tokens_done"] + 1
                g.model.step_delay_s = 0.0


def test_a_story_outlives_its_model_server_restarting(tiny_tokenizer):
    """GPT-2's server goes away mid-story and comes back on the same address: the story
    waits for it (GET /generations/{id} names it), reopens its session from the story's
    tokens and goes on, and is token for token the story an uninterrupted run writes."""
    body = {"prompt": PROMPT, "logic_weight": 0.5, "max_new_tokens": 40, "temperature": 0.7}
    # Fakes that never end a story, so it runs all 40 tokens whatever the seed.
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=0.02, never_end=True), bdh=dict(never_end=True),
                    recover_timeout_s=20, retry_interval_s=0.2) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            whole = c.post("/generate", json={**body, "seed": 1}).json()
            assert whole["usage"]["completion_tokens"] == 40
            back = None
            try:
                with c.stream("POST", "/generate_stream", json={**body, "seed": 1}) as r:
                    events = sse_events(r)
                    start = next(events)[1]
                    got = [next(events)[1] for _ in range(5)]
                    g.stop()  # the server goes away mid-story: the story says what it waits for...

                    def waits_for_gpt2() -> bool:
                        where = c.get(f"/generations/{start['id']}").json()
                        assert "error" not in where, where
                        return "gpt2" in where.get("waiting_for", ())

                    assert wait_until(waits_for_gpt2)
                    back = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1, never_end=True),
                                      port=g.port)
                    rest = list(events)  # ...and comes back on the same address
            finally:
                if back is not None:
                    back.stop()
            got += [ev for e, ev in rest if e == "token"]
            assert rest[-1][0] == "end", rest[-1]
            assert [t["id"] for t in got] == [t["id"] for t in whole["tokens"]]


def test_a_new_gateway_reaches_a_server_just_up_where_another_saw_none(tiny_tokenizer):
    """One gateway has seen BDH's port refuse (nothing listened there yet) and keeps
    trying; BDH then starts on that port and a second gateway in the same process asks it
    at once. The second must reach it: its channels share no connection, and so no
    back-off, with the first's (gRPC shares them by default)."""
    g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1))
    port = free_port("127.0.0.1")
    first = start_gateway(g.address, f"127.0.0.1:{port}", connect_timeout_s=1, retry_interval_s=0.2)
    b = second = None
    try:
        with httpx.Client(base_url=first.url, timeout=20) as c:
            assert c.get("/ready").status_code == 503
        b = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="bdh", salt=2), port=port)
        second = start_gateway(g.address, b.address, connect_timeout_s=1)
        with httpx.Client(base_url=second.url, timeout=20) as c:
            r = c.post("/generate", json={"prompt": PROMPT, "logic_weight": 0.5, "max_new_tokens": 4})
            assert r.status_code == 200, r.text
    finally:
        for server in (second, b, first, g):
            if server is not None:
                server.stop()


def test_a_server_not_up_is_tried_again_every_retry_interval(tiny_tokenizer):
    """While BDH's port closes every connection, the gateway (retry_interval_s 0.2) keeps
    trying it every 0.2 s or so, as the setting says, so a server that comes back is reached
    within about that; gRPC's own back-off, growing from 1 s by 1.6x, tries 3 or 4 times in
    these 4 s."""
    g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1))
    down = ClosingPort()
    gw = start_gateway(g.address, down.address, connect_timeout_s=1, retry_interval_s=0.2)
    try:
        time.sleep(4)
        assert down.connections >= 8, f"{down.connections} tries in 4 s"
    finally:
        for server in (gw, down, g):
            server.stop()


def test_a_steering_schedule_applies_from_its_token(client):
    r = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 12, "logic_weight": 0.25, "seed": 3,
                                       "steering": [{"at": 4, "logic_weight": 1.0}, {"at": 9, "logic_weight": 0}]})
    assert r.status_code == 200, r.text
    weights = [t["logic_weight"] for t in r.json()["tokens"]]
    assert weights == ([0.25] * 4 + [1.0] * 5 + [0.0] * 3)[: len(weights)]


def test_live_steering_takes_over_from_a_schedule(slow_gateway):
    """Moving the slider while a steered story is replayed: the person wins, the rest of the
    schedule is dropped (it would otherwise undo the steer at its next point)."""
    body = {"prompt": PROMPT, "max_new_tokens": 40, "logic_weight": 0.3, "seed": 1, "temperature": 0.5,
            "steering": [{"at": 0, "logic_weight": 0.6}, {"at": 12, "logic_weight": 0.1}]}
    with httpx.Client(base_url=slow_gateway.url, timeout=20) as c:
        tokens, s = steer_mid_stream(c, body, 3, 1.0)
    weights, k = [t["logic_weight"] for t in tokens], s["applies_from_token"]
    assert 3 <= k < 12  # the steer lands before the schedule's second point (tokens come every 20 ms)
    assert weights[:k] == [0.6] * k and weights[k:] == [1.0] * (len(weights) - k)


@pytest.mark.parametrize("slow", ["gpt2", "bdh"])
def test_a_running_story_says_which_model_it_is_waiting_for(tiny_tokenizer, slow):
    """One server answers each step in 0.6 s, the other at once: a stalled story's page can
    name the slow one; once the story is over nothing is waited for."""
    delay = {"gpt2": 0.0, "bdh": 0.0, slow: 0.6}
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=delay["gpt2"]),
                    bdh=dict(step_delay_s=delay["bdh"])) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            with c.stream("POST", "/generate_stream", json={"prompt": PROMPT, "max_new_tokens": 5}) as r:
                events = sse_events(r)
                gen_id = next(events)[1]["id"]
                next(events)  # the first token: the next step is under way
                seen = set()
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline and seen != {(slow,)}:
                    seen = {tuple(c.get(f"/generations/{gen_id}").json()["waiting_for"]) for _ in range(3)}
                assert seen == {(slow,)}
        # the story left (its stream closed): once the step under way ends, nothing is due
        loop = gw.app.state.gateway.loop
        assert wait_until(lambda: not loop.waiting_for, 3), loop.waiting_for


@pytest.mark.parametrize("steering,says", [
    ([{"at": 5, "logic_weight": 0.1}, {"at": 5, "logic_weight": 0.9}], "steering[1].at is 5"),
    ([{"at": -1, "logic_weight": 0.1}], "greater than or equal to 0"),
    ([{"at": 2, "logic_weight": 1.5}], "less than or equal to 1"),
    ([{"at": 2, "weight": 0.5}], "logic_weight"),
    ([{"at": i, "logic_weight": 0.5} for i in range(1, 66)], "at most 64"),
    ({"at": 2, "logic_weight": 0.5}, "valid list"),
])
def test_a_bad_steering_schedule_is_refused_by_name(client, steering, says):
    r = client.post("/generate", json={"prompt": PROMPT, "steering": steering})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["param"].startswith("steering") and says in err["message"], err


# ---- bad input: 422 naming the field -------------------------------------------------------


@pytest.mark.parametrize("raw,field", [
    ('{"prompt": "Tom", "logic_weight": NaN}', "logic_weight"),
    ('{"prompt": "Tom", "logic_weight": Infinity}', "logic_weight"),
    ('{"prompt": "Tom", "temperature": -Infinity}', "temperature"),
    ('{"prompt": "Tom", "top_p": 1e999}', "top_p"),
])
def test_non_finite_numbers_are_422_naming_the_field_not_500(client, raw, field):
    r = client.post("/generate", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == field


@pytest.mark.parametrize("change,field", [
    ({"logic_weight": True}, "logic_weight"), ({"seed": "7"}, "seed"), ({"temperature": "0.5"}, "temperature"),
    ({"max_new_tokens": 2.0}, "max_new_tokens"),
])
def test_no_loose_coercion(client, change, field):
    r = client.post("/generate", json={"prompt": PROMPT, **change})
    assert r.status_code == 422 and r.json()["error"]["param"] == field, r.text


def test_typed_control_text_stays_text(client, fakes, tiny_tokenizer):
    from plotarmour.tokenizer import eot_id

    r = client.post("/generate", json={"prompt": "Tom <|endoftext|> Sue", "max_new_tokens": 1})
    assert r.status_code == 200, r.text
    g, _ = fakes
    assert g.model.last_prompt and eot_id(tiny_tokenizer) not in g.model.last_prompt
    assert r.json()["usage"]["prompt_tokens"] == len(g.model.last_prompt) > 3


@pytest.mark.parametrize("change,field", [
    ({"logic_weight": 1.5}, "logic_weight"), ({"logic_weight": -0.1}, "logic_weight"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 65}, "max_new_tokens"),
    ({"prompt": ""}, "prompt"), ({"prompt": "Lily and Tom " * 40}, "prompt"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"temperature": -1}, "temperature"), ({"blend": "harmonic"}, "blend"), ({"seed": -1}, "seed"),
    ({"logic_wieght": 0.2}, "logic_wieght"), ({"stop": 5}, "stop"),
])
@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
def test_bad_input_is_422_naming_the_field(client, route, change, field):
    r = client.post(route, json={"prompt": PROMPT, **change})
    assert r.status_code == 422, r.text
    assert error_param(r).startswith(field) and field in r.json()["error"]["message"]


def test_bad_validate_and_completion_input(client):
    assert error_param(client.post("/validate", json={"context": "x", "draft": ""})) == "draft"
    for sensitivity in (-0.1, 1.5, "high"):
        r = client.post("/validate", json={"draft": "x", "sensitivity": sensitivity})
        assert r.status_code == 422 and error_param(r) == "sensitivity"
    # The old knob is gone: sending it is a mistake worth hearing about, not silently ignored.
    assert error_param(client.post("/validate", json={"draft": "x", "min_excess_bits": 3})) == "min_excess_bits"
    r = client.post("/v1/completions", json={"prompt": "x", "logic_weight": 7})
    assert r.status_code == 422 and error_param(r) == "logic_weight"
    assert error_param(client.post("/v1/completions", json={"prompt": "x", "n": 17})) == "n"


# ---- the limits, dead servers, failures mid-stream ------------------------------------------


def test_over_the_concurrency_limit_is_429(tiny_tokenizer):
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=0.05), max_concurrent=1) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            with c.stream("POST", "/generate_stream", json={"prompt": PROMPT, "max_new_tokens": 20}) as r:
                lines = r.iter_lines()  # keep a reference: dropping it would close the stream
                next(lines)  # the first generation is running
                busy = c.post("/generate", json={"prompt": PROMPT})
                assert busy.status_code == 429 and "limit of 1" in busy.json()["error"]["message"]
            # The slot comes back once the gateway notices the closed stream.
            assert wait_until(lambda: c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).status_code
                              != 429, 5), "the slot of a closed stream was never released"
            assert c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2}).status_code == 200
            rejected = re.search(r"^plotarmour_gateway_rejected_total (\S+)$", c.get("/metrics").text, re.M)
            assert rejected and float(rejected.group(1)) >= 1


def test_starts_without_servers_then_becomes_ready(tiny_tokenizer):
    gp, bp = free_port("127.0.0.1"), free_port("127.0.0.1")
    gw = start_gateway(f"127.0.0.1:{gp}", f"127.0.0.1:{bp}", connect_timeout_s=1, retry_interval_s=0.1)
    try:
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            assert c.get("/health").status_code == 200
            t0 = time.monotonic()
            r = c.post("/generate", json={"prompt": PROMPT})
            assert r.status_code == 503 and time.monotonic() - t0 < 5
            # In words (the addresses are in the log): which model, and what to do.
            assert "is not answering" in r.json()["error"]["message"] and "127.0.0.1" not in r.text
            ready = c.get("/ready")
            assert ready.status_code == 503
            assert any("gpt2" in p for p in ready.json()["problems"]) and any("bdh" in p for p in ready.json()["problems"])
            g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1), port=gp)
            b = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="bdh", salt=2), port=bp)
            try:
                assert wait_until(lambda: c.get("/ready").status_code == 200)
                assert c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 3}).status_code == 200
            finally:
                g.stop()
                b.stop()
            # Both gone again: 503, not a hang.
            assert c.post("/generate", json={"prompt": PROMPT}).status_code == 503
            assert c.post("/validate", json={"draft": "Tom ran."}).status_code == 503
    finally:
        gw.stop()


def test_the_log_says_ready_only_once_the_servers_are(tiny_tokenizer, caplog):
    """The gateway re-checks absent servers every retry_interval_s; while they are still
    absent its log says so (it said "model servers ready" at every try)."""
    caplog.set_level("DEBUG", logger="plotarmour.gateway")

    def said(text: str) -> int:
        return sum(r.getMessage().startswith(text) for r in caplog.records)

    gp, bp = free_port("127.0.0.1"), free_port("127.0.0.1")
    gw = start_gateway(f"127.0.0.1:{gp}", f"127.0.0.1:{bp}", connect_timeout_s=1, retry_interval_s=0.1)
    try:
        assert wait_until(lambda: said("model servers not ready") >= 3)
        assert said("model servers ready") == 0
        g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1), port=gp)
        b = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="bdh", salt=2), port=bp)
        try:
            assert wait_until(lambda: said("model servers ready") == 1)
        finally:
            g.stop()
            b.stop()
    finally:
        gw.stop()


def test_failure_mid_stream_is_an_error_event_then_the_end(tiny_tokenizer, caplog):
    with fake_stack(tiny_tokenizer, bdh=dict(fail_at_step=4)) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            # One seed for both requests: the first shows it writes 4 tokens before the failure
            # (a random seed could draw end-of-text first, and the story would end in time).
            with c.stream("POST", "/generate_stream", json={"prompt": PROMPT, "max_new_tokens": 30, "seed": 5}) as r:
                events = list(sse_events(r))
            assert [e for e, _ in events][-1] == "error"
            assert sum(e == "token" for e, _ in events) == 4
            err = events[-1][1]
            assert err["status"] == 503 and "The logic model (BDH) is not answering" in err["error"]["message"]
            assert "fake failure" not in err["error"]["message"] and "fake failure" in caplog.text  # the log has it
            r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 30, "seed": 5})
            assert r.status_code == 503 and r.json()["error"]["message"] == err["error"]["message"]
        assert closes_soon(g, b)


def test_a_stream_the_server_ended_leaves_no_task_behind(tiny_tokenizer):
    """grpc drains each Batch stream's requests in a task of its own; when the server ends
    the stream, that task must end too, not wait on the outbox for the gateway's life."""
    import asyncio

    with fake_stack(tiny_tokenizer, bdh=dict(fail_at_step=2)) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            assert c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 30, "seed": 5}).status_code == 503
        loop = gw.app.state.gateway.loop._task.get_loop()

        async def drains() -> int:
            for _ in range(100):  # up to 5 s for the failed stream's tasks to see its end
                n = sum("_consume_request_iterator" in repr(t.get_coro()) for t in asyncio.all_tasks() if not t.done())
                if n <= 1:
                    break
                await asyncio.sleep(0.05)
            return n

        # One stream is still open (GPT-2's, idle); BDH's ended with the failure.
        assert asyncio.run_coroutine_threadsafe(drains(), loop).result(timeout=10) == 1


def test_a_broken_row_fails_only_its_own_story(tiny_tokenizer):
    poison = tiny_tokenizer.encode("Tom").ids[0]
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=0.02, poison_token=poison),
                    bdh=dict(step_delay_s=0.02)) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c, \
                concurrent.futures.ThreadPoolExecutor(2) as pool:
            healthy = pool.submit(c.post, "/generate", json={"prompt": PROMPT, "max_new_tokens": 20, "seed": 1,
                                                             "temperature": 0})
            time.sleep(0.1)  # the healthy story is running when the broken one joins
            broken = c.post("/generate", json={"prompt": "Tom", "max_new_tokens": 20})
            assert broken.status_code == 503 and "unusable answer" in broken.json()["error"]["message"]
            assert "The creativity model (GPT-2)" in broken.json()["error"]["message"]
            assert healthy.result().status_code == 200, healthy.result().text
        assert closes_soon(g, b)


def test_gateway_shutdown_ends_running_stories_with_an_error(tiny_tokenizer):
    import asyncio

    from services.gateway.backends import ModelPair
    from services.gateway.errors import ModelUnavailable
    from services.gateway.params import GenerationParams
    from services.gateway.running import Generation
    from services.gateway.scheduler import Scheduler, generate

    g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1, step_delay_s=0.05))
    b = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="bdh", salt=2, step_delay_s=0.05))

    async def story_across_shutdown() -> list[str]:
        pair = ModelPair(GatewaySettings(gpt2_address=g.address, bdh_address=b.address))
        await pair.refresh()
        loop = Scheduler(pair)
        params = GenerationParams(prompt_ids=tiny_tokenizer.encode(PROMPT).ids, logic_weight=0.5,
                                  max_new_tokens=1000, seed=0)
        events = generate(loop, Generation(id="gen-test", logic_weight=0.5), params)
        seen = [(await anext(events))["type"], (await anext(events))["type"]]
        await loop.stop()
        try:
            with pytest.raises(ModelUnavailable, match="shutting down"):
                async for ev in events:  # what was already produced, then the error
                    seen.append(ev["type"])
        finally:
            await pair.aclose()
        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(story_across_shutdown(), 30))
        assert seen[:2] == ["start", "token"] and "end" not in seen
        assert closes_soon(g, b)
    finally:
        g.stop()
        b.stop()


def test_slow_server_times_out_with_503(tiny_tokenizer):
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=3), step_timeout_s=0.3) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            t0 = time.monotonic()
            r = c.post("/generate", json={"prompt": PROMPT})
            assert r.status_code == 503 and time.monotonic() - t0 < 2.5
            assert "The creativity model (GPT-2) is not answering" in r.json()["error"]["message"]


def test_client_disconnect_ends_the_generation_and_both_sessions(tiny_tokenizer):
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=0.01), bdh=dict(step_delay_s=0.01),
                    max_new_tokens_limit=5000, max_prompt_tokens=8, max_concurrent=1) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            with c.stream("POST", "/generate_stream", json={"prompt": "Tom", "max_new_tokens": 5000,
                                                            "temperature": 0.01}) as r:
                it = r.iter_lines()
                for _ in range(6):
                    next(it)
                assert g.model.open_sessions == 1 and b.model.open_sessions == 1
            assert closes_soon(g, b)
            # The generation is over (not still running unseen) and its slot is free again.
            assert c.post("/generate", json={"prompt": "Tom", "max_new_tokens": 2}).status_code == 200


# ---- start-up checks, operations routes ---------------------------------------------------


@pytest.mark.parametrize("what", ["fingerprint", "vocab"])
def test_refuses_servers_with_different_tokenizers(tiny_tokenizer, corpus_file, what):
    import asyncio

    from plotarmour.tokenizer import train_tokenizer
    from services.gateway import create_app
    from services.gateway.errors import IncompatibleModels

    other = train_tokenizer([corpus_file], vocab_size=300) if what == "vocab" else tiny_tokenizer
    override = "f" * 64 if what == "fingerprint" else None
    g = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="gpt2", salt=1))
    b = FakeServer(FakeLanguageModel(other, model_type="bdh", salt=2, fingerprint_override=override))
    app = create_app(GatewaySettings(gpt2_address=g.address, bdh_address=b.address))

    async def startup():
        async with app.router.lifespan_context(app):
            pass

    try:
        with pytest.raises(IncompatibleModels) as e:
            asyncio.run(startup())
        msg = str(e.value)
        assert g.address in msg and b.address in msg and "fake-gpt2" in msg and "fake-bdh" in msg
        assert ("fingerprints differ" if what == "fingerprint" else "vocabulary sizes differ: gpt2 'fake-gpt2'") in msg
    finally:
        g.stop()
        b.stop()


def test_health_ready_info_metrics(client, fakes):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    info = client.get("/info").json()
    assert info["models"]["gpt2"]["name"] == "fake-gpt2" and info["models"]["bdh"]["model_type"] == "bdh"
    assert info["gateway"]["limits"]["max_new_tokens_limit"] == 64
    client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 3})
    m = client.get("/metrics")
    assert m.status_code == 200 and "plotarmour_gateway_generated_tokens_total" in m.text
    assert 'route="/generate",status="200"' in m.text
    assert "text/html" in client.get("/").headers["content-type"]


def test_validate_scores_the_draft_under_both_models(client, tiny_tokenizer, fakes):
    # A context whose words the GPT-2 fake expects at two draft words, more with the context than without
    context, draft = "The cat was sad.", " Tom found a red ball. Tom was happy."
    r = client.post("/validate", json={"context": context, "draft": draft, "sensitivity": 1.0})
    assert r.status_code == 200, r.text
    body = r.json()
    enc = tiny_tokenizer.encode(draft)
    ids = tiny_tokenizer.encode(context).ids + enc.ids
    alone = [0] + enc.ids  # the draft without its context: after end-of-text (id 0 here)
    n_ctx = len(ids) - len(enc.ids)
    assert [t["id"] for t in body["tokens"]] == enc.ids
    assert "".join(t["text"] for t in body["tokens"]) == draft

    def lp(fake, seq, pos):  # log p of seq[pos] given seq[:pos], as the fake scores it
        return float(fake.model.dist(seq[pos - 1], pos)[seq[pos]])

    for k, t in enumerate(body["tokens"]):  # token k of the draft, given everything before it
        for fake, key in ((fakes[0], "surprisal_gpt2_bits"), (fakes[1], "surprisal_bdh_bits")):
            assert t[key] == pytest.approx(-lp(fake, ids, n_ctx + k) / np.log(2), abs=1e-3)

    # Words, never pieces: each word's tokens are merged, with and without the context.
    words = body["words"]
    assert [w["text"] for w in words] == ["Tom", "found", "a", "red", "ball", ".", "Tom", "was", "happy", "."]
    assert [w["text"] for w in words if w["punctuation"]] == [".", "."]
    for w in words:
        assert draft[w["start"]: w["end"]] == w["text"]
        mine = [k for k, (a, b) in enumerate(enc.offsets) if a < w["end"] and b > w["start"]]
        for fake, name in zip(fakes, ("gpt2", "bdh")):
            with_ctx = sum(lp(fake, ids, n_ctx + k) for k in mine) / np.log(2)
            without = sum(lp(fake, alone, 1 + k) for k in mine) / np.log(2)
            assert w["surprisal_bits"][name] == pytest.approx(-with_ctx, abs=1e-3)
            assert w["context_bits"][name] == pytest.approx(with_ctx - without, abs=1e-3)
        assert isinstance(w["score"], float) and isinstance(w["flagged"], bool)
    # The words' mean, plus 0.15 × the draft's largest slot substitution.
    assert body["score"] == pytest.approx(np.mean([w["score"] for w in words])
                                          + 0.15 * max(w["substitution_bits"] for w in words), abs=1e-3)
    assert not any(w["flagged"] for w in words if w["punctuation"])

    # The flag rule: at a word's first token, a context token GPT-2 expected there instead
    # (top-64, p ≥ 0.03, not later in the draft), boosted by the context more than the
    # word and likelier than it: min(shift, shortfall) bits, recomputed here from the fake.
    ctx_ids, ln2 = set(tiny_tokenizer.encode(context).ids), np.log(2)

    def displaced(w):
        t = min(k for k, (a, b) in enumerate(enc.offsets) if a < w["end"] and b > w["start"])
        own = enc.ids[t]
        row_c = fakes[0].model.dist(ids[n_ctx + t - 1], n_ctx + t)
        row_n = fakes[0].model.dist(alone[t], 1 + t)
        top_n = np.argsort(-row_n, kind="stable")[:64]
        best, by = 0.0, None
        for e in np.argsort(-row_c, kind="stable")[:64]:
            if np.exp(row_c[e]) < 0.03:
                break
            if e in enc.ids[t:] or e not in ctx_ids:
                continue
            no = row_n[e] if e in top_n else row_n[top_n[-1]]
            d = min((row_c[e] - no - row_c[own] + row_n[own]) / ln2, (row_c[e] - row_c[own]) / ln2)
            if d > best:
                best, by = d, int(e)
        return best, by, t

    assert body["threshold_bits"] == pytest.approx(0.3)  # sensitivity 1.0
    found = {}
    for w in words:
        d, by, t = (0.0, None, None) if w["punctuation"] else displaced(w)
        assert w["displaced_bits"] == pytest.approx(d, abs=1e-3)
        assert w["flagged"] == (d > 0 and d >= body["threshold_bits"])
        if w["flagged"]:
            found[w["start"]] = (d, by, t)
    # The fakes' distributions do displace something here: each contradiction covers
    # flagged words only, names what GPT-2 expected and lists what each model expected.
    assert body["contradictions"] and body["consistent"] is False
    flagged = [w for w in words if w["flagged"]]
    assert {(w["start"], w["end"]) for w in flagged} == {
        (w["start"], w["end"]) for w in words for c in body["contradictions"] if c["start"] <= w["start"] < c["end"]}
    for c in body["contradictions"]:
        worst = max((w for w in flagged if c["start"] <= w["start"] < c["end"]), key=lambda w: w["displaced_bits"])
        d, by, first = found[worst["start"]]
        assert draft[c["start"]: c["end"]] == c["text"] and c["score"] == pytest.approx(d, abs=1e-3)
        e = tiny_tokenizer.decode([by]).strip()
        assert c["reason"].startswith(f"{worst['text']!r} where GPT-2 expected {e!r} (this context makes {e!r} ")
        assert c["reason"].endswith(f"× likelier than {worst['text']!r})")
        for fake, name in zip(fakes, ("gpt2", "bdh")):
            row = fake.model.dist(ids[n_ctx + first - 1], n_ctx + first)
            want = [int(i) for i in np.argsort(-row, kind="stable")[:6] if i != enc.ids[first]][:5]
            assert [a["text"] for a in c["expected"][name]] == [tiny_tokenizer.decode([i]) for i in want]
            assert [a["p"] for a in c["expected"][name]] == pytest.approx(np.exp(row[want]).tolist(), abs=1e-5)

    # Sensitivity 0 flags at most what 1 flags; the scores do not move.
    strict = client.post("/validate", json={"context": context, "draft": draft, "sensitivity": 0.0}).json()
    assert strict["threshold_bits"] == pytest.approx(3.3)
    assert {w["text"] for w in strict["words"] if w["flagged"]} <= {w["text"] for w in flagged}
    assert strict["consistent"] == (not strict["contradictions"])
    assert strict["score"] == body["score"] and [w["score"] for w in strict["words"]] == [w["score"] for w in words]


def test_validate_without_a_context_flags_nothing(client):
    body = client.post("/validate", json={"draft": " Tom found a red ball.", "sensitivity": 1.0}).json()
    assert body["consistent"] is True and body["contradictions"] == []
    assert all(w["context_bits"] == {"gpt2": 0.0, "bdh": 0.0} and not w["flagged"] for w in body["words"])
    assert all(w["displaced_bits"] == 0.0 for w in body["words"])


def test_openai_client_works(gateway, client):
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    native = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 12, "seed": 4,  # OpenAI's defaults
                                            "logic_weight": 0.8, "temperature": 1.0, "top_p": 1.0}).json()
    c = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=12, seed=4,
                              extra_body={"logic_weight": 0.8})
    assert c.choices[0].text == native["text"] and c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 12
    chunks = list(oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=12, seed=4, stream=True,
                                        extra_body={"logic_weight": 0.8}))
    assert "".join(ch.choices[0].text for ch in chunks) == native["text"]
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.UnprocessableEntityError, match="logic_weight"):
        oa.completions.create(model="plotarmour", prompt=PROMPT, extra_body={"logic_weight": 2})


def test_cli_streams_the_story(gateway, client, capsys):
    from plotarmour.cli import main as cli_main

    native = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 15, "seed": 2,
                                            "logic_weight": 0.7}).json()
    assert cli_main(["generate", PROMPT, "--logic-weight", "0.7", "--max-new-tokens", "15", "--seed", "2",
                     "--url", gateway.url]) == 0
    assert capsys.readouterr().out == native["text"] + "\n"
    assert cli_main(["generate", PROMPT, "--logic-weight", "1.7", "--url", gateway.url]) == 1
    assert "error 422: logic_weight" in capsys.readouterr().err


def test_docs_work_offline(client):
    """/docs loads Swagger UI from the gateway itself (a package's files), never from a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text.replace("https://fastapi.tiangolo.com", "")
    for asset in ("/static/swagger-ui/swagger-ui-bundle.js", "/static/swagger-ui/swagger-ui.css"):
        assert asset in page.text
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 10_000, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "PlotArmour gateway"


def test_a_utf16_body_cut_into_chunks_is_still_refused(tiny_tokenizer):
    """Over a real connection, in chunks that arrive apart: the first four bytes decide,
    however the body is cut (a first chunk of one byte passed the check, and json.loads
    sniffs the whole body)."""
    body = '{"prompt": "Tom", "max_new_tokens": 2}'.encode("utf-16-le")

    def chunks():
        for part in (body[:1], body[1:3], body[3:]):
            yield part
            time.sleep(0.05)

    with fake_stack(tiny_tokenizer) as (gw, g, b):
        r = httpx.post(gw.url + "/generate", content=chunks(), headers={"Content-Type": "application/json"},
                       timeout=20)
        assert r.status_code == 400 and "not valid UTF-8" in r.text, r.text
