"""Text files -> tokenizer.json + flat token files that numpy.memmap opens (docs/ARCHITECTURE.md §8).

    python -m training.prepare --train a.txt b.txt.gz --val v.txt --out data/tinystories

Stories are separated by `<|endoftext|>` lines (TinyStories' format). Each story becomes
its tokens followed by one end-of-text token, appended to `train.bin` / `val.bin` as raw
uint16 (uint32 when the vocabulary does not fit), with `meta.json` and the tokenizer
beside them. The input is read once per pass, line by line, and encoded in batches of
about a megabyte, so memory does not grow with the input.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from plotarmour.tokenizer import (EOT, eot_id, fingerprint, load_tokenizer, save_tokenizer,
                                  train_tokenizer_from_iterator)

META_FILE = "meta.json"
FORMAT = "plotarmour-tokens-v1"
# A story longer than this (or a file with no separator lines) is cut into pieces of
# about this many characters, so one line-less giant file cannot fill memory.
MAX_PIECE_CHARS = 1 << 20
# Characters handed to one encode_batch call: big enough for the Rust side to use all
# cores, small enough that the batch's encodings (tens of bytes per token) stay small.
BATCH_CHARS = 1 << 20
HF_DATASET = "roneneldan/TinyStories"
HF_FILES = {"train": "TinyStories-train.txt", "val": "TinyStories-valid.txt"}


class PrepareError(ValueError):
    """Bad input to prepare (missing, empty or undecodable file); the message names it."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535; bigger vocabularies need uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def check_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Fail before any work on a path that is missing, a directory, or zero bytes."""
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise PrepareError(f"{p}: input file not found")
        if not p.is_file():
            raise PrepareError(f"{p}: not a regular file")
        if p.stat().st_size == 0:
            raise PrepareError(f"{p}: input file is empty")
        out.append(p)
    if not out:
        raise PrepareError("no input files given")
    return out


def iter_pieces(path: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[tuple[str, bool]]:
    """Yield (text, ends_story) from one plain or .gz file, decoding UTF-8 strictly.

    on_bytes(n) is told how many on-disk bytes were consumed (compressed bytes for .gz),
    which is what a progress bar over file sizes needs.
    """
    with open(path, "rb") as raw:
        fh = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        lines: list[str] = []
        size, done, offset = 0, 0, 0
        try:
            for lineno, bline in enumerate(fh, 1):
                try:
                    line = bline.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise PrepareError(
                        f"{path}: not valid UTF-8 at line {lineno} (byte {offset + e.start} of the text): "
                        f"{e.reason}") from None
                offset += len(bline)
                if line.strip() == EOT:
                    yield "".join(lines), True
                    lines, size = [], 0
                else:
                    lines.append(line)
                    size += len(line)
                    if size >= MAX_PIECE_CHARS:
                        yield "".join(lines), False
                        lines, size = [], 0
                if on_bytes and lineno % 1024 == 0:
                    pos = raw.tell()
                    on_bytes(pos - done)
                    done = pos
        except (OSError, EOFError, zlib.error) as e:  # gzip: bad header, corrupt or truncated stream
            raise PrepareError(f"{path}: cannot read ({e})") from None
        if lines:
            yield "".join(lines), True
        if on_bytes:
            on_bytes(raw.tell() - done)


def _progress(paths: Sequence[Path], desc: str, quiet: bool) -> tqdm:
    total = sum(p.stat().st_size for p in paths)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=quiet,
                dynamic_ncols=True)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------


def train_on_files(paths: Sequence[Path], vocab_size: int, sample_bytes: int | None = None,
                   quiet: bool = False) -> Tokenizer:
    """Train the BPE tokenizer on the train files (or their first `sample_bytes` bytes)."""
    bar = _progress(paths, "tokenizer", quiet)

    def stories() -> Iterator[str]:
        seen = 0
        for p in paths:
            for text, _ in iter_pieces(p, bar.update):
                if text.strip():
                    yield text
                seen += len(text)
                if sample_bytes and seen >= sample_bytes:
                    return

    try:
        tok = train_tokenizer_from_iterator(stories(), vocab_size=vocab_size)
    finally:
        bar.close()
    return tok


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


