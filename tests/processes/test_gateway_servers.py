"""The gateway in front of the real BDH and GPT-2 model servers (tiny checkpoints,
subprocesses on 127.0.0.1, port 0) — reproduction, streaming, the validator, and what
happens when a server dies or a client leaves. The OpenAI clients: test_clients_openai.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import httpx
import numpy as np
import pytest
from harness import open_sessions, sse_events, wait_until

from plotarmour import sampling
from services.gateway.presets import NATIVE_DEFAULTS
from services.gateway.settings import GatewaySettings
from services.gateway.validator import Expected, displaced_bits, group_words
from fake_servers import GatewayThread

torch = pytest.importorskip("torch")

PROMPT = "Once upon a time, Lily found"


@pytest.fixture(scope="module")
def gateway(gpt2_server, bdh_server):
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh_server.address, port=0))
    yield gw
    gw.stop()


@pytest.fixture()
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def engines(tiny_pair):
    from plotarmour.checkpoint import load_checkpoint

    return {name: load_checkpoint(path).engine() for name, path in tiny_pair.items()}


def as_sent(logits, first: bool, half: bool = True) -> np.ndarray:
    """The log-probs the gateway receives: a prompt's row in float32, each step's in
    float16 (its default step_rows) or float32."""
    lp = torch.log_softmax(logits.float(), dim=-1).numpy()
    return lp if first or not half else lp.astype(np.float16).astype(np.float32)


def reference(engines, which: str, prompt_ids: list[int], n: int, seed: int, eot: int, half: bool = True,
              **params) -> list[int]:
    """One model alone, in process, with the gateway's own sampling functions and seed."""
    eng = engines[which]
    max_context = min(e.max_context for e in engines.values())  # the gateway stops at the smaller one
    rng, sp = sampling.make_rng(seed), sampling.SamplingParams(**{**NATIVE_DEFAULTS, **params})
    sid, logits = eng.open(prompt_ids)
    out = []
    try:
        while len(out) < n:
            lp = as_sent(logits, first=not out, half=half)
            out.append(sampling.sample(sampling.probs(lp), sp, rng))
            if out[-1] == eot or len(prompt_ids) + len(out) >= max_context:
                break
            logits = eng.step({sid: out[-1]})[0]
    finally:
        eng.close(sid)
    return out




def blended_reference(engines, prompt_ids: list[int], n: int, seed: int, eot: int, w: float) -> list[int]:
    """Both models in process, blended at w and drawn with the gateway's own functions."""
    rng, sp = sampling.make_rng(seed), sampling.SamplingParams(**NATIVE_DEFAULTS)
    opened = {m: engines[m].open(prompt_ids) for m in ("gpt2", "bdh")}
    sids, rows = {m: o[0] for m, o in opened.items()}, {m: o[1] for m, o in opened.items()}
    out = []
    try:
        while len(out) < n:
            lp = {m: as_sent(r, first=not out) for m, r in rows.items()}
            out.append(sampling.sample(sampling.blend(lp["gpt2"], lp["bdh"], w), sp, rng))
            if out[-1] == eot:
                break
            rows = {m: engines[m].step({sids[m]: out[-1]})[0] for m in sids}
    finally:
        for m, sid in sids.items():
            engines[m].close(sid)
    return out


def seed_without_eot(engines, tok, eot, n: int, w: float = 0.0) -> int:
    """A seed whose story at weight w runs n tokens without end-of-text (untrained models
    emit it about once in V tokens, which would end a stream too early)."""
    ids = tok.encode(PROMPT).ids
    for seed in range(50):
        story = reference(engines, "gpt2", ids, n, seed, eot) if w == 0 else blended_reference(engines, ids, n, seed,
                                                                                                 eot, w)
        if eot not in story:
            return seed
    pytest.fail("no seed without end-of-text")


# ---- reproduction ---------------------------------------------------------------------


