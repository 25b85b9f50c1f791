"""Serving a BDH model: sessions, their decode states in one pool, deferred writes.

A decode step is memory-bound: every token reads a session's whole state S (N × D per
layer and head). Two choices keep that read as small as it can be:

- Deferred writes. Writing S += q xᵀ at once would read and write S again, tripling
  the traffic. Instead each session keeps its last `pending` (q, x) pairs beside S, and
  a token reads qᵀS + Σ_j (q·q_j) x_j, which is the same sum; when a session has
  `pending` pairs they are folded into S as one rank-`pending` update.
- Reads straight from the pool, wherever the sessions sit. qᵀS = Σ_n q_n S[n, :] is a
  weighted sum of rows of S, which is what `F.embedding_bag` computes: one bag per
  (session, head), its rows named by index into the whole pool. So a batch over any
  slots, in any order, is one call per layer with no copy of any state and no loop over
  sessions; the pool needs no compaction. On the shipped shape (bench/bench_decode.py
  --reads, one CPU thread) it is also 1.1-1.5x faster than a batched matmul over a
  contiguous slice of the pool from 4 sessions on, and ~10x faster than gathering the
  states first. (Listing only the non-zero q_n per bag, to skip silent neurons' rows,
  did not pay: q is 50-70% non-zero in the shipped model, and finding them costs more.)

The cost per token stays constant in position.
"""

from __future__ import annotations

import heapq

import torch
import torch.nn.functional as F

from .base import DecodeEngine, _Session
from .bdh import BDH, DenseMemory, MixedMemory


