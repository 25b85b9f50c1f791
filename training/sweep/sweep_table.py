"""The sweep's Markdown table: one row per run under a sweep directory (sweep_cpu.sh's OUT).

    python -m training.sweep.sweep_table results/sweep

Each run's final validation loss (nats/token, on the same evenly spread validation windows
for every run of one vocabulary) comes from its checkpoint's run.json; bits per byte are
that loss over the UTF-8 bytes of exactly those windows' targets, so runs with different
vocabularies compare.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from plotarmour.tokenizer import load_tokenizer

from ..data import eval_windows, open_tokens, read_meta
from ..evaluate import scored_bytes, token_bytes


def row(run: Path) -> str | None:
    info_path = run / "ckpt" / "run.json"
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    cfg, arch = info["train_config"], info["architecture"]
    meta = read_meta(cfg["data"])
    tokens = open_tokens(Path(cfg["data"]) / "val.bin", meta["dtype"])
    starts = eval_windows(tokens, cfg["block_size"], cfg["eval_windows"])
    sizes = token_bytes(load_tokenizer(Path(cfg["data"]) / meta["tokenizer"]))
    n_bytes = scored_bytes(tokens, starts, cfg["block_size"], sizes)
    loss = info["best_val_loss"]
    bpb = loss * len(starts) * cfg["block_size"] / math.log(2) / n_bytes
    shape = f"L{arch['n_layer']} D{arch['n_embd']} H{arch['n_head']}"
    seconds = (run / "done").read_text().strip()
    return (f"| {run.name} | {info['model_type']} | {shape} | {meta['vocab_size']} | {cfg['lr']:g} | "
            f"{cfg['batch_size']}×{cfg['block_size']} | {arch.get('dropout', 0)} | {info['tokens_seen']:,} | "
            f"{info['num_parameters']:,} | {loss:.3f} | {bpb:.3f} | {seconds} |")


def main(argv: list[str] | None = None) -> int:
    root = Path((argv or sys.argv[1:] or ["results/sweep"])[0])
    print("| run | model | shape | vocab | lr | batch | dropout | tokens | parameters | val nats/token | "
          "val bits/byte | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        line = row(run)
        if line:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
