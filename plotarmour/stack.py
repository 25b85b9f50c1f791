"""Run the whole system on this machine without Docker: two model servers and the gateway.

    python -m plotarmour.stack                 # shipped checkpoints, http://127.0.0.1:8000
    python -m plotarmour.stack --port 0 --checkpoints path/with/bdh-and-gpt2

Checks what it can before starting anything (checkpoints present, every port it will bind
free), starts the three services as child processes, waits until the gateway's /ready
answers 200, prints the URL, and then supervises: a service that exits is started again
on the same ports, after a back-off that grows while it keeps failing, and the gateway
reconnects by itself. On Ctrl-C (or SIGTERM) it stops all three: SIGTERM first, so the
servers drain their sessions, then SIGKILL for anything still there after a grace period.

While it runs, the stack writes where it is to a stack file (`stack_file()`), so that
`plotarmour generate` finds a stack started on a free port (`--port 0`).
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
from dataclasses import dataclass
from pathlib import Path

from plotarmour.roles import ROLES

# The blend's two roles (plotarmour.roles), each a service of its own. Which model family
# a role serves is its checkpoint's business (config.json's model_type, looked up in
# plotarmour.models.FAMILIES by the server).
MODELS = tuple(reversed(ROLES))  # listed and started logic first, as the stack always has
_PORT_KEYS = [f"{name}{kind}_port" for kind in ("", "_metrics") for name in MODELS]  # bdh_port, ...
DEFAULT_PORTS = {"gateway": 8000,
                 **{name: ROLES[name].port for name in MODELS},
                 **{f"{name}_metrics": ROLES[name].metrics_port for name in MODELS}}

# Restart back-off: 1 s, 2 s, 4 s ... up to 30 s while a service keeps failing; one that ran
# this long before it exited is taken to have been healthy, and starts the count again.
BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_AFTER_S = 1.0, 30.0, 60.0


class StackError(RuntimeError):
    """Something that stops the stack from starting; the message says what and how to fix it."""


def check_checkpoints(root: Path) -> None:
    for name in MODELS:
        config = root / name / "config.json"
        if not config.is_file():
            raise StackError(f"checkpoint missing: {config} not found (pass --checkpoints DIR holding bdh/ and gpt2/)")


def check_port_free(host: str, port: int, flag: str) -> None:
    """Bind the port the way the services will (SO_REUSEADDR, as uvicorn and gRPC do), so a
    port whose last connections sit in TIME_WAIT after a stop counts as free, as it is."""
    if port <= 0:  # 0: a free one is picked; -1: metrics off
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise StackError(f"port {port} on {host} is taken (choose another with {flag})") from None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stack_file() -> Path:
    """Where a running stack says where it is: one file per user (the newest stack wins)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"plotarmour-{os.getuid()}" / "stack.json"


def running_stack_url() -> str | None:
    """The URL of this user's running local stack, if its stack file names a live one."""
    try:
        info = json.loads(stack_file().read_text())
        os.kill(int(info["pid"]), 0)
        return str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe_exit(returncode: int, ran_s: float) -> str:
    """'was killed by SIGKILL after 7 min 3 s', 'exited with status 1 after 2.1 s'."""
    if returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with status {returncode}"
    ran = f"{ran_s:.1f} s" if ran_s < 60 else f"{int(ran_s // 60)} min {int(ran_s % 60)} s"
    return f"{how} after {ran}"


