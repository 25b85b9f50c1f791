"""The gateway's contract under abuse: one error body for every status and route, 422 for
what it cannot honour, nothing left running for a client that left, and a hanging model
server that fails every waiting request within the connect timeout."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import httpx
import pytest
from harness import wait_until

from fake_servers import FakeLanguageModel, FakeServer, HangingServer, fake_stack, start_gateway

PROMPT = "Once upon a time"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway(fakes):
    gw = start_gateway(fakes[0].address, fakes[1].address, max_new_tokens_limit=64)
    yield gw
    gw.stop()


def openai_error(r: httpx.Response) -> dict:
    """The OpenAI error body, checked to be exactly that shape."""
    body = r.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]


def tgi_error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error"], body
    return body


def check_shape(r: httpx.Response, path: str, status: int) -> str:
    assert r.status_code == status, r.text
    if path == "/" and r.request.method == "POST":
        return tgi_error(r)["error"]
    return openai_error(r)["message"]


BODIES = {"/generate": {"prompt": PROMPT, "max_new_tokens": 2},
          "/v1/completions": {"prompt": PROMPT, "max_tokens": 2},
          "/v1/chat/completions": {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2},
          "/": {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}},
          "/validate": {"context": "Tom had a cat.", "draft": " The cat slept."}}


# ---- 400 / 404 / 405 / 422: one shape -----------------------------------------------------


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("raw,what", [
    (b'{"prompt": "Tom",', "not valid JSON"),
    (b'{"prompt": "\xff\xfe"}', "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    ('{"prompt": "Tom"}'.encode("utf-16"), "not valid UTF-8"),  # with its byte-order mark
    ('{"prompt": "Tom"}'.encode("utf-16-le"), "not valid UTF-8"),
    ('{"prompt": "Tom"}'.encode("utf-32-be"), "not valid UTF-8"),
], ids=["malformed", "invalid-utf8", "deep-nesting", "utf-16", "utf-16-le", "utf-32-be"])
def test_unreadable_bodies_are_400_in_the_routes_shape(client, path, raw, what):
    r = client.post(path, content=raw, headers=JSON)
    message = check_shape(r, path, 400)
    assert what in message and "There was an error" not in message
    if path != "/":
        assert openai_error(r)["param"] is None  # never a character offset


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/models/x/y")])
def test_unknown_routes_are_404_in_openai_shape(client, method, path):
    r = client.request(method, path)
    assert path in check_shape(r, path, 404)


@pytest.mark.parametrize("method,path", [("GET", "/generate"), ("GET", "/v1/completions"), ("PUT", "/"),
                                         ("DELETE", "/validate")])
def test_wrong_methods_are_405_in_openai_shape(client, method, path):
    r = client.request(method, path)
    assert method in check_shape(r, path, 405)


@pytest.mark.parametrize("path,raw,param", [
    ("/generate", '{"prompt": "Tom", "logic_weight": NaN}', "logic_weight"),
    ("/generate", '{"prompt": "\\ud800 lone"}', "prompt"),
    ("/v1/completions", '{"prompt": "Tom", "temperature": 1e999}', "temperature"),
    ("/v1/completions", '{"prompt": ["Tom", "\\udfff"]}', "prompt[1]"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "Tom"}], "top_p": -Infinity}', "top_p"),
    ("/", '{"inputs": "Tom", "parameters": {"temperature": NaN}}', "parameters.temperature"),
    ("/", '{"inputs": "\\ud800"}', "inputs"),
    ("/validate", '{"draft": "x", "sensitivity": Infinity}', "sensitivity"),
    ("/generations/gen-1", '{"logic_weight": NaN}', "logic_weight"),
])
def test_non_finite_numbers_and_lone_surrogates_are_422_naming_the_field(client, path, raw, param):
    r = client.post(path, content=raw.encode(), headers=JSON)
    message = check_shape(r, path, 422)
    assert param in message
    if path != "/":
        assert openai_error(r)["param"] == param


@pytest.mark.parametrize("path,change,param", [
    ("/generate", {"logic_weight": True}, "logic_weight"),
    ("/v1/completions", {"seed": "7"}, "seed"),
    ("/v1/completions", {"max_tokens": 2.0}, "max_tokens"),
    ("/v1/chat/completions", {"n": "2"}, "n"),
    ("/", {"parameters": {"max_new_tokens": "3"}}, "parameters.max_new_tokens"),
    ("/", {"parameters": {"logic_weight": False}}, "parameters.logic_weight"),
])
def test_no_loose_coercion_on_any_surface(client, path, change, param):
    body = {**BODIES[path], **change}
    assert param in check_shape(client.post(path, json=body), path, 422)


@pytest.mark.parametrize("path,change,param", [
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"suffix": "The end."}, "suffix"),
    ("/v1/completions", {"presence_penalty": 0.5}, "presence_penalty"),
    ("/v1/completions", {"frequency_penalty": -1}, "frequency_penalty"),
    ("/v1/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("/v1/completions", {"echo": True, "logprobs": 2}, "logprobs"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
    ("/", {"parameters": {"repetition_penalty": 1.3}}, "parameters.repetition_penalty"),
    ("/", {"parameters": {"watermark": True}}, "parameters.watermark"),
    ("/", {"parameters": {"best_of": 2}}, "parameters.best_of"),
    ("/", {"parameters": {"grammar": {"type": "json", "value": {}}}}, "parameters.grammar"),
])
def test_unsupported_options_that_change_output_are_422_not_silence(client, path, change, param):
    body = {**BODIES[path], **change}
    assert param in check_shape(client.post(path, json=body), path, 422)


@pytest.mark.parametrize("path,change,param", [
    ("/generate", {"max_new_tokens": 65}, "max_new_tokens"),
    ("/v1/completions", {"max_tokens": 65}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 65}, "max_tokens"),
    ("/v1/chat/completions", {"max_completion_tokens": 65}, "max_completion_tokens"),
    ("/", {"parameters": {"max_new_tokens": 65}}, "parameters.max_new_tokens"),
])
def test_limits_name_the_field_as_the_route_spells_it(client, path, change, param):
    r = client.post(path, json={**BODIES[path], **change})
    message = check_shape(r, path, 422)
    assert message.startswith(param) and "limit of 64" in message
    if path != "/":
        assert openai_error(r)["param"] == param


def test_options_at_their_do_nothing_values_are_accepted(client):
    # What LangChain and the TGI clients send by default must not be refused.
    r = client.post("/v1/completions", json={**BODIES["/v1/completions"], "presence_penalty": 0,
                                             "frequency_penalty": 0.0, "logit_bias": {}, "best_of": 1, "n": 1,
                                             "logprobs": None, "user": "someone"})
    assert r.status_code == 200, r.text
    r = client.post("/", json={"inputs": PROMPT, "parameters": {
        "max_new_tokens": 2, "best_of": None, "repetition_penalty": None, "watermark": False, "grammar": None,
        "decoder_input_details": False, "typical_p": None, "adapter_id": None}})
    assert r.status_code == 200, r.text


# ---- 429 and 503: the same shapes, and when to retry ---------------------------------------


def test_busy_and_unavailable_are_429_and_503_in_each_routes_shape(tiny_tokenizer):
    with fake_stack(tiny_tokenizer, gpt2=dict(step_delay_s=0.05), max_concurrent=1) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            with c.stream("POST", "/generate_stream", json={"prompt": PROMPT, "max_new_tokens": 200}) as held:
                lines = held.iter_lines()
                next(lines)  # the one slot is taken
                for path in ("/generate", "/v1/completions", "/v1/chat/completions", "/", "/validate"):
                    r = c.post(path, json=BODIES[path])
                    assert "limit of 1" in check_shape(r, path, 429)
                    assert r.headers["retry-after"] == "1"

    down = start_gateway("127.0.0.1:1", "127.0.0.1:2", connect_timeout_s=0.5, retry_interval_s=60)
    try:
        with httpx.Client(base_url=down.url, timeout=20) as c:
            for path in BODIES:
                r = c.post(path, json=BODIES[path])
                assert "is not answering" in check_shape(r, path, 503) and r.headers["retry-after"]
    finally:
        down.stop()


# ---- a client that leaves cancels its work -------------------------------------------------


def post_and_leave(url: str, path: str, body: bytes, started) -> None:
    """POST over a raw socket, wait until `started()`, then close the connection unread."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert wait_until(started, timeout=10)


