"""Perplexity of a checkpoint on a token file or a text file (docs/ARCHITECTURE.md §8).

    python -m training.evaluate checkpoints/bdh --data data/tinystories       # its val.bin
    python -m training.evaluate checkpoints/gpt2 --tokens data/tinystories/val.bin
    python -m training.evaluate checkpoints/gpt2 --text stories.txt --unigram data/tinystories/train.bin

    python -m training.evaluate checkpoints/bdh --data data/tinystories --block-size 2048   # past its window

The token stream is cut into non-overlapping windows of block_size + 1 tokens and every
next-token prediction inside each window is scored, the same way training validates;
windows go through the model --batch-size at a time, with a progress bar.

Reported: nats per token (and perplexity), bits per byte, and the loss by position band
in the window (0-255, 256-511, 512-1023, ...), which shows how a model does past the
window it was trained on. Bits per byte divide the total loss (in bits) by the UTF-8
bytes of the scored target tokens, each end-of-text counting as one byte (the story
break), so models with different vocabularies compare on the same text.
`--unigram TRAIN_BIN` also scores a unigram model (token frequencies of TRAIN_BIN,
add-one smoothed) on exactly the same target tokens, as a floor to compare against.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tokenizers import pre_tokenizers

from plotarmour.checkpoint import CheckpointError, load_checkpoint, resolve_device
from plotarmour.tokenizer import fingerprint

from .data import DataError, eval_windows, open_tokens, read_meta
from .modeling import context_limit, position_losses
from .prepare import META_FILE, PrepareError, encode_text_file


def default_block_size(ckpt) -> int:
    """The block size it was trained with, within what the model can take."""
    block = int(ckpt.run.get("train_config", {}).get("block_size", 256))
    limit = context_limit(ckpt.model, ckpt.model_type)
    return min(block, limit) if limit else block


def open_checked(path: Path, tokenizer) -> np.memmap:
    """Open a token file; if a meta.json sits beside it, it must name the same tokenizer."""
    if (path.parent / META_FILE).is_file():
        meta = read_meta(path.parent)
        if meta["tokenizer_fingerprint"] != fingerprint(tokenizer):
            raise DataError(f"{path}: was tokenized with a different tokenizer than the checkpoint's "
                            f"(fingerprints {meta['tokenizer_fingerprint'][:12]}… and {fingerprint(tokenizer)[:12]}…)")
        return open_tokens(path, meta["dtype"])
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32
    return open_tokens(path, dtype)


def token_bytes(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for, (V,) int64. Byte-level BPE spells every byte
    as one character of its alphabet; special tokens (end-of-text) count as one byte."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    out = np.ones(tokenizer.get_vocab_size(), dtype=np.int64)
    for piece, i in tokenizer.get_vocab().items():
        if piece in special:
            continue
        out[i] = len(piece) if set(piece) <= alphabet else max(1, len(tokenizer.decode([i]).encode("utf-8")))
    return out


def position_bands(block_size: int, first: int = 256) -> list[tuple[int, int]]:
    """[0, 256), [256, 512), [512, 1024), ... cut at block_size."""
    bands, lo, hi = [], 0, first
    while lo < block_size:
        bands.append((lo, min(hi, block_size)))
        lo, hi = hi, hi * 2
    return bands


def scored_bytes(tokens: np.ndarray, starts: list[int], block_size: int, sizes: np.ndarray) -> int:
    return int(sum(sizes[np.asarray(tokens[s + 1 : s + block_size + 1], dtype=np.int64)].sum() for s in starts))


def perplexity(ckpt, tokens: np.ndarray, block_size: int, batch_size: int = 16,
               max_windows: int | None = None, device: str = "cpu", progress: bool = False) -> dict:
    """Loss (nats/token), perplexity, bits per byte and loss by position band of a loaded
    checkpoint over a token array."""
    vocab = ckpt.config["vocab_size"]
    if int(tokens.max()) >= vocab:  # one pass; the file is memory-mapped
        raise DataError(f"token id {int(tokens.max())} is outside the model's vocabulary of {vocab}")
    starts = eval_windows(tokens, block_size, max_windows)
    model = ckpt.model.to(device)
    sums = position_losses(model, ckpt.model_type, tokens, starts, block_size, batch_size, torch.device(device),
                           progress=progress, desc=f"{ckpt.model_type} windows")
    count = len(starts) * block_size
    loss = float(sums.sum()) / count
    n_bytes = scored_bytes(tokens, starts, block_size, token_bytes(ckpt.tokenizer))
    bands = [{"band": f"{lo}-{hi - 1}", "loss": float(sums[lo:hi].sum()) / (len(starts) * (hi - lo))}
             for lo, hi in position_bands(block_size)]
    return {"model_type": ckpt.model_type, "loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": float(sums.sum()) / math.log(2) / n_bytes, "tokens": count, "bytes": n_bytes,
            "block_size": block_size, "windows": len(starts), "bands": bands}


def unigram_loss(train_tokens: np.ndarray, tokens: np.ndarray, vocab_size: int, block_size: int,
                 max_windows: int | None = None, sizes: np.ndarray | None = None, chunk: int = 1 << 24) -> dict:
    """Cross-entropy of add-one-smoothed unigram frequencies of train_tokens on the same
    targets `perplexity` scores (every token after the first of each window)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(train_tokens), chunk):  # bounded memory on big files
        counts += np.bincount(np.asarray(train_tokens[i : i + chunk]), minlength=vocab_size)[:vocab_size]
    logp = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)  # (V,)
    total, n = 0.0, 0
    for s in eval_windows(tokens, block_size, max_windows):
        targets = np.asarray(tokens[s + 1 : s + block_size + 1], dtype=np.int64)
        total -= float(logp[targets].sum())
        n += targets.size
    loss = total / n
    out = {"model_type": "unigram", "loss": loss, "perplexity": math.exp(loss), "tokens": n}
    if sizes is not None:  # token byte sizes (token_bytes): bits per byte on the same text
        starts = eval_windows(tokens, block_size, max_windows)
        out["bits_per_byte"] = total / math.log(2) / scored_bytes(tokens, starts, block_size, sizes)
    return out


