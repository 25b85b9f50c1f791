"""Per-token decode cost by position: cached/state step against recomputing the prefix.

For each model, the time of one decode step at positions 16, 256 and 1024 — through
the engine (BDH state, GPT-2 KV cache) and by running the whole prefix again, which is
what the original BDH code does for every token. Then BDH batches of 1/4/16/64 sessions
in three layouts of its state pool: contiguous (every open session steps), after holes
(2B opened, every other one closed, the rest step) and interleaved (2B open, every other
one steps), the engine against the one of commit 7308a48 (per-session reads of holed
pools) in one run; with `--reads`, the state read those steps rest on (embedding_bag
over the pool) against batched matmuls over a slice or a gather of it. Then
GPT-2 batches of the same sizes at mixed positions, its KV-pool engine against the
engine of commit 7308a48 (caches padded and concatenated on every step), in one run,
with each one's 16 : 1 throughput ratio. Prints figures and ratios; asserts nothing.

    python bench/bench_decode.py [--checkpoints checkpoints] [--repeats 20] [--threads 1]
                                 [--models bdh,gpt2] [--batches 1,4,16,64] [--reads]

By default random models of the shipped pair's shape (the cost does not depend on the
weights' values), GPT-2 with 1100 positions so that position 1024 fits; `--checkpoints`
measures real checkpoint directories instead, skipping positions past their context.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from plotarmour.models import BDH, BDHConfig, BDHEngine, GPT2Engine, gpt2_config

POSITIONS = (16, 256, 1024)


def engines(checkpoints: Path | None, names: list[str]):
    if checkpoints is not None:
        from plotarmour.checkpoint import load_checkpoint

        return {k: load_checkpoint(checkpoints / k).engine() for k in names}
    from transformers import GPT2LMHeadModel

    print("random models of the shipped shape (training/configs/tiny_cpu.json)")
    out = {}
    if "bdh" in names:
        out["bdh"] = BDHEngine(BDH(BDHConfig(n_layer=6, n_embd=256, n_head=4, mlp_internal_dim_multiplier=8,
                                             vocab_size=4096, dropout=0)))
    if "gpt2" in names:
        out["gpt2"] = GPT2Engine(GPT2LMHeadModel(gpt2_config(vocab_size=4096, eot_id=0, n_layer=4, n_embd=256,
                                                             n_head=4, n_positions=1100, dropout=0)))
    return out


CLOCK = time.perf_counter


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times) * 1e3


def full_forward(model, ids: torch.Tensor):
    with torch.inference_mode():
        out = model(ids[None])
    return out


OLD_BDH = "7308a48"  # the last BDH engine that read non-contiguous slots one session at a time


def old_module(rev: str, family: str):
    """plotarmour/models/<family>.py of commit `rev`, with that commit's base class, imported
    from a throwaway package so the old engine runs beside the new one in this process;
    None where git or the commit is not at hand."""
    import importlib
    import subprocess
    import sys
    import tempfile

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / f"_{family}_at_{rev}"
        package.mkdir()
        (package / "__init__.py").write_text("")
        for name in ("base", family):
            shown = subprocess.run(["git", "show", f"{rev}:plotarmour/models/{name}.py"], cwd=repo,
                                   capture_output=True, text=True)
            if shown.returncode != 0:
                return None
            (package / f"{name}.py").write_text(shown.stdout)
        sys.path.insert(0, tmp)
        try:
            return importlib.import_module(f"{package.name}.{family}")
        finally:
            sys.path.remove(tmp)


def old_bdh_engine(model):
    """The BDH engine of commit OLD_BDH over the same weights."""
    old = old_module(OLD_BDH, "bdh")
    if old is None:
        return None
    twin = old.BDH(old.BDHConfig(**{k: v for k, v in model.config.to_dict().items() if k != "model_type"}))
    twin.load_state_dict(model.state_dict())
    return old.BDHEngine(twin.to(next(model.parameters()).device).eval())


def bdh_batches(engine, sizes: list[int], repeats: int, prompt: int = 64) -> None:
    """ms per batched step of B sessions at position ~prompt, per layout of the pool (see
    the module docstring): old engine against new, measured in alternating rounds so that
    a busy machine slows both alike."""
    vocab = engine.vocab_size
    engines = {"new": engine}
    old = old_bdh_engine(engine.model)
    if old is not None:
        engines = {"old": old, "new": engine}
    print(f"\nBDH batched step, sessions at position ~{prompt}: ms per step, median of {repeats} (new: tokens/s)")
    print(f"{'B':>4} {'layout':12} " + " ".join(f"{k:>8}" for k in engines) + f" {'old/new':>8} {'tokens/s':>9}")
    for B in sizes:
        for layout in ("contiguous", "after holes", "interleaved"):
            batches = {}
            for name, e in engines.items():
                g = torch.Generator().manual_seed(B)
                sids = [e.open(torch.randint(0, vocab, (prompt,), generator=g).tolist())[0]
                        for _ in range(B if layout == "contiguous" else 2 * B)]
                if layout == "after holes":
                    for s in sids[1::2]:
                        e.close(s)
                batches[name] = (sids, sids if layout == "contiguous" else sids[::2])
            times = {name: [] for name in engines}
            for r in range(repeats + 1):  # round 0 warms up
                for name, e in engines.items():
                    step = {s: (r * 31 + s) % vocab for s in batches[name][1]}
                    t0 = CLOCK()
                    e.step(step)
                    if r:
                        times[name].append(CLOCK() - t0)
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            ratio = f"{ms['old'] / ms['new']:7.2f}x" if "old" in ms else ""
            print(f"{B:4d} {layout:12} " + " ".join(f"{m:8.2f}" for m in ms.values())
                  + f" {ratio:>8} {B / ms['new'] * 1e3:9.0f}", flush=True)
            for name, e in engines.items():
                for s in batches[name][0]:
                    e.close(s)  # closing a closed session is a no-op


def bdh_reads(engine, sizes: list[int], repeats: int) -> None:
    """One layer's qᵀS for B sessions of a pool of 2B: the engine's embedding_bag read against
    a batched matmul over a contiguous slice (the old contiguous path) and over a gather."""
    import torch.nn.functional as F

    c = engine.model.config
    H, N, D = c.n_head, c.n_neurons, c.n_embd
    print(f"\nBDH state read, one layer, B of 2B slots: ms (matmul or gather / embedding_bag)")
    print(f"{'B':>4} {'embedding_bag':>14} {'matmul slice':>13} {'gather+matmul':>14}")
    for B in sizes:
        S = torch.randn(2 * B, H, N, D, device=engine.device)  # (slots, H, N, D)
        q = torch.relu(torch.randn(B, H, 1, N, device=engine.device))  # (B, H, 1, N)
        idx = torch.arange(0, 2 * B, 2, device=engine.device)  # every other slot
        rows = (((idx[:, None] * H + torch.arange(H, device=engine.device)) * N)[..., None]
                + torch.arange(N, device=engine.device)).flatten()  # (B·H·N,)
        offsets = torch.arange(B * H, device=engine.device) * N
        bag = median_ms(lambda: F.embedding_bag(rows, S.view(-1, D), offsets, mode="sum",
                                                per_sample_weights=q.flatten()), repeats)
        mm = median_ms(lambda: q @ S[:B], repeats)
        gather = median_ms(lambda: q @ S[idx], repeats)
        print(f"{B:4d} {bag:14.2f} {mm:8.2f} ({mm / bag:.1f}x) {gather:8.2f} ({gather / bag:.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=None, help="directory holding bdh/ and gpt2/")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time, steadier on a shared machine (with --threads 1)")
    ap.add_argument("--models", default="bdh,gpt2", help="comma-separated: bdh, gpt2")
    ap.add_argument("--batches", default="1,4,16,64", help="batch sizes (BDH and GPT-2); empty to skip")
    ap.add_argument("--no-positions", action="store_true", help="skip the per-position table")
    ap.add_argument("--reads", action="store_true", help="BDH: the state read alone, against matmuls")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.process_time
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    models = engines(args.checkpoints, args.models.split(","))
    if "bdh" in models and args.batches:
        bdh_batches(models["bdh"], [int(b) for b in args.batches.split(",")], args.repeats)
    if "bdh" in models and args.reads and args.batches:
        bdh_reads(models["bdh"], [int(b) for b in args.batches.split(",")], args.repeats)
    if "gpt2" in models and args.batches:
        gpt2_batches(models["gpt2"], [int(b) for b in args.batches.split(",")], args.repeats)
    if args.no_positions:
        return
    print(f"{'model':6} {'pos':>5} {'step ms':>9} {'recompute ms':>13} {'speed-up':>9}")
    for name, engine in models.items():
        vocab = engine.vocab_size
        steps = {}
        for pos in POSITIONS:
            if pos + args.repeats + 2 > engine.max_context:
                print(f"{name:6} {pos:5d}  (past this model's context of {engine.max_context})")
                continue
            ids = torch.randint(0, vocab, (pos + args.repeats + 2,)).tolist()
            sid, _ = engine.open(ids[:pos])
            tokens = iter(ids[pos:])
            steps[pos] = median_ms(lambda: engine.step({sid: next(tokens)}), args.repeats)
            engine.close(sid)
            prefix = torch.tensor(ids[: pos + 1], device=engine.device)
            recompute = median_ms(lambda: full_forward(engine.model, prefix), max(3, args.repeats // 4))
            print(f"{name:6} {pos:5d} {steps[pos]:9.2f} {recompute:13.2f} {recompute / steps[pos]:8.1f}x")
        last = max(steps)
        print(f"{name:6} step time at {last} / at {POSITIONS[0]}: {steps[last] / steps[POSITIONS[0]]:.2f}x")


# -- GPT-2: batched steps, the KV-pool engine against the one that concatenated caches --

OLD_GPT2 = "7308a48"  # the last GPT-2 engine that padded and concatenated every cache per step


def old_gpt2_engine(model):
    """The GPT-2 engine of commit OLD_GPT2 over the same model."""
    old = old_module(OLD_GPT2, "gpt2")
    return None if old is None else old.GPT2Engine(model)


def gpt2_batches(engine, sizes: list[int], repeats: int, lo: int = 16, hi: int = 512) -> None:
    """ms per batched step of B sessions spread evenly over positions lo..hi (the same mean
    position for every B), old engine against new, then each one's 16 : 1 throughput."""
    vocab = engine.vocab_size
    new = "new (pool)"
    old = f"old ({OLD_GPT2})"
    runs = {new: engine}
    before = old_gpt2_engine(engine.model)
    if before is None:
        print(f"\n(GPT-2 engine of {OLD_GPT2} not available from git: new engine only)")
    else:
        runs = {old: before, new: engine}
    print(f"\nGPT-2 batched step, sessions at positions spread over {lo}..{hi}: ms per step (tokens/s)")
    print(f"{'B':>4} " + " ".join(f"{name:>20}" for name in runs) + ("   old/new" if before else ""))
    ms = {name: {} for name in runs}
    for B in sizes:
        prompts = [torch.randint(0, vocab, (lo + round((hi - lo) * (i + 0.5) / B),)).tolist() for i in range(B)]
        for name, e in runs.items():
            sids = [e.open(p)[0] for p in prompts]
            ms[name][B] = median_ms(lambda: e.step({s: int(torch.randint(0, vocab, ())) for s in sids}), repeats)
            for s in sids:
                e.close(s)
        cells = [f"{ms[name][B]:9.2f} ({B / ms[name][B] * 1e3:6.0f})" for name in runs]
        ratio = f" {ms[old][B] / ms[new][B]:8.1f}x" if before else ""
        print(f"{B:4d} " + " ".join(f"{c:>20}" for c in cells) + ratio)
    if 1 in sizes and 16 in sizes:
        for name in runs:
            print(f"GPT-2 {name}: 16 sessions give {16 * ms[name][1] / ms[name][16]:.2f}x the tokens/s of one")


if __name__ == "__main__":
    main()