class TokenWriter:
    """Appends token ids to a flat binary file, written as <name>.tmp and renamed on close."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self._tmp = path.with_name(path.name + ".tmp")
        self._fh = open(self._tmp, "wb")
        self.tokens = 0
        self.stories = 0

    def write(self, ids: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        arr.tofile(self._fh)
        self.tokens += arr.size

    def close(self) -> None:
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def encode_files(paths: Sequence[Path], tok: Tokenizer, writers: Sequence[TokenWriter],
                 val_every: int = 0, quiet: bool = False, desc: str = "encode") -> None:
    """Encode stories into writers[0] (and every val_every-th story into writers[1]).

    Each complete story gets one end-of-text token after it.
    """
    eot = eot_id(tok)
    bar = _progress(paths, desc, quiet)
    batch: list[tuple[str, bool, TokenWriter]] = []
    chars = 0
    story_index = 0

    def flush() -> None:
        # encode_batch_fast skips character offsets, which we never use (tokenizers >= 0.20).
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        encodings = encode([text for text, _, _ in batch], add_special_tokens=False)
        for (_, ends, writer), enc in zip(batch, encodings):
            writer.write(enc.ids + [eot] if ends else enc.ids)
            writer.stories += ends
        batch.clear()

    try:
        for p in paths:
            continuing = False  # the previous piece was part of a story cut in pieces
            for text, ends in iter_pieces(p, bar.update):
                # Stories lose the blank space around them; a cut story keeps its inner spacing.
                text = text if continuing else text.lstrip()
                text = text.rstrip() if ends else text
                was_continuing, continuing = continuing, not ends
                if not text and not was_continuing:
                    continue  # blank lines between separators are not a story
                to_val = val_every > 0 and story_index % val_every == val_every - 1
                batch.append((text, ends, writers[1] if to_val else writers[0]))
                story_index += ends
                chars += len(text)
                if chars >= BATCH_CHARS:
                    flush()
                    chars = 0
        if batch:
            flush()
    finally:
        bar.close()


def encode_text_file(path: str | os.PathLike, tok: Tokenizer, out: str | os.PathLike, quiet: bool = True) -> int:
    """Encode one text file to a flat token file (used by evaluate); returns the token count."""
    [p] = check_inputs([path])
    writer = TokenWriter(Path(out), token_dtype(tok.get_vocab_size()))
    try:
        encode_files([p], tok, [writer], quiet=quiet)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    if writer.tokens == 0:
        raise PrepareError(f"{p}: contains no text")
    return writer.tokens


# --------------------------------------------------------------------------
# Hugging Face hub (online machines only)
# --------------------------------------------------------------------------


def download_tinystories(dest: Path, dataset: str = HF_DATASET, timeout: float = 5.0) -> dict[str, Path]:
    """Fetch TinyStories' train/valid text from the hub; fail within `timeout` s when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise PrepareError("HF_HUB_OFFLINE is set, so TinyStories cannot be downloaded; pass local files "
                           "with --train/--val instead")
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError as e:
        raise PrepareError(f"cannot reach huggingface.co to download {dataset} ({e}); this machine looks "
                           f"offline: pass local text files with --train/--val instead") from None
    from huggingface_hub import hf_hub_download

    return {split: Path(hf_hub_download(dataset, name, repo_type="dataset", local_dir=dest))
            for split, name in HF_FILES.items()}


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def prepare(train: Sequence[str | os.PathLike], out: str | os.PathLike, val: Sequence[str | os.PathLike] = (),
            tokenizer: str | None = None, vocab_size: int = 4096, val_every: int = 100,
            tokenizer_sample_bytes: int | None = None, quiet: bool = False) -> dict:
    """Run the whole step; returns the metadata written to meta.json."""
    train_paths = check_inputs(train)
    val_paths = check_inputs(val) if val else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    if tokenizer:
        tok = load_tokenizer(tokenizer)
    else:
        tok = train_on_files(train_paths, vocab_size, tokenizer_sample_bytes, quiet)
        if tok.get_vocab_size() <= 257:  # bytes + EOT: nothing was learnt
            raise PrepareError(f"{', '.join(map(str, train_paths))}: contains no text to train a tokenizer on")
    save_tokenizer(tok, out)
    vocab = tok.get_vocab_size()
    dtype = token_dtype(vocab)

    train_w = TokenWriter(out / "train.bin", dtype)
    val_w = TokenWriter(out / "val.bin", dtype)
    try:
        # With explicit validation files nothing is held out of the training text.
        encode_files(train_paths, tok, [train_w, val_w], 0 if val_paths else val_every, quiet, "train")
        if val_paths:
            encode_files(val_paths, tok, [val_w], 0, quiet, "val")
        if train_w.tokens == 0:
            raise PrepareError(f"{', '.join(map(str, train_paths))}: contains no text")
        if val_w.tokens == 0:
            where = ", ".join(map(str, val_paths)) + ": contains no text" if val_paths else (
                f"the validation split is empty: pass --val files, or more than {val_every} stories")
            raise PrepareError(where)
    except BaseException:
        train_w.abort()  # no half-made token files left behind
        val_w.abort()
        raise
    train_w.close()
    val_w.close()

    meta = {
        "format": FORMAT,
        "dtype": dtype.name,
        "vocab_size": vocab,
        "eot_id": eot_id(tok),
        "tokenizer": "tokenizer.json",
        "tokenizer_fingerprint": fingerprint(tok),
        "splits": {
            "train": {"file": "train.bin", "tokens": train_w.tokens, "stories": train_w.stories,
                      "sources": [str(p) for p in train_paths]},
            "val": {"file": "val.bin", "tokens": val_w.tokens, "stories": val_w.stories,
                    "sources": [str(p) for p in val_paths] or [f"every {val_every}th story of the train sources"]},
        },
        "seconds": round(time.time() - started, 2),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_argument_group("input (one of)")
    src.add_argument("--train", nargs="+", metavar="FILE", help="training text files (plain or .gz)")
    src.add_argument("--hf-tinystories", action="store_true",
                     help=f"download {HF_DATASET} from the Hugging Face hub (needs network) and use it")
    ap.add_argument("--val", nargs="+", metavar="FILE", default=[],
                    help="validation text files; without them every --val-every-th story is held out")
    ap.add_argument("--val-every", type=int, default=100, metavar="K",
                    help="hold out every K-th training story for validation when no --val is given (default 100)")
    ap.add_argument("--out", required=True, help="output directory (train.bin, val.bin, meta.json, tokenizer.json)")
    ap.add_argument("--tokenizer", metavar="SPEC",
                    help="use this tokenizer (tokenizer.json, a directory holding one, or a hub name such as gpt2) "
                         "instead of training one")
    ap.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of the trained tokenizer (default 4096)")
    ap.add_argument("--tokenizer-sample-mb", type=float, default=None, metavar="MB",
                    help="train the tokenizer on only the first MB megabytes of text (large corpora)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train, val = args.train, args.val
        if args.hf_tinystories:
            files = download_tinystories(Path(args.out) / "download")
            train, val = [files["train"]], val or [files["val"]]
        if not train:
            raise PrepareError("give --train FILE... or --hf-tinystories")
        sample = int(args.tokenizer_sample_mb * 2**20) if args.tokenizer_sample_mb else None
        meta = prepare(train, args.out, val, args.tokenizer, args.vocab_size, args.val_every, sample, args.quiet)
    except (PrepareError, OSError, ValueError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    s = meta["splits"]
    print(f"wrote {args.out}: train {s['train']['tokens']:,} tokens ({s['train']['stories']:,} stories), "
          f"val {s['val']['tokens']:,} tokens, vocab {meta['vocab_size']}, {meta['dtype']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
