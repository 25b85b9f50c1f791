"""The TGI clients people already use, unchanged, against the gateway's TGI surface.

`huggingface_hub.InferenceClient(url).text_generation(...)` (and its async twin) and the
`text-generation` package's `Client` / `AsyncClient` talk to a real gateway (in-process,
port 0) in front of the real BDH and GPT-2 model servers (tiny untrained checkpoints,
subprocesses). Nothing is mocked: what these tests see is what a user of those packages sees.

Checked with real values, not just types:
- the text, and `details`: finish reason, token count, seed, and each token's id, text,
  log-probability and special flag (the token texts concatenate to the text, the ids
  decode to it, a greedy token's log-probability is the top one of `top_n_tokens`);
- streaming gives the same story as the call that does not stream, seed for seed;
- TGI's knobs: seed, greedy decoding, `stop`, `return_full_text`, `top_n_tokens`, `truncate`;
- errors arrive as each client's own exception (422 → ValidationError naming the field,
  429 → OverloadedError);
- PlotArmour's extra `parameters` (`logic_weight`, `blend`), which these clients cannot
  send, over plain HTTP;
- `GET /info` carries TGI's fields, read with `InferenceClient.get_endpoint_info`.

The untrained models write gibberish and may emit end-of-text (about once in 320 tokens),
so the checks accept either finish reason and read which one it was.
"""

from __future__ import annotations

import asyncio
import json
import warnings

import httpx
import pytest
from fake_servers import GatewayThread

from services.gateway.settings import GatewaySettings

huggingface_hub = pytest.importorskip("huggingface_hub")
text_generation = pytest.importorskip("text_generation")

from huggingface_hub import AsyncInferenceClient, InferenceClient  # noqa: E402
from huggingface_hub.errors import OverloadedError as HubOverloaded  # noqa: E402
from huggingface_hub.errors import ValidationError as HubValidationError  # noqa: E402
from text_generation.errors import OverloadedError as TGIOverloaded  # noqa: E402
from text_generation.errors import ValidationError as TGIValidationError  # noqa: E402

PROMPT = "Once upon a time, Lily found"
N = 16  # new tokens per call: enough text to compare, quick on two CPU cores


@pytest.fixture(scope="module")
def gateway(gpt2_server, bdh_server):
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh_server.address, port=0))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def hub(gateway) -> InferenceClient:
    return InferenceClient(gateway.url, timeout=60)


@pytest.fixture(scope="module")
def tgi(gateway) -> text_generation.Client:
    return text_generation.Client(gateway.url, timeout=60)


@pytest.fixture(scope="module")
def eot(tiny_tokenizer) -> int:
    from plotarmour.tokenizer import eot_id

    return eot_id(tiny_tokenizer)


@pytest.fixture(autouse=True)
def _quiet_pydantic():
    # text-generation 0.7 calls pydantic v1's .dict(); its deprecation warning is not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def check_details(text: str, details, tokens, *, max_new: int, eot: int, tok, seed=...) -> None:
    """What TGI's `details` promise, for either client's types: `tokens` are the token
    objects (details.tokens, or the stream's tokens in order)."""
    ids = [t.id for t in tokens]
    assert details.generated_tokens == len(tokens) >= 1
    assert "".join(t.text for t in tokens) == text
    # A probability, as a log; never the -9999 stand-in for an impossible token.
    assert all(-30.0 < t.logprob <= 0.0 for t in tokens), [t.logprob for t in tokens]
    assert [t.special for t in tokens] == [i == eot for i in ids]
    if tokens[-1].special:
        assert details.finish_reason == "eos_token"
        assert eot not in ids[:-1]
    elif details.finish_reason == "length":
        assert len(tokens) == max_new
    else:
        assert details.finish_reason == "stop_sequence"
    if details.finish_reason != "stop_sequence":  # a stop sequence's tail is cut from the text
        assert tok.decode([i for i in ids if i != eot]) == text
    if seed is not ...:
        assert details.seed == seed