@dataclass
class Child:
    """One service: how to start it, its process, and its restart history."""

    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0
    failures: int = 0  # exits in a row that came soon after a start
    due: float | None = None  # when a pending restart is due

    def spawn(self) -> None:
        # gRPC's C core logs routine events at info ("Got goaway" at shutdown): errors only,
        # unless the user asked for more.
        self.proc = subprocess.Popen([sys.executable, "-m", *self.argv],
                                     env={"GRPC_VERBOSITY": "ERROR", **os.environ}, stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        self.due = None


class Stack:
    """The three child processes, started in order, supervised, and stopped together."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.children: dict[str, Child] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="plotarmour-stack-"))
        self.url = ""

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return {name: c.proc for name, c in self.children.items() if c.proc is not None}

    def _model_argv(self, name: str, port: int, metrics_port: int) -> list[str]:
        a = self.args
        return [f"services.{name}", "--checkpoint", str(a.checkpoints / name), "--host", a.host,
                "--port", str(port), "--metrics-port", str(metrics_port),
                "--port-file", str(self.tmp / f"{name}.json"), "--device", a.device]

    def start(self) -> str:
        a = self.args
        for name in MODELS:
            self._start(name, self._model_argv(name, getattr(a, f"{name}_port"), getattr(a, f"{name}_metrics_port")))
        bound = {name: self._wait_port_file(name) for name in MODELS}
        # A restart must come back where the gateway (and any scraper) looks: pin the ports
        # that were picked when 0 asked for free ones.
        for name, (port, metrics_port) in bound.items():
            self.children[name].argv = self._model_argv(name, port, metrics_port)
        gateway_port = a.port or free_port(a.host)
        self._start("gateway", ["services.gateway", "--host", a.host, "--port", str(gateway_port),
                                "--bdh-address", f"{a.host}:{bound['bdh'][0]}",
                                "--gpt2-address", f"{a.host}:{bound['gpt2'][0]}"])
        self.url = f"http://{a.host}:{gateway_port}"
        self._wait_ready()
        self._write_stack_file()
        return self.url

    def _start(self, name: str, argv: list[str]) -> None:
        self.children[name] = Child(name, argv)
        self.children[name].spawn()

    def _check_alive(self) -> None:
        for name, c in self.children.items():
            if c.proc.poll() is not None:
                raise StackError(f"{name} {describe_exit(c.proc.returncode, time.monotonic() - c.started)} "
                                 f"during start-up (see its log above)")

    def _wait_port_file(self, name: str) -> tuple[int, int]:
        path = self.tmp / f"{name}.json"
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if path.is_file():
                try:
                    ports = json.loads(path.read_text())
                    metrics = ports.get("metrics_port")
                    return int(ports["port"]), -1 if metrics is None else int(metrics)
                except (ValueError, KeyError):
                    pass  # written but not yet complete
            time.sleep(0.1)
        raise StackError(f"{name} did not bind a port within {self.args.timeout:.0f} s")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self.ready():
                return
            time.sleep(0.25)
        raise StackError(f"the gateway at {self.url} was not ready within {self.args.timeout:.0f} s")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False  # not listening yet, or 503 while a model loads or is away

    def _write_stack_file(self) -> None:
        path = stack_file()
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
            tmp.replace(path)
        except OSError as e:  # only `plotarmour generate`'s discovery depends on it
            print(f"plotarmour stack: could not write {path} ({e}); pass --url to plotarmour generate",
                  file=sys.stderr)

    def _remove_stack_file(self) -> None:
        try:
            if json.loads(stack_file().read_text()).get("pid") == os.getpid():
                stack_file().unlink()
        except (OSError, ValueError):
            pass

    def supervise(self, max_failures: int) -> None:
        """Restart every service that exits, on its own ports, with back-off; returns (by
        StackError) only when one has failed `max_failures` times in a row soon after starting."""
        now = time.monotonic()
        for c in self.children.values():
            if c.due is not None:
                if now >= c.due:
                    c.restarts += 1
                    print(f"plotarmour stack: starting {c.name} again (restart {c.restarts})", file=sys.stderr,
                          flush=True)
                    c.spawn()
                continue
            if c.proc.poll() is None:
                continue
            ran = now - c.started
            c.failures = 1 if ran >= HEALTHY_AFTER_S else c.failures + 1
            what = f"{c.name} {describe_exit(c.proc.returncode, ran)}"
            if c.failures >= max_failures:
                raise StackError(f"{what}; it failed {c.failures} times in a row, so the stack stops")
            wait = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (c.failures - 1))
            print(f"plotarmour stack: {what}; starting it again in {wait:g} s", file=sys.stderr, flush=True)
            c.due = now + wait

    def stop(self, grace: float = 15.0) -> None:
        self._remove_stack_file()
        procs = list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
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
                    help="gateway HTTP port; 0 picks free ports for every service [8000]")
    for name in MODELS:
        label = ROLES[name].family
        ap.add_argument(f"--{name}-port", type=int, default=None, help=f"{label} gRPC port [{DEFAULT_PORTS[name]}]")
        ap.add_argument(f"--{name}-metrics-port", type=int, default=None,
                        help=f"{label} Prometheus port; -1 turns it off [{DEFAULT_PORTS[name + '_metrics']}]")
    ap.add_argument("--device", default="auto", help="model servers' device: auto, cpu, cuda [auto]")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each start-up step [180]")
    ap.add_argument("--max-failures", type=int, default=5,
                    help="stop the stack when a service fails this many times in a row, each soon after "
                         "it started [5]")
    args = ap.parse_args(argv)
    for key in _PORT_KEYS:
        if getattr(args, key) is None:  # with --port 0 the model servers pick free ports too
            setattr(args, key, 0 if args.port == 0 else DEFAULT_PORTS[key.removesuffix("_port")])
    return args


def ports_to_check(args: argparse.Namespace) -> list[tuple[int, str]]:
    """Every port the stack will bind, with the flag that chooses it."""
    out = [(args.port, "--port")]
    for key in _PORT_KEYS:
        out.append((getattr(args, key), "--" + key.replace("_", "-")))
    taken = {}
    for port, flag in out:
        if port > 0 and port in taken:
            raise StackError(f"port {port} is chosen twice ({taken[port]} and {flag})")
        taken[port] = flag
    return out


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
        for port, flag in ports_to_check(args):
            check_port_free(args.host, port, flag)
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
        while True:
            stack.supervise(args.max_failures)
            time.sleep(0.25)
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