class BDHEngine(DecodeEngine):
    """Sessions over a BDH model (see the module docstring).

    Pools, indexed by slot, all float32 whatever the weights' dtype:
      S  (L, slots, H, N, D)  the folded state
      q  (L, slots, H, N, K)  pending queries, K last so that a bag's row n holds q_j[n]
                              for every pending j (read with the same indices as S)
      x  (L, slots, K, D)     pending inputs
      fill (slots,)           pending pairs per slot; unused pending entries are zero.
    A session's state is its slot number. Freed slots are reused lowest-first, and the
    pool doubles when full.
    """

    model_type = "bdh"

    def __init__(self, model: BDH, *, max_context: int = 1 << 20, initial_slots: int = 4, pending: int = 16):
        super().__init__(model, max_context=max_context)
        c = model.config
        self.pending = pending
        slots = max(1, initial_slots)
        self._S = model.new_state(slots, device=self.device)
        self._q = torch.zeros(c.n_layer, slots, c.n_head, c.n_neurons, pending, device=self.device)
        self._x = torch.zeros(c.n_layer, slots, pending, c.n_embd, device=self.device)
        self._fill = torch.zeros(slots, dtype=torch.long, device=self.device)
        self._free = list(range(slots))  # a heap: lowest slot first keeps the busy ones together

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    # -- the pool --------------------------------------------------------------------
    def _new_state(self) -> int:
        if not self._free:  # grow by doubling: amortised, and rare once warm
            old = self._S.shape[1]
            self._S, self._q, self._x = (torch.cat([t, torch.zeros_like(t)], dim=1) for t in (self._S, self._q, self._x))
            self._fill = torch.cat([self._fill, torch.zeros_like(self._fill)])
            self._free = list(range(old, 2 * old))
        slot = heapq.heappop(self._free)
        for t in (self._S, self._q, self._x):  # the slot may hold a closed session's state
            t[:, slot].zero_()
        self._fill[slot] = 0
        return slot

    def _release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def _fold(self, slots: torch.Tensor) -> None:
        """S += Σ_j q_j x_jᵀ over the pending pairs of `slots` (G,), then clear them."""
        L, _, H, N, K = self._q.shape
        D = self._x.shape[-1]
        G = len(slots)
        q = self._q[:, slots].reshape(L * G * H, N, K)
        x = self._x[:, slots].unsqueeze(2).expand(L, G, H, K, D).reshape(L * G * H, K, D)
        # One batched rank-K product for every layer, head and slot; its temporary is G
        # states, once every K tokens per session.
        self._S.index_add_(1, slots, torch.bmm(q, x).view(L, G, H, N, D))
        self._q.index_fill_(1, slots, 0)
        self._x.index_fill_(1, slots, 0)
        self._fill.index_fill_(0, slots, 0)

    # -- prompt chunks ---------------------------------------------------------------
    def _feed(self, sess: _Session, ids: torch.Tensor, want: str) -> torch.Tensor | None:
        slot = sess.state
        if int(self._fill[slot]):  # the chunk writes S directly, so S must hold every earlier token
            self._fold(torch.tensor([slot], device=self.device))
        T = len(ids)
        positions = torch.arange(sess.position, sess.position + T, device=self.device)
        # A chunk is written into S at once (the model's dense path), through a view of the slot.
        logits = self.model.extend(ids[None], positions[None], self._S[:, slot : slot + 1], logits=want)
        return None if logits is None else logits[0]

    # -- one token per session ---------------------------------------------------------
    def _step(self, sessions: list[_Session], tokens: torch.Tensor) -> torch.Tensor:
        batch = _Batch(self, torch.tensor([sess.state for sess in sessions], device=self.device))
        positions = torch.tensor([[sess.position] for sess in sessions], device=self.device)  # (B, 1)
        memories = [_DeferredMemory(self, layer, batch) for layer in range(self.model.config.n_layer)]
        logits = self.model.extend(tokens[:, None], positions, memories)[:, 0]  # (B, V)
        self._stepped(batch)
        return logits

    def _stepped(self, batch: _Batch) -> None:
        """The batch's sessions each hold one more pending pair; full ones are folded."""
        fill = batch.fill + 1
        self._fill[batch.idx] = fill
        full = batch.idx[fill == self.pending]
        if len(full):
            self._fold(full)

    def step_does_more(self, sessions) -> bool:
        slots = [self._get(s).state for s in sessions if s in self._sessions]
        return bool(slots) and bool((self._fill[slots] == self.pending - 1).any())

    # -- both at once ------------------------------------------------------------------
    fuses_chunks = True

    def _step_and_feed(self, sessions: list[_Session], tokens: torch.Tensor, sess: _Session, ids: torch.Tensor,
                       want: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One token of each session, then the chunk `ids` of `sess`, as one sequence
        (bdh.MixedMemory): the weights are read once for both."""
        slot = sess.state
        if int(self._fill[slot]):  # as in _feed: the chunk writes S directly
            self._fold(torch.tensor([slot], device=self.device))
        B, T = len(sessions), len(ids)
        batch = _Batch(self, torch.tensor([s.state for s in sessions], device=self.device))
        positions = torch.cat([torch.tensor([s.position for s in sessions], device=self.device),
                               torch.arange(sess.position, sess.position + T, device=self.device)])
        memories = [MixedMemory(_DeferredMemory(self, layer, batch), DenseMemory(self._S[layer, slot : slot + 1]), B)
                    for layer in range(self.model.config.n_layer)]
        h = self.model.hidden(torch.cat([tokens, ids])[None], positions[None], memories)[0]  # (B + T, D)
        self._stepped(batch)
        head = self.model.lm_head
        chunk = None if want == "none" else (h[B:] if want == "all" else h[-1]) @ head
        return h[:B] @ head, chunk


class _Batch:
    """Where one step's sessions sit in the pool: shared by every layer's memory."""

    def __init__(self, e: BDHEngine, idx: torch.Tensor):
        _, _, H, N, K = e._q.shape
        B = len(idx)
        self.idx = idx  # (B,)
        self.fill = e._fill[idx]  # (B,) pending pairs before this token
        # Row of neuron n of head h of slot s in a layer's S viewed as (slots·H·N, D), and
        # in its pending q viewed as (slots·H·N, K).
        rows = ((idx[:, None] * H + torch.arange(H, device=idx.device)) * N)[..., None] \
            + torch.arange(N, device=idx.device)  # (B, H, N)
        self.rows = rows.flatten()  # (B·H·N,)
        self.offsets = torch.arange(B * H, device=idx.device) * N  # (B·H,): one bag per (session, head)


class _DeferredMemory:
    """One layer's view of a batch's states for a one-token step (see the module docstring)."""

    def __init__(self, engine: BDHEngine, layer: int, batch: _Batch):
        self.e, self.layer, self.b = engine, layer, batch

    def __call__(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        e, layer, b = self.e, self.layer, self.b
        B, H, _, N = q.shape
        D, K = x.shape[-1], e.pending
        qf, xf = q.float()[:, :, 0], x.float()[:, 0, 0]  # (B, H, N), (B, D)
        w = qf.flatten()  # (B·H·N,): bag weights
        # qᵀS: per (session, head), Σ_n q_n S[n, :] read straight from the pool.
        a = F.embedding_bag(b.rows, e._S[layer].view(-1, D), b.offsets, mode="sum", per_sample_weights=w)  # (B·H, D)
        # q·q_j for the pending pairs, with the same bags: row n of the q pool holds q_j[n].
        dots = F.embedding_bag(b.rows, e._q[layer].view(-1, K), b.offsets, mode="sum", per_sample_weights=w)  # (B·H, K)
        a = a.view(B, H, D) + torch.bmm(dots.view(B, H, K), e._x[layer].index_select(0, b.idx))  # + Σ_j (q·q_j) x_j
        # This token joins the pending pairs; it is folded into S later.
        e._q[layer, b.idx, :, :, b.fill] = qf
        e._x[layer, b.idx, b.fill] = xf
        return a.unsqueeze(2)  # (B, H, 1, D)
