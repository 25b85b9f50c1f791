"""Gateway throughput, overhead per token, and time to first token.

Three ways to produce the same kind of blended story (w = 0.5, drawn with the gateway's default
sampling, the page's default preset), measured in one run:

  in-process  both engines in this process, one after the other, with their caches;
              log-softmax, blend, sample (the gateway's own sampling functions)
  raw gRPC    both model servers over their Decode streams, asked concurrently, with
              the same blend and sampling in this process (what the gateway does, minus HTTP)
  gateway     the real gateway (its own process) streaming SSE from /generate_stream

Prints tokens/s for each, the ratio gateway : in-process, the gateway's overhead per
token (gateway − raw gRPC), and the time to first token for a 64-token prompt.

Then concurrency: aggregate blended tokens/s with 1, 16 and 64 stories streaming at once
through the gateway (its limit raised for the run), and the ratio to one story. With
`--against REV` the same is measured, in the same run, for the code of a git revision
(checked out into a temporary worktree), for a before/after comparison.

    python bench/bench_gateway.py [--checkpoints checkpoints] [--tokens 200] [--repeats 3]
    python bench/bench_gateway.py --concurrency-only --against 7308a48

Uses <checkpoints>/bdh and <checkpoints>/gpt2 when both exist and share a tokenizer,
else random ~4M-parameter models (vocabulary 4096) in a temp dir. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import torch

from plotarmour import sampling
from plotarmour.checkpoint import load_checkpoint, save_checkpoint
from plotarmour.cli import parse_sse
from plotarmour.modelserver.launch import spawn_model_server
from plotarmour.stack import free_port
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc
from plotarmour.tokenizer import fingerprint
from services.gateway.presets import NATIVE_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
W = 0.5
# Every loop draws as the gateway does by default (the page's default preset), so all three
# do the same work per token.
DRAW = sampling.SamplingParams(**NATIVE_DEFAULTS)
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
         "dog Max. One day, Lily found a shiny red ball under a big tree. She was very happy and showed it to "
         "her mom. Her mom smiled and said they could play together after lunch. ")


def random_pair(root: Path) -> dict[str, Path]:
    from transformers import GPT2LMHeadModel

    from plotarmour.models import BDH, BDHConfig, gpt2_config
    from plotarmour.tokenizer import eot_id, train_tokenizer_from_iterator

    # Made-up words from random syllables give the trainer enough distinct pairs to fill 4096 ids.
    rng = np.random.default_rng(0)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(20000)]
    texts = [STORY] + [" ".join(rng.choice(words, 200)) for _ in range(500)]
    tok = train_tokenizer_from_iterator(texts, vocab_size=4096, min_frequency=1)
    vocab = tok.get_vocab_size()
    torch.manual_seed(0)
    bdh = BDH(BDHConfig(n_layer=6, n_embd=256, n_head=4, mlp_internal_dim_multiplier=8, vocab_size=vocab, dropout=0))
    gpt2 = GPT2LMHeadModel(gpt2_config(vocab_size=vocab, eot_id=eot_id(tok), n_layer=4, n_embd=256, n_head=4,
                                       n_positions=1024, dropout=0))
    return {"bdh": save_checkpoint(root / "bdh", bdh, tok), "gpt2": save_checkpoint(root / "gpt2", gpt2, tok)}


def pick_pair(checkpoints: Path, tmp: Path) -> dict[str, Path]:
    pair = {m: checkpoints / m for m in ("bdh", "gpt2")}
    if all((p / "model.safetensors").is_file() for p in pair.values()):
        fps = {fingerprint(load_checkpoint(p).tokenizer) for p in pair.values()}
        if len(fps) == 1:
            return pair
    print(f"(no usable pair under {checkpoints}: using random ~4M-parameter models)")
    return random_pair(tmp)


def prompt_ids(tok, n: int) -> list[int]:
    return tok.encode(STORY * 4).ids[:n]


# ---- in-process --------------------------------------------------------------------------


def in_process(engines, ids: list[int], n: int, seed: int) -> tuple[float, float]:
    """(seconds per token, seconds to the first token) with both engines run one after the other."""
    rng, sp = sampling.make_rng(seed), DRAW
    t0 = time.perf_counter()
    sids, logits = zip(*(e.open(ids) for e in engines))
    ttft = None
    for i in range(n):
        lg, lb = (torch.log_softmax(x.reshape(-1).float(), -1).numpy() for x in logits)
        tok = sampling.sample(sampling.blend(lg, lb, W), sp, rng)
        ttft = ttft or time.perf_counter() - t0
        logits = [e.step({s: tok}) for e, s in zip(engines, sids)]
    total = time.perf_counter() - t0
    for e, s in zip(engines, sids):
        e.close(s)
    return (total - ttft) / (n - 1), ttft


# ---- raw gRPC, no gateway -----------------------------------------------------------------


async def raw_grpc(addresses: list[str], ids: list[int], n: int, seed: int) -> float:
    """Seconds per token doing the gateway's loop directly over gRPC."""
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    calls = [pb_grpc.LanguageModelStub(c).Decode() for c in channels]
    rng, sp = sampling.make_rng(seed), DRAW

    async def round_trip(req):
        for c in calls:
            await c.write(req)
        return [np.frombuffer((await c.read()).next.data, "<f4") for c in calls]

    lg, lb = await round_trip(pb.DecodeRequest(prompt=pb.Prompt(token_ids=ids)))
    t0 = None
    for i in range(n):
        tok = sampling.sample(sampling.blend(lg, lb, W), sp, rng)
        t0 = t0 or time.perf_counter()
        lg, lb = await round_trip(pb.DecodeRequest(token=tok))
    elapsed = time.perf_counter() - t0
    for c in calls:
        c.cancel()
    for c in channels:
        await c.close()
    return elapsed / n


