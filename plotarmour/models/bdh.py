"""BDH ("Baby Dragon Hatchling"), written from the math in DESIGN.md §4.

One set of weights is shared by all layers, so depth adds compute, not parameters.
Attention has no softmax, which makes it linear: for every layer and head a state
S = Σ_{s<t} q_s x_sᵀ (N × D) summarises the past, and one new token costs the same at
position 10 as at position 10 000. `extend` is the single code path for training
(no state), prefill and scoring (S written in place) and decoding (writes deferred,
see BDHEngine).

Parameter names equal the reference implementation's, so its state_dicts load as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .base import DecodeEngine, _Session

ROPE_THETA = 2.0**16
# Prefill longer prompts in chunks so the intra-chunk score matrix stays small (T² memory).
PREFILL_CHUNK = 512


@dataclass
class BDHConfig:
    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 4
    mlp_internal_dim_multiplier: int = 16
    vocab_size: int = 4096
    dropout: float = 0.1

    @property
    def n_neurons(self) -> int:
        """N, neurons per head."""
        return self.mlp_internal_dim_multiplier * self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, d: dict) -> BDHConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"model_type"}
        if unknown:
            raise ValueError(f"unknown BDH config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return {"model_type": "bdh", **asdict(self)}


def _ln(x: torch.Tensor) -> torch.Tensor:
    # LayerNorm with no weight and no bias: BDH has no per-feature gains anywhere.
    return F.layer_norm(x, (x.shape[-1],), eps=1e-5)


def _per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (B, H or 1, T, D) @ w (H, D, N) → (B, H, T, N).

    Plain `x @ w` broadcasts by materialising w once per batch row (B copies of the
    weights, which dominated decode steps); folding batch and time into rows instead
    runs one matmul per head on the weights as they are.
    """
    B, Hx, T, D = x.shape
    H, _, N = w.shape
    if Hx == 1:
        rows = x.reshape(1, B * T, D)
        if B * T <= N:  # decoding: copying the few input rows per head beats copying w
            return torch.matmul(rows, w).view(H, B, T, N).transpose(0, 1)
        # training: one (B·T, D) @ (D, H·N) matmul; the weight copy is small next to B·T rows
        out = rows[0] @ w.transpose(0, 1).reshape(D, H * N)
        return out.view(B, T, H, N).transpose(1, 2)
    rows = x.transpose(0, 1).reshape(H, B * T, D)  # (H, B·T, D)
    return torch.bmm(rows, w).view(H, B, T, N).transpose(0, 1)


def rope_frequencies(n: int) -> torch.Tensor:
    """Turns per position of each of the N coordinates, divided by 2π; pairs (2i, 2i+1) share one."""
    pair = torch.arange(n, dtype=torch.float32) // 2 * 2
    return 1.0 / (ROPE_THETA ** (pair / n)) / (2 * math.pi)


