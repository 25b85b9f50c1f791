"""Per-token decode cost by position: cached/state step against recomputing the prefix.

For each model, the time of one decode step at positions 16, 256 and 1024 — through
the engine (BDH state, GPT-2 KV cache) and by running the whole prefix again, which is
what the original BDH code does for every token. Prints figures and ratios; asserts
nothing.

    python bench/bench_decode.py [--checkpoints checkpoints] [--repeats 20] [--threads 1]

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


def engines(checkpoints: Path | None):
    if checkpoints is not None:
        from plotarmour.checkpoint import load_checkpoint

        return {k: load_checkpoint(checkpoints / k).engine() for k in ("bdh", "gpt2")}
    from transformers import GPT2LMHeadModel

    print("random models of the shipped shape (training/configs/tiny_cpu.json)")
    bdh = BDH(BDHConfig(n_layer=6, n_embd=256, n_head=4, mlp_internal_dim_multiplier=8, vocab_size=4096, dropout=0))
    gpt2 = GPT2LMHeadModel(gpt2_config(vocab_size=4096, eot_id=0, n_layer=4, n_embd=256, n_head=4,
                                       n_positions=1100, dropout=0))
    return {"bdh": BDHEngine(bdh), "gpt2": GPT2Engine(gpt2)}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def full_forward(model, ids: torch.Tensor):
    with torch.inference_mode():
        out = model(ids[None])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=None, help="directory holding bdh/ and gpt2/")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    models = engines(args.checkpoints)
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


if __name__ == "__main__":
    main()
