"""Peak memory of `python -m training.prepare` on a large generated input.

    python bench/bench_prepare.py                 # 200 MB and 20 MB inputs
    python bench/bench_prepare.py --mb 500 --small-mb 50

Writes TinyStories-like text (stories separated by <|endoftext|> lines) to a temporary
directory, runs the real command in a child process for each size, and prints the child's
peak resident memory (ru_maxrss), its wall time and throughput. The ratio of the two
peaks is the point: bounded memory means the large input costs about what the small one does.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Zoe", "Leo", "Tim", "Kim"]
ADJ = ["red", "big", "small", "shiny", "blue", "warm", "happy", "sleepy", "tall", "soft", "green", "funny"]
NOUNS = ["ball", "tree", "dog", "stone", "kite", "cake", "cat", "boat", "hat", "bird", "box", "car", "flower"]
VERBS = ["found", "saw", "liked", "wanted", "made", "lost", "shared", "painted", "hugged", "carried"]


def story(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    sentences = [f"Once upon a time, there was a {rng.choice(ADJ)} {rng.choice(NOUNS)} named {a}."]
    for _ in range(rng.randint(4, 12)):
        sentences.append(f"{rng.choice([a, b])} {rng.choice(VERBS)} a {rng.choice(ADJ)} {rng.choice(NOUNS)}"
                         f"{rng.choice(['.', '!', ' and smiled.', ' with ' + rng.choice([a, b]) + '.'])}")
    sentences.append(f"{b} said, \"I love my {rng.choice(NOUNS)}!\" {rng.randint(1, 99)} days later, they were friends.")
    return " ".join(sentences)


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    target = int(megabytes * 2**20)
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < target:
            chunk = "".join(story(rng) + f"\n{EOT}\n" for _ in range(2000))
            fh.write(chunk)
            written += len(chunk.encode("utf-8"))
    return written


def run_prepare(text: Path, out: Path) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one prepare run in a fresh child process."""
    cmd = [sys.executable, "-m", "training.prepare", "--train", str(text), "--out", str(out), "--quiet"]
    start = time.perf_counter()
    # A grandchild-free child: RUSAGE_CHILDREN's max covers exactly the children waited on so far,
    # so each size runs in its own helper process that reports its child's peak.
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    res = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=ROOT, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return int(res.stdout.strip().splitlines()[-1]) / 1024, seconds  # ru_maxrss is KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=200, help="size of the large input (default 200 MB)")
    ap.add_argument("--small-mb", type=float, default=20, help="size of the small input (default 20 MB)")
    args = ap.parse_args()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        for label, mb in (("small", args.small_mb), ("large", args.mb)):
            text = tmp / f"{label}.txt"
            size = write_corpus(text, mb)
            peak, seconds = run_prepare(text, tmp / f"out-{label}")
            tokens = (tmp / f"out-{label}" / "train.bin").stat().st_size // 2
            results[label] = peak
            print(f"{label}: input {size / 2**20:7.1f} MiB -> {tokens:,} tokens; peak RSS {peak:7.1f} MiB; "
                  f"{seconds:6.1f} s ({size / 2**20 / seconds:.1f} MiB/s, tokenizer training included)")
            text.unlink()
        print(f"peak RSS ratio large/small: {results['large'] / results['small']:.2f} "
              f"for an input {args.mb / args.small_mb:.0f}x larger")
    return 0


if __name__ == "__main__":
    sys.exit(main())
