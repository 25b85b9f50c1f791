"""The gateway's guards over real HTTP (fake model servers, no torch): bodies over the
size limit get 413 before any parsing, the optional API key, CORS from the settings."""

from __future__ import annotations

import json

import httpx
import pytest

from services.gateway.settings import GatewaySettings
from fake_servers import GatewayThread

LIMIT = 4096
KEY = "s3cret-test-key"



@pytest.fixture(scope="module")
def open_gateway(fakes):
    """Default guards: no key, no CORS origins; a small body limit to test against."""
    gw = GatewayThread(GatewaySettings(gpt2_address=fakes[0].address, bdh_address=fakes[1].address, port=0,
                                       max_body_bytes=LIMIT))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def locked_gateway(fakes):
    gw = GatewayThread(GatewaySettings(gpt2_address=fakes[0].address, bdh_address=fakes[1].address, port=0,
                                       api_key=KEY, cors_origins="https://story.example, https://other.example"))
    yield gw
    gw.stop()


# ---- body size ------------------------------------------------------------------------


def test_declared_oversized_body_is_refused_before_parsing(open_gateway):
    with httpx.Client(base_url=open_gateway.url, timeout=10) as c:
        # Not even JSON: a parser would say 422; the guard answers first.
        r = c.post("/generate", content=b"{" * (LIMIT + 1), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert str(LIMIT) in r.json()["error"]["message"]
        # A valid request just over the limit is refused too; one under it runs.
        big = {"prompt": "x" * LIMIT, "max_new_tokens": 2}
        assert c.post("/generate", json=big).status_code == 413
        assert c.post("/generate", json={"prompt": "Once", "max_new_tokens": 2}).status_code == 200
        # Under the limit the parser does run: bad JSON is then a 422.
        assert c.post("/generate", content=b"{", headers={"content-type": "application/json"}).status_code == 400


def test_streamed_body_without_length_is_cut_off_at_the_limit(open_gateway):
    sent = 0

    def chunks():  # chunked transfer encoding: no Content-Length to check up front
        nonlocal sent
        yield b'{"prompt": "'
        for _ in range(64):  # up to 16x the limit; the guard must not wait for all of it
            sent += 1024
            yield b"a" * 1024
        yield b'"}'

    with httpx.Client(base_url=open_gateway.url, timeout=10) as c:
        try:
            r = c.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        except httpx.TransportError:
            pytest.fail("the gateway dropped the connection instead of answering 413")
        assert r.status_code == 413, r.text
        assert "transfer-encoding" not in r.request.headers or r.request.headers["transfer-encoding"] == "chunked"

        def small():
            yield json.dumps({"prompt": "Once", "max_new_tokens": 2}).encode()

        assert c.post("/generate", content=small(), headers={"content-type": "application/json"}).status_code == 200


# ---- API key --------------------------------------------------------------------------

PROTECTED = [("POST", "/"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/info"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("POST", "/generate"),
             ("POST", "/generate_stream"), ("POST", "/validate"), ("POST", "/v1/completions"),
             ("GET", "/generations/gen-1")]


@pytest.mark.parametrize("method,path", PROTECTED)
def test_api_key_guards_every_route_but_the_public_ones(locked_gateway, method, path):
    with httpx.Client(base_url=locked_gateway.url, timeout=10) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": "Basic " + KEY}):
            r = c.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            if path == "/":  # TGI's route answers in TGI's shape
                assert r.json()["error_type"] == "authentication" and "API key" in r.json()["error"]
            else:
                assert r.json()["error"]["type"] == "authentication_error"
        ok = c.request(method, path, headers={"Authorization": f"Bearer {KEY}"}, json={})
        assert ok.status_code != 401


def test_public_routes_need_no_key(locked_gateway):
    with httpx.Client(base_url=locked_gateway.url, timeout=10) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 200
        assert c.get("/").status_code == 200
        assert c.get("/static/no-such-file.js").status_code == 404  # reached the files, not the key check
        r = c.post("/generate", headers={"Authorization": f"bearer {KEY}"},  # scheme is case-insensitive
                   json={"prompt": "Once", "max_new_tokens": 3})
        assert r.status_code == 200 and len(r.json()["tokens"]) == 3


def test_openai_client_sends_the_key(locked_gateway):
    openai = pytest.importorskip("openai")
    good = openai.OpenAI(base_url=locked_gateway.url + "/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model="plotarmour", prompt="Once", max_tokens=3, seed=1).choices[0].text
    bad = openai.OpenAI(base_url=locked_gateway.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        bad.completions.create(model="plotarmour", prompt="Once", max_tokens=3)


def test_key_never_shows_in_info_or_settings_repr(locked_gateway):
    with httpx.Client(base_url=locked_gateway.url, timeout=10) as c:
        info = c.get("/info", headers={"Authorization": f"Bearer {KEY}"})
    assert info.status_code == 200 and KEY not in info.text
    assert KEY not in repr(GatewaySettings(api_key=KEY))


# ---- CORS -----------------------------------------------------------------------------


def preflight(c: httpx.Client, origin: str) -> httpx.Response:
    return c.options("/generate", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "authorization, content-type"})


def test_no_cross_origin_access_by_default(open_gateway):
    with httpx.Client(base_url=open_gateway.url, timeout=10) as c:
        assert "access-control-allow-origin" not in preflight(c, "https://evil.example").headers
        r = c.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(locked_gateway):
    with httpx.Client(base_url=locked_gateway.url, timeout=10) as c:
        for origin in ("https://story.example", "https://other.example"):
            r = preflight(c, origin)
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
            assert "authorization" in r.headers["access-control-allow-headers"].lower()
        bad = preflight(c, "https://evil.example")
        assert bad.headers.get("access-control-allow-origin") != "https://evil.example"
        # Even a refused (401) answer carries the header, so the page can show why.
        r = c.post("/generate", headers={"Origin": "https://story.example"}, json={})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://story.example"


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("PLOTARMOUR_GATEWAY_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("PLOTARMOUR_GATEWAY_API_KEY", "k")
    monkeypatch.setenv("PLOTARMOUR_GATEWAY_MAX_BODY_BYTES", "100")
    s = GatewaySettings()
    assert s.cors_origin_list == ["https://a.example", "https://b.example"]
    assert s.api_key.get_secret_value() == "k" and s.max_body_bytes == 100
    monkeypatch.delenv("PLOTARMOUR_GATEWAY_CORS_ORIGINS")
    monkeypatch.delenv("PLOTARMOUR_GATEWAY_API_KEY")
    d = GatewaySettings()
    assert d.cors_origin_list == [] and d.api_key is None
