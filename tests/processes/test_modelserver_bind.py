"""Outside compose (which sets BDH_HOST/GPT2_HOST=0.0.0.0 inside its private network),
a model server started with no host setting listens on loopback only: the gRPC port and
the metrics port are not reachable from other machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plotarmour.modelserver.launch import REPO_ROOT

pytest.importorskip("torch")


def listening(port: int) -> list[str]:
    """The local addresses of the TCP sockets listening on `port` (IPv4 and IPv6)."""
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                found.append(addr.rjust(width, "0"))
    return found


LOOPBACK = {"0100007F",  # 127.0.0.1, little-endian in /proc
            "00000000000000000000000001000000",  # ::1
            "0000000000000000FFFF00000100007F"}  # ::ffff:127.0.0.1 (gRPC's dual-stack socket)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
@pytest.mark.parametrize("service", ["bdh"])  # gpt2 runs the same server code
def test_default_host_is_loopback(service, tiny_pair, tmp_path):
    port_file = tmp_path / "port.json"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_HOST")}  # no BDH_HOST/GPT2_HOST
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{service}", "--checkpoint", str(tiny_pair[service]), "--port", "0",
         "--metrics-port", "0", "--port-file", str(port_file), "--threads", "1", "--device", "cpu"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, f"{service} server exited with {proc.returncode}"
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.05)
        ports = json.loads(port_file.read_text())
        for name in ("port", "metrics_port"):
            addrs = listening(ports[name])
            assert addrs, f"nothing listens on the {name} {ports[name]}"
            assert set(addrs) <= LOOPBACK, f"{service} {name} listens beyond loopback: {addrs}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_settings_default_to_loopback():
    from services.bdh import Settings as BDHSettings
    from services.gpt2 import Settings as GPT2Settings

    for cls in (BDHSettings, GPT2Settings):
        assert cls.model_fields["host"].default == "127.0.0.1"
