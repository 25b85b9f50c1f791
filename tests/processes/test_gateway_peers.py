"""Two gateway replicas behind Debian's nginx, round robin, as the Kubernetes files run
several: steering and status of a running story work whichever replica a request
reaches (the other forwards it to the story's own, services/gateway/replicas.py), and a
replica's loss ends only its own stories. Fake model servers behind both."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from services.gateway.replicas import owner_of, owner_part
from services.gateway.settings import GatewaySettings
from fake_servers import FakeLanguageModel, FakeServer, GatewayThread
from harness import free_port, sse_events, wait_until

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/install.sh --dev installs it)")

PROMPT = "Once upon a time, Lily found"
CONF = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format upstream '$request_method $uri $upstream_addr $status';
    access_log {d}/access.log upstream;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    upstream gateways {{ server 127.0.0.1:{a} max_fails=1; server 127.0.0.1:{b} max_fails=1; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;  # Server-Sent Events pass as they come
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class Replicas:
    def __init__(self, tokenizer, tmp: Path):
        # Slow enough steps that a 150-token story is still running while it is steered.
        self.models = [FakeServer(FakeLanguageModel(tokenizer, model_type=kind, salt=salt, step_delay_s=0.02))
                       for kind, salt in (("gpt2", 1), ("bdh", 2))]
        self.ports = [free_port("127.0.0.1"), free_port("127.0.0.1")]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.gateways = [GatewayThread(GatewaySettings(
            gpt2_address=self.models[0].address, bdh_address=self.models[1].address, port=port,
            peers=",".join(self.addresses), advertise_address=address))
            for port, address in zip(self.ports, self.addresses)]
        port = free_port("127.0.0.1")
        self.tmp = tmp
        (tmp / "nginx.conf").write_text(CONF.format(d=tmp, a=self.ports[0], b=self.ports[1], port=port))
        self.nginx = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{port}"

        def listening() -> bool:
            assert self.nginx.poll() is None, self.nginx.stderr.read().decode()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        assert wait_until(listening), "nginx did not start"

    def upstreams(self, path: str) -> set[str]:
        """The replicas nginx sent requests for `path` to."""
        lines = (self.tmp / "access.log").read_text().splitlines()
        return {line.split()[2] for line in lines if line.split()[1] == path}

    def stop(self) -> None:
        self.nginx.terminate()
        self.nginx.wait(10)
        for gw in self.gateways:
            gw.stop()
        for m in self.models:
            m.stop()


@pytest.fixture
def replicas(tiny_tokenizer, tmp_path):
    r = Replicas(tiny_tokenizer, tmp_path)
    yield r
    r.stop()


def story(c: httpx.Client, seed: int):
    """A running story through nginx → (its id, its events)."""
    r = c.stream("POST", "/generate_stream", json={"prompt": PROMPT, "logic_weight": 0.5, "seed": seed,
                                                   "max_new_tokens": 150, "temperature": 1.5})
    response = r.__enter__()
    events = sse_events(response)
    kind, start = next(events)
    assert kind == "start", start
    return start["id"], events, r


def test_steering_and_status_reach_the_story_whichever_replica_answers(replicas):
    with httpx.Client(base_url=replicas.url, timeout=30) as c:
        gen_id, events, r = story(c, seed=1)
        try:
            assert owner_of(gen_id) in replicas.addresses
            path = f"/generations/{gen_id}"
            seen = [c.get(path) for _ in range(4)]
            assert all(s.status_code == 200 and s.json()["id"] == gen_id for s in seen), [s.text for s in seen]
            steered = [c.post(path, json={"logic_weight": w}) for w in (0.2, 0.9)]
            assert [s.status_code for s in steered] == [200, 200], [s.text for s in steered]
            assert steered[1].json()["logic_weight"] == 0.9
            tokens = [ev for e, ev in events if e == "token"]
        finally:
            r.__exit__(None, None, None)
        assert tokens[-1]["logic_weight"] == 0.9
        # Round robin sent the story's requests to both replicas: the other one forwarded.
        assert replicas.upstreams(path) == set(replicas.addresses)

        # An id naming an address that is not a peer is never forwarded (it is client input).
        stray = "gen-0123456789abcdef-" + owner_part("127.0.0.1:9")
        assert c.get(f"/generations/{stray}").status_code == 404


def test_a_replicas_loss_ends_only_its_own_stories(replicas):
    with httpx.Client(base_url=replicas.url, timeout=30) as c:
        running = {}
        for seed in range(8):  # round robin: stories land on both replicas
            gen_id, events, r = story(c, seed)
            running.setdefault(owner_of(gen_id), (gen_id, events, r))
            if len(running) == 2:
                break
            r.__exit__(None, None, None)
        assert set(running) == set(replicas.addresses)
        lost, kept = replicas.addresses
        replicas.gateways[replicas.addresses.index(lost)].stop()
        gen_id, events, r = running[kept]
        try:
            assert c.post(f"/generations/{gen_id}", json={"logic_weight": 1.0}).status_code == 200
            rest = list(events)
        finally:
            r.__exit__(None, None, None)
            running[lost][2].__exit__(None, None, None)
        assert rest[-1][0] == "end" and rest[-2][1]["logic_weight"] == 1.0, rest[-2:]
        # The lost replica's story is gone with it: said plainly, whichever replica is asked.
        gone = c.get(f"/generations/{running[lost][0]}")
        assert gone.status_code in (404, 503) and "error" in gone.json(), gone.text
