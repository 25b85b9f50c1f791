"""BDH ("Baby Dragon Hatchling"), written from the math in docs/ARCHITECTURE.md §4.

One set of weights is shared by all layers, so depth adds compute, not parameters.
Attention has no softmax, which makes it linear: for every layer and head a state
S = Σ_{s<t} q_s x_sᵀ (N × D) summarises the past, and one new token costs the same at
position 10 as at position 10 000. `extend` is the single code path for training
(no state), prefill and scoring (S written in place) and decoding (writes deferred,
see bdh_engine.py, which owns sessions and their state pool).

Reduced precision: the weights may be bfloat16/float16, but RoPE phases and the decode
state stay float32 (a bf16 phase at position 1000 is off by radians, not ulps).

Parameter names equal the reference implementation's, so its state_dicts load as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ROPE_THETA = 2.0**16


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
    positions keep their precision. A bfloat16/float16 v is turned in float32 and cast
    back: only the result is rounded, never the angle.
    """
    work = torch.promote_types(v.dtype, torch.float32)  # float32, or float64 for a float64 model
    turns = positions.to(torch.float32)[:, None, :, None] * freqs.float()  # (B, 1, T, N)
    phase = torch.frac(turns) * (2 * math.pi)
    cos, sin = torch.cos(phase).to(work), torch.sin(phase).to(work)
    w = v.to(work)
    # (x0, x1) → (-x1, x0) for every pair: the 90° turn that sin multiplies.
    turned = torch.stack((-w[..., 1::2], w[..., 0::2]), dim=-1).flatten(-2)
    return (w * cos + turned * sin).to(v.dtype)


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


def causal_reads(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What each of a chunk's tokens reads from the ones before it in the chunk, (B, H, T, D):
    strictly causal and unnormalised, token t reads the inputs of tokens s < t."""
    B, H, T, _ = q.shape
    if T == 1:
        return torch.zeros(B, H, 1, x.shape[-1], dtype=x.dtype, device=x.device)
    return (q @ q.transpose(-1, -2)).tril(diagonal=-1) @ x


class MixedMemory:
    """One layer's memory for a pass that runs one token for each of B decoding sessions
    and then a chunk of T prompt tokens of one more session, as one sequence of B + T
    tokens (vLLM's mixed batch): the token-wise work, most of a step's cost (the weights
    are read once), is shared; each part reads its own past. Inputs q (1, H, B + T, N), x
    (1, 1, B + T, D); returns every token's read, its own chunk's included (reads_within)."""

    reads_within = True

    def __init__(self, decode, chunk: DenseMemory, B: int):
        self.decode, self.chunk, self.B = decode, chunk, B

    def __call__(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, D = self.B, x.shape[-1]
        qd = q[0, :, :B].transpose(0, 1).unsqueeze(2)  # (B, H, 1, N): a session per row
        decoded = self.decode(qd, x[0, 0, :B].view(B, 1, 1, D)).to(x.dtype)  # (B, H, 1, D)
        qc, xc = q[:, :, B:], x[:, :, B:]
        # In the model's dtype and order, as BDH._layer adds them apart (bf16 rounds alike).
        chunk = causal_reads(qc, xc) + self.chunk(qc, xc).to(x.dtype)  # (1, H, T, D)
        return torch.cat([decoded.squeeze(2).transpose(0, 1).unsqueeze(0), chunk], dim=2)


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
        self.grad_checkpointing = False  # see gradient_checkpointing_enable
        # Derived from the config, so not saved; a reference state_dict's copy is checked on load.
        # Always float32 (see `_apply`).
        self.register_buffer("rope_freqs", rope_frequencies(N), persistent=False)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)

    def _apply(self, fn, recurse=True):
        # .to(dtype), .half(), .bfloat16() cast every floating buffer; bf16 frequencies put
        # the phase at position 1000 off by radians. Follow the device, never the dtype.
        super()._apply(fn, recurse)
        self.rope_freqs = rope_frequencies(self.config.n_neurons).to(self.rope_freqs.device)
        return self

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

    def extend(self, idx: torch.Tensor, positions: torch.Tensor, state=None, logits: str = "all"):
        """Run tokens idx (B, T) at absolute positions (B, T).

        `state` is what the tokens remember: None (they see only each other: training),
        a decode state (L, B, H, N, D) that they read and then write in place (prefill,
        scoring), or one memory per layer (see `DenseMemory` and bdh_engine.py).
        `logits`: "all" → (B, T, V); "last" → (B, V) for the last position only; "none" →
        None, for prompt chunks that only write the state: the lm_head (V columns per
        row, the widest matmul here) and the last layer's work after its write are skipped.
        """
        if logits not in ("all", "last", "none"):
            raise ValueError(f"logits must be 'all', 'last' or 'none', got {logits!r}")
        x = self.hidden(idx, positions, state, write_only=logits == "none")
        if logits == "none":
            return None
        if logits == "last":
            x = x[:, -1]  # (B, D)
        return x @ self.lm_head  # (B, T, V) or (B, V)

    def hidden(self, idx: torch.Tensor, positions: torch.Tensor, state=None, write_only: bool = False):
        """`extend` up to the lm_head: the last layer's output (B, T, D), or None with
        `write_only` (only the states are written: the last layer stops at its write)."""
        if isinstance(state, torch.Tensor):
            state = [DenseMemory(S) for S in state]
        x = _ln(self.embed(idx)).unsqueeze(1)  # (B, 1, T, D): broadcasts over heads
        L = self.config.n_layer
        recompute = self.grad_checkpointing and self.training and state is None and torch.is_grad_enabled()
        for layer in range(L):
            memory = None if state is None else state[layer]
            if recompute:  # keep only each layer's input; its (B, H, T, N) activations are recomputed
                x = checkpoint(self._layer, x, positions, None, use_reentrant=False)
                continue
            x = self._layer(x, positions, memory, write_only=write_only and layer == L - 1)
        return None if write_only else x.squeeze(1)

    def _layer(self, x: torch.Tensor, positions: torch.Tensor, memory, write_only: bool = False) -> torch.Tensor:
        B, _, T, _ = x.shape
        u = F.relu(_per_head(x, self.encoder))  # (B, H, T, N): sparse, non-negative
        q = rope(u, positions, self.rope_freqs)  # query = key
        if memory is not None:
            past = memory(q, x)  # reads the past before this chunk, which the chunk then joins
            if write_only:
                return x
        if getattr(memory, "reads_within", False):  # the memory also read the tokens' own (MixedMemory)
            a = past.to(x.dtype)
        else:
            a = causal_reads(q, x)
            if memory is not None:
                a = a + past.to(x.dtype)
        a = _ln(a)
        v = F.relu(_per_head(a, self.encoder_v))  # (B, H, T, N)
        z = self.drop(u * v)
        z = z.transpose(1, 2).reshape(B, 1, T, -1)  # head-major neurons: (B, 1, T, H·N)
        y = _ln(z @ self.decoder)  # (B, 1, T, D)
        return _ln(x + y)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each layer in the backward pass instead of storing its activations
        (the (B, H, T, N) neuron tensors dominate training memory). The same switch as
        Hugging Face models; only `use_reentrant=False` is supported."""
        kwargs = gradient_checkpointing_kwargs or {}
        if kwargs.get("use_reentrant", False):
            raise ValueError("BDH's gradient checkpointing supports use_reentrant=False only")
        self.grad_checkpointing = True

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
