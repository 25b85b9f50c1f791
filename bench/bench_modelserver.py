"""Model-server throughput and stalls, per model: how much of the engine the server serves.

For 1, 4, 16 and 64 live sessions, with a 32-token prompt each:
  engine alone   the engine stepping all sessions as one batch in this process, with the
                 server's own per-step work (log-softmax, bytes): the ceiling
  Batch stream   one Batch stream; each step is ONE message naming every session (what
                 the gateway does), answered by one buffer of float16 rows (the gateway's
                 default; --rows float16 float32 measures both, alternating)
  Decode streams a Decode stream per session, each stepping on its own (simple clients)
Printed: tokens/s, the mean batch the server ran (its `plotarmour_batch_size` histogram,
sum / count, over the measurement) against the live sessions, the ratio served : engine
alone at the same batch size, and the 16 : 1 ratio of each. Then, per Batch stream row
type, the served step split into its parts: the engine's step in the server (its
`plotarmour_step_latency_seconds` histogram) beside the engine alone, the server's own cost
per step message (`plotarmour_step_overhead_seconds`), the gRPC floor (the same client
against bench/grpc_floor.py's echo server, which answers at once with rows of the same
size) and what is left between the processes. The engine's step plus that floor is the
most any Python grpc server could serve at here.

Then the stall (BDH): a running story's inter-token gaps while an 8,000-token Score runs
beside it; its largest gap as a multiple of its median gap alone and during the Score,
and its 99th percentile (on a shared machine the largest is one sample, and jitters).
With --long-prompts (BDH): 1, 2 and 3 prompts of 8,000 tokens opened at once, each with a
10 s deadline (the gateway's step_timeout_s): seconds to each one's first answer, or how
it was refused.

    python bench/bench_modelserver.py [--checkpoints checkpoints] [--threads 1] [--models bdh gpt2]

Uses checkpoints/bdh and checkpoints/gpt2 when both exist, else random ~4M-parameter
models of the shipped shape. Measurements alternate in rounds (medians), so a machine
whose load drifts weighs on each alike. Prints figures; asserts nothing.

Only stable interfaces are used (engine open/step/close, launch, Decode and Score), so
the script also measures older code: `PYTHONPATH=<old worktree> python <this script>`
starts that tree's servers and engines; where the server has no Batch RPC that column
says so, and where it has no float16 rows (the echo server speaks this tree's protocol)
the floor is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import torch

import plotarmour
from plotarmour.checkpoint import load_checkpoint, save_checkpoint
from plotarmour.modelserver.launch import spawn_model_server
from plotarmour.rpc import language_model_pb2 as pb
from plotarmour.rpc import language_model_pb2_grpc as pb_grpc

from grpc_floor import floor_server  # (bench/, beside this script)

PROMPT = list(range(1, 33))
CONCURRENCY = (1, 4, 16, 64)
STALL_SCORE_TOKENS = 8000
HAS_BATCH = "Batch" in pb.DESCRIPTOR.services_by_name["LanguageModel"].methods_by_name
HAS_F16 = hasattr(pb, "LOG_PROBS_F16")  # step rows in float16 (older servers: float32 only)


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


def token(i: int) -> int:
    return 1 + i % 100


def server_work(logits: torch.Tensor) -> bytes:
    """What a server does with a step's logits: float32 log-probs as bytes."""
    return torch.log_softmax(logits.float(), dim=-1).numpy().astype("<f4", copy=False).tobytes()


class EngineAlone:
    """The engine in this process, stepping n sessions as one batch: the server's ceiling."""

    def __init__(self, checkpoint: Path, device: str):
        self.engine = load_checkpoint(checkpoint, device=device).engine()
        self.tokens_per_second(4, 3)  # warm-up

    def step_ms(self, steps: int) -> float:
        sid, _ = self.engine.open(PROMPT)
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            server_work(self.engine.step({sid: token(i)}))
            times.append(time.perf_counter() - t0)
        self.engine.close(sid)
        return statistics.median(times) * 1e3

    def tokens_per_second(self, sessions: int, steps: int) -> float:
        sids = [self.engine.open(PROMPT)[0] for _ in range(sessions)]
        t0 = time.perf_counter()
        for i in range(steps):
            server_work(self.engine.step({sid: token(i) for sid in sids}))
        elapsed = time.perf_counter() - t0
        for sid in sids:
            self.engine.close(sid)
        return sessions * steps / elapsed


# -- clients ---------------------------------------------------------------------------------


