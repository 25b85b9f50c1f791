"""The helpers every kind of test shares, written once.

    wait_until(cond, timeout)        poll until true (-> True) or the timeout (-> False); no fixed sleeps
    closes_soon(*fake_servers)       every fake model server's sessions closed
    open_sessions(server)            a real model server's open sessions, as GetInfo reports them
    sse_events(response)             (event, data) pairs of a Server-Sent Events response, as they arrive
    long_story_seed(url, n, ...)     a seed whose story runs n tokens, found once per gateway
    free_port(host)                  a port nobody listens on (plotarmour.stack's)
    free_ports(n)                    n distinct such ports on 127.0.0.1, for a process that takes them all

Where a test's fixtures live: tests/conftest.py (the tiny corpus and models),
tests/fake_servers.py (scripted model servers and an in-process gateway),
tests/processes/conftest.py (real model-server processes), tests/browser/ (the browser).
"""

from __future__ import annotations

import json
import socket
import time

import grpc
import httpx
import pytest

from plotarmour.cli import parse_sse
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc
from plotarmour.stack import free_port  # noqa: F401  (one for the stack, the tests and the benches)


def free_ports(n: int) -> list[int]:
    """n ports nobody listens on, distinct: all bound at once before any is released."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(cond, timeout: float = 10.0) -> bool:
    """Poll cond() until it is true (→ True) or timeout seconds pass (→ False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def closes_soon(*servers, timeout: float = 5.0) -> bool:
    """True once every fake server's open sessions are 0: a stream's end reaches the
    server's thread a moment after the client has seen its last event."""
    return wait_until(lambda: not any(s.model.open_sessions for s in servers), timeout)


def open_sessions(server) -> int:
    """Sessions a model server has open now (Batch and Decode), as its GetInfo reports."""
    with grpc.insecure_channel(server.address) as ch:
        return pb_grpc.LanguageModelStub(ch).GetInfo(pb.InfoRequest(), timeout=5).open_sessions


def sse_events(response: httpx.Response):
    """(event name, data as JSON) of a streamed response, each as it arrives."""
    return ((e, json.loads(d)) for e, d in parse_sse(response.iter_lines()))


_long_seeds: dict[tuple, tuple[list[int], list[int]]] = {}  # request → (seeds found, next seed to try)


def long_story_seed(url: str, n: int, skip: int = 0, tries: int = 200, **fields) -> int:
    """A seed whose story (POST url/generate with `fields`) runs all n tokens without
    end-of-text, so a test has time to act while it streams; `skip` asks for the next one.
    The same seed writes the same story, so a stream of it will run as long. Found once per
    gateway and request, and only as many as asked for: each try that runs long costs a
    whole story."""
    found, tried = _long_seeds.setdefault((str(url), n, json.dumps(fields, sort_keys=True)), ([], [0]))
    while len(found) <= skip:
        if tried[0] >= tries:
            pytest.fail(f"no seed in {tries} gives a story of {n} tokens")
        seed = tried[0]
        tried[0] += 1
        r = httpx.post(f"{url}/generate", json={**fields, "seed": seed, "max_new_tokens": n}, timeout=120)
        assert r.status_code == 200, r.text
        if r.json()["finish_reason"] == "length":
            found.append(seed)
    return found[skip]
