"""The clients people already use for OpenAI's API, unchanged, against the real gateway in
front of the real BDH and GPT-2 model servers (tiny checkpoints, 127.0.0.1, port 0):
the `openai` package (completions, chat completions, models, errors) and LangChain's
`OpenAI` and `ChatOpenAI`.

Every answer is checked against the native `POST /generate` with the same seed and
settings: the same text, the same blended probabilities, the same token counts. Every
client is given the gateway's base_url, so none ever reaches api.openai.com.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest

from services.gateway.schemas import ChatMessage, chat_prompt
from services.gateway.settings import GatewaySettings
from fake_servers import GatewayThread

openai = pytest.importorskip("openai")
pytest.importorskip("torch")

PROMPT = "Once upon a time, Lily found"
PROMPTS = ["Once upon a time, Lily found", "Tom had a big red ball.", "The sun was hot and"]
LIMIT = 64  # the gateway's max_new_tokens_limit here


@pytest.fixture(scope="module")
def gateway(gpt2_server, bdh_server):
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=bdh_server.address, port=0,
                                       max_new_tokens_limit=LIMIT))
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing may reach OpenAI or LangSmith, whatever the environment says.
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        monkeypatch.setenv(name, "false")
    monkeypatch.setenv("OPENAI_API_KEY", "unused")


@pytest.fixture()
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


@pytest.fixture()
def oa(gateway):
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def native(http, prompt: str, seed: int, max_new_tokens: int = 10, logic_weight: float = 0.5,
           top_alternatives: int = 0, **params) -> dict:
    """The story the native API writes for the same settings: the reference. OpenAI's own
    defaults (temperature 1, top_p 1) unless given: the native API defaults to the page's."""
    r = http.post("/generate", json={"prompt": prompt, "seed": seed, "max_new_tokens": max_new_tokens,
                                     "logic_weight": logic_weight, "top_alternatives": top_alternatives,
                                     "temperature": 1.0, "top_p": 1.0, **params})
    assert r.status_code == 200, r.text
    return r.json()


def listed(tokens: list[dict]) -> list[dict]:
    """The native tokens that an OpenAI logprobs answer lists: all but end-of-text."""
    return [t for t in tokens if not t["special"]]


def raw(name: str) -> bytes:
    """A listed token's bytes: its text, or OpenAI's `bytes:\\xe2\\x80` for part of a character."""
    if name.startswith("bytes:"):
        return bytes(int(h, 16) for h in name.removeprefix("bytes:").split("\\x")[1:])
    return name.encode()


def alone(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


# ---- the openai package: /v1/models and /v1/completions -------------------------------


def test_models_list_and_retrieve(oa):
    models = oa.models.list()
    assert [m.id for m in models.data] == ["plotarmour"]
    assert models.data[0].object == "model" and models.data[0].owned_by == "plotarmour"
    assert oa.models.retrieve("plotarmour").id == "plotarmour"
    with pytest.raises(openai.NotFoundError) as e:
        oa.models.retrieve("gpt-4o")
    assert e.value.status_code == 404 and e.value.param == "model"
    assert e.value.body["type"] == "not_found_error" and "gpt-4o" in e.value.body["message"]


def test_completion_of_a_string_is_the_native_story(oa, http):
    ref = native(http, PROMPT, seed=8, logic_weight=0.3)
    c = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=10, seed=8,
                              extra_body={"logic_weight": 0.3})
    assert c.object == "text_completion" and c.model == "plotarmour" and c.id.startswith("cmpl-")
    assert len(c.choices) == 1 and c.choices[0].index == 0
    assert c.choices[0].text == ref["text"] and c.choices[0].logprobs is None
    assert c.choices[0].finish_reason == {"length": "length"}.get(ref["finish_reason"], "stop")
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (ref["usage"]["prompt_tokens"],
                                                                  ref["usage"]["completion_tokens"])
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    stream = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=10, seed=8, stream=True,
                                   extra_body={"logic_weight": 0.3})
    assert "".join(ch.choices[0].text for ch in stream) == ref["text"]


