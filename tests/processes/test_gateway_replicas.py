"""The gateway spreads sessions over model-server replicas (client-side round_robin),
as it does behind a headless Kubernetes Service."""

from __future__ import annotations

import httpx
import pytest

from services.gateway.settings import GatewaySettings
from fake_servers import GatewayThread

pytest.importorskip("torch")


def prompt_tokens_served(server) -> float:
    """Prompt tokens a server has prefilled so far, from its Prometheus counter."""
    with httpx.Client(timeout=5) as c:
        text = c.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("plotarmour_prompt_tokens_total"))


def test_round_robin_spreads_generations_over_replicas(tiny_pair, gpt2_server, start_model_server):
    replicas = [start_model_server(tiny_pair["bdh"], metrics_port=0) for _ in range(2)]
    target = "ipv4:" + ",".join(r.address for r in replicas)  # one name, two addresses
    gw = GatewayThread(GatewaySettings(gpt2_address=gpt2_server.address, bdh_address=target,
                                       lb_policy="round_robin", streams_per_server=2, port=0))
    try:
        with httpx.Client(base_url=gw.url, timeout=60) as client:
            for seed in range(6):
                r = client.post("/generate", json={"prompt": "Once upon a time", "max_new_tokens": 2, "seed": seed})
                assert r.status_code == 200, r.text
        served = [prompt_tokens_served(r) for r in replicas]
        assert min(served) > 0, f"one replica got every session: prompt tokens per replica {served}"
    finally:
        gw.stop()