@pytest.mark.parametrize("w,alone", [(0.0, "gpt2"), (1.0, "bdh")])
@pytest.mark.parametrize("params", [{}, {"temperature": 0.8, "top_k": 40, "top_p": 0.9}])
def test_endpoint_weights_reproduce_one_model_alone(client, engines, tiny_tokenizer, w, alone, params):
    from plotarmour.tokenizer import eot_id

    ids = tiny_tokenizer.encode(PROMPT).ids
    for blend in ("linear", "geometric"):
        r = client.post("/generate", json={"prompt": PROMPT, "logic_weight": w, "blend": blend, "seed": 1234,
                                           "max_new_tokens": 48, **params})
        assert r.status_code == 200, r.text
        got = [t["id"] for t in r.json()["tokens"]]
        assert got == reference(engines, alone, ids, 48, 1234, eot_id(tiny_tokenizer), **params)
        probs_alone = [t["p_gpt2" if alone == "gpt2" else "p_bdh"] for t in r.json()["tokens"]]
        # p_blend comes from the row renormalised, p_gpt2 / p_bdh from the row as sent: float16
        # rows sum to 1 only to within their rounding (1e-4 here; float32 rows: 1e-6).
        assert [t["p_blend"] for t in r.json()["tokens"]] == pytest.approx(probs_alone, rel=5e-4)


def test_with_float32_step_rows_weight_0_is_gpt2_alone_exactly(gpt2_server, bdh_server, engines, tiny_tokenizer):
    from plotarmour.tokenizer import eot_id

    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh_server.address, port=0,
                                       step_rows="float32"))
    try:
        r = httpx.post(f"{gw.url}/generate", json={"prompt": PROMPT, "logic_weight": 0, "seed": 99,
                                                   "max_new_tokens": 32}, timeout=60)
    finally:
        gw.stop()
    assert r.status_code == 200, r.text
    ids = tiny_tokenizer.encode(PROMPT).ids
    assert [t["id"] for t in r.json()["tokens"]] == reference(engines, "gpt2", ids, 32, 99, eot_id(tiny_tokenizer),
                                                              half=False)
    assert [t["p_blend"] for t in r.json()["tokens"]] == pytest.approx([t["p_gpt2"] for t in r.json()["tokens"]],
                                                                       rel=1e-5)


def test_same_seed_same_story_and_sse_concatenates(client):
    req = {"prompt": PROMPT, "logic_weight": 0.5, "seed": 77, "max_new_tokens": 40}
    a, b = (client.post("/generate", json=req).json() for _ in range(2))
    assert a["text"] == b["text"] and [t["id"] for t in a["tokens"]] == [t["id"] for t in b["tokens"]]
    with client.stream("POST", "/generate_stream", json=req) as r:
        events = list(sse_events(r))
    assert events[0][0] == "start" and events[-1][0] == "end"
    assert "".join(d["text"] for e, d in events if e == "token") == events[-1][1]["text"] == a["text"]
    assert [d["id"] for e, d in events if e == "token"] == [t["id"] for t in a["tokens"]]


def test_validate_matches_in_process_scores(client, engines, tiny_tokenizer):
    context, draft = "Once upon a time, Tom found a big tree.", " Tom was happy. The end."
    r = client.post("/validate", json={"context": context, "draft": draft, "sensitivity": 1.0})
    assert r.status_code == 200, r.text
    body = r.json()
    enc = tiny_tokenizer.encode(draft)
    ids = tiny_tokenizer.encode(context).ids + enc.ids
    alone = [0] + enc.ids  # end-of-text (id 0 in the tiny tokenizer), then the draft
    n = len(enc.ids)
    words = group_words(draft, enc.offsets)
    for name in ("gpt2", "bdh"):
        eng = engines[name]
        with_ctx = eng.score(ids)[-n:].numpy()
        without = eng.score(alone).numpy()
        with torch.inference_mode():
            logp = torch.log_softmax(eng.feed(eng.begin(), ids[:-1], "all"), -1)[-n:]  # (n, V)
            logp_alone = torch.log_softmax(eng.feed(eng.begin(), alone[:-1], "all"), -1)  # (n, V)
        entropy = -(logp.exp() * logp).sum(-1).numpy()
        if name == "gpt2":  # the flag rule's displaced bits, from the engine's own top-64
            top, top_alone = logp.topk(64), logp_alone.topk(64)
            d, _ = displaced_bits(words, enc.ids, with_ctx, without,
                                  Expected(top.indices.numpy(), top.values.numpy()),
                                  Expected(top_alone.indices.numpy(), top_alone.values.numpy()),
                                  tiny_tokenizer.encode(context).ids)
            assert [w["displaced_bits"] for w in body["words"]] == pytest.approx(d.tolist(), abs=1e-3)
            assert [w["flagged"] for w in body["words"]] == [bool(x > 0 and x >= body["threshold_bits"]) for x in d]
        got = [t[f"surprisal_{name}_bits"] for t in body["tokens"]]
        assert got == pytest.approx((-with_ctx / np.log(2)).tolist(), abs=1e-3)
        for w in body["words"]:
            mine = [k for k, (a, b) in enumerate(enc.offsets) if a < w["end"] and b > w["start"]]
            bits = with_ctx[mine].sum() / np.log(2)
            assert w["surprisal_bits"][name] == pytest.approx(-bits, abs=1e-3)
            assert w["context_bits"][name] == pytest.approx(bits - without[mine].sum() / np.log(2), abs=1e-3)
            assert w["excess_bits"][name] == pytest.approx(-bits - entropy[mine].sum() / np.log(2), abs=1e-3)
        for c in body["contradictions"]:  # what the model expected at its worst word: its own top tokens
            worst = max((w for w in body["words"] if c["start"] <= w["start"] < c["end"]),
                        key=lambda w: w["displaced_bits"])
            first = min(k for k, (a, b) in enumerate(enc.offsets) if a < worst["end"] and b > worst["start"])
            top = [int(i) for i in logp[first].topk(6).indices if i != enc.ids[first]][:5]
            assert [a["text"] for a in c["expected"][name]] == [tiny_tokenizer.decode([i]) for i in top]
            assert [a["p"] for a in c["expected"][name]] == pytest.approx(logp[first, top].exp().tolist(), abs=1e-5)
    assert [w["text"] for w in body["words"]] == ["Tom", "was", "happy", ".", "The", "end", "."]
    # Untrained models are near-uniform: no expectation reaches the flag rule's p ≥ 0.03, so
    # nothing is flagged even at the highest sensitivity (the fakes' peaked distributions
    # check the contradictions' reasons and alternatives: tests/inprocess/test_gateway.py).
    assert body["consistent"] is True and body["contradictions"] == []
    assert client.post("/validate", json={"draft": "x" * 30_000}).status_code == 422


