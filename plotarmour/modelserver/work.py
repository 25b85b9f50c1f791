"""What the scheduler (scheduler.py) is asked and answers: a session and the rows of one
step call (`Block`), a prompt to prefill or a sequence to score (`Work`), a Score's
answer (`Scored`), and the log-softmax every answer goes through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .scheduler import Scheduler


def log_probs(logits: torch.Tensor) -> np.ndarray:
    """logits (B, V) → float32 log-probabilities (B, V), little-endian, C-contiguous."""
    return torch.log_softmax(logits.float(), dim=-1).numpy().astype("<f4", copy=False)


@dataclass(eq=False)
class Session:
    """A session of the engine, as the servicer sees it."""

    id: int  # the engine's session id
    position: int  # tokens consumed so far
    scheduler: Scheduler
    last_active: float = field(default_factory=time.monotonic)
    on_expire: Callable[[Session, str], None] | None = None  # told when the idle timeout frees it
    closed: bool = False

    async def step(self, token: int) -> np.ndarray:
        """The next-token log-probs (V,) after feeding `token`."""
        result = (await self.scheduler.step([self], [token]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    def close(self) -> None:
        self.scheduler.close(self)


@dataclass
class Scored:
    """A Score's answer: log p of each token (T-1,) and, when asked, what the model
    expected at each position: top ids and log-probs (T-1, k), entropies in nats (T-1,)."""

    log_probs: np.ndarray
    top_ids: np.ndarray | None = None
    top_log_probs: np.ndarray | None = None
    entropies: np.ndarray | None = None


@dataclass(eq=False)
class Block:
    """One step call's rows, answered together: their log-probs land in one (n, V) array
    as the engine steps them (no per-row futures, no stacking for the reply)."""

    future: asyncio.Future  # set once every row has its answer
    size: int  # rows asked for
    vocab_size: int
    rows: np.ndarray | None = None  # (size, V) float32, in the caller's order, once any row is in
    pending: int = 0
    errors: dict[int, Exception] = field(default_factory=dict)  # row index → what closed it
    engine_s: float = 0.0  # the engine's steps its rows took part in (what the server's own cost excludes)

    def fail(self, index: int, error: Exception) -> None:
        self.errors[index] = error
        self.done_one()

    def put(self, dst: list[int], batch: np.ndarray, src: list[int]) -> None:
        """Rows `dst` of the answer are the batch's rows `src` (both ascending). The usual
        case, a caller's whole block stepped as one run of the batch, is taken as a view:
        no copy of the step's log-probs (a megabyte at 64 rows)."""
        n = len(dst)
        if self.rows is None and n == self.size and src[-1] - src[0] == n - 1:
            self.rows = batch[src[0]:src[0] + n]
        else:
            self.answer()[dst] = batch[src]
        self.done_one(n)

    def answer(self) -> np.ndarray:
        """The (size, V) answer, made here when no view of a batch became it."""
        if self.rows is None:
            self.rows = np.empty((self.size, self.vocab_size), dtype="<f4")
        return self.rows

    def done_one(self, n: int = 1) -> None:
        self.pending -= n
        if not self.pending and not self.future.done():
            self.future.set_result(None)


@dataclass(eq=False)
class Work:
    """A prompt to prefill or a sequence to score, run chunk by chunk on the worker."""

    kind: str  # "prefill" | "score"
    ids: list[int]
    future: asyncio.Future
    done: int = 0  # tokens fed so far
    sid: int | None = None  # the engine session it runs in
    # score: the answer, filled chunk by chunk. One array made up front, not a list of
    # small per-chunk pieces: pieces that outlive each chunk's large freed logits pin
    # the heap (glibc), and a 20,000-token Score grew the process by ~270 MB that way.
    logp: np.ndarray | None = None
    top_k: int = 0  # score: alternatives per position, and whether entropies are wanted
    entropy: bool = False
    expected: Scored | None = None  # score: filled chunk by chunk, like logp
    t0: float = field(default_factory=time.perf_counter)

    @property
    def end(self) -> int:
        # A score never feeds its last token: it predicts nothing.
        return len(self.ids) - 1 if self.kind == "score" else len(self.ids)