@pytest.mark.parametrize("path,body", [
    ("/generate", b'{"prompt": "Tom", "max_new_tokens": 5000}'),
    ("/v1/completions", b'{"prompt": "Tom", "max_tokens": 5000}'),
    ("/v1/completions", b'{"prompt": ["Tom", "Sue"], "max_tokens": 5000, "n": 2}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "Tom"}], "max_tokens": 5000}'),
    ("/", b'{"inputs": "Tom", "parameters": {"max_new_tokens": 5000}}'),
])
def test_abandoned_non_streaming_generation_frees_sessions_and_slot(tiny_tokenizer, path, body):
    # 5,000 steps of 20 ms: left running, the story would hold its sessions for minutes.
    slow = dict(step_delay_s=0.02, max_context=8192)
    with fake_stack(tiny_tokenizer, gpt2=slow, bdh=slow, max_new_tokens_limit=5000, max_concurrent=1) as (gw, g, b):
        post_and_leave(gw.url, path, body, lambda: g.model.open_sessions and b.model.open_sessions)
        assert wait_until(lambda: g.model.open_sessions == 0 and b.model.open_sessions == 0, timeout=5)
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            assert wait_until(lambda: c.post("/generate", json={"prompt": "Tom", "max_new_tokens": 1})
                              .status_code == 200, timeout=5)