def test_list_of_prompts_with_n_in_openai_order(oa, http):
    prompts = PROMPTS[:2]
    c = oa.completions.create(model="plotarmour", prompt=prompts, n=2, max_tokens=6, seed=40)
    assert [ch.index for ch in c.choices] == [0, 1, 2, 3]
    # Choice i·n + j is prompt i's j-th; with a seed, the j-th draws with seed + j.
    refs = [native(http, p, seed=40 + j, max_new_tokens=6) for p in prompts for j in range(2)]
    assert [ch.text for ch in c.choices] == [r["text"] for r in refs]
    assert c.choices[0].text != c.choices[1].text  # n draws, not one draw n times
    assert c.usage.prompt_tokens == refs[0]["usage"]["prompt_tokens"] + refs[2]["usage"]["prompt_tokens"]
    assert c.usage.completion_tokens == sum(r["usage"]["completion_tokens"] for r in refs)
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens


def test_logprobs_are_the_blend_of_the_native_story(oa, http, tiny_tokenizer):
    ref = native(http, PROMPT, seed=21, max_new_tokens=12, logic_weight=0.6, top_alternatives=3)
    c = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=12, seed=21, logprobs=3,
                              extra_body={"logic_weight": 0.6})
    choice, tokens = c.choices[0], listed(ref["tokens"])
    lp = choice.logprobs
    assert choice.text == ref["text"]
    # Each token as itself; their bytes make up the text.
    assert [raw(x).decode("utf-8", "replace") for x in lp.tokens] == [alone(tiny_tokenizer, t["id"]) for t in tokens]
    assert b"".join(raw(x) for x in lp.tokens).decode("utf-8", "replace") == choice.text
    partial = ["\ufffd" in alone(tiny_tokenizer, t["id"]) for t in tokens]
    assert [x.startswith("bytes:") for x in lp.tokens] == partial
    assert all(x <= 0 for x in lp.token_logprobs)
    assert lp.token_logprobs == pytest.approx([math.log(t["p_blend"]) for t in tokens], abs=1e-6)
    assert lp.text_offset == [sum(len(t["text"]) for t in ref["tokens"][:i]) for i in range(len(tokens))]
    assert len(lp.top_logprobs) == len(tokens)
    for top, t in zip(lp.top_logprobs, tokens):
        assert len(top) == 3  # three names, even where several are parts of characters
        alternatives = t["alternatives"]["blend"]
        assert [raw(x).decode("utf-8", "replace") for x in top] == [a["text"] for a in alternatives]
        assert list(top.values()) == pytest.approx([math.log(a["p"]) for a in alternatives], abs=1e-6)
        assert max(top.values()) >= math.log(t["p_blend"]) - 1e-6  # the likeliest is at least as likely


def test_echo_puts_the_prompt_first(oa, http):
    ref = native(http, PROMPT, seed=5)
    c = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=10, seed=5, echo=True)
    assert c.choices[0].text == PROMPT + ref["text"]
    stream = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=10, seed=5, echo=True, stream=True)
    assert "".join(ch.choices[0].text for ch in stream) == PROMPT + ref["text"]