# ---- through the gateway ---------------------------------------------------------------


def start_gateway(gpt2: str, bdh: str, root: Path = ROOT, max_concurrent: int = 8) -> tuple[subprocess.Popen, str]:
    port = free_port("127.0.0.1")
    env = {**os.environ, "PLOTARMOUR_GATEWAY_GPT2_ADDRESS": gpt2, "PLOTARMOUR_GATEWAY_BDH_ADDRESS": bdh,
           "PLOTARMOUR_GATEWAY_HOST": "127.0.0.1", "PLOTARMOUR_GATEWAY_PORT": str(port),
           "PLOTARMOUR_GATEWAY_LOG_LEVEL": "warning", "PLOTARMOUR_GATEWAY_MAX_NEW_TOKENS_LIMIT": "4096",
           "PLOTARMOUR_GATEWAY_MAX_PROMPT_TOKENS": "4096",
           "PLOTARMOUR_GATEWAY_MAX_CONCURRENT": str(max_concurrent), "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=root, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the gateway did not become ready")


def via_gateway(client: httpx.Client, prompt: str, n: int, seed: int) -> dict:
    """One streamed story: client-side seconds per token and to the first token, plus the
    gateway's own timings from its final event."""
    body = {"prompt": prompt, "logic_weight": W, "max_new_tokens": n, "seed": seed}
    t0 = time.perf_counter()
    stamps, start, end = [], None, None
    with client.stream("POST", "/generate_stream", json=body) as r:
        r.raise_for_status()
        for event, data in parse_sse(r.iter_lines()):
            if event == "token":
                stamps.append(time.perf_counter())
            elif event == "start":
                start = json.loads(data)
            elif event == "end":
                end = json.loads(data)
            elif event == "error":
                raise RuntimeError(data)
    spt = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return {"s_per_token": spt, "ttft": stamps[0] - t0, "prompt_tokens": start["prompt_tokens"], **end["timings"]}