def rope(v: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of v (B, H, T, N) by position (B, T).

    The phase is taken modulo one turn before scaling by 2π, in float32, so large
    positions keep their precision.
    """
    turns = positions.to(torch.float32)[:, None, :, None] * freqs  # (B, 1, T, N)
    phase = torch.frac(turns) * (2 * math.pi)
    cos, sin = torch.cos(phase).to(v.dtype), torch.sin(phase).to(v.dtype)
    # (x0, x1) → (-x1, x0) for every pair: the 90° turn that sin multiplies.
    turned = torch.stack((-v[..., 1::2], v[..., 0::2]), dim=-1).flatten(-2)
    return v * cos + turned * sin


class DenseMemory:
    """One layer's decode state S (B, H, N, D), float32, read and written at once.

    Calling it with this chunk's queries q (B, H, T, N) and inputs x (B, 1, T, D) returns
    what the chunk reads from the past, qᵀS (B, H, T, D), then adds S += qᵀx in place.
    """

    def __init__(self, S: torch.Tensor):
        self.S = S

    def __call__(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, H, T, N = q.shape
        D = x.shape[-1]
        qf, xf = q.float(), x.float().expand(B, H, T, D)
        a = qf @ self.S  # read before write: a token never sees itself
        # In place, through a (B·H, N, D) view: no (B, H, N, D) temporary.
        self.S.view(B * H, N, D).baddbmm_(qf.transpose(-1, -2).reshape(B * H, N, T), xf.reshape(B * H, T, D))
        return a


class BDH(nn.Module):
    def __init__(self, config: BDHConfig):
        super().__init__()
        self.config = c = config
        D, H, N, V = c.n_embd, c.n_head, c.n_neurons, c.vocab_size
        if c.mlp_internal_dim_multiplier * D % H:
            raise ValueError(f"m·D = {c.mlp_internal_dim_multiplier * D} is not divisible by n_head = {H}")
        if N % 2:
            raise ValueError(f"neurons per head N = {N} must be even for RoPE pairs")
        self.embed = nn.Embedding(V, D)
        self.encoder = nn.Parameter(torch.empty(H, D, N))
        self.encoder_v = nn.Parameter(torch.empty(H, D, N))
        self.decoder = nn.Parameter(torch.empty(H * N, D))
        self.lm_head = nn.Parameter(torch.empty(D, V))
        self.drop = nn.Dropout(c.dropout)
        # Derived from the config, so not saved; a reference state_dict's copy is checked on load.
        self.register_buffer("rope_freqs", rope_frequencies(N), persistent=False)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Training pass: idx, targets (B, T) → logits (B, T, V), mean cross-entropy or None."""
        B, T = idx.shape
        positions = torch.arange(T, device=idx.device).expand(B, T)
        logits = self.extend(idx, positions, state=None)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return logits, loss

    def new_state(self, batch: int, device=None) -> torch.Tensor:
        """Zero decode state (L, B, H, N, D), float32 whatever the weights' dtype."""
        c = self.config
        return torch.zeros(c.n_layer, batch, c.n_head, c.n_neurons, c.n_embd, device=device, dtype=torch.float32)

    def extend(self, idx: torch.Tensor, positions: torch.Tensor, state=None) -> torch.Tensor:
        """Run tokens idx (B, T) at absolute positions (B, T) → logits (B, T, V).

        `state` is what the tokens remember: None (they see only each other: training),
        a decode state (L, B, H, N, D) that they read and then write in place (prefill,
        scoring), or one memory per layer (see `DenseMemory`, `BDHEngine`).
        """
        B, T = idx.shape
        if isinstance(state, torch.Tensor):
            state = [DenseMemory(S) for S in state]
        x = _ln(self.embed(idx)).unsqueeze(1)  # (B, 1, T, D): broadcasts over heads
        for layer in range(self.config.n_layer):
            x = self._layer(x, positions, None if state is None else state[layer])
        return x.squeeze(1) @ self.lm_head  # (B, T, V)

    def _layer(self, x: torch.Tensor, positions: torch.Tensor, memory) -> torch.Tensor:
        B, _, T, D = x.shape
        u = F.relu(_per_head(x, self.encoder))  # (B, H, T, N): sparse, non-negative
        q = rope(u, positions, self.rope_freqs)  # query = key
        if T > 1:
            # Strictly causal and unnormalised: token t reads the inputs of tokens s < t.
            a = (q @ q.transpose(-1, -2)).tril(diagonal=-1) @ x  # (B, H, T, D)
        else:
            a = torch.zeros(B, q.shape[1], 1, D, dtype=x.dtype, device=x.device)
        if memory is not None:
            a = a + memory(q, x).to(x.dtype)  # the past before this chunk, which it then joins
        a = _ln(a)
        v = F.relu(_per_head(a, self.encoder_v))  # (B, H, T, N)
        z = self.drop(u * v)
        z = z.transpose(1, 2).reshape(B, 1, T, -1)  # head-major neurons: (B, 1, T, H·N)
        y = _ln(z @ self.decoder)  # (B, 1, T, D)
        return _ln(x + y)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the reference implementation's state_dict ---------------------------------
    def load_reference_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load weights saved by the reference implementation (same names; RoPE buffer optional)."""
        sd = dict(sd)
        freqs = sd.pop("attn.freqs", None)
        if freqs is not None and not torch.allclose(freqs.flatten().float(), self.rope_freqs.cpu(), rtol=1e-6):
            raise ValueError("attn.freqs differs from this config's RoPE frequencies (other theta or neuron count?)")
        check_state_dict(self.state_dict(), sd)
        self.load_state_dict(sd)


def check_state_dict(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], source: str = "state_dict") -> None:
    """Raise a ValueError naming every tensor of sd that is missing, unexpected or mis-shaped."""
    problems = [f"missing tensor {k!r}" for k in expected if k not in sd]
    problems += [f"unexpected tensor {k!r}" for k in sd if k not in expected]
    problems += [
        f"tensor {k!r} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))


class BDHEngine(DecodeEngine):
    """Sessions over a BDH model: decode states in one pool, their writes deferred.

    A decode step is memory-bound: every token reads a session's whole state (N × D per
    layer and head). Writing S += q xᵀ at once would read and write it again, tripling the
    traffic. Instead each session keeps its last `pending` (q, x) pairs beside S, and a
    token reads qᵀS + Σ_j (q·q_j) x_j, which is the same sum; every `pending` tokens the
    pairs are folded into S as one rank-`pending` update. The cost per token stays
    constant in position.

    Pools, indexed by slot: S (L, slots, H, N, D), pending q (L, slots, H, K, N) and
    pending x (L, slots, K, D), all float32; unused pending rows are zero. A batch whose
    slots are contiguous reads S through one view of the pool; otherwise per session.
    Freed slots are reused lowest-first, which keeps busy slots dense.
    """

    model_type = "bdh"

    def __init__(self, model: BDH, *, max_context: int = 1 << 20, initial_slots: int = 4, pending: int = 16):
        super().__init__(model, max_context=max_context)
        c = model.config
        self.pending = pending
        self._S = model.new_state(initial_slots, device=self.device)
        self._q = torch.zeros(c.n_layer, initial_slots, c.n_head, pending, c.n_neurons, device=self.device)
        self._x = torch.zeros(c.n_layer, initial_slots, pending, c.n_embd, device=self.device)
        self._fill = [0] * initial_slots  # pending pairs per slot
        self._free = list(range(initial_slots))

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def _take_slot(self) -> int:
        if not self._free:  # grow by doubling: amortised, and rare once warm
            old = self._S.shape[1]
            self._S, self._q, self._x = (torch.cat([t, torch.zeros_like(t)], dim=1) for t in (self._S, self._q, self._x))
            self._fill += [0] * old
            self._free = list(range(old, 2 * old))
        self._free.sort()
        slot = self._free.pop(0)
        for t in (self._S, self._q, self._x):
            t[:, slot].zero_()
        self._fill[slot] = 0
        return slot

    def _prefill(self, ids: torch.Tensor) -> tuple[int, torch.Tensor]:
        slot = self._take_slot()
        # A prompt is written into S at once: it is a chunk, not a token.
        logits = self._chunked(ids, self._S[:, slot : slot + 1])
        return slot, logits[-1]

    def _chunked(self, ids: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """ids (T,) through `state` (L, 1, H, N, D) in chunks → logits (T, V); memory linear in T."""
        out = []
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[start : start + PREFILL_CHUNK]
            positions = torch.arange(start, start + len(chunk), device=ids.device)
            out.append(self.model.extend(chunk[None], positions[None], state)[0])
        return torch.cat(out)

    def _step(self, sessions: list[_Session], tokens: torch.Tensor) -> torch.Tensor:
        # Work in slot order, so that contiguous slots are one slice of the pool.
        order = sorted(range(len(sessions)), key=lambda i: sessions[i].state)
        slots = [sessions[i].state for i in order]
        positions = torch.tensor([[sessions[i].position] for i in order], device=tokens.device)
        fill = torch.tensor([self._fill[s] for s in slots], device=self.device)
        idx = torch.tensor(slots, device=self.device)
        contiguous = slots[-1] - slots[0] + 1 == len(slots)
        memories = [_DeferredMemory(self, layer, slots, idx, fill, contiguous)
                    for layer in range(self.model.config.n_layer)]
        logits = self.model.extend(tokens[order, None], positions, memories)[:, 0]
        for slot in slots:
            self._fill[slot] += 1
            if self._fill[slot] == self.pending:
                self._fold(slot)
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        return logits[back]

    def _fold(self, slot: int) -> None:
        """S += Σ_j q_j x_jᵀ over the slot's pending pairs (one rank-K update per layer)."""
        for layer in range(self.model.config.n_layer):
            q = self._q[layer, slot]  # (H, K, N)
            x = self._x[layer, slot]  # (K, D)
            self._S[layer, slot].baddbmm_(q.transpose(-1, -2), x.expand(q.shape[0], *x.shape))
        self._q[:, slot].zero_()
        self._x[:, slot].zero_()
        self._fill[slot] = 0

    def _release(self, slot: int) -> None:
        self._free.append(slot)

    def _score_logits(self, ids: torch.Tensor) -> torch.Tensor:
        if len(ids) <= PREFILL_CHUNK:  # one parallel pass
            return self.model.extend(ids[None], torch.arange(len(ids), device=ids.device)[None], None)[0]
        return self._chunked(ids, self.model.new_state(1, device=self.device))  # through a scratch state


