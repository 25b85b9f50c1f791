"""Cost of blending and sampling per row, at a small and at GPT-2's vocabulary.

    python bench/bench_sampling.py                       # vocabularies 4096 and 50257, batches 1/16/64
    python bench/bench_sampling.py --against 7308a48     # also the one-row-at-a-time code of a git revision

Each row is a full gateway step's numpy work: blend two log-prob rows, temperature,
top-k, top-p, seeded draw. Figures are milliseconds per row (median of repeats).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plotarmour import sampling  # noqa: E402

CASES = {
    "plain (T=1)": sampling.SamplingParams(),
    "T=0.8 top_k=40 top_p=0.9": sampling.SamplingParams(temperature=0.8, top_k=40, top_p=0.9),
    "T=0.8 top_p=0.95": sampling.SamplingParams(temperature=0.8, top_p=0.95),
}


def rows(vocab: int, batch: int, exponent: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Shaped like a language model's next-token distribution: Zipf-like over a random
    # order of the vocabulary (a few likely tokens, a long tail), plus noise. Exponent
    # 1.1 has a heavy tail (a nucleus of thousands of tokens at top_p 0.95), 1.5 is peaked.
    rank = np.argsort(rng.random((2, batch, vocab)), axis=-1) + 1
    logits = (-exponent * np.log(rank) + 0.3 * rng.standard_normal((2, batch, vocab))).astype(np.float32)
    logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True)).astype(np.float32)
    return logp[0], logp[1]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def old_module(rev: str):
    """The sampling module of a git revision, imported under another name."""
    src = subprocess.run(["git", "show", f"{rev}:plotarmour/sampling.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "old_sampling.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_sampling", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_sampling"] = mod  # dataclasses look their module up while building
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, nargs="+", default=[4096, 50257])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--zipf", type=float, nargs="+", default=[1.1, 1.5], help="distribution shapes (see rows())")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--against", metavar="REV", help="also time this git revision's one-row sampling")
    args = ap.parse_args()
    old = old_module(args.against) if args.against else None

    print(f"{'vocab':>6} {'zipf':>4} {'batch':>5}  {'case':<26} {'ms/row':>8}"
          + (f" {'old ms/row':>10} {'old/new':>7}" if old else ""))
    for vocab, exponent, batch in itertools.product(args.vocab, args.zipf, args.batch):
        g, b = rows(vocab, batch, exponent)
        for name, sp in CASES.items():
            rngs = [sampling.make_rng(i) for i in range(batch)]

            def new():
                p = sampling.blend_rows(g, b, [0.5] * batch, ["linear"] * batch)
                sampling.sample_rows(p, [sp] * batch, rngs)

            ms = timed(new, args.repeats) * 1e3 / batch
            line = f"{vocab:>6} {exponent:>4} {batch:>5}  {name:<26} {ms:>8.3f}"
            if old is not None:
                old_rngs = [old.make_rng(i) for i in range(batch)]
                old_sp = old.SamplingParams(temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p)

                def previous():
                    for i in range(batch):
                        old.sample(old.blend(g[i], b[i], 0.5), old_sp, old_rngs[i])

                old_ms = timed(previous, max(3, args.repeats // 4)) * 1e3 / batch
                line += f" {old_ms:>10.3f} {old_ms / ms:>6.1f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