async def batch_stream_rate(address: str, sessions: int, steps: int, rows: str = "float32") -> float:
    """n sessions on one Batch stream, every step one message for all of them, answered in
    rows of that type (an older server without the choice answers float32)."""
    kind = {"kind": pb.LOG_PROBS_F16} if rows == "float16" and HAS_F16 else {}
    async with grpc.aio.insecure_channel(address) as ch:
        call = pb_grpc.LanguageModelStub(ch).Batch()
        for sid in range(1, sessions + 1):
            await call.write(pb.BatchRequest(open=pb.OpenSession(session=sid, prompt_ids=PROMPT)))
        for _ in range(sessions):
            r = await call.read()
            assert r.WhichOneof("kind") == "opened", r
        ids = list(range(1, sessions + 1))
        t0 = time.perf_counter()
        for i in range(steps):
            await call.write(pb.BatchRequest(step=pb.StepSessions(step=i, sessions=ids, tokens=[token(i)] * sessions,
                                                                  **kind)))
            r = await call.read()
            assert r.WhichOneof("kind") == "stepped" and not r.stepped.errors, r
        elapsed = time.perf_counter() - t0
        await call.done_writing()
        await call.read()  # EOF: the server has freed the sessions
    return sessions * steps / elapsed


async def decode_session(stub, steps: int, ready: list, go: asyncio.Event) -> None:
    """One Decode stream: its prompt, then (once `go` is set) `steps` tokens."""
    call = stub.Decode()
    await call.write(pb.DecodeRequest(prompt=pb.Prompt(token_ids=PROMPT)))
    await call.read()
    ready.append(1)
    await go.wait()
    for i in range(steps):
        await call.write(pb.DecodeRequest(token=token(i)))
        await call.read()
    await call.done_writing()


async def decode_streams_rate(address: str, sessions: int, steps: int) -> float:
    """n Decode streams stepping concurrently, each on its own: the per-session path."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.LanguageModelStub(ch)
        go, ready = asyncio.Event(), []
        tasks = [asyncio.ensure_future(decode_session(stub, steps, ready, go)) for _ in range(sessions)]
        while len(ready) < sessions:  # every prompt in before the clock starts
            await asyncio.sleep(0.005)
        t0 = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        return sessions * steps / (time.perf_counter() - t0)


async def stall(address: str, steps_alone: int) -> dict:
    """One running story (a Decode stream): its gaps alone, then while an 8,000-token Score
    runs beside it (the gap that ends after the Score counts too)."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.LanguageModelStub(ch)
        call = stub.Decode()
        await call.write(pb.DecodeRequest(prompt=pb.Prompt(token_ids=PROMPT)))
        await call.read()

        async def step(i: int) -> float:
            t0 = time.perf_counter()
            await call.write(pb.DecodeRequest(token=token(i)))
            await call.read()
            return time.perf_counter() - t0

        alone = [await step(i) for i in range(steps_alone)]
        ids = [1 + (7 * i) % 4000 for i in range(STALL_SCORE_TOKENS)]
        t0 = time.perf_counter()
        score = asyncio.ensure_future(stub.Score(pb.ScoreRequest(token_ids=ids), timeout=600))
        await asyncio.sleep(0.01)  # the Score is on its way before the next step
        during = []
        while not score.done():
            during.append(await step(len(during)))
        await score
        score_s = time.perf_counter() - t0
        await call.done_writing()
    return {"median_alone": statistics.median(alone), "median_during": statistics.median(during),
            "p99_during": sorted(during)[int(0.99 * (len(during) - 1))],
            "max_during": max(during), "steps_during": len(during), "score_s": score_s}


async def long_prompts(address: str, n: int, tokens: int = STALL_SCORE_TOKENS, deadline: float = 10.0) -> list[str]:
    """n Decode streams open a `tokens`-long prompt each at once, each with the gateway's
    deadline → per prompt, seconds to its first answer, or how it was refused or failed."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.LanguageModelStub(ch)

        async def one(i: int) -> str:
            t0 = time.perf_counter()
            call = stub.Decode(timeout=deadline)
            try:
                await call.write(pb.DecodeRequest(prompt=pb.Prompt(token_ids=[1 + (7 * j + i) % 4000
                                                                              for j in range(tokens)])))
                await call.read()
                return f"{time.perf_counter() - t0:.1f} s"
            except grpc.aio.AioRpcError as e:
                return f"{e.code().name} after {time.perf_counter() - t0:.1f} s"
            finally:
                call.cancel()

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def histograms(metrics_url: str) -> dict[str, float]:
    """The server's histograms' sums and counts so far (batch sizes, its own cost per step,
    its engine's steps)."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith(("plotarmour_batch_size_", "plotarmour_step_overhead_seconds_",
                                "plotarmour_step_latency_seconds_"))
            and line.split()[0].endswith(("_sum", "_count"))}


