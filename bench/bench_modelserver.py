"""Model-server overhead and continuous-batching throughput, per model.

1. One decode step in-process (engine.step + log-softmax + bytes, the server's own
   work) against the same step as a gRPC round trip to a real server process (a Decode
   stream: write a token, read the distribution). The difference is what gRPC, asyncio
   and the batcher add per step.
2. Aggregate tokens/s with 1, 4 and 16 concurrent sessions on one server, and the
   ratio 16 : 1 (how much continuous batching buys).

    python bench/bench_modelserver.py [--checkpoints checkpoints] [--device cpu] [--threads N]

Uses checkpoints/bdh and checkpoints/gpt2 when both exist, else builds random ~4M
parameter models of the default shape in a temp dir. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import torch

from plotarmour.checkpoint import load_checkpoint, save_checkpoint
from plotarmour.modelserver.batcher import log_prob_bytes
from plotarmour.modelserver.launch import spawn_model_server
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

PROMPT_LEN = 32
CONCURRENCY = (1, 4, 16)


def build_models(root: Path) -> dict[str, Path]:
    """Random BDH (~3.7M) and GPT-2 (~4.4M) checkpoints, vocabulary 4096."""
    from transformers import GPT2LMHeadModel

    from plotarmour.models import BDH, BDHConfig, gpt2_config
    from plotarmour.tokenizer import EOT, eot_id, train_tokenizer_from_iterator

    words = ["once", "upon", "a", "time", "there", "was", "little", "girl", "named", "Lily", "dog", "ball", "happy"]
    text = (" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) + f" {EOT}" for i in range(2000))
    tok = train_tokenizer_from_iterator(text, vocab_size=4096)
    torch.manual_seed(0)
    bdh = BDH(BDHConfig(n_layer=6, n_embd=256, n_head=4, mlp_internal_dim_multiplier=8, vocab_size=4096, dropout=0))
    gpt2 = GPT2LMHeadModel(gpt2_config(vocab_size=4096, eot_id=eot_id(tok), n_layer=4, n_embd=256, n_head=4,
                                       n_positions=1024, dropout=0))
    return {"bdh": save_checkpoint(root / "bdh", bdh, tok), "gpt2": save_checkpoint(root / "gpt2", gpt2, tok)}


class InProcess:
    """The server's own per-step work, called directly: engine.step + log-softmax + bytes."""

    def __init__(self, checkpoint: Path, device: str):
        self.engine = load_checkpoint(checkpoint, device=device).engine()
        self.sid, _ = self.engine.open(list(range(1, PROMPT_LEN + 1)))
        self.step_times(5)  # warm-up

    def step_times(self, steps: int) -> list[float]:
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            log_prob_bytes(self.engine.step({self.sid: 1 + i % 100}))
            times.append(time.perf_counter() - t0)
        return times

    def tokens_per_second(self, sessions: int, steps: int) -> float:
        """The engine alone stepping `sessions` sessions as one batch: the ceiling for the server."""
        sids = [self.engine.open(list(range(1, PROMPT_LEN + 1)))[0] for _ in range(sessions)]
        t0 = time.perf_counter()
        for i in range(steps):
            log_prob_bytes(self.engine.step({sid: 1 + i % 100 for sid in sids}))
        elapsed = time.perf_counter() - t0
        for sid in sids:
            self.engine.close(sid)
        return sessions * steps / elapsed


async def session(stub, steps: int, times: list[float] | None = None) -> None:
    call = stub.Decode()
    await call.write(pb.DecodeRequest(prompt=pb.Prompt(token_ids=list(range(1, PROMPT_LEN + 1)))))
    await call.read()
    for i in range(steps):
        t0 = time.perf_counter()
        await call.write(pb.DecodeRequest(token=1 + i % 100))
        await call.read()
        if times is not None:
            times.append(time.perf_counter() - t0)
    await call.done_writing()


async def grpc_step_times(address: str, steps: int) -> list[float]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.LanguageModelStub(ch)
        await session(stub, 5)  # warm-up
        times: list[float] = []
        await session(stub, steps, times)
    return times


