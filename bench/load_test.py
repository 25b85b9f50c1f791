"""Load test: N concurrent streaming clients against the gateway for D seconds.

    python bench/load_test.py                          # starts the local stack on checkpoints/
    python bench/load_test.py --clients 64 --duration 60 --max-concurrent 64
    python bench/load_test.py --url http://127.0.0.1:8000 [--api-key KEY]

Each client loops: POST /generate_stream, read the SSE events to the end, start again.
A 429 (the gateway's concurrency limit) is expected once more clients run than the
limit allows: that client waits briefly and retries. Any other status, an `error`
event, a stream that stops without `end`, or a transport error is an error.

Prints the status counts, p50/p99 time to first token (request sent → first token
event) and inter-token latency (gap between token events of one stream), tokens/s, and
the resident memory (VmRSS, VmHWM peak) of the gateway and both model servers at the
start, every 10 s and at the end, so a leak shows as a climb. Processes are found by
the ports they listen on (the gateway's, and the model servers' from its /info), so
this works for a stack started elsewhere on this machine too. Exit status 1 on errors.

Bounded: no request starts after D seconds; those running get --drain seconds more
and are then cancelled. Without --url, a missing checkpoints/ pair is replaced by random
~4M-parameter models (as bench_gateway.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Once upon a time, there was a little girl named Lily.", "Tom and his dog went to the park.",
           "One day, Mia found a shiny stone under a big tree.", "The little bird was sad because",
           "Ben wanted to build a tall tower with his blocks.", "It was a sunny day and"]


# ---- finding the processes and their memory ---------------------------------------------


def listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (IPv4 or IPv6) on this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def pid_listening_on(port: int) -> int | None:
    inodes = {f"socket:[{i}]" for i in listening_inodes(port)}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue  # gone, or not ours to read
    return None


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def find_processes(url: str, headers: dict) -> dict[str, int]:
    """{"gateway": pid, "gpt2": pid, "bdh": pid} for those listening on this machine."""
    pids = {}
    port = httpx.URL(url).port
    if port and (pid := pid_listening_on(port)):
        pids["gateway"] = pid
    info = httpx.get(url + "/info", headers=headers, timeout=10).json()
    for role, model in info.get("models", {}).items():
        m = re.search(r":(\d+)$", model.get("address", ""))
        if m and (pid := pid_listening_on(int(m.group(1)))):
            pids[role] = pid
    return pids


# ---- the clients ---------------------------------------------------------------------


@dataclass
class Stats:
    statuses: Counter = field(default_factory=Counter)  # "200", "429", "500", "error-event", ...
    errors: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    completed: int = 0

    def error(self, kind: str, detail: str) -> None:
        self.statuses[kind] += 1
        if len(self.errors) < 20:
            self.errors.append(f"{kind}: {detail[:300]}")


async def sse_events(response: httpx.Response):
    """(event, data) pairs as the lines arrive."""
    event, data = None, []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def one_generation(client: httpx.AsyncClient, stats: Stats, rng: random.Random, args) -> bool:
    """One streamed story; returns False when the gateway said 429 (caller backs off)."""
    body = {"prompt": rng.choice(PROMPTS), "logic_weight": round(rng.random(), 2),
            "max_new_tokens": args.max_new_tokens, "seed": rng.randrange(2**31)}
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", "/generate_stream", json=body) as r:
            if r.status_code == 429:
                await r.aread()
                stats.statuses["429"] += 1
                return False
            if r.status_code != 200:
                stats.error(str(r.status_code), (await r.aread()).decode(errors="replace"))
                return True
            last, ended = None, False
            async for event, data in sse_events(r):
                now = time.perf_counter()
                if event == "token":
                    stats.tokens += 1
                    if last is None:
                        stats.ttft.append(now - t0)
                    else:
                        stats.itl.append(now - last)
                    last = now
                elif event == "end":
                    ended = True
                elif event == "error":
                    stats.error("error-event", data)
                    return True
            if not ended:
                stats.error("no-end", "stream closed without an end event")
                return True
            stats.statuses["200"] += 1
            stats.completed += 1
            return True
    except httpx.HTTPError as e:
        stats.error("transport", repr(e))
        return True


async def client_loop(client: httpx.AsyncClient, stats: Stats, stop_at: float, seed: int, args) -> None:
    rng = random.Random(seed)
    backoff = 0.05
    while time.monotonic() < stop_at:
        if await one_generation(client, stats, rng, args):
            backoff = 0.05
        else:  # 429: wait a little, with jitter so the retries do not arrive together
            await asyncio.sleep(backoff * (0.5 + rng.random()))
            backoff = min(backoff * 2, 1.0)


async def run_load(url: str, args, pids: dict[str, int]) -> Stats:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    stats = Stats()
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    timeout = httpx.Timeout(connect=10, read=args.drain, write=10, pool=10)
    memory = {name: [memory_kb(pid)] for name, pid in pids.items()}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as client:
        t_start = time.monotonic()
        stop_at = t_start + args.duration
        tasks = [asyncio.create_task(client_loop(client, stats, stop_at, i, args)) for i in range(args.clients)]

        async def sample_memory():
            while True:
                await asyncio.sleep(10)
                for name, pid in pids.items():
                    memory[name].append(memory_kb(pid))
                print(f"  t={time.monotonic() - t_start:5.1f}s  completed {stats.completed}  tokens {stats.tokens}  "
                      f"statuses {dict(stats.statuses)}", flush=True)

        sampler = asyncio.create_task(sample_memory())
        _, late = await asyncio.wait(tasks, timeout=args.duration + args.drain)
        for t in late:  # bounded: whatever still runs after the drain is cancelled
            t.cancel()
        if late:
            stats.error("cancelled", f"{len(late)} clients still running {args.drain:.0f} s after the end")
            await asyncio.gather(*late, return_exceptions=True)
        sampler.cancel()
        elapsed = time.monotonic() - t_start
    await asyncio.sleep(1.0)  # let the servers free the last sessions before the final reading
    for name, pid in pids.items():
        memory[name].append(memory_kb(pid))
    report(stats, memory, elapsed, args)
    return stats


def pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1e3:8.1f} ms" if values else "       n/a"


def report(stats: Stats, memory: dict[str, list[dict]], elapsed: float, args) -> None:
    print(f"\n== {args.clients} clients, {args.duration:.0f} s (ran {elapsed:.1f} s), "
          f"max_new_tokens {args.max_new_tokens}")
    print(f"statuses: {dict(sorted(stats.statuses.items()))}")
    print(f"completed generations: {stats.completed}   tokens: {stats.tokens}   "
          f"tokens/s: {stats.tokens / elapsed:.1f}")
    print(f"time to first token  p50 {pct(stats.ttft, 50)}   p99 {pct(stats.ttft, 99)}   (n={len(stats.ttft)})")
    print(f"inter-token latency  p50 {pct(stats.itl, 50)}   p99 {pct(stats.itl, 99)}   (n={len(stats.itl)})")
    print("memory (VmRSS in MiB: start → every 10 s → end; peak VmHWM):")
    for name, samples in memory.items():
        rss = [s.get("VmRSS", 0) / 1024 for s in samples]
        trail = " ".join(f"{r:.0f}" for r in rss)
        # The first seconds allocate the batch buffers once; after that a leak shows as a climb.
        warm = rss[1] if len(rss) > 2 else rss[0]
        print(f"  {name:8s} start {rss[0]:7.1f}  end {rss[-1]:7.1f}  change {rss[-1] - rss[0]:+7.1f}  "
              f"(since 10 s {rss[-1] - warm:+6.1f})  peak {samples[-1].get('VmHWM', 0) / 1024:7.1f}   [{trail}]")
    errors = sum(n for k, n in stats.statuses.items() if k not in ("200", "429"))
    print(f"errors (anything but 200 and 429): {errors}")
    for e in stats.errors:
        print("  " + e)


# ---- the local stack -----------------------------------------------------------------


def start_stack(args, tmp: Path) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_gateway import pick_pair  # builds random models when checkpoints/ has no usable pair

    pair = pick_pair(args.checkpoints, tmp)
    root = pair["bdh"].parent
    if pair["gpt2"].parent != root:
        root = tmp / "pair"
        for name, path in pair.items():
            shutil.copytree(path, root / name)
    env = {**os.environ, "PLOTARMOUR_GATEWAY_LOG_LEVEL": "warning"}
    if args.max_concurrent:
        env["PLOTARMOUR_GATEWAY_MAX_CONCURRENT"] = str(args.max_concurrent)
    if args.api_key:
        env["PLOTARMOUR_GATEWAY_API_KEY"] = args.api_key
    proc = subprocess.Popen([sys.executable, "-m", "plotarmour.stack", "--port", "0", "--checkpoints", str(root),
                             "--device", args.device], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # the stack prints one line once /ready answers 200
        m = re.search(r"ready: (http://\S+)", line)
        if m:
            # Keep reading what the services print, so a full pipe never blocks them.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.terminate()
    raise SystemExit(f"the stack did not start (exit status {proc.wait()})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running gateway; without it the local stack is started")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds during which requests start [60]")
    ap.add_argument("--drain", type=float, default=60.0, help="seconds running streams get after that [60]")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--api-key", default=os.environ.get("PLOTARMOUR_GATEWAY_API_KEY"))
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints", help="local stack only")
    ap.add_argument("--device", default="cpu", help="local stack only: the model servers' device [cpu]")
    ap.add_argument("--max-concurrent", type=int, default=None,
                    help="local stack only: the gateway's concurrency limit (default: the gateway's own)")
    args = ap.parse_args(argv)

    stack, tmp = None, Path(tempfile.mkdtemp(prefix="plotarmour-load-"))
    try:
        url = args.url
        if url is None:
            stack, url = start_stack(args, tmp)
        url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        info = httpx.get(url + "/info", headers=headers, timeout=10).json()
        limit = info["gateway"]["limits"]["max_concurrent"]
        pids = find_processes(url, headers)
        print(f"gateway {url}: concurrency limit {limit}; processes {pids}; "
              f"models {[m.get('name') for m in info['models'].values()]}", flush=True)
        stats = asyncio.run(run_load(url, args, pids))
        if args.clients <= limit and stats.statuses["429"]:
            print(f"429s with {args.clients} clients under the limit of {limit}: counted as errors")
            return 1
        return 1 if any(k not in ("200", "429") for k, n in stats.statuses.items() if n) else 0
    finally:
        if stack is not None:
            stack.terminate()  # the stack stops its three services on SIGTERM
            try:
                stack.wait(60)
            except subprocess.TimeoutExpired:
                stack.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