# ---- huggingface_hub.InferenceClient ----------------------------------------------------
def test_hub_plain_text(hub):
    out = hub.text_generation(PROMPT, max_new_tokens=N, stream=False)
    assert isinstance(out, str) and out
    assert not out.startswith(PROMPT)  # return_full_text is off unless asked for


def test_hub_details(hub, eot, tiny_tokenizer):
    out = hub.text_generation(PROMPT, max_new_tokens=N, details=True, do_sample=True, seed=11)
    assert out.details.prefill == []
    check_details(out.generated_text, out.details, out.details.tokens, max_new=N, eot=eot, tok=tiny_tokenizer,
                  seed=11)
    # The same call again writes the same story, token for token.
    again = hub.text_generation(PROMPT, max_new_tokens=N, details=True, do_sample=True, seed=11)
    assert again.generated_text == out.generated_text
    assert [t.id for t in again.details.tokens] == [t.id for t in out.details.tokens]
    assert [t.logprob for t in again.details.tokens] == pytest.approx([t.logprob for t in out.details.tokens])


@pytest.mark.parametrize("sampling", [dict(do_sample=True, seed=5), dict()], ids=["seeded", "greedy"])
def test_hub_stream_is_the_same_story(hub, sampling):
    whole = hub.text_generation(PROMPT, max_new_tokens=N, **sampling)
    chunks = list(hub.text_generation(PROMPT, max_new_tokens=N, stream=True, **sampling))
    assert all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == whole


def test_hub_stream_details(hub, eot, tiny_tokenizer):
    whole = hub.text_generation(PROMPT, max_new_tokens=N, details=True, do_sample=True, seed=21)
    events = list(hub.text_generation(PROMPT, max_new_tokens=N, stream=True, details=True, do_sample=True, seed=21))
    *body, last = events
    assert all(e.generated_text is None and e.details is None for e in body)
    assert [e.index for e in events] == list(range(1, len(events) + 1))
    assert last.generated_text == whole.generated_text
    check_details(last.generated_text, last.details, [e.token for e in events], max_new=N, eot=eot,
                  tok=tiny_tokenizer, seed=21)
    assert last.details.input_length == len(tiny_tokenizer.encode(PROMPT).ids)
    assert [e.token.id for e in events] == [t.id for t in whole.details.tokens]
    assert [e.token.logprob for e in events] == pytest.approx([t.logprob for t in whole.details.tokens])


def test_hub_seeds_and_greedy(hub):
    a = hub.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=1)
    assert hub.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=1) == a
    # Near-uniform untrained models: two seeds agreeing on 16 tokens would be a broken seed.
    assert hub.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=2) != a
    # A temperature alone asks for sampling, as in TGI.
    assert hub.text_generation(PROMPT, max_new_tokens=N, temperature=1.0, seed=1) == a

    greedy = hub.text_generation(PROMPT, max_new_tokens=N, details=True)
    assert greedy.details.seed is None  # TGI reports no seed when it did not sample
    for seed in (None, 3):
        assert hub.text_generation(PROMPT, max_new_tokens=N, seed=seed) == greedy.generated_text


def test_hub_greedy_takes_the_likeliest_token(hub, eot, tiny_tokenizer):
    out = hub.text_generation(PROMPT, max_new_tokens=N, details=True, top_n_tokens=3)
    check_details(out.generated_text, out.details, out.details.tokens, max_new=N, eot=eot, tok=tiny_tokenizer,
                  seed=None)
    # huggingface_hub leaves this list of lists as plain dicts (it would for TGI too).
    top = out.details.top_tokens
    assert len(top) == out.details.generated_tokens
    for chosen, alternatives in zip(out.details.tokens, top):
        assert len(alternatives) == 3
        logprobs = [a["logprob"] for a in alternatives]
        assert logprobs == sorted(logprobs, reverse=True) and all(lp <= 0 for lp in logprobs)
        assert len({a["id"] for a in alternatives}) == 3
        assert alternatives[0]["id"] == chosen.id  # greedy: the first alternative is the token taken
        assert alternatives[0]["logprob"] == pytest.approx(chosen.logprob, abs=1e-5)
        assert [a["text"] for a in alternatives] == [tiny_tokenizer.decode([a["id"]]) for a in alternatives]
        assert [a["special"] for a in alternatives] == [a["id"] == eot for a in alternatives]