def test_abandoned_validation_cancels_both_scores_and_frees_the_slot(tiny_tokenizer):
    with fake_stack(tiny_tokenizer, gpt2=dict(score_delay_s=60), bdh=dict(score_delay_s=60),
                    max_concurrent=1, step_timeout_s=120) as (gw, g, b):
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            c.get("/ready")  # the servers are known, so the validation goes straight to Score
            post_and_leave(gw.url, "/validate", b'{"context": "Tom had a cat.", "draft": " It slept."}',
                           lambda: gw.app.state.gateway.limiter.active == 1)
            assert wait_until(lambda: gw.app.state.gateway.limiter.active == 0, timeout=5)
            # Each server scores the draft with its context and without it: both calls end.
            assert wait_until(lambda: g.model.scores_cancelled == 2 and b.model.scores_cancelled == 2, timeout=5)


# ---- a hanging model server ----------------------------------------------------------------


def test_hanging_server_fails_every_concurrent_request_within_the_connect_timeout(tiny_tokenizer):
    hang = HangingServer()
    b = FakeServer(FakeLanguageModel(tiny_tokenizer, model_type="bdh", salt=2))
    timeout = 1.0
    gw = start_gateway(hang.address, b.address, connect_timeout_s=timeout, retry_interval_s=60)

    def one(_) -> tuple[int, float]:
        t0 = time.monotonic()
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            r = c.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 2})
        return r.status_code, time.monotonic() - t0

    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
        assert [status for status, _ in results] == [503] * 6
        # One shared re-check: before, each waiter ran its own after the others', so the
        # sixth failed after 6 × the timeout. The bound (3 ×) leaves room for a loaded machine.
        assert max(elapsed for _, elapsed in results) < 3 * timeout, results
    finally:
        gw.stop()
        hang.stop()
        b.stop()


# ---- /ready tells strangers only ready or not ----------------------------------------------


def test_ready_without_the_key_says_only_whether_ready(tiny_tokenizer):
    gw = start_gateway("127.0.0.1:1", "127.0.0.1:2", connect_timeout_s=0.3, retry_interval_s=60, api_key="k3y")
    try:
        with httpx.Client(base_url=gw.url, timeout=20) as c:
            r = c.get("/ready")
            # Whether each role is up is no secret (no address, no gRPC text): the page shows it.
            assert r.status_code == 503 and r.json() == {"ready": False, "models": {"gpt2": False, "bdh": False}}
            detailed = c.get("/ready", headers={"Authorization": "Bearer k3y"})
            assert detailed.status_code == 503 and "127.0.0.1:1" in " ".join(detailed.json()["problems"])
    finally:
        gw.stop()


