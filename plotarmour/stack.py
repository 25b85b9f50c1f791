"""Run the whole system on this machine without Docker: two model servers and the gateway.

    python -m plotarmour.stack                 # shipped checkpoints, http://127.0.0.1:8000
    python -m plotarmour.stack --port 0 --checkpoints path/with/bdh-and-gpt2

Checks what it can before starting anything (checkpoints present, ports free), starts
the three services as child processes, waits until the gateway's /ready answers 200,
prints the URL, and on Ctrl-C (or SIGTERM) stops all three: SIGTERM first, so the
servers drain their sessions, then SIGKILL for anything still there after a grace period.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# The blend's two roles (logic, creativity), each a service of its own. Which model family
# a role serves is its checkpoint's business (config.json's model_type, looked up in
# plotarmour.models.FAMILIES by the server), so no family is named here.
MODELS = ("bdh", "gpt2")
DEFAULT_PORTS = {"gateway": 8000, "bdh": 50051, "gpt2": 50052}


class StackError(RuntimeError):
    """Something that stops the stack from starting; the message says what and how to fix it."""


def check_checkpoints(root: Path) -> None:
    for name in MODELS:
        config = root / name / "config.json"
        if not config.is_file():
            raise StackError(f"checkpoint missing: {config} not found (pass --checkpoints DIR holding bdh/ and gpt2/)")


def check_port_free(host: str, port: int, flag: str) -> None:
    if port == 0:
        return
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise StackError(f"port {port} on {host} is taken (choose another with {flag})") from None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Stack:
    """The three child processes, started in order and stopped together."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.procs: dict[str, subprocess.Popen] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="plotarmour-stack-"))
        self.url = ""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        # gRPC's C core logs routine events at info ("Got goaway" at shutdown): errors only,
        # unless the user asked for more.
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *argv], env={"GRPC_VERBOSITY": "ERROR", **os.environ, **(env or {})},
            stdin=subprocess.DEVNULL)

    def start(self) -> str:
        a = self.args
        for name in MODELS:
            self._spawn(name, [
                f"services.{name}", "--checkpoint", str(a.checkpoints / name), "--host", a.host,
                "--port", str(getattr(a, f"{name}_port")), "--port-file", str(self.tmp / f"{name}.json"),
                "--device", a.device, *(["--metrics-port", "0"] if a.port == 0 else []),
            ])
        ports = {name: self._wait_port_file(name) for name in MODELS}
        gateway_port = a.port or free_port(a.host)
        self._spawn("gateway", ["services.gateway", "--host", a.host, "--port", str(gateway_port),
                                "--bdh-address", f"{a.host}:{ports['bdh']}",
                                "--gpt2-address", f"{a.host}:{ports['gpt2']}"])
        self.url = f"http://{a.host}:{gateway_port}"
        self._wait_ready()
        return self.url

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with status {proc.returncode} during start-up (see its log above)")

    def _wait_port_file(self, name: str) -> int:
        path = self.tmp / f"{name}.json"
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if path.is_file():
                try:
                    return int(json.loads(path.read_text())["port"])
                except (ValueError, KeyError):
                    pass  # written but not yet complete
            time.sleep(0.1)
        raise StackError(f"{name} did not bind a port within {self.args.timeout:.0f} s")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the models load
            time.sleep(0.25)
        raise StackError(f"the gateway at {self.url} was not ready within {self.args.timeout:.0f} s")

    def stop(self, grace: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self.tmp.iterdir():
            f.unlink()
        self.tmp.rmdir()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="plotarmour up", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                    help="directory holding bdh/ and gpt2/ checkpoint directories [checkpoints]")
    ap.add_argument("--host", default="127.0.0.1", help="interface for all three services [127.0.0.1]")
    ap.add_argument("--port", type=int, default=DEFAULT_PORTS["gateway"],
                    help="gateway HTTP port; 0 picks free ports for all three [8000]")
    ap.add_argument("--bdh-port", type=int, default=None, help="BDH gRPC port [50051]")
    ap.add_argument("--gpt2-port", type=int, default=None, help="GPT-2 gRPC port [50052]")
    ap.add_argument("--device", default="auto", help="model servers' device: auto, cpu, cuda [auto]")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each start-up step [180]")
    args = ap.parse_args(argv)
    for name in MODELS:  # with --port 0 the model servers pick free ports too
        if getattr(args, f"{name}_port") is None:
            setattr(args, f"{name}_port", 0 if args.port == 0 else DEFAULT_PORTS[name])
    return args


def _interrupt(signum, frame):
    _ignore_signals()  # a second Ctrl-C (or docker stop after one) must not cut the shutdown short
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_checkpoints(args.checkpoints)
        check_port_free(args.host, args.port, "--port")
        check_port_free(args.host, args.bdh_port, "--bdh-port")
        check_port_free(args.host, args.gpt2_port, "--gpt2-port")
    except StackError as e:
        print(f"plotarmour stack: {e}", file=sys.stderr)
        return 2

    stack = Stack(args)
    # SIGTERM behaves as Ctrl-C, so `kill` and container stops shut down cleanly too; SIGINT
    # is set explicitly because a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        url = stack.start()
        print(f"PlotArmour is ready: {url}  (Ctrl-C stops all three services)", flush=True)
        while all(p.poll() is None for p in stack.procs.values()):
            time.sleep(0.5)
        stack._check_alive()
    except StackError as e:
        print(f"plotarmour stack: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr, flush=True)
    finally:
        _ignore_signals()
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