def test_streamed_completion_with_usage(oa):
    args = dict(model="plotarmour", prompt=PROMPTS[:2], n=2, max_tokens=8, seed=31, logprobs=2)
    whole = oa.completions.create(**args)
    chunks = list(oa.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    last, body = chunks[-1], chunks[:-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == whole.usage.model_dump()
    assert all(ch.usage is None and len(ch.choices) == 1 for ch in body)
    assert {ch.id for ch in chunks} == {chunks[0].id}
    for choice in whole.choices:
        mine = [ch.choices[0] for ch in body if ch.choices[0].index == choice.index]
        assert "".join(m.text for m in mine) == choice.text
        assert [m.finish_reason for m in mine][-1] == choice.finish_reason
        assert all(m.finish_reason is None for m in mine[:-1])
        # The same tokens; their probabilities to float32 rounding (the servers batched them otherwise).
        assert sum((m.logprobs.tokens for m in mine if m.logprobs), []) == choice.logprobs.tokens
        assert sum((m.logprobs.text_offset for m in mine if m.logprobs), []) == choice.logprobs.text_offset
        assert sum((m.logprobs.token_logprobs for m in mine if m.logprobs), []) == pytest.approx(
            choice.logprobs.token_logprobs, abs=1e-5)
        tops = sum((m.logprobs.top_logprobs for m in mine if m.logprobs), [])
        assert [list(t) for t in tops] == [list(t) for t in choice.logprobs.top_logprobs]
        assert [v for t in tops for v in t.values()] == pytest.approx(
            [v for t in choice.logprobs.top_logprobs for v in t.values()], abs=1e-5)
    # Without stream_options there is no usage chunk.
    plain = list(oa.completions.create(**args, stream=True))
    assert all(ch.choices and ch.usage is None for ch in plain)


def test_logic_weight_in_extra_body_steers_the_blend(oa, http):
    texts = {}
    for w in (0.0, 1.0):
        c = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=12, seed=3,
                                  extra_body={"logic_weight": w})
        texts[w] = c.choices[0].text
        assert texts[w] == native(http, PROMPT, seed=3, max_new_tokens=12, logic_weight=w)["text"]
    assert texts[0.0] != texts[1.0]
    geo = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=12, seed=3,
                                extra_body={"logic_weight": 0.5, "blend": "geometric", "top_k": 5})
    assert geo.choices[0].text == native(http, PROMPT, seed=3, max_new_tokens=12, blend="geometric",
                                         top_k=5)["text"]


