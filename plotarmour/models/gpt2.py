"""GPT-2 through `transformers.GPT2LMHeadModel` and its KV cache; nothing re-implemented.

Every session's keys and values live in one preallocated pool (`gpt2_cache.KVPool`), a
slot per session. The model reads and writes it through a transformers `Cache`
(`PoolCache`) whose `update` writes each row's new keys/values in place at that row's
own position and returns the pool's rows up to the batch's longest length; a 4-D
attention mask hides, per row, what lies past that row's own length. So a batched step
never pads or concatenates caches: sessions at different positions step together as
one batch, each with its own position id, reading views of the pool (live slots are
kept dense, so a batch of every live session is one range of slots; only a batch over
scattered slots gathers its rows).
"""

from __future__ import annotations

import inspect

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .base import DecodeEngine, _Session
from .gpt2_cache import KVPool, PoolCache, Slot

# transformers renamed `past_key_values` to `cache` during 5.x; accept either spelling.
_CACHE_KW = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"

# Attention implementations that take an additive 4-D float mask as it is.
_MASKED_ATTENTION = ("sdpa", "eager")


def gpt2_config(
    *, vocab_size: int, eot_id: int, n_layer: int = 4, n_embd: int = 256, n_head: int = 4,
    n_positions: int = 1024, dropout: float = 0.1,
) -> GPT2Config:
    """A GPT2Config whose bos/eos are the tokenizer's end-of-text token."""
    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        bos_token_id=eot_id, eos_token_id=eot_id, tie_word_embeddings=True,
    )


class GPT2Engine(DecodeEngine):
    """Sessions over a GPT-2 model, their KV caches in one pool (see the module docstring)."""

    model_type = "gpt2"

    def __init__(self, model: GPT2LMHeadModel, *, max_context: int | None = None, initial_slots: int = 4):
        limit = model.config.n_positions  # learned position embeddings end here
        super().__init__(model, max_context=min(max_context or limit, limit))
        c = model.config
        if c._attn_implementation not in _MASKED_ATTENTION:
            raise ValueError(f"GPT2Engine needs attention that takes a 4-D mask {_MASKED_ATTENTION}, "
                             f"not {c._attn_implementation!r}")
        p = next(model.parameters())
        self.pool = KVPool(n_layer=c.n_layer, n_head=c.n_head, head_dim=c.n_embd // c.n_head,
                           max_len=self.max_context, dtype=p.dtype, device=p.device, initial_slots=initial_slots)
        self._cache = PoolCache(self.pool, c.n_layer)

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def _new_state(self) -> Slot:
        return self.pool.take()

    def _release(self, state: Slot) -> None:
        self.pool.release(state)

    def _forward(self, ids: torch.Tensor, slots: list[int], starts: list[int], want: str) -> torch.Tensor | None:
        """ids (B, T), row b in slot slots[b] from position starts[b] → logits per `want`
        ("none": None, "last": (B, V), "all": (B, T, V))."""
        positions, mask = self._cache.plan(slots, starts, ids.shape[1], ids.device)
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                      **{_CACHE_KW: self._cache})
        if want == "none":  # the body only: no lm_head over positions nobody reads
            self.model.transformer(**kwargs)
            return None
        logits = self.model(**kwargs, logits_to_keep=1 if want == "last" else 0).logits
        return logits[:, -1] if want == "last" else logits

    def _feed(self, sess: _Session, ids: torch.Tensor, want: str) -> torch.Tensor | None:
        slot = sess.state
        logits = self._forward(ids[None], [slot.index], [sess.position], want)
        slot.length = sess.position + len(ids)
        return None if logits is None else logits[0]

    def _step(self, sessions: list[_Session], tokens: torch.Tensor) -> torch.Tensor:
        # Run the batch in slot order, so that a contiguous range of slots is one view of the pool.
        order = sorted(range(len(sessions)), key=lambda i: sessions[i].state.index)
        slots = [sessions[i].state.index for i in order]
        starts = [sessions[i].position for i in order]
        for sess in sessions:
            sess.state.length = sess.position + 1
        if order == list(range(len(order))):  # already in slot order (the usual case)
            return self._forward(tokens[:, None], slots, starts, "last")  # (B, V)
        perm = torch.tensor(order, device=tokens.device)
        logits = self._forward(tokens[perm, None], slots, starts, "last")  # (B, V), slot order
        out = torch.empty_like(logits)
        out[perm] = logits  # back to the caller's order
        return out
