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

import httpx
import pytest

from harness import free_ports, long_story_seed, sse_events, wait_until


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


@pytest.mark.parametrize("flag", ["--port", "--gpt2-metrics-port"])
def test_stack_fails_fast_on_taken_port(tiny_pair, flag):
    """Every port the stack binds is checked up front (metrics included) and named in one line."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        flags = ["--port", str(port)] if flag == "--port" else ["--port", "0", flag, str(port)]
        out = subprocess.run([sys.executable, "-m", "plotarmour.stack", "--checkpoints", str(tiny_pair["bdh"].parent),
                              *flags], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == f"plotarmour stack: port {port} on 127.0.0.1 is taken (choose another with {flag})"


# ---- supervision, ports, discovery ---------------------------------------------------------------


class RunningStack:
    """A `python -m plotarmour.stack` child whose output is collected line by line."""

    def __init__(self, root: Path, *flags: str, env: dict | None = None):
        import threading

        self.proc = subprocess.Popen([sys.executable, "-m", "plotarmour.stack", "--checkpoints", str(root),
                                      "--device", "cpu", "--timeout", "120", *flags],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.url = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(120) and self.url, "the stack never said it was ready:\n" + "".join(self.lines)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "is ready:" in line:
                self.url = line.split("is ready:")[1].split()[0]
                self._ready.set()
        self._ready.set()

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def generate(url: str, **body) -> dict:
    data = json.dumps({"prompt": "Once upon a time", "max_new_tokens": 5, "seed": 1, **body}).encode()
    req = urllib.request.Request(url + "/generate", data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def child_running(parent: int, module: str) -> int | None:
    for pid in children_of(parent):
        try:
            if module in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "):
                return pid
        except OSError:
            pass
    return None


def test_a_killed_model_server_is_started_again_and_the_gateway_recovers(tiny_pair):
    stack = RunningStack(tiny_pair["bdh"].parent, "--port", "0")
    try:
        before = generate(stack.url)
        gpt2 = child_running(stack.proc.pid, "services.gpt2")
        assert gpt2 is not None
        os.kill(gpt2, signal.SIGKILL)
        # The exit is told as it was (the signal and how long it ran), and a new one starts.
        assert wait_until(lambda: stack.said("gpt2 was killed by SIGKILL after"), timeout=30), stack.lines
        assert wait_until(lambda: stack.said("starting gpt2 again (restart 1)"), timeout=30), stack.lines
        assert wait_until(lambda: child_running(stack.proc.pid, "services.gpt2") not in (None, gpt2), timeout=30)
        # The gateway reconnects by itself: ready again, and the same seed writes the same story.
        assert wait_until(lambda: ready(stack.url), timeout=90), stack.lines
        assert generate(stack.url)["text"] == before["text"]
        assert stack.proc.poll() is None, "the stack stopped with its child"
    finally:
        assert stack.stop() == 0


def test_stop_then_start_again_at_once_on_the_same_ports(tiny_pair):
    port, bdh, gpt2, bdh_m, gpt2_m = free_ports(5)
    flags = ["--port", str(port), "--bdh-port", str(bdh), "--gpt2-port", str(gpt2),
             "--bdh-metrics-port", str(bdh_m), "--gpt2-metrics-port", str(gpt2_m)]
    first = RunningStack(tiny_pair["bdh"].parent, *flags)
    generate(first.url)  # connections that linger in TIME_WAIT after the stop
    assert first.stop() == 0
    second = RunningStack(tiny_pair["bdh"].parent, *flags)  # no "port is taken" within the same second
    try:
        assert not second.said("is taken"), second.lines
        assert second.url == f"http://127.0.0.1:{port}" and generate(second.url)["usage"]["completion_tokens"] >= 1
    finally:
        assert second.stop() == 0


def test_a_port_chosen_twice_is_named(tiny_pair):
    out = subprocess.run([sys.executable, "-m", "plotarmour.stack", "--checkpoints", str(tiny_pair["bdh"].parent),
                          "--bdh-port", "45123", "--gpt2-metrics-port", "45123"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "port 45123 is chosen twice (--bdh-port and --gpt2-metrics-port)" in out.stderr


def test_the_cli_finds_a_stack_started_on_a_free_port(tiny_pair, tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    stack = RunningStack(tiny_pair["bdh"].parent, "--port", "0", env=env)
    try:
        clean = {k: v for k, v in os.environ.items() if k != "PLOTARMOUR_URL"}
        cli = [sys.executable, "-m", "plotarmour.cli", "generate", "Once upon a time", "--max-new-tokens", "5",
               "--seed", "1"]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=60, env={**clean, **env})
        assert out.returncode == 0, out.stderr
        assert out.stdout == generate(stack.url)["text"] + "\n"
    finally:
        assert stack.stop() == 0
    # Stopped: the stack file is gone, and the CLI says how to find or start a gateway.
    assert not (tmp_path / f"plotarmour-{os.getuid()}" / "stack.json").exists()
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60,
                         env={**clean, **env, "PLOTARMOUR_URL": "http://127.0.0.1:9"})
    assert out.returncode == 2 and "python -m plotarmour.stack" in out.stderr and "--url" in out.stderr


def test_a_story_completes_across_a_model_server_killed_under_the_stack(tiny_pair):
    """kill -9 of the GPT-2 server mid-story: the stack starts it again, the gateway reopens
    the story's session from its tokens, and the story ends as an uninterrupted one does."""
    stack = RunningStack(tiny_pair["bdh"].parent, "--port", "0")
    try:
        body = {"prompt": "Once upon a time", "logic_weight": 0.5, "temperature": 0.7}
        body["seed"], body["max_new_tokens"] = long_story_seed(stack.url, 60, **body), 60  # a story that runs all 60
        with httpx.Client(base_url=stack.url, timeout=120) as c:
            whole = c.post("/generate", json=body).json()
            gpt2 = child_running(stack.proc.pid, "services.gpt2")
            with c.stream("POST", "/generate_stream", json=body) as r:
                events = sse_events(r)
                assert next(events)[0] == "start"
                got = [next(events)[1]]
                os.kill(gpt2, signal.SIGSTOP)  # hold it mid-story, then kill it there
                time.sleep(0.2)
                os.kill(gpt2, signal.SIGKILL)
                rest = list(events)
        assert rest[-1][0] == "end", rest[-3:]
        got += [ev for e, ev in rest if e == "token"]
        assert [t["id"] for t in got] == [t["id"] for t in whole["tokens"]]
        assert stack.said("gpt2 was killed by SIGKILL")
    finally:
        assert stack.stop() == 0