def test_text_held_back_for_a_stop_sequence_is_streamed_at_end_of_text(oa, http):
    """A story that ends with end-of-text while its last characters could begin a stop
    sequence: that tail is released with the end-of-text token, and the stream must carry
    it as the JSON answer does."""
    for seed in range(200):
        ref = native(http, PROMPT, seed=seed, max_new_tokens=LIMIT)
        if ref["finish_reason"] == "eos_token" and ref["text"]:
            break
    else:
        pytest.fail("no seed ends with end-of-text")
    stop = [ref["text"][-1] + "\x00"]  # never completed, so its first character is held back
    held = native(http, PROMPT, seed=seed, max_new_tokens=LIMIT, stop=stop)
    assert held["text"] == ref["text"] and held["tokens"][-1]["special"] and held["tokens"][-1]["text"]
    args = dict(model="plotarmour", prompt=PROMPT, max_tokens=LIMIT, seed=seed, stop=stop, logprobs=1)
    whole = oa.completions.create(**args).choices[0]
    assert whole.text == ref["text"]
    streamed = list(oa.completions.create(**args, stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == ref["text"]
    chat = dict(model="plotarmour", messages=[{"role": "user", "content": PROMPT}], max_tokens=LIMIT, seed=seed,
                stop=stop)
    assert oa.chat.completions.create(**chat).choices[0].message.content == ref["text"]
    chunks = oa.chat.completions.create(**chat, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ref["text"]


# ---- the openai package: /v1/chat/completions -------------------------------------------

MESSAGES = [{"role": "system", "content": "A story for children."},
            {"role": "user", "content": "Once upon a time, Lily found a cat."},
            {"role": "assistant", "content": [{"type": "text", "text": " She was happy."}]},
            {"role": "user", "content": "  Then"}]
# The documented template: the messages' texts, stripped, joined by blank lines.
STORY = "A story for children.\n\nOnce upon a time, Lily found a cat.\n\nShe was happy.\n\nThen"


def test_chat_prompt_is_the_documented_template():
    assert chat_prompt([ChatMessage.model_validate(m) for m in MESSAGES]) == STORY


def test_chat_completion_continues_the_story_of_the_messages(oa, http, tiny_tokenizer):
    c = oa.chat.completions.create(model="plotarmour", messages=MESSAGES, n=2, max_completion_tokens=7, seed=12,
                                   logprobs=True, top_logprobs=2, extra_body={"logic_weight": 0.7})
    assert c.object == "chat.completion" and c.id.startswith("chatcmpl-") and c.model == "plotarmour"
    refs = [native(http, STORY, seed=12 + j, max_new_tokens=7, logic_weight=0.7, top_alternatives=2)
            for j in range(2)]
    assert [ch.index for ch in c.choices] == [0, 1]
    for choice, ref in zip(c.choices, refs):
        assert choice.message.role == "assistant" and choice.message.content == ref["text"]
        tokens = listed(ref["tokens"])
        content = choice.logprobs.content
        assert [bytes(x.bytes).decode("utf-8", "replace") for x in content] == [alone(tiny_tokenizer, t["id"])
                                                                              for t in tokens]
        assert b"".join(bytes(x.bytes) for x in content).decode("utf-8", "replace") == choice.message.content
        assert all(raw(x.token) == bytes(x.bytes) for x in content)
        assert [x.logprob for x in content] == pytest.approx([math.log(t["p_blend"]) for t in tokens], abs=1e-6)
        for x, t in zip(content, tokens):
            assert len(x.top_logprobs) == 2
            assert [bytes(a.bytes).decode("utf-8", "replace") for a in x.top_logprobs] == [
                a["text"] for a in t["alternatives"]["blend"]]
            assert [a.logprob for a in x.top_logprobs] == pytest.approx(
                [math.log(a["p"]) for a in t["alternatives"]["blend"]], abs=1e-6)
    assert c.choices[0].message.content != c.choices[1].message.content
    assert c.usage.prompt_tokens == refs[0]["usage"]["prompt_tokens"]  # the prompt once, for both choices
    assert c.usage.completion_tokens == sum(r["usage"]["completion_tokens"] for r in refs)
    assert all(r["usage"]["completion_tokens"] <= 7 for r in refs)


def test_chat_without_logprobs_and_with_max_tokens(oa, http):
    c = oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                   max_tokens=9, seed=4)
    ref = native(http, PROMPT, seed=4, max_new_tokens=9)
    assert c.choices[0].message.content == ref["text"] and c.choices[0].logprobs is None
    assert c.choices[0].finish_reason == {"length": "length"}.get(ref["finish_reason"], "stop")
    assert c.usage.completion_tokens == ref["usage"]["completion_tokens"]


def test_streamed_chat_with_usage(oa):
    args = dict(model="plotarmour", messages=MESSAGES, n=2, max_completion_tokens=8, seed=61, logprobs=True,
                top_logprobs=2)
    whole = oa.chat.completions.create(**args)
    chunks = list(oa.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    last, body = chunks[-1], chunks[:-1]
    assert last.object == "chat.completion.chunk" and last.choices == []
    assert last.usage.model_dump() == whole.usage.model_dump()
    assert all(ch.usage is None and len(ch.choices) == 1 for ch in body)
    for choice in whole.choices:
        mine = [ch.choices[0] for ch in body if ch.choices[0].index == choice.index]
        assert mine[0].delta.role == "assistant"
        assert "".join(m.delta.content or "" for m in mine) == choice.message.content
        assert mine[-1].finish_reason == choice.finish_reason
        streamed = sum((m.logprobs.content for m in mine if m.logprobs), [])
        assert len(streamed) == len(choice.logprobs.content)
        for a, b in zip(streamed, choice.logprobs.content):  # probabilities to float32 rounding, as above
            assert (a.token, a.bytes, [t.token for t in a.top_logprobs]) == (b.token, b.bytes,
                                                                             [t.token for t in b.top_logprobs])
            assert [a.logprob, *(t.logprob for t in a.top_logprobs)] == pytest.approx(
                [b.logprob, *(t.logprob for t in b.top_logprobs)], abs=1e-5)
    plain = list(oa.chat.completions.create(**args, stream=True))
    assert all(ch.choices and ch.usage is None for ch in plain)


# ---- the openai package: errors ------------------------------------------------------------


@pytest.mark.parametrize("call,param", [
    (lambda oa: oa.completions.create(model="plotarmour", prompt=PROMPT, presence_penalty=0.5), "presence_penalty"),
    (lambda oa: oa.completions.create(model="plotarmour", prompt=PROMPT, frequency_penalty=-1), "frequency_penalty"),
    (lambda oa: oa.completions.create(model="plotarmour", prompt=PROMPT, logit_bias={"1": 5}), "logit_bias"),
    (lambda oa: oa.completions.create(model="plotarmour", prompt=PROMPT, best_of=3), "best_of"),
    (lambda oa: oa.completions.create(model="plotarmour", prompt=PROMPT, suffix=" The end."), "suffix"),
    (lambda oa: oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=LIMIT + 1), "max_tokens"),
    (lambda oa: oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                           presence_penalty=0.5), "presence_penalty"),
    (lambda oa: oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                           logit_bias={"1": 5}), "logit_bias"),
    (lambda oa: oa.chat.completions.create(
        model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]), "tools"),
    (lambda oa: oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                           response_format={"type": "json_object"}), "response_format"),
    (lambda oa: oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=LIMIT + 1), "max_tokens"),
    (lambda oa: oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                           max_completion_tokens=LIMIT + 1), "max_completion_tokens"),
], ids=["presence_penalty", "frequency_penalty", "logit_bias", "best_of", "suffix", "max_tokens",
        "chat-presence_penalty", "chat-logit_bias", "chat-tools", "chat-response_format", "chat-max_tokens",
        "chat-max_completion_tokens"])
