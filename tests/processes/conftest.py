"""Real model servers on 127.0.0.1 for integration tests (subprocesses, port 0).

    def test_x(bdh_server, gpt2_server):          # shared by the whole session
        grpc.insecure_channel(bdh_server.address)

    def test_y(start_model_server, tiny_pair):    # your own, with its own settings
        srv = start_model_server(tiny_pair["gpt2"], max_sessions=2)

A server is a plotarmour.modelserver.launch.ServerProcess: .address ("127.0.0.1:PORT"),
.port, .metrics_port, .metrics_url, .proc, .log(), .health(), .terminate() -> exit status.
Every server started here is stopped at teardown, so no process outlives the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plotarmour.modelserver.launch import ServerProcess, start_model_server as _start


def _service_of(checkpoint: Path) -> str:
    # The checkpoint says which server serves it, so callers need not repeat it.
    return json.loads((Path(checkpoint) / "config.json").read_text())["model_type"]


def _launch(tmp_dir: Path, checkpoint, service: str | None = None, **settings) -> ServerProcess:
    settings.setdefault("threads", 1)  # CI machines are small and shared
    return _start(service or _service_of(checkpoint), checkpoint, workdir=tmp_dir, **settings)


@pytest.fixture
def start_model_server(tmp_path):
    """Factory: start_model_server(checkpoint_dir, service=None, **settings) -> ServerProcess."""
    started: list[ServerProcess] = []

    def start(checkpoint, service: str | None = None, **settings) -> ServerProcess:
        server = _launch(tmp_path, checkpoint, service, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.terminate()


@pytest.fixture(scope="session")
def bdh_server(tiny_pair, tmp_path_factory) -> ServerProcess:
    server = _launch(tmp_path_factory.mktemp("bdh-server"), tiny_pair["bdh"], "bdh")
    yield server
    server.terminate()


@pytest.fixture(scope="session")
def gpt2_server(tiny_pair, tmp_path_factory) -> ServerProcess:
    server = _launch(tmp_path_factory.mktemp("gpt2-server"), tiny_pair["gpt2"], "gpt2")
    yield server
    server.terminate()
