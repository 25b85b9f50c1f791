"""Start a model server as a subprocess and wait until it serves (tests, benchmarks).

    with spawn_model_server("bdh", "checkpoints/bdh", port_file_dir=tmp, threads=1) as srv:
        channel = grpc.insecure_channel(srv.address)

The server binds port 0 and reports its ports through --port-file, so any number can
run side by side. Readiness is the standard health check reporting SERVING. No torch
here: a gateway test can use this without importing the model code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAME = "plotarmour.v1.LanguageModel"


class ServerStartError(RuntimeError):
    """The server process exited or did not become healthy; carries its log tail."""


@dataclass
class ServerProcess:
    service: str
    checkpoint: Path
    proc: subprocess.Popen
    port: int
    metrics_port: int | None
    log_path: Path
    host: str = "127.0.0.1"
    settings: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return None if self.metrics_port is None else f"http://{self.host}:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self, timeout: float = 2.0) -> int:
        """The health status (health_pb2.HealthCheckResponse.SERVING, ...) of the model service."""
        # A connection of its own: one shared with a channel that saw this port refused
        # would inherit its back-off and report a server that is up as unreachable.
        with grpc.insecure_channel(self.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout).status

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, SIGKILL if it will not go; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_model_server(service: str, checkpoint: str | os.PathLike, *, workdir: str | os.PathLike | None = None,
                       timeout: float = 120.0, env: dict | None = None, **settings) -> ServerProcess:
    """Run `python -m services.<service> --port 0 ...` and wait for SERVING.

    settings become flags (max_sessions=2 → --max-sessions 2); by default the server
    listens on 127.0.0.1, picks free gRPC and metrics ports and uses the CPU.
    """
    if not (REPO_ROOT / "services" / service / "__main__.py").is_file():
        raise ValueError(f"no model-server service {service!r} (services/{service}/ has no __main__.py)")
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{service}-server-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"{service}-{os.getpid()}-{time.monotonic_ns()}.port.json"
    log_path = port_file.with_suffix("").with_suffix(".log")
    settings = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "device": "cpu", **settings,
                "checkpoint": str(checkpoint), "port_file": str(port_file)}
    cmd = [sys.executable, "-m", f"services.{service}"]
    for key, value in settings.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    proc_env = {**os.environ, **(env or {})}
    proc_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), proc_env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=proc_env, stdout=log_file, stderr=subprocess.STDOUT)

    def fail(why: str):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
        raise ServerStartError(f"{service} server ({' '.join(cmd)}) {why}; its log:\n{tail}")

    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None:
            fail(f"exited with status {proc.returncode} before binding")
        if time.monotonic() > deadline:
            fail(f"did not bind within {timeout:.0f} s")
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    server = ServerProcess(service, Path(checkpoint), proc, ports["port"], ports.get("metrics_port"), log_path,
                           host=settings["host"], settings=settings)
    while True:
        if proc.poll() is not None:
            fail(f"exited with status {proc.returncode} while loading")
        with contextlib.suppress(grpc.RpcError):
            if server.health() == health_pb2.HealthCheckResponse.SERVING:
                return server
        if time.monotonic() > deadline:
            fail(f"was not SERVING within {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def spawn_model_server(service: str, checkpoint: str | os.PathLike, **kwargs):
    """start_model_server as a context manager: the process is gone when it exits."""
    server = start_model_server(service, checkpoint, **kwargs)
    try:
        yield server
    finally:
        server.terminate()