def start_server(root: Path, service: str, checkpoint: Path, threads: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    """A model server of the code under `root` (this checkout or an old worktree)."""
    port_file = tmp / f"{service}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", f"services.{service}", "--checkpoint", str(checkpoint), "--port", "0",
           "--metrics-port", "-1", "--device", "cpu", "--threads", str(threads), "--max-sessions", "256",
           "--port-file", str(port_file)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{service} server under {root} did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{json.loads(port_file.read_text())['port']}"


async def concurrent_stories(url: str, prompt: str, streams: int, n: int) -> tuple[float, int]:
    """`streams` stories at once over /generate_stream → (aggregate tokens/s, tokens)."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one(seed: int) -> int:
            body = {"prompt": prompt, "logic_weight": W, "max_new_tokens": n, "seed": seed}
            count, failed = 0, False
            async with client.stream("POST", "/generate_stream", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if line.startswith("event: token"):
                        count += 1
                    elif line.startswith("event: error"):
                        failed = True
                    elif failed and line.startswith("data:"):
                        raise RuntimeError(f"story {seed} failed: {line[5:]}")
            return count

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(s) for s in range(streams)))
        return sum(counts) / (time.perf_counter() - t0), sum(counts)


def concurrency(root: Path, pair: dict[str, Path], prompt: str, levels: list[int], n: int, threads: int) -> dict:
    """Aggregate tokens/s at each concurrency level, for the code under `root`."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        try:
            g, ga = start_server(root, "gpt2", pair["gpt2"], threads, Path(tmp))
            procs.append(g)
            b, ba = start_server(root, "bdh", pair["bdh"], threads, Path(tmp))
            procs.append(b)
            gw, url = start_gateway(ga, ba, root=root, max_concurrent=max(2, *levels))  # (the warm-up runs 2)
            procs.append(gw)
            asyncio.run(concurrent_stories(url, prompt, 2, 8))  # warm-up
            return {k: asyncio.run(concurrent_stories(url, prompt, k, n))[0] for k in levels}
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)


def print_concurrency(label: str, rates: dict) -> None:
    one = rates[min(rates)]
    cells = ", ".join(f"{k} streams {r:7.1f} tok/s ({r / one:4.2f}x)" for k, r in rates.items())
    print(f"{label:<10}: {cells}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for the in-process loop and for each model server (on a small shared "
                         "machine more threads than free cores make torch much slower)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64], help="stories at once")
    ap.add_argument("--concurrency-tokens", type=int, default=64, help="tokens per story in the concurrency runs")
    ap.add_argument("--concurrency-only", action="store_true", help="skip the single-story comparison")
    ap.add_argument("--against", metavar="REV", help="also measure concurrency for this git revision's code")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if not args.concurrency_only:
        single_story(args)
    with tempfile.TemporaryDirectory() as tmp:
        pair = pick_pair(args.checkpoints, Path(tmp))
        tok = load_checkpoint(pair["gpt2"]).tokenizer
        prompt = tok.decode(prompt_ids(tok, 16))
        print(f"concurrency: {args.concurrency_tokens} tokens per story, w={W}, {args.threads} torch thread(s) "
              "per server")
        old = None
        if args.against:
            old = Path(tmp) / "old"
            subprocess.run(["git", "worktree", "add", "--detach", str(old), args.against], cwd=ROOT, check=True,
                           capture_output=True)
        try:
            for label, root in [("this code", ROOT)] + ([(args.against, old)] if old else []):
                print_concurrency(label, concurrency(root, pair, prompt, args.concurrency, args.concurrency_tokens,
                                                     args.threads))
        finally:
            if old is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)


