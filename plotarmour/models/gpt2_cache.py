"""GPT-2's KV cache for many sessions in one preallocated pool, behind transformers' Cache hooks.

The pool holds keys and values (n_layer, slots, n_head, max_len, head_dim), one slot per
session. A forward pass is planned over some slots, each row starting at its own
position: `GPT2Attention` calls `update` per layer, which writes the new keys/values in
place at those positions and hands back the rows' cached keys/values up to the
batch's longest length; a 4-D mask hides what lies past each row's own length. When
the batch's slots are one contiguous range, those are views of the pool, so nothing
is copied; otherwise one index gather per layer.

Live slots are kept dense (0..n-1): a release moves the highest live slot into the
hole, so a batch of every live session is always one contiguous range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass(eq=False)
class Slot:
    """A session's place in the pool; `index` changes when a release compacts the pool."""

    index: int
    length: int = 0  # positions written so far


class KVPool:
    """Keys and values of every session, (n_layer, slots, n_head, max_len, head_dim) each."""

    def __init__(self, *, n_layer: int, n_head: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device: torch.device, initial_slots: int = 4):
        shape = (n_layer, initial_slots, n_head, max_len, head_dim)
        # Zeros, not empty: masked-out positions are still multiplied by a zero weight,
        # and 0 × NaN from uninitialised memory would poison the row.
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.live: list[Slot] = []  # live[i].index == i

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]

    # Under inference mode whether or not the caller is, so that growing and moving work
    # on a pool made either way (an inference tensor cannot be written outside it).
    @torch.inference_mode()
    def take(self) -> Slot:
        """The lowest free slot (the pool is dense, so that is the first past the live ones)."""
        if len(self.live) == self.capacity:  # grow by doubling: amortised, and rare once warm
            self.keys = torch.cat([self.keys, torch.zeros_like(self.keys)], dim=1)
            self.values = torch.cat([self.values, torch.zeros_like(self.values)], dim=1)
        slot = Slot(len(self.live))
        self.live.append(slot)
        return slot

    @torch.inference_mode()
    def release(self, slot: Slot) -> None:
        """Free a slot; the highest live slot moves into the hole (one copy of its length)."""
        last = self.live.pop()
        if last is not slot:
            i, j, n = slot.index, last.index, last.length
            self.keys[:, i, :, :n] = self.keys[:, j, :, :n]  # (n_layer, n_head, n, head_dim)
            self.values[:, i, :, :n] = self.values[:, j, :, :n]
            last.index = i
            self.live[i] = last
        slot.index = -1


class PoolLayer(CacheLayerMixin):
    """One layer's view of the pool for the forward pass planned on its `PoolCache`."""

    is_sliding = False

    def __init__(self, cache: PoolCache, layer: int):
        super().__init__()
        self.cache, self.layer = cache, layer
        self.is_initialized = True  # the pool is allocated up front

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write key/value states (B, H, T, head_dim) in place; return the rows' keys/values (B, H, kv_len, head_dim)."""
        c = self.cache
        keys, values = c.pool.keys[self.layer], c.pool.values[self.layer]  # (slots, H, max_len, head_dim)
        T = key_states.shape[2]
        if T == 1:  # a decode step: row b's column goes to (slot b, position b)
            keys[c.slot_ids, :, c.starts] = key_states[:, :, 0]  # (B, H, head_dim)
            values[c.slot_ids, :, c.starts] = value_states[:, :, 0]
        else:  # a prompt chunk: one session, T consecutive positions
            (s,), (p,) = c.slots, c.start_list
            keys[s, :, p : p + T] = key_states[0]  # (H, T, head_dim)
            values[s, :, p : p + T] = value_states[0]
        if c.rows is not None:  # contiguous slots: views, no copy
            return keys[c.rows, :, : c.kv_len], values[c.rows, :, : c.kv_len]
        return (keys[:, :, : c.kv_len].index_select(0, c.slot_ids),
                values[:, :, : c.kv_len].index_select(0, c.slot_ids))

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.kv_len, 0

    def get_seq_length(self) -> int:
        return self.cache.kv_len - self.cache.query_len

    def get_max_length(self) -> int:
        return self.cache.pool.keys.shape[3]


class PoolCache(Cache):
    """A transformers `Cache` over a `KVPool`; `plan` says which slots and positions the next forward pass uses."""

    def __init__(self, pool: KVPool, n_layer: int):
        self.pool = pool
        self.slots: list[int] = []
        self.start_list: list[int] = []
        self.kv_len = self.query_len = 0
        self.rows: slice | None = None
        self.slot_ids = self.starts = None
        super().__init__(layers=[PoolLayer(self, i) for i in range(n_layer)])

    def plan(self, slots: list[int], starts: list[int], query_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Set up a pass of query_len tokens per row; row b is slot slots[b] from position starts[b].

        Returns the position ids (B, T) and the additive attention mask (B, 1, T, kv_len)
        to pass to the model: row b's query t sees key positions 0..starts[b]+t.
        """
        if query_len > 1 and len(slots) > 1:
            raise ValueError("a pass of several tokens per row runs one session (a prompt chunk)")
        self.slots, self.start_list, self.query_len = slots, starts, query_len
        self.kv_len = max(starts) + query_len
        contiguous = slots[-1] - slots[0] + 1 == len(slots) and all(b > a for a, b in zip(slots, slots[1:]))
        self.rows = slice(slots[0], slots[-1] + 1) if contiguous else None
        self.slot_ids = torch.tensor(slots, device=device)
        self.starts = torch.tensor(starts, device=device)
        positions = self.starts[:, None] + torch.arange(query_len, device=device)  # (B, T)
        visible = torch.arange(self.kv_len, device=device) <= positions[..., None]  # (B, T, kv_len)
        dtype = self.pool.keys.dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, torch.finfo(dtype).min)
        return positions, mask[:, None]
