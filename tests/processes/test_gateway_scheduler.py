"""The gateway's scheduler against real model servers: a story does not depend on the
stories that share its batch, and a gateway that dies frees every session it held."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from harness import free_port, open_sessions, wait_until

from plotarmour.cli import parse_sse
from services.gateway.settings import GatewaySettings
from fake_servers import GatewayThread

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {m: ROOT / "checkpoints" / m for m in ("gpt2", "bdh")}
PROMPT = "Once upon a time, Lily found"


@pytest.fixture(scope="module")
def shipped_servers(tmp_path_factory):
    from plotarmour.modelserver.launch import start_model_server

    servers = {m: start_model_server(m, p, workdir=tmp_path_factory.mktemp(m), threads=1)
               for m, p in SHIPPED.items()}
    yield servers
    for s in servers.values():
        s.terminate()


def test_a_seeded_story_is_the_same_alone_and_beside_15_others(shipped_servers):
    gw = GatewayThread(GatewaySettings(gpt2_address=shipped_servers["gpt2"].address,
                                       bdh_address=shipped_servers["bdh"].address, port=0, max_concurrent=16))
    story = {"prompt": PROMPT, "logic_weight": 0.6, "seed": 7, "max_new_tokens": 40, "temperature": 0.9,
             "top_p": 0.95}
    try:
        with httpx.Client(base_url=gw.url, timeout=300) as client:
            alone = client.post("/generate", json=story)
            assert alone.status_code == 200, alone.text

            def other(i: int) -> httpx.Response:
                # Others differ in weight, blend, sampling and length, and start at other times.
                time.sleep(0.01 * i)
                return client.post("/generate", json={
                    "prompt": PROMPT + " a" * i, "logic_weight": i / 15, "seed": 100 + i, "max_new_tokens": 20 + 3 * i,
                    "blend": "geometric" if i % 2 else "linear", "top_k": 5 * i})

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                others = [pool.submit(other, i) for i in range(15)]
                together = pool.submit(client.post, "/generate", json=story).result()
                assert all(f.result().status_code == 200 for f in others)
        assert together.status_code == 200, together.text
        assert [t["id"] for t in together.json()["tokens"]] == [t["id"] for t in alone.json()["tokens"]]
    finally:
        gw.stop()


def test_kill_9_of_the_gateway_frees_every_session_on_both_servers(gpt2_server, bdh_server):
    port = free_port("127.0.0.1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PLOTARMOUR_GATEWAY_PORT": str(port),
           "PLOTARMOUR_GATEWAY_GPT2_ADDRESS": gpt2_server.address, "PLOTARMOUR_GATEWAY_BDH_ADDRESS": bdh_server.address,
           "PLOTARMOUR_GATEWAY_LOG_LEVEL": "warning"}
    gateway = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    streams_done = threading.Event()
    try:
        assert wait_until(lambda: _ready(url), timeout=60), "the gateway did not become ready"

        def stream(seed: int) -> None:
            # Long stories that are still running when the gateway dies.
            try:
                with httpx.stream("POST", url + "/generate_stream", timeout=60, json={
                        "prompt": PROMPT, "seed": seed, "max_new_tokens": 1000, "temperature": 0.0}) as r:
                    for _ in parse_sse(r.iter_lines()):
                        if streams_done.is_set():
                            return
            except httpx.HTTPError:
                pass  # the gateway is gone: expected

        threads = [threading.Thread(target=stream, args=(s,), daemon=True) for s in range(4)]
        for t in threads:
            t.start()
        assert wait_until(lambda: open_sessions(gpt2_server) >= 4 and open_sessions(bdh_server) >= 4, timeout=30)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        t_kill = time.monotonic()
        assert wait_until(lambda: open_sessions(gpt2_server) == 0 and open_sessions(bdh_server) == 0, timeout=10), \
            (f"sessions left {time.monotonic() - t_kill:.1f} s after kill -9: gpt2 {open_sessions(gpt2_server)}, "
             f"bdh {open_sessions(bdh_server)}")
    finally:
        streams_done.set()
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