# ---- errors ---------------------------------------------------------------------------------


def test_errors_against_real_servers(client, gateway, gpt2_server, bdh_server):
    assert client.post("/generate", json={"prompt": PROMPT, "logic_weight": 1.01}).status_code == 422
    r = client.post("/generate", json={"prompt": "Lily " * 9000})  # over max_prompt_tokens (8192)
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompt"
    assert client.post("/generations/gen-0000", json={"logic_weight": 0.2}).status_code == 404
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["tokenizer_fingerprint"]
    info = client.get("/info").json()
    assert info["models"]["gpt2"]["model_type"] == "gpt2" and info["models"]["bdh"]["model_type"] == "bdh"


def test_a_story_runs_past_the_real_gpt2_context(client):
    """The tiny GPT-2 has 256 positions: a longer prompt is read through its last window, and
    a story that fills the window reopens it on the story's last half and goes on."""
    r = client.post("/generate", json={"prompt": "Lily " * 400, "max_new_tokens": 3, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 256 and r.json()["tokens"][0]["context_shift"] == ["gpt2"]
    r = client.post("/generate", json={"prompt": "Lily " * 250, "max_new_tokens": 40, "seed": 2, "temperature": 0})
    tokens = r.json()["tokens"]
    assert r.status_code == 200 and r.json()["finish_reason"] in ("length", "eos_token")
    slid = [i for i, t in enumerate(tokens) if "context_shift" in t]
    n_prompt = r.json()["usage"]["prompt_tokens"]
    # The session holds prompt + tokens fed; it is full at 256, so the token fed next
    # (index 256 - n_prompt) reopens it, and the one after is drawn from the new window.
    first = 256 - n_prompt + 1
    assert n_prompt < 256 and slid == ([first] if len(tokens) > first else [])


def test_refuses_a_server_with_another_tokenizer(tiny_pair, gpt2_server, start_model_server, tmp_path):
    import asyncio

    from services.gateway import create_app
    from services.gateway.errors import IncompatibleModels

    other = shutil.copytree(tiny_pair["bdh"], tmp_path / "bdh-other-tokenizer")
    spec = json.loads((other / "tokenizer.json").read_text())
    spec["decoder"]["trim_offsets"] = not spec["decoder"].get("trim_offsets", True)  # same vocab, new fingerprint
    (other / "tokenizer.json").write_text(json.dumps(spec))
    bdh = start_model_server(other, "bdh")
    app = create_app(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh.address))

    async def startup():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(IncompatibleModels, match="tokenizer fingerprints differ") as e:
        asyncio.run(startup())
    assert gpt2_server.address in str(e.value) and bdh.address in str(e.value)
    assert "'bdh-other-tokenizer'" in str(e.value)


def test_client_disconnect_frees_both_sessions(client, engines, tiny_tokenizer, gpt2_server, bdh_server):
    from plotarmour.tokenizer import eot_id

    # At 0.5, so that both models are asked (at 0 BDH would not be).
    seed = seed_without_eot(engines, tiny_tokenizer, eot_id(tiny_tokenizer), 60, w=0.5)
    assert open_sessions(gpt2_server) == 0 and open_sessions(bdh_server) == 0
    paused = False
    try:
        with client.stream("POST", "/generate_stream", json={"prompt": PROMPT, "logic_weight": 0.5, "seed": seed,
                                                             "max_new_tokens": 200}) as r:
            events = sse_events(r)
            assert next(events)[0] == "start" and next(events)[0] == "token"
            # Freeze GPT-2 so the generation is surely still running: the gateway now waits for it.
            os.kill(gpt2_server.proc.pid, signal.SIGSTOP)
            paused = True
            assert open_sessions(bdh_server) == 1
        # The client left: the gateway must end the generation and the BDH stream at once...
        assert wait_until(lambda: open_sessions(bdh_server) == 0), "BDH session still open after disconnect"
    finally:
        if paused:
            os.kill(gpt2_server.proc.pid, signal.SIGCONT)
    # ...and the GPT-2 stream as soon as that server runs again.
    assert wait_until(lambda: open_sessions(gpt2_server) == 0), "GPT-2 session still open after disconnect"


def test_server_killed_mid_stream_gives_an_error_event(tiny_pair, gpt2_server, start_model_server, engines,
                                                       tiny_tokenizer):
    from plotarmour.tokenizer import eot_id

    bdh = start_model_server(tiny_pair["bdh"], "bdh")
    seed = seed_without_eot(engines, tiny_tokenizer, eot_id(tiny_tokenizer), 60, w=0.5)
    # recover_timeout_s 1: nothing restarts this server, so the story waits 1 s for it, then fails.
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh.address, port=0,
                                       step_timeout_s=60, connect_timeout_s=2, recover_timeout_s=1))
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            with c.stream("POST", "/generate_stream", json={"prompt": PROMPT, "logic_weight": 0.5, "seed": seed,
                                                            "max_new_tokens": 200}) as r:
                events = sse_events(r)
                assert next(events)[0] == "start" and next(events)[0] == "token"
                os.kill(bdh.proc.pid, signal.SIGSTOP)  # hold it mid-generation, then kill it there
                time.sleep(0.2)
                t_kill = time.monotonic()
                bdh.proc.kill()
                rest = [e for e, _ in events]
                assert rest[-1] == "error" and "end" not in rest
                assert time.monotonic() - t_kill < 5
            t0 = time.monotonic()
            down = c.post("/generate", json={"prompt": PROMPT})
            assert down.status_code == 503 and time.monotonic() - t0 < 5
            assert "The logic model (BDH) is not answering" in down.json()["error"]["message"]
            assert bdh.address not in down.json()["error"]["message"]
            ready = c.get("/ready")
            assert ready.status_code == 503 and any("bdh" in p for p in ready.json()["problems"])
        assert wait_until(lambda: open_sessions(gpt2_server) == 0)
    finally:
        gw.stop()


def test_spare_streams_are_not_closed_as_silent(tiny_pair, gpt2_server, start_model_server):
    """The gateway opens streams_per_server Batch streams at once and speaks on each at
    once (a close of nothing), so a server's first_message_timeout_s does not end the
    spare ones while they wait for their first story."""
    bdh = start_model_server(tiny_pair["bdh"], "bdh", first_message_timeout_s=0.5)
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh.address, port=0,
                                       streams_per_server=3))
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as c:
            body = {"prompt": "Once upon a time", "max_new_tokens": 4, "logic_weight": 1.0}
            assert c.post("/generate", json=body).status_code == 200
            time.sleep(1.5)  # three times the server's first-message deadline
            for seed in range(3):  # least loaded first: every stream gets a story
                assert c.post("/generate", json={**body, "seed": seed}).status_code == 200
        text = httpx.get(f"http://127.0.0.1:{bdh.metrics_port}/metrics", timeout=5).text
        assert 'code="DEADLINE_EXCEEDED"' not in text, [line for line in text.splitlines() if "rpc_errors" in line]
    finally:
        gw.stop()
