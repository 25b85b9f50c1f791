"""The one-command local stack: starts all three services, serves, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path



def children_of(pid: int) -> set[int]:
    """Process ids whose parent is pid (from /proc, so no extra dependency)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def test_stack_starts_serves_and_stops_cleanly(tiny_pair):
    root = tiny_pair["bdh"].parent
    proc = subprocess.Popen([sys.executable, "-m", "plotarmour.stack", "--checkpoints", str(root), "--port", "0",
                             "--device", "cpu", "--timeout", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:  # the line that says where it is ready
            if "is ready:" in line:
                url = line.split("is ready:")[1].split()[0]
                break
        assert url, "the stack never said it was ready"
        kids = children_of(proc.pid)
        assert len(kids) == 3
        body = json.dumps({"prompt": "Once upon a time", "max_new_tokens": 5, "seed": 1}).encode()
        req = urllib.request.Request(url + "/generate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            assert json.loads(r.read())["usage"]["completion_tokens"] >= 1
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # impatient: a second signal while it stops
        assert proc.wait(timeout=60) == 0
        time.sleep(0.2)
        assert not [k for k in kids if alive(k)], "a service outlived the stack"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stack_fails_fast_on_missing_checkpoint(tmp_path):
    out = subprocess.run([sys.executable, "-m", "plotarmour.stack", "--checkpoints", str(tmp_path), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"{tmp_path / 'bdh' / 'config.json'} not found" in out.stderr


def test_stack_fails_fast_on_taken_port(tiny_pair):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "plotarmour.stack", "--checkpoints", str(tiny_pair["bdh"].parent),
                              "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken" in out.stderr