def test_unsupported_or_out_of_range_options_name_the_field(oa, call, param):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        call(oa)
    assert e.value.status_code == 422 and e.value.param == param
    assert e.value.body["type"] == "invalid_request_error" and param in e.value.body["message"]


def test_do_nothing_values_of_unsupported_options_are_accepted(oa, http):
    # What LangChain and other clients send by default.
    ref = native(http, PROMPT, seed=2, max_new_tokens=5)
    c = oa.completions.create(model="plotarmour", prompt=PROMPT, max_tokens=5, seed=2, presence_penalty=0,
                              frequency_penalty=0.0, logit_bias={}, best_of=1, n=1, user="someone")
    assert c.choices[0].text == ref["text"]
    chat = oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                      max_completion_tokens=5, seed=2, presence_penalty=0, frequency_penalty=0,
                                      tool_choice="none", response_format={"type": "text"}, user="someone")
    assert chat.choices[0].message.content == ref["text"]


def test_unknown_routes_and_methods_answer_in_openai_shape(oa):
    with pytest.raises(openai.NotFoundError) as e:
        oa.post("/embeddings", cast_to=object, body={"model": "plotarmour", "input": "x"})
    assert e.value.status_code == 404 and e.value.body["type"] == "not_found_error"
    assert "/v1/embeddings" in e.value.body["message"] and e.value.param is None
    with pytest.raises(openai.APIStatusError) as e:
        oa.get("/completions", cast_to=object)
    assert e.value.status_code == 405 and e.value.body["type"] == "invalid_request_error"