def resolve_tokens(args: argparse.Namespace, ckpt, tmp: Path) -> tuple[np.ndarray, str]:
    if args.data:
        path = Path(args.data) / "val.bin"
    elif args.tokens:
        path = Path(args.tokens)
    else:
        path = tmp / "text.bin"
        encode_text_file(args.text, ckpt.tokenizer, path)
        return open_tokens(path, np.uint16 if ckpt.tokenizer.get_vocab_size() <= 1 << 16 else np.uint32), args.text
    return open_checked(path, ckpt.tokenizer), str(path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="a directory from training.prepare: score its val.bin")
    src.add_argument("--tokens", metavar="FILE", help="a flat token file (.bin)")
    src.add_argument("--text", metavar="FILE", help="a text file (plain or .gz), tokenized with the checkpoint's tokenizer")
    ap.add_argument("--block-size", type=int, help="window length (default: the one it was trained with)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-windows", type=int, help="score at most this many windows, evenly spread")
    ap.add_argument("--unigram", metavar="TRAIN_BIN", help="also score a unigram baseline counted on this token file")
    ap.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda, cuda:1, ...")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of sentences")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        block = args.block_size or default_block_size(ckpt)
        limit = context_limit(ckpt.model, ckpt.model_type)
        if limit and block > limit:
            raise ValueError(f"--block-size {block} is longer than the model's context {limit}")
        with tempfile.TemporaryDirectory() as tmp:
            tokens, source = resolve_tokens(args, ckpt, Path(tmp))
            if args.batch_size <= 0:
                raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
            device = resolve_device(args.device)
            result = perplexity(ckpt, tokens, block, args.batch_size, args.max_windows, device, not args.quiet)
            result["source"], result["device"] = source, device
            if args.unigram:
                train = open_checked(Path(args.unigram), ckpt.tokenizer)
                result["unigram"] = unigram_loss(train, tokens, ckpt.config["vocab_size"], block, args.max_windows,
                                                 token_bytes(ckpt.tokenizer))
            del tokens  # release the memmap before the temporary file goes
    except (CheckpointError, DataError, PrepareError, ValueError, OSError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.checkpoint} ({result['model_type']}) on {source}: loss {result['loss']:.4f} nats/token, "
              f"perplexity {result['perplexity']:.2f}, {result['bits_per_byte']:.4f} bits/byte over "
              f"{result['tokens']:,} tokens ({result['windows']} windows of {block})")
        print("loss by position in the window: " + ", ".join(f"{b['band']}: {b['loss']:.4f}" for b in result["bands"]))
        if "unigram" in result:
            u = result["unigram"]
            print(f"unigram baseline on the same tokens: loss {u['loss']:.4f}, perplexity {u['perplexity']:.2f}, "
                  f"{u['bits_per_byte']:.4f} bits/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