def test_hub_stream_top_tokens(hub):
    events = list(hub.text_generation(PROMPT, max_new_tokens=N, stream=True, details=True, top_n_tokens=2))
    for e in events:
        assert len(e.top_tokens) == 2
        assert e.top_tokens[0].id == e.token.id  # greedy


def stop_in(text: str) -> str:
    """Two printable characters of `text` whose first occurrence is not at its start
    (preferably in its second half), to use as a stop sequence."""
    middle = len(text) // 2
    for i in [*range(middle, len(text) - 1), *range(middle - 1, 0, -1)]:
        s = text[i:i + 2]
        if s.isascii() and s.isprintable() and text.find(s) > 0:
            return s
    pytest.fail(f"no stop sequence to pick in {text!r}")


def test_hub_stop_sequence(hub):
    full = hub.text_generation(PROMPT, max_new_tokens=N)
    stop = stop_in(full)
    cut = full.find(stop)
    out = hub.text_generation(PROMPT, max_new_tokens=N, stop=[stop], details=True)
    assert out.details.finish_reason == "stop_sequence"
    assert out.generated_text == full[:cut]  # the text ends where the stop sequence began
    assert out.details.generated_tokens < N
    assert "".join(t.text for t in out.details.tokens) == out.generated_text
    # Streamed, the same.
    assert "".join(hub.text_generation(PROMPT, max_new_tokens=N, stop=[stop], stream=True)) == full[:cut]


def test_hub_return_full_text(hub):
    text = hub.text_generation(PROMPT, max_new_tokens=N)
    assert hub.text_generation(PROMPT, max_new_tokens=N, return_full_text=True) == PROMPT + text
    assert hub.text_generation(PROMPT, max_new_tokens=N, return_full_text=False) == text
    events = list(hub.text_generation(PROMPT, max_new_tokens=N, return_full_text=True, stream=True, details=True))
    assert events[-1].generated_text == PROMPT + text
    assert "".join(e.token.text for e in events) == text  # the tokens are the new ones only


def test_hub_truncate(hub, gateway, tiny_tokenizer):
    """`truncate` keeps the prompt's last tokens: a prompt over max_input_tokens is refused
    without it, and with it the story is the one the kept tokens alone write."""
    n_ids = len(tiny_tokenizer.encode(PROMPT).ids)
    max_input = httpx.get(gateway.url + "/info").json()["max_input_tokens"]
    unit = "The dog ran to the park. "
    long = unit * int(1.3 * max_input / len(tiny_tokenizer.encode(unit).ids)) + "\n" + PROMPT
    ids = tiny_tokenizer.encode(long).ids
    assert ids[-n_ids:] == tiny_tokenizer.encode(PROMPT).ids  # PROMPT tokenizes alike at the end
    assert len(ids) > max_input
    with pytest.raises(HubValidationError, match="inputs"):
        hub.text_generation(long, max_new_tokens=N)
    assert hub.text_generation(long, max_new_tokens=N, truncate=n_ids) == hub.text_generation(PROMPT, max_new_tokens=N)


def test_hub_async_client(gateway, hub):
    async def run():
        client = AsyncInferenceClient(gateway.url, timeout=60)
        whole = await client.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=71, details=True)
        stream = await client.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=71, stream=True)
        return whole, [chunk async for chunk in stream]

    whole, chunks = asyncio.run(run())
    assert whole.generated_text == hub.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=71)
    assert whole.details.seed == 71
    assert "".join(chunks) == whole.generated_text


