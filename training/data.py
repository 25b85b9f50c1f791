"""Token files opened read-only with numpy.memmap, and the windows training reads from them.

Only the windows of a batch are ever copied out of the file. Which windows a batch holds
is a pure function of (seed, rank, batch index): no sampler state has to be saved for an
exact resume, and every DDP rank draws its own windows without talking to the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from plotarmour.checkpoint import read_json

from .prepare import FORMAT, META_FILE


class DataError(ValueError):
    """A token file or its meta.json is missing or does not fit; the message names the file."""


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / META_FILE
    meta = read_json(path, DataError, "missing (run `python -m training.prepare` first)")
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def open_tokens(path: str | Path, dtype: str | np.dtype | None = None) -> np.memmap:
    """Memory-map a flat token file read-only; the dtype comes from meta.json beside it if not given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: token file not found")
    if dtype is None:
        dtype = read_meta(path.parent)["dtype"]
    dtype = np.dtype(dtype)
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole, non-zero number of {dtype.name} tokens")
    return np.memmap(path, dtype=dtype, mode="r")


class RandomWindows:
    """Random (x, y) windows of block_size tokens, y shifted by one, from a memmapped file."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0, rank: int = 0):
        if len(tokens) < block_size + 1:
            raise DataError(f"token file has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank = seed, rank

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number `index` of this rank: x, y int64 (batch_size, block_size)."""
        rng = np.random.default_rng([self.seed, self.rank, index])
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.batch_size)
        w = np.stack([self.tokens[s : s + self.block_size + 1] for s in starts]).astype(np.int64)  # (B, T+1)
        w = torch.from_numpy(w)
        return w[:, :-1], w[:, 1:]


def eval_windows(tokens: np.ndarray, block_size: int, max_windows: int | None = None) -> list[int]:
    """Start offsets of non-overlapping windows tiling the file (evenly thinned to max_windows).

    The same windows every time, so validation losses along a run are comparable.
    """
    n = (len(tokens) - 1) // block_size
    if n == 0:
        raise DataError(f"token file has {len(tokens)} tokens, fewer than block_size + 1 = {block_size + 1}")
    idx = np.arange(n)
    if max_windows and n > max_windows:
        idx = np.linspace(0, n - 1, max_windows).round().astype(np.int64)
    return [int(i) * block_size for i in idx]


def window_batch(tokens: np.ndarray, starts: list[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.from_numpy(np.stack([tokens[s : s + block_size + 1] for s in starts]).astype(np.int64))
    return w[:, :-1], w[:, 1:]