class _DeferredMemory:
    """One layer's view of a batch's states for a one-token step (see BDHEngine)."""

    def __init__(self, engine: BDHEngine, layer: int, slots: list[int], idx: torch.Tensor, fill: torch.Tensor,
                 contiguous: bool):
        self.e, self.layer, self.slots, self.idx, self.fill, self.contiguous = engine, layer, slots, idx, fill, contiguous

    def __call__(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        e, layer = self.e, self.layer
        qf, xf = q.float(), x.float()  # (B, H, 1, N), (B, 1, 1, D)
        S = e._S[layer]  # (slots, H, N, D)
        if self.contiguous:  # views of the pools, no copies
            rows = slice(self.slots[0], self.slots[-1] + 1)
            a = qf @ S[rows]
            pq, px = e._q[layer, rows], e._x[layer, rows]  # (B, H, K, N), (B, K, D)
        else:  # one read per session: gathering the states would copy them
            a = torch.stack([qf[b] @ S[slot] for b, slot in enumerate(self.slots)])
            pq, px = e._q[layer, self.idx], e._x[layer, self.idx]  # 1/16 of S at the default K
        a = a + (qf @ pq.transpose(-1, -2)) @ px.unsqueeze(1)  # Σ_j (q·q_j) x_j
        # This token joins the pending pairs; it is folded into S later.
        e._q[layer, self.idx, :, self.fill] = qf[:, :, 0]
        e._x[layer, self.idx, self.fill] = xf[:, 0, 0]
        return a