@pytest.mark.parametrize("kwargs, field", [
    (dict(watermark=True), "watermark"),
    (dict(repetition_penalty=1.3), "repetition_penalty"),
    (dict(frequency_penalty=0.5), "frequency_penalty"),
    (dict(max_new_tokens=5000), "max_new_tokens"),
    (dict(top_p=1.5), "top_p"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_hub_validation_errors(hub, kwargs, field, stream):
    kwargs = {"max_new_tokens": N, **kwargs}
    with pytest.raises(HubValidationError) as err:
        out = hub.text_generation(PROMPT, stream=stream, **kwargs)
        list(out) if stream else None
    assert field in str(err.value)
    assert err.value.__cause__.response.status_code == 422


# ---- text_generation.Client / AsyncClient -----------------------------------------------
def test_tgi_generate(tgi, eot, tiny_tokenizer):
    out = tgi.generate(PROMPT, max_new_tokens=N, do_sample=True, seed=31)
    check_details(out.generated_text, out.details, out.details.tokens, max_new=N, eot=eot, tok=tiny_tokenizer,
                  seed=31)
    assert out.details.prefill == [] and out.details.best_of_sequences is None
    assert tgi.generate(PROMPT, max_new_tokens=N, do_sample=True, seed=31).generated_text == out.generated_text
    assert tgi.generate(PROMPT, max_new_tokens=N, do_sample=True, seed=32).generated_text != out.generated_text


def test_tgi_generate_matches_hub(tgi, hub):
    assert tgi.generate(PROMPT, max_new_tokens=N).generated_text == hub.text_generation(PROMPT, max_new_tokens=N)
    got = tgi.generate(PROMPT, max_new_tokens=N, do_sample=True, seed=8).generated_text
    assert got == hub.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=8)


@pytest.mark.parametrize("sampling", [dict(do_sample=True, seed=41), dict()], ids=["seeded", "greedy"])
def test_tgi_generate_stream(tgi, eot, tiny_tokenizer, sampling):
    whole = tgi.generate(PROMPT, max_new_tokens=N, **sampling)
    events = list(tgi.generate_stream(PROMPT, max_new_tokens=N, **sampling))
    *body, last = events
    assert all(e.generated_text is None and e.details is None for e in body)
    assert last.generated_text == whole.generated_text
    check_details(last.generated_text, last.details, [e.token for e in events], max_new=N, eot=eot,
                  tok=tiny_tokenizer, seed=sampling.get("seed"))
    assert [e.token.id for e in events] == [t.id for t in whole.details.tokens]


def test_tgi_options(tgi, hub):
    text = hub.text_generation(PROMPT, max_new_tokens=N)
    assert tgi.generate(PROMPT, max_new_tokens=N, return_full_text=True).generated_text == PROMPT + text
    stop = stop_in(text)
    out = tgi.generate(PROMPT, max_new_tokens=N, stop_sequences=[stop])
    assert out.details.finish_reason == "stop_sequence"
    assert out.generated_text == text[:text.find(stop)]
    top = tgi.generate(PROMPT, max_new_tokens=N, top_n_tokens=3).details.top_tokens
    assert [len(t) for t in top] == [3] * len(top) and len(top) >= 1
    events = list(tgi.generate_stream(PROMPT, max_new_tokens=N, top_n_tokens=3))
    assert [e.top_tokens[0].id for e in events] == [e.token.id for e in events]


def test_tgi_async_client(gateway, tgi):
    async def run():
        client = text_generation.AsyncClient(gateway.url, timeout=60)
        whole = await client.generate(PROMPT, max_new_tokens=N, do_sample=True, seed=51)
        streamed = [e async for e in client.generate_stream(PROMPT, max_new_tokens=N, do_sample=True, seed=51)]
        return whole, streamed

    whole, streamed = asyncio.run(run())
    assert whole.generated_text == tgi.generate(PROMPT, max_new_tokens=N, do_sample=True, seed=51).generated_text
    assert streamed[-1].generated_text == whole.generated_text
    assert "".join(e.token.text for e in streamed) == whole.generated_text


@pytest.mark.parametrize("kwargs, field", [
    (dict(watermark=True), "watermark"),
    (dict(repetition_penalty=1.3), "repetition_penalty"),
    (dict(typical_p=0.5), "typical_p"),
    (dict(max_new_tokens=5000), "max_new_tokens"),
])
def test_tgi_validation_errors(tgi, kwargs, field):
    kwargs = {"max_new_tokens": N, **kwargs}
    with pytest.raises(TGIValidationError, match=field):
        tgi.generate(PROMPT, **kwargs)
    with pytest.raises(TGIValidationError, match=field):
        list(tgi.generate_stream(PROMPT, **kwargs))


# ---- over the concurrency limit: 429 → OverloadedError ----------------------------------
@pytest.fixture()
def full_gateway(gpt2_server, bdh_server):
    """A gateway allowed one request at a time, whose one slot is taken. (A stream from the
    tiny models ends within a second, so holding the slot with a real request would race.)"""
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh_server.address, port=0,
                                       max_concurrent=1))
    limiter = gw.app.state.gateway.limiter
    slot = limiter.acquire()
    yield gw
    slot.release()
    gw.stop()


