"""Serving a BDH model: sessions, their decode states in one pool, deferred writes.

A decode step is memory-bound: every token reads a session's whole state S (N × D per
layer and head). Writing S += q xᵀ at once would read and write S again, tripling the
traffic. Instead each session keeps its last `pending` (q, x) pairs beside S, and a
token reads qᵀS + Σ_j (q·q_j) x_j, which is the same sum; when a session has `pending`
pairs they are folded into S as one rank-`pending` update. The cost per token stays
constant in position.

The pool holds live sessions in slots 0..n-1 with no holes: closing a session moves the
highest slot into the freed one (one state copy per close). So a step over every live
session reads S through one view of the pool, and a step over some of them either
reads their whole slot range with zero queries for the others (no copy of S) or, when
they are few and spread out, gathers their states. No Python loop over sessions.
"""

from __future__ import annotations

import torch

from .base import DecodeEngine, _Session
from .bdh import BDH

# A step over B sessions spread over a range of R slots reads all R states in place when
# R <= RANGE_FACTOR·B; otherwise it gathers the B states, which costs a copy of each
# (read + write) before the read. Measured by bench/bench_decode.py (see its --sparse).
RANGE_FACTOR = 2.0


class _Slot:
    """A session's place in the pool. Mutable: compaction moves sessions between slots."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


class BDHEngine(DecodeEngine):
    """Sessions over a BDH model (see the module docstring).

    Pools, indexed by slot: S (L, slots, H, N, D), pending q (L, slots, H, K, N),
    pending x (L, slots, K, D) and the number of pending pairs per slot (slots,), all
    float32 whatever the weights' dtype; unused pending rows are zero.
    """

    model_type = "bdh"

    def __init__(self, model: BDH, *, max_context: int = 1 << 20, initial_slots: int = 4, pending: int = 16):
        super().__init__(model, max_context=max_context)
        c = model.config
        self.pending = pending
        slots = max(1, initial_slots)
        self._S = model.new_state(slots, device=self.device)
        self._q = torch.zeros(c.n_layer, slots, c.n_head, pending, c.n_neurons, device=self.device)
        self._x = torch.zeros(c.n_layer, slots, pending, c.n_embd, device=self.device)
        self._fill = torch.zeros(slots, dtype=torch.long, device=self.device)
        self._live: list[_Slot] = []  # _live[i].index == i

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    # -- the pool --------------------------------------------------------------------
    def _new_state(self) -> _Slot:
        n = len(self._live)
        if n == self._S.shape[1]:  # grow by doubling: amortised, and rare once warm
            self._S, self._q, self._x = (torch.cat([t, torch.zeros_like(t)], dim=1) for t in (self._S, self._q, self._x))
            self._fill = torch.cat([self._fill, torch.zeros_like(self._fill)])
        for t in (self._S, self._q, self._x):  # the slot may hold a closed session's state
            t[:, n].zero_()
        self._fill[n] = 0
        slot = _Slot(n)
        self._live.append(slot)
        return slot

    def _release(self, slot: _Slot) -> None:
        hole, last = slot.index, len(self._live) - 1
        if hole != last:  # keep live slots dense: the last one moves into the hole
            for t in (self._S, self._q, self._x):
                t[:, hole] = t[:, last]
            self._fill[hole] = self._fill[last]
            moved = self._live[last]
            moved.index = hole
            self._live[hole] = moved
        self._live.pop()
        slot.index = -1

    def _fold(self, slots: torch.Tensor) -> None:
        """S += Σ_j q_j x_jᵀ over the pending pairs of `slots` (G,), then clear them."""
        L, _, H, K, N = self._q.shape
        D = self._x.shape[-1]
        G = len(slots)
        q = self._q[:, slots].reshape(L * G * H, K, N)
        x = self._x[:, slots].unsqueeze(2).expand(L, G, H, K, D).reshape(L * G * H, K, D)
        # One batched rank-K product for all layers, heads and slots; its temporary is G
        # states, once every K tokens per session.
        self._S.index_add_(1, slots, torch.bmm(q.transpose(-1, -2), x).view(L, G, H, N, D))
        self._q.index_fill_(1, slots, 0)
        self._x.index_fill_(1, slots, 0)
        self._fill.index_fill_(0, slots, 0)

    # -- prompt chunks ---------------------------------------------------------------
    def _feed(self, sess: _Session, ids: torch.Tensor, want: str) -> torch.Tensor | None:
        s = sess.state.index
        if int(self._fill[s]):  # the chunk writes S directly, so S must hold every earlier token
            self._fold(torch.tensor([s], device=self.device))
        T = len(ids)
        positions = torch.arange(sess.position, sess.position + T, device=self.device)
        # A chunk is written into S at once (dense path): the view is the session's slot.
        logits = self.model.extend(ids[None], positions[None], self._S[:, s : s + 1], logits=want)
        return None if logits is None else logits[0]

    # -- one token per session ---------------------------------------------------------
    def _step(self, sessions: list[_Session], tokens: torch.Tensor) -> torch.Tensor:
        slots = [sess.state.index for sess in sessions]
        positions = torch.tensor([[sess.position] for sess in sessions], device=self.device)  # (B, 1)
        batch = _Batch(self, slots)
        memories = [_DeferredMemory(self, layer, batch) for layer in range(self.model.config.n_layer)]
        logits = self.model.extend(tokens[:, None], positions, memories)[:, 0]  # (B, V)
        fill = batch.fill + 1
        self._fill[batch.idx] = fill
        full = batch.idx[fill == self.pending]
        if len(full):
            self._fold(full)
        return logits


class _Batch:
    """Where one step's sessions sit in the pool; shared by every layer's memory.

    Three layouts, cheapest first:
      view:   the slots are lo..hi in order: pool slices are the batch, no copies;
      range:  the slots cover lo..hi loosely (R <= RANGE_FACTOR·B): queries are placed in
              R zero rows and the R states read in place;
      gather: the B states are copied out of the pool (few sessions, far apart).
    """

    def __init__(self, engine: BDHEngine, slots: list[int]):
        B = len(slots)
        self.idx = torch.tensor(slots, device=engine.device)  # (B,)
        self.fill = engine._fill[self.idx]  # (B,) pending pairs before this token
        lo, hi = min(slots), max(slots)
        self.rows = slice(lo, hi + 1)
        self.rel = None  # (B,) row of each session within lo..hi, for the range layout
        if slots == list(range(lo, hi + 1)):
            self.layout = "view"
        elif hi - lo + 1 <= RANGE_FACTOR * B:
            self.layout = "range"
            self.rel = self.idx - lo
        else:
            self.layout = "gather"
        self.R = hi - lo + 1


class _DeferredMemory:
    """One layer's view of a batch's states for a one-token step (see the module docstring)."""

    def __init__(self, engine: BDHEngine, layer: int, batch: _Batch):
        self.e, self.layer, self.b = engine, layer, batch

    def __call__(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        e, layer, b = self.e, self.layer, self.b
        qf, xf = q.float(), x.float()  # (B, H, 1, N), (B, 1, 1, D)
        if b.layout == "gather":
            S, pq, px = e._S[layer, b.idx], e._q[layer, b.idx], e._x[layer, b.idx]
            qr = qf
        else:  # views of the pools, no copies
            S, pq, px = e._S[layer, b.rows], e._q[layer, b.rows], e._x[layer, b.rows]
            if b.layout == "range":  # zero queries for the slots not in this batch
                qr = qf.new_zeros(b.R, *qf.shape[1:])  # (R, H, 1, N)
                qr[b.rel] = qf
            else:
                qr = qf
        # S (rows, H, N, D); pq (rows, H, K, N); px (rows, K, D)
        a = qr @ S  # (rows, H, 1, D)
        a += (qr @ pq.transpose(-1, -2)) @ px.unsqueeze(1)  # Σ_j (q·q_j) x_j
        if b.layout == "range":
            a = a[b.rel]  # (B, H, 1, D)
        # This token joins the pending pairs; it is folded into S later.
        e._q[layer, b.idx, :, b.fill] = qf[:, :, 0]
        e._x[layer, b.idx, b.fill] = xf[:, 0, 0]
        return a