def measured(metrics_url: str, run) -> tuple[float, float, float, float, float]:
    """run() → (its result, rows stepped, batches run, the server's own seconds per Batch
    step message, its engine's seconds per batch) meanwhile (older servers without the
    histogram of their own cost: NaN)."""
    before = histograms(metrics_url)
    result = run()
    after = histograms(metrics_url)
    d = {k: after[k] - before.get(k, 0.0) for k in after}

    def mean(histogram: str) -> float:
        n = d.get(f"plotarmour_{histogram}_count")
        return d[f"plotarmour_{histogram}_sum"] / n if n else float("nan")

    return (result, d["plotarmour_batch_size_sum"], d["plotarmour_batch_size_count"],
            mean("step_overhead_seconds"), mean("step_latency_seconds"))


# -- the run ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    ap.add_argument("--models", nargs="+", default=["bdh", "gpt2"], choices=["bdh", "gpt2"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, here and in the server")
    ap.add_argument("--steps", type=int, default=320, help="tokens per measurement (split over the sessions)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of every measurement")
    ap.add_argument("--rows", nargs="+", default=["float16"], choices=["float16", "float32"],
                    help="the Batch stream's step rows: a column for each type listed")
    ap.add_argument("--no-stall", action="store_true", help="skip the stall measurement")
    ap.add_argument("--long-prompts", action="store_true", help="also 1, 2 and 3 long prompts at once (BDH)")
    ap.add_argument("--stall-only", action="store_true", help="skip the throughput table")
    ap.add_argument("--stall-chunks", type=int, nargs="*", default=[32],
                    help="also measure the stall on a server with these prefill_chunk settings (the "
                         "trade-off: smaller chunks, shorter stalls, slower long prompts); new code only")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if all((args.checkpoints / m / "config.json").is_file() for m in args.models):
            checkpoints = {m: args.checkpoints.resolve() / m for m in args.models}
        else:
            print(f"(no checkpoints under {args.checkpoints}: random ~4M-parameter models)")
            checkpoints = build_models(Path(tmp))
        print(f"code {Path(plotarmour.__file__).resolve().parents[1]}, device {args.device}, torch threads "
              f"{torch.get_num_threads()}, prompt {len(PROMPT)} tokens, {args.rounds} rounds, "
              f"Batch RPC {'yes' if HAS_BATCH else 'no (older server)'}\n")
        for model in args.models:
            run_model(model, checkpoints[model], args, tmp)