def test_a_bad_body_is_an_openai_error(oa):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oa.completions.create(model="plotarmour", prompt=PROMPT, extra_body={"logic_weight": 1.5})
    assert e.value.param == "logic_weight"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oa.chat.completions.create(model="plotarmour", messages=[{"role": "user", "content": PROMPT}],
                                   extra_body={"blend": "average"})
    assert e.value.param == "blend"
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oa.chat.completions.create(model="plotarmour", messages=[{"role": "tool", "content": "x"}])
    assert e.value.param.startswith("messages[0]")


# ---- LangChain ----------------------------------------------------------------------------


class Recorder:
    """The bodies the client posts (an httpx event hook on the client it is given)."""

    def __init__(self):
        self.bodies: list[dict] = []

    def __call__(self, request):
        self.bodies.append(json.loads(request.content))

    def client(self):
        return openai.DefaultHttpxClient(event_hooks={"request": [self]})


def test_langchain_openai_llm(gateway, http):
    lc = pytest.importorskip("langchain_openai")
    rec = Recorder()
    llm = lc.OpenAI(base_url=gateway.url + "/v1", api_key="unused", model="plotarmour", max_tokens=8, seed=17,
                    max_retries=0, http_client=rec.client())
    # LangChain's OpenAI samples at temperature 0.7 unless told otherwise.
    refs = [native(http, p, seed=17, max_new_tokens=8, temperature=0.7)["text"] for p in PROMPTS]

    assert llm.invoke(PROMPTS[0]) == refs[0]
    # LangChain's defaults went as they are, and were accepted.
    sent = rec.bodies[-1]
    assert sent["prompt"] == [PROMPTS[0]] and sent["frequency_penalty"] == 0 and sent["presence_penalty"] == 0
    assert sent["n"] == 1 and sent["seed"] == 17 and sent["temperature"] == 0.7 and sent["logprobs"] is None

    assert "".join(llm.stream(PROMPTS[1])) == refs[1]
    assert rec.bodies[-1]["stream"] is True

    rec.bodies.clear()
    assert llm.batch(PROMPTS) == refs
    assert len(rec.bodies) == 1 and rec.bodies[0]["prompt"] == PROMPTS  # one request, a list of prompts

    steered = lc.OpenAI(base_url=gateway.url + "/v1", api_key="unused", model="plotarmour", max_tokens=8, seed=17,
                        max_retries=0, extra_body={"logic_weight": 1.0})
    assert steered.invoke(PROMPTS[0]) == native(http, PROMPTS[0], seed=17, max_new_tokens=8, logic_weight=1.0,
                                                temperature=0.7)["text"]


def test_langchain_chat_openai(gateway, http):
    lc = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, SystemMessage

    rec = Recorder()
    chat = lc.ChatOpenAI(base_url=gateway.url + "/v1", api_key="unused", model="plotarmour", max_tokens=8, seed=23,
                         max_retries=0, http_client=rec.client(), stream_usage=True)
    messages = [SystemMessage("A story for children."), HumanMessage(PROMPT)]
    story = "A story for children.\n\n" + PROMPT
    ref = native(http, story, seed=23, max_new_tokens=8)

    reply = chat.invoke(messages)
    assert reply.content == ref["text"]
    assert reply.usage_metadata["output_tokens"] == ref["usage"]["completion_tokens"]
    assert reply.usage_metadata["input_tokens"] == ref["usage"]["prompt_tokens"]
    assert rec.bodies[-1]["max_completion_tokens"] == 8

    chunks = list(chat.stream(messages))
    assert "".join(ch.content for ch in chunks) == ref["text"]
    total = sum(chunks[1:], chunks[0])
    assert total.usage_metadata["output_tokens"] == ref["usage"]["completion_tokens"]  # include_usage was honoured
    assert rec.bodies[-1]["stream"] is True and rec.bodies[-1]["stream_options"] == {"include_usage": True}

    replies = chat.batch([[HumanMessage(p)] for p in PROMPTS[:2]])
    assert [r.content for r in replies] == [native(http, p, seed=23, max_new_tokens=8)["text"] for p in PROMPTS[:2]]