def single_story(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pair = pick_pair(args.checkpoints, Path(tmp))
        ckpts = [load_checkpoint(pair[m]) for m in ("gpt2", "bdh")]
        tok = ckpts[0].tokenizer
        engines = [c.engine() for c in ckpts]
        vocab = engines[0].vocab_size
        ids16, ids64 = prompt_ids(tok, 16), prompt_ids(tok, 64)
        cores = os.cpu_count()
        print(f"models: gpt2 {sum(p.numel() for p in ckpts[0].model.parameters()):,} params, "
              f"bdh {sum(p.numel() for p in ckpts[1].model.parameters()):,} params, vocab {vocab}; "
              f"{cores} CPU cores; in-process torch threads {torch.get_num_threads()}, "
              f"per server {args.threads}; {args.tokens} tokens, w={W}, best of {args.repeats}")

        with spawn_model_server("gpt2", pair["gpt2"], threads=args.threads) as g, \
                spawn_model_server("bdh", pair["bdh"], threads=args.threads) as b:
            addresses = [g.address, b.address]
            proc, url = start_gateway(g.address, b.address)
            # One client for all requests: a kept-alive connection, as a browser or SDK would use.
            client = httpx.Client(base_url=url, timeout=120)
            try:
                prompt16, prompt64 = tok.decode(ids16), tok.decode(ids64)
                in_process(engines, ids16, 10, 0)  # warm-ups
                asyncio.run(raw_grpc(addresses, ids16, 10, 0))
                via_gateway(client, prompt16, 10, 0)
                # Interleaved repeats, so load from elsewhere on the machine hits all three alike.
                ip, raw, gw = [], [], []
                for s in range(args.repeats):
                    ip.append(in_process(engines, ids16, args.tokens, s)[0])
                    raw.append(asyncio.run(raw_grpc(addresses, ids16, args.tokens, s)))
                    gw.append(via_gateway(client, prompt16, args.tokens, s))
                ip_ttft64 = min(in_process(engines, ids64, 2, s)[1] for s in range(5))
                runs64 = [via_gateway(client, prompt64, 2, s) for s in range(5)]
            finally:
                client.close()
                proc.terminate()
                proc.wait(10)

    # Best and median of the repeats: the best is the least disturbed by other load on the
    # machine, the median shows how much that load moved things.
    gw_s = [r["s_per_token"] for r in gw]
    ip_tok, raw_tok, gw_tok = min(ip), min(raw), min(gw_s)
    ip_med, raw_med, gw_med = statistics.median(ip), statistics.median(raw), statistics.median(gw_s)
    own_ms = statistics.median(r["gateway_ms_per_token"] for r in gw)
    gw_ttft64 = statistics.median(r["ttft"] for r in runs64)
    gw_ttft64_inside = statistics.median(r["time_to_first_token_ms"] for r in runs64)
    n64 = runs64[0]["prompt_tokens"]

    def rate(best: float, med: float) -> str:
        return f"{1 / best:7.1f} tokens/s best ({best * 1e3:5.2f} ms/token), {1 / med:7.1f} median"

    print(f"in-process, both models in turn : {rate(ip_tok, ip_med)}")
    print(f"raw gRPC, both servers at once  : {rate(raw_tok, raw_med)}")
    print(f"gateway, SSE /generate_stream   : {rate(gw_tok, gw_med)}")
    print(f"ratio gateway : in-process      : {ip_tok / gw_tok:.2f}x best, {ip_med / gw_med:.2f}x median "
          f"(target >= 1.0x)")
    print(f"ratio raw gRPC : in-process     : {ip_tok / raw_tok:.2f}x best, {ip_med / raw_med:.2f}x median")
    print(f"gateway overhead per token      : {own_ms:.3f} ms measured inside the gateway (time not spent "
          f"waiting on the servers; target <= 1 ms); {(gw_tok - raw_tok) * 1e3:+.3f} ms vs the raw gRPC loop")
    print(f"time to first token, {n64}-token prompt: gateway {gw_ttft64 * 1e3:.1f} ms at the client "
          f"({gw_ttft64_inside:.1f} ms inside the gateway), in-process {ip_ttft64 * 1e3:.1f} ms; "
          f"ratio {gw_ttft64 / ip_ttft64:.2f}x (medians / best of 5)")


if __name__ == "__main__":
    main()