def test_overloaded(full_gateway):
    hub = InferenceClient(full_gateway.url, timeout=60)
    tgi = text_generation.Client(full_gateway.url, timeout=60)
    with pytest.raises(HubOverloaded, match="limit of 1"):
        hub.text_generation(PROMPT, max_new_tokens=N)
    with pytest.raises(HubOverloaded):
        list(hub.text_generation(PROMPT, max_new_tokens=N, stream=True))
    with pytest.raises(TGIOverloaded, match="limit of 1"):
        tgi.generate(PROMPT, max_new_tokens=N)
    with pytest.raises(TGIOverloaded):
        list(tgi.generate_stream(PROMPT, max_new_tokens=N))
    r = httpx.post(full_gateway.url + "/", json={"inputs": PROMPT})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error_type"] == "overloaded"


# ---- PlotArmour's extra parameters, over plain HTTP --------------------------------------
def post(gateway, stream: bool = False, **parameters) -> httpx.Response:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": N, **parameters}, "stream": stream}
    return httpx.post(gateway.url + "/", json=body, timeout=60)


def test_logic_weight_and_blend(gateway, hub):
    def text(**p) -> str:
        r = post(gateway, do_sample=True, seed=61, **p)
        assert r.status_code == 200, r.text
        return r.json()[0]["generated_text"]

    gpt2, bdh = text(logic_weight=0.0), text(logic_weight=1.0)
    assert gpt2 != bdh
    assert text(logic_weight=0.0) == gpt2  # still seeded
    # The default weight (0.5) is what the clients get.
    assert text() == hub.text_generation(PROMPT, max_new_tokens=N, do_sample=True, seed=61)
    assert text(logic_weight=0.5) == text()
    # At the endpoints a blend is one model alone, whichever blend.
    assert text(logic_weight=0.0, blend="geometric") == gpt2
    assert text(logic_weight=1.0, blend="geometric") == bdh

    # Streamed, the extra parameters hold too.
    r = post(gateway, stream=True, do_sample=True, seed=61, logic_weight=1.0, details=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [ln for ln in r.text.splitlines() if ln.startswith("data:")]
    assert json.loads(lines[-1][5:])["generated_text"] == bdh


@pytest.mark.parametrize("parameters, field", [
    ({"logic_weight": 1.5}, "parameters.logic_weight"),
    ({"logic_weight": True}, "parameters.logic_weight"),
    ({"blend": "cubic"}, "parameters.blend"),
])
def test_extra_parameters_are_validated(gateway, parameters, field):
    r = post(gateway, **parameters)
    assert r.status_code == 422
    body = r.json()
    assert body["error_type"] == "validation" and body["error"].startswith(field)


# ---- GET /info ----------------------------------------------------------------------------
def test_info(gateway):
    from services.gateway.routes.ops import VERSION

    # huggingface_hub 2.x reads /info and /health only for the "hf-inference" provider.
    hub = InferenceClient(gateway.url, provider="hf-inference", timeout=60)
    info = hub.get_endpoint_info()
    settings = GatewaySettings()
    assert info["model_id"] == settings.model_name
    assert info["gateway"]["models_context"] == 256  # the tiny GPT-2's n_positions
    # With context shift a prompt may outgrow the models' contexts (each reads its last window).
    assert info["max_input_tokens"] == settings.max_prompt_tokens
    assert info["max_total_tokens"] == settings.max_prompt_tokens + settings.max_new_tokens_limit
    assert info["max_concurrent_requests"] == settings.max_concurrent
    assert info["version"] == VERSION
    assert hub.health_check()