def run_model(model: str, ckpt: Path, args, tmp: str) -> None:
    settings = {"device": args.device, "max_sessions": 256, **({"threads": args.threads} if args.threads else {})}
    if model == "bdh":
        settings["max_context"] = 16384  # room for the stall's 8,000-token Score (new BDH default: 8192)
    modes = ["engine"] + ([f"batch {rows}" for rows in args.rows] if HAS_BATCH else []) + ["decode"]
    # The echo server speaks this tree's protocol: older trees (no float16 rows) get no floor.
    floors = [f"floor {rows}" for rows in args.rows] if HAS_F16 and not args.stall_only else []
    rates = {(m, n): [] for m in modes + floors for n in CONCURRENCY}
    rows_batches = {(m, n): [0.0, 0.0] for m in modes[1:] for n in CONCURRENCY}
    own = {(m, n): [] for m in modes[1:] for n in CONCURRENCY}  # the server's own seconds per step message
    served_engine = {(m, n): [] for m in modes[1:] for n in CONCURRENCY}  # its engine's seconds per batch
    local = EngineAlone(ckpt, args.device)
    with spawn_model_server(model, ckpt, workdir=tmp, **settings) as srv, contextlib.ExitStack() as stack:
        info = pb_grpc.LanguageModelStub(grpc.insecure_channel(srv.address)).GetInfo(pb.InfoRequest())
        echo = stack.enter_context(floor_server(info.vocab_size)) if floors else None
        asyncio.run(decode_streams_rate(srv.address, 4, 5))  # warm-up
        step_local = local.step_ms(50)
        for _ in range(0 if args.stall_only else args.rounds):
            for n in CONCURRENCY:
                # Within the context (GPT-2's learned positions end at n_positions).
                steps = max(6, min(args.steps // n, info.max_context - len(PROMPT) - 8))
                rates["engine", n].append(local.tokens_per_second(n, steps))
                for mode in modes[1:]:
                    run = (lambda: batch_stream_rate(srv.address, n, steps, mode.split()[1])) \
                        if mode.startswith("batch") else (lambda: decode_streams_rate(srv.address, n, steps))
                    rate, rows, batches, own_s, engine_s = measured(srv.metrics_url, lambda: asyncio.run(run()))
                    rates[mode, n].append(rate)
                    rows_batches[mode, n][0] += rows
                    rows_batches[mode, n][1] += batches
                    own[mode, n].append(own_s)
                    served_engine[mode, n].append(engine_s)
                for mode in floors:
                    rates[mode, n].append(asyncio.run(batch_stream_rate(echo, n, steps, mode.split()[1])))
        stalled = asyncio.run(stall(srv.address, 60)) if model == "bdh" and not args.no_stall else None
        crowd = {n: asyncio.run(long_prompts(srv.address, n)) for n in (1, 2, 3)} if model == "bdh" and args.long_prompts else {}
    stalls = [("default settings", stalled)] if stalled else []
    if stalled and HAS_BATCH:
        for chunk in args.stall_chunks:
            with spawn_model_server(model, ckpt, workdir=tmp, **settings, prefill_chunk=chunk) as srv:
                stalls.append((f"prefill_chunk {chunk}", asyncio.run(stall(srv.address, 60))))

    rate = {k: statistics.median(v) if v else float("nan") for k, v in rates.items()}
    print(f"{model}: {info.num_parameters / 1e6:.2f}M parameters, vocabulary {info.vocab_size}; "
          f"one step in-process {step_local:.2f} ms")
    names = {"engine": "engine alone", "decode": "Decode streams",
             **{f"batch {r}": f"Batch stream, {r if HAS_F16 else 'float32'} rows" for r in args.rows}}
    print(f"  {'sessions':>8}  {names['engine']:>14}" + "".join(f"  {names[m]:>36}" for m in modes[1:]))
    for n in CONCURRENCY:
        cells = [f"{rate['engine', n]:8.0f} tok/s"]
        for m in modes[1:]:
            rows, batches = rows_batches[m, n]
            mean = rows / max(batches, 1)
            cells.append(f"{rate[m, n]:6.0f} tok/s, batch {mean:4.1f}/{n:<2d} ({mean / n:4.2f}), "
                         f"{rate[m, n] / rate['engine', n]:4.2f}x eng")
        print(f"  {n:>8}  {cells[0]:>14}" + "".join(f"  {c:>36}" for c in cells[1:]))
    print(f"  {'16 : 1':>8}  {rate['engine', 16] / rate['engine', 1]:13.2f}x"
          + "".join(f"  {rate[m, 16] / rate[m, 1]:35.2f}x" for m in modes[1:]))
    for rows in args.rows if floors else []:
        print(f"  Batch stream, {rows} rows, ms per step: the served step; the engine's step alone and in the "
              f"server (step_latency histogram); the server's own (step_overhead histogram); the gRPC floor "
              f"(bench/grpc_floor.py: this client, an echo server, no model); what is left between the "
              f"processes. The engine's step alone plus the floor bounds served : engine")
        for n in CONCURRENCY:
            mode = f"batch {rows}"
            eng, floor = n / rate["engine", n] * 1e3, n / rate[f"floor {rows}", n] * 1e3
            rows_run, batches_run = rows_batches[mode, n]
            served = rows_run / max(batches_run, 1) / rate[mode, n] * 1e3  # per batch the server ran
            in_server = statistics.median(served_engine[mode, n]) * 1e3
            own_ms = statistics.median(own[mode, n]) * 1e3
            print(f"  {n:>8}  served {served:6.2f} ms = engine {in_server:6.2f} (alone {eng:6.2f}) + own {own_ms:5.2f} "
                  f"+ floor {floor:5.2f} + left {served - in_server - own_ms - floor:5.2f}: "
                  f"served : engine at most {eng / (eng + floor):4.2f}x")
    for n, outcomes in crowd.items():
        print(f"  {n} x {STALL_SCORE_TOKENS:,}-token prompts at once, 10 s deadline: first answer after "
              + ", ".join(outcomes))
    for label, s in stalls:
        print(f"  stall, {label}: one story (Decode stream) beside a {STALL_SCORE_TOKENS:,}-token Score ({s['score_s']:.1f} s, "
              f"{s['steps_during']} steps meanwhile): largest gap {s['max_during'] * 1e3:.0f} ms = "
              f"{s['max_during'] / s['median_alone']:.1f}x its median alone ({s['median_alone'] * 1e3:.1f} ms), "
              f"{s['max_during'] / s['median_during']:.1f}x its median during the Score "
              f"({s['median_during'] * 1e3:.1f} ms); 99th percentile {s['p99_during'] / s['median_alone']:.1f}x "
              f"its median alone")
    print()


if __name__ == "__main__":
    main()
