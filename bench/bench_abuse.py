"""How fast the gateway gives up on work nobody wants, measured against fake model servers
(numpy, no torch), for this code and, with `--against REV`, a git revision's, in one run.

1. A hanging model server (accepts TCP, never answers), connect_timeout_s = 1: six
   requests at once. Each should fail within the timeout; when every waiter ran its own
   re-check after the others', the sixth waited six timeouts.
2. A client that leaves a non-streaming /generate (a 2,000-token story at 20 ms a step):
   seconds from the disconnect until both servers' sessions and the gateway's slot are free.

    python bench/bench_abuse.py --against f24db9e
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corpus import make_corpus  # noqa: E402
from fake_servers import FakeLanguageModel, FakeServer, HangingServer  # noqa: E402

from plotarmour.stack import free_port  # noqa: E402
from plotarmour.tokenizer import train_tokenizer  # noqa: E402


def start_gateway(root: Path, gpt2: str, bdh: str, **settings) -> tuple[subprocess.Popen, str]:
    port = free_port("127.0.0.1")
    env = {**os.environ, "PYTHONPATH": str(root), "PLOTARMOUR_GATEWAY_PORT": str(port),
           "PLOTARMOUR_GATEWAY_GPT2_ADDRESS": gpt2, "PLOTARMOUR_GATEWAY_BDH_ADDRESS": bdh,
           "PLOTARMOUR_GATEWAY_LOG_LEVEL": "error",
           **{f"PLOTARMOUR_GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the gateway at {root} did not start")


def hanging(root: Path, tok) -> list[float]:
    hang, bdh = HangingServer(), FakeServer(FakeLanguageModel(tok, model_type="bdh", salt=2))
    proc, url = start_gateway(root, hang.address, bdh.address, connect_timeout_s=1.0, retry_interval_s=600)

    def one(_) -> float:
        t0 = time.monotonic()
        httpx.post(url + "/generate", json={"prompt": "Once upon a time", "max_new_tokens": 2}, timeout=60)
        return time.monotonic() - t0

    try:
        time.sleep(1.5)  # past the start-up check
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            return sorted(pool.map(one, range(6)))
    finally:
        proc.kill()
        hang.stop()
        bdh.stop()


def abandoned(root: Path, tok, cap: float = 30.0) -> float | None:
    fakes = [FakeServer(FakeLanguageModel(tok, model_type=m, salt=s, step_delay_s=0.02, max_context=8192))
             for m, s in (("gpt2", 1), ("bdh", 2))]
    proc, url = start_gateway(root, fakes[0].address, fakes[1].address, max_concurrent=1,
                              max_new_tokens_limit=5000)
    try:
        body = b'{"prompt": "Tom", "max_new_tokens": 2000}'
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            while not all(f.model.open_sessions for f in fakes):
                time.sleep(0.01)
            time.sleep(0.2)
        t0 = time.monotonic()
        while time.monotonic() - t0 < cap:
            if not any(f.model.open_sessions for f in fakes):
                r = httpx.post(url + "/generate", json={"prompt": "Tom", "max_new_tokens": 1}, timeout=30)
                if r.status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.02)
        return None
    finally:
        proc.kill()
        for f in fakes:
            f.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", metavar="REV", help="also measure this git revision's gateway")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(make_corpus())
        tok = train_tokenizer([corpus], vocab_size=320)
        roots = [("this code", ROOT)]
        if args.against:
            old = Path(tmp) / "old"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.against], cwd=ROOT, check=True,
                           capture_output=True)
            roots.append((args.against, old))
        try:
            print("| code | 6 requests, one server hanging: seconds to 503, each | abandoned /generate: seconds "
                  "until sessions and slot are free |")
            print("|---|---|---|")
            for label, root in roots:
                waits = hanging(root, tok)
                freed = abandoned(root, tok)
                print(f"| {label} | {', '.join(f'{w:.2f}' for w in waits)} | "
                      f"{'over 30 (still running)' if freed is None else f'{freed:.2f}'} |")
        finally:
            if args.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(Path(tmp) / "old")], cwd=ROOT,
                               capture_output=True)


if __name__ == "__main__":
    main()