def test_blend_choices_come_from_the_one_registry(client):
    from plotarmour.sampling import BLENDS

    page = client.get("/").text
    assert all(f'<option value="{name}"' in page for name in BLENDS)
    assert client.get("/info").json()["gateway"]["blends"] == BLENDS
    r = client.post("/generate", json={"prompt": PROMPT, "blend": "nope"})
    assert all(name in openai_error(r)["message"] for name in BLENDS)


def test_metrics_carry_latency_per_route_queue_wait_lengths_and_the_process(client):
    client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 3})
    client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
    text = client.get("/metrics").text

    def value(series: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(series + " "))
        return float(line.rsplit(" ", 1)[1])

    assert value('plotarmour_gateway_request_duration_seconds_count{method="POST",route="/generate"}') >= 1
    assert value('plotarmour_gateway_request_duration_seconds_count{method="POST",route="/v1/completions"}') >= 1
    assert value("plotarmour_gateway_queue_wait_seconds_count") >= 2
    assert value("plotarmour_gateway_prompt_tokens_count") >= 2
    assert value("plotarmour_gateway_generated_tokens_per_generation_sum") >= 5
    for standard in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert value(standard) > 0
    assert "python_info{" in text


def test_one_request_cannot_ask_for_more_stories_than_max_choices(client):
    r = client.post("/v1/completions", json={"prompt": ["Tom"] * 300, "n": 16, "max_tokens": 2})
    assert "at most 16" in check_shape(r, "/v1/completions", 422) and openai_error(r)["param"] == "n"
    r = client.post("/v1/completions", json={"prompt": ["Tom"] * 17, "max_tokens": 2})
    assert openai_error(r)["param"] == "prompt"


@pytest.mark.parametrize("path,field", [("/v1/completions", "min_p"), ("/v1/completions", "ignore_eos"),
                                        ("/v1/chat/completions", "repetition_penalty"),
                                        ("/v1/chat/completions", "reasoning_effort"), ("/", "num_beams")])
def test_unknown_options_are_refused_not_ignored(client, path, field):
    body = dict(BODIES[path])
    if path == "/":
        body["parameters"] = {**body["parameters"], field: 3}
    else:
        body[field] = 0.1
    assert field in check_shape(client.post(path, json=body), path, 422)


def test_null_means_the_default_for_openai_fields(client):
    r = client.post("/v1/completions", json={**BODIES["/v1/completions"], "n": None, "echo": None, "logprobs": None,
                                             "user": "u1", "metadata": {"a": "b"}})
    assert r.status_code == 200 and len(r.json()["choices"]) == 1, r.text
    r = client.post("/v1/chat/completions", json={**BODIES["/v1/chat/completions"], "logprobs": None, "n": None})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None, r.text


def test_a_missing_body_is_named_as_the_body(client):
    message = check_shape(client.post("/generate", json={}), "/generate", 422)
    assert message.startswith("prompt:")
    message = check_shape(client.post("/generate", content=b"", headers=JSON), "/generate", 400)
    assert "None" not in message and message.startswith("request body is empty")


def test_a_chunked_body_just_over_the_limit_is_413_not_a_hang(tiny_tokenizer, fakes):
    gw = start_gateway(fakes[0].address, fakes[1].address, max_body_bytes=1000)
    try:
        def chunks():
            yield b'{"prompt": "' + b"x" * 5000 + b'"}'

        with httpx.Client(base_url=gw.url, timeout=10) as c:
            r = c.post("/generate", content=chunks(), headers=JSON)
            assert r.status_code == 413 and "1000 bytes" in openai_error(r)["message"]
    finally:
        gw.stop()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_an_unknown_model_is_404_model_not_found(client, path):
    """vLLM's and TGI's answer: the gateway serves one model name and says which."""
    r = client.post(path, json={**BODIES[path], "model": "gpt-4"}, headers=JSON)
    message = check_shape(r, path, 404)
    body = openai_error(r)
    assert body["code"] == "model_not_found" and body["param"] == "model", body
    assert "'gpt-4' does not exist" in message and "'plotarmour'" in message
    for named in ({"model": "plotarmour"}, {}):
        ok = client.post(path, json={**BODIES[path], **named}, headers=JSON)
        assert ok.status_code == 200 and ok.json()["model"] == "plotarmour", ok.text
