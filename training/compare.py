"""BDH against GPT-2: perplexity on the same tokens, sample stories side by side, and
training curves, written as a Markdown report with a PNG beside it (docs/ARCHITECTURE.md §8).

    python -m training.compare --bdh checkpoints/bdh --gpt2 checkpoints/gpt2 \
        --data data/tinystories --logs checkpoints/logs --samples 3 --out results/compare.md --device cuda
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from plotarmour.checkpoint import CheckpointError, load_checkpoint, resolve_device
from plotarmour.sampling import SamplingParams, make_rng, probs, sample
from plotarmour.tokenizer import eot_id, fingerprint

from .data import DataError, open_tokens
from .evaluate import default_block_size, open_checked, perplexity, token_bytes, unigram_loss
from .prepare import PrepareError, encode_text_file

PROMPTS = ["Once upon a time", "One day, a little girl named Lily", "Tom and his dog went to the park.",
           "The sun was shining and"]
MODELS = ("gpt2", "bdh")
NAMES = {"gpt2": "GPT-2", "bdh": "BDH"}


def sample_story(ckpt, prompt: str, max_new_tokens: int = 150, temperature: float = 0.8, top_k: int = 40,
                 seed: int = 0, top_p: float = 1.0) -> str:
    """Prompt + a continuation drawn as the gateway draws one model alone (its sampling
    functions, its seeded generator), ending at end-of-text."""
    tok, engine = ckpt.tokenizer, ckpt.engine()
    ids = tok.encode(prompt, add_special_tokens=False).ids or [eot_id(tok)]
    params, rng = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p), make_rng(seed)
    eot = eot_id(tok)
    session, logits = engine.open(ids)  # logits (V,)
    out: list[int] = []
    try:
        for _ in range(max_new_tokens):
            token = sample(probs(logits.float().cpu().numpy()), params, rng)  # the draw runs on CPU
            if token == eot or engine.position(session) >= engine.max_context:
                break
            out.append(token)
            logits = engine.step({session: token})[0]
    finally:
        engine.close(session)
    return prompt + tok.decode(out)


def read_log(path: Path) -> dict[str, np.ndarray]:
    """A training CSV -> columns tokens, train_loss, val_loss (NaN where a row has none)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "train_loss" not in rows[0]:
        raise DataError(f"{path}: not a training log (no train_loss column)")
    col = lambda k: np.array([float(r[k]) if r.get(k) else math.nan for r in rows])  # noqa: E731
    return {"tokens": col("tokens"), "train_loss": col("train_loss"), "val_loss": col("val_loss")}


def find_logs(paths: Sequence[str]) -> dict[str, Path]:
    """CSV files, or directories holding <model>-<timestamp>.csv; the newest per model wins."""
    found: dict[str, Path] = {}
    for p in map(Path, paths):
        files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
        for f in files:
            if not f.is_file():
                raise DataError(f"{f}: log file not found")
            model = f.name.split("-", 1)[0]
            if model in MODELS:
                found[model] = f  # sorted by name = by timestamp, so the last is the newest
    return found