async def tokens_per_second(address: str, sessions: int, steps: int) -> float:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.LanguageModelStub(ch)
        await asyncio.gather(*(session(stub, 5) for _ in range(sessions)))  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(session(stub, steps) for _ in range(sessions)))
        return sessions * steps / (time.perf_counter() - t0)


def batch_counts(metrics_url: str) -> tuple[float, float]:
    """(steps, batches) the server has run so far, from its batch-size histogram."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    value = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.startswith(("plotarmour_batch_size_sum ", "plotarmour_batch_size_count "))}
    return value["plotarmour_batch_size_sum"], value["plotarmour_batch_size_count"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    ap.add_argument("--models", nargs="+", default=["bdh", "gpt2"], choices=["bdh", "gpt2"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, here and in the server")
    ap.add_argument("--steps", type=int, default=200, help="steps per measurement, split over the rounds")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of every measurement")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0, help="the server's batch_wait_ms")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if all((args.checkpoints / m / "config.json").is_file() for m in args.models):
            checkpoints = {m: args.checkpoints / m for m in args.models}
        else:
            print(f"(no checkpoints under {args.checkpoints}: random ~4M-parameter models)")
            checkpoints = build_models(Path(tmp))
        settings = {"device": args.device, "batch_wait_ms": args.batch_wait_ms,
                    **({"threads": args.threads} if args.threads else {})}
        print(f"device {args.device}, torch threads {torch.get_num_threads()}, prompt {PROMPT_LEN} tokens, "
              f"{args.steps} steps per run\n")
        for model in args.models:
            run_model(model, checkpoints[model], args, settings, tmp)


def run_model(model: str, ckpt: Path, args, settings: dict, tmp: str) -> None:
    # In-process and gRPC runs alternate, in rounds, so that a machine whose load
    # drifts (a shared CI box) weighs on both alike; figures are medians over rounds.
    local_times, remote_times = [], []
    rates = {n: [] for n in CONCURRENCY}
    ceiling = {n: [] for n in CONCURRENCY}
    steps_batches = {n: [0.0, 0.0] for n in CONCURRENCY}
    local = InProcess(ckpt, args.device)
    with spawn_model_server(model, ckpt, workdir=tmp, **settings) as srv:
        info = pb_grpc.LanguageModelStub(grpc.insecure_channel(srv.address)).GetInfo(pb.InfoRequest())
        for _ in range(args.rounds):
            local_times += local.step_times(args.steps // args.rounds)
            remote_times += asyncio.run(grpc_step_times(srv.address, args.steps // args.rounds))
            for n in CONCURRENCY:
                ceiling[n].append(local.tokens_per_second(n, max(5, args.steps // n // 2)))
                steps0, batches0 = batch_counts(srv.metrics_url)
                rates[n].append(asyncio.run(tokens_per_second(srv.address, n, max(10, 2 * args.steps // n))))
                steps1, batches1 = batch_counts(srv.metrics_url)
                steps_batches[n][0] += steps1 - steps0
                steps_batches[n][1] += batches1 - batches0
    local_ms, remote_ms = statistics.median(local_times) * 1e3, statistics.median(remote_times) * 1e3
    rate = {n: statistics.median(r) for n, r in rates.items()}
    engine_rate = {n: statistics.median(r) for n, r in ceiling.items()}
    print(f"{model}: {info.num_parameters / 1e6:.2f}M parameters, vocabulary {info.vocab_size}")
    print(f"  step in-process          {local_ms:8.3f} ms")
    print(f"  step over gRPC           {remote_ms:8.3f} ms   (+{remote_ms - local_ms:.3f} ms, x{remote_ms / local_ms:.2f})")
    for n in CONCURRENCY:
        mean_batch = steps_batches[n][0] / max(steps_batches[n][1], 1)
        print(f"  {n:2d} concurrent sessions  {rate[n]:8.0f} tokens/s   (mean batch {mean_batch:.1f}; "
              f"engine alone, batch of {n}: {engine_rate[n]:.0f} tokens/s)")
    print(f"  16 : 1 sessions          {rate[16] / rate[1]:8.2f}x   "
          f"(engine alone: {engine_rate[16] / engine_rate[1]:.2f}x)\n")


if __name__ == "__main__":
    main()