def plot_curves(logs: dict[str, Path], out_png: Path, windows: dict[str, int] | None = None) -> None:
    """Train and validation loss against tokens seen; `windows` (a model's training window)
    goes into the legend, since losses on longer windows are not comparable one to one."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for model, path in logs.items():
        d = read_log(path)
        name = NAMES[model] + (f" ({windows[model]}-token windows)" if windows and model in windows else "")
        line, = ax.plot(d["tokens"] / 1e6, d["train_loss"], alpha=0.5, label=f"{name} train")
        has_val = ~np.isnan(d["val_loss"])
        ax.plot(d["tokens"][has_val] / 1e6, d["val_loss"][has_val], "o-", color=line.get_color(),
                label=f"{name} validation")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def build_report(ckpts: dict, scores: dict, unigram: dict | None, source: str, samples: list[dict],
                 png_name: str | None) -> str:
    lines = ["# BDH vs GPT-2", "", f"Scored on `{source}` ({scores['gpt2']['tokens']:,} target tokens, "
             f"windows of {scores['gpt2']['block_size']} tokens).", "",
             "| model | parameters | steps | tokens seen | val loss (nats/token) | perplexity | bits/byte |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in MODELS:
        run, s = ckpts[m].run, scores[m]
        params = sum(p.numel() for p in ckpts[m].model.parameters())
        before = run.get("initialized_from") or {}  # a run that continued a checkpoint (--init): count both
        steps = (run.get("steps") or 0) + (before.get("steps") or 0)
        seen = (run.get("tokens_seen") or 0) + (before.get("tokens_seen") or 0)
        lines.append(f"| {NAMES[m]} | {params:,} | {steps} | {seen:,} | "
                     f"{s['loss']:.4f} | {s['perplexity']:.2f} | {s['bits_per_byte']:.4f} |")
    if unigram:
        lines.append(f"| unigram baseline | {ckpts['gpt2'].config['vocab_size']:,} | | | "
                     f"{unigram['loss']:.4f} | {unigram['perplexity']:.2f} | {unigram['bits_per_byte']:.4f} |")
    ratio = scores["bdh"]["loss"] / scores["gpt2"]["loss"]
    lines += ["", f"BDH / GPT-2 loss ratio: **{ratio:.3f}** ({(ratio - 1) * 100:+.1f}%).", "",
              "Loss by position in the window (nats/token):", "",
              "| model | " + " | ".join(b["band"] for b in scores["gpt2"]["bands"]) + " |",
              "|---|" + "---:|" * len(scores["gpt2"]["bands"])]
    for m in MODELS:
        lines.append(f"| {NAMES[m]} | " + " | ".join(f"{b['loss']:.4f}" for b in scores[m]["bands"]) + " |")
    lines.append("")
    if png_name:
        lines += ["## Training curves", "", f"![training curves]({png_name})", ""]
    if samples:
        lines += ["## Sample stories", "", "Same prompt and seed for both; temperature "
                  f"{samples[0]['temperature']:g}, top-k {samples[0]['top_k']} (0: no cut), "
                  f"top-p {samples[0].get('top_p', 1.0):g}.", "",
                  "| prompt | GPT-2 | BDH |", "|---|---|---|"]
        for s in samples:
            lines.append(f"| {_cell(s['prompt'])} | {_cell(s['gpt2'])} | {_cell(s['bdh'])} |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bdh", required=True, help="BDH checkpoint directory")
    ap.add_argument("--gpt2", required=True, help="GPT-2 checkpoint directory")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="training.prepare output: score val.bin, unigram from train.bin")
    src.add_argument("--tokens", metavar="FILE", help="a flat token file")
    src.add_argument("--text", metavar="FILE", help="a text file")
    ap.add_argument("--logs", nargs="*", default=[], metavar="CSV_OR_DIR", help="training CSV logs for the curves")
    ap.add_argument("--samples", type=int, default=3, help="sample stories per model (default 3)")
    ap.add_argument("--max-new-tokens", type=int, default=150)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40, help="0: no cut")
    ap.add_argument("--top-p", type=float, default=1.0, help="1: no cut")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block-size", type=int, help="window length (default: the smaller of the two trained ones)")
    ap.add_argument("--max-windows", type=int, help="score at most this many windows")
    ap.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ...")
    ap.add_argument("--batch-size", type=int, default=16, help="windows per forward pass when scoring")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--notes", metavar="MD", help="a Markdown file appended to the report (e.g. a sweep table)")
    ap.add_argument("--out", default="results/compare.md", help="Markdown report; the PNG goes beside it")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    try:
        ckpts = {"bdh": load_checkpoint(args.bdh), "gpt2": load_checkpoint(args.gpt2)}
        for m in MODELS:
            if ckpts[m].model_type != m:
                raise ValueError(f"--{m} {getattr(args, m)} holds a {ckpts[m].model_type} model")
        fps = {m: fingerprint(c.tokenizer) for m, c in ckpts.items()}
        if fps["bdh"] != fps["gpt2"]:
            raise ValueError(f"the two checkpoints use different tokenizers (bdh {fps['bdh'][:12]}…, "
                             f"gpt2 {fps['gpt2'][:12]}…): their perplexities are not comparable")
        tok = ckpts["gpt2"].tokenizer
        block = args.block_size or min(default_block_size(c) for c in ckpts.values())
        out.parent.mkdir(parents=True, exist_ok=True)
        train_tokens = None
        if args.data:
            source = str(Path(args.data) / "val.bin")
            tokens = open_checked(Path(source), tok)
            train_tokens = open_checked(Path(args.data) / "train.bin", tok)
        elif args.tokens:
            source, tokens = args.tokens, open_checked(Path(args.tokens), tok)
        else:
            source = args.text
            bin_path = out.with_suffix(".tokens.bin")
            encode_text_file(args.text, tok, bin_path)
            tokens = open_tokens(bin_path, np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32)
        device = resolve_device(args.device)
        scores = {m: perplexity(c, tokens, block, args.batch_size, args.max_windows, device, not args.quiet)
                  for m, c in ckpts.items()}
        unigram = (unigram_loss(train_tokens, tokens, tok.get_vocab_size(), block, args.max_windows,
                                token_bytes(tok)) if train_tokens is not None else None)
        samples = []
        for i in range(args.samples):
            prompt = PROMPTS[i % len(PROMPTS)]
            row = {"prompt": prompt, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
            for m, c in ckpts.items():
                row[m] = sample_story(c, prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed + i,
                                      args.top_p)
            samples.append(row)
        notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
        logs = find_logs(args.logs)
        png = None
        if logs:
            png = out.with_name(out.stem + "_curves.png")
            plot_curves(logs, png, {m: default_block_size(c) for m, c in ckpts.items()})
    except (CheckpointError, DataError, PrepareError, ValueError, OSError) as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    report = build_report(ckpts, scores, unigram, source, samples, png.name if png else None)
    out.write_text(report + ("\n" + notes.rstrip() + "\n" if notes else ""))
    print(f"wrote {out}" + (f" and {png}" if png else ""))
    for m in MODELS:
        print(f"{NAMES[m]}: loss {scores[m]['loss']:.4f} nats/token, perplexity {scores[m]['perplexity']:.2f}, "
              f"{scores[m]['bits_per_byte']:.4f} bits/byte")
    if unigram:
        print(f"unigram: loss {unigram['loss']:.4f}, perplexity {unigram['perplexity']:.2f}, "
              f"{unigram['bits_per_byte']:.4f} bits/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
