"""GPT-2 through `transformers.GPT2LMHeadModel` and its KV cache; nothing re-implemented.

A session's state is its per-layer (keys, values), each (1, H, T, head_dim). Sessions at
different positions step together by left-padding their caches to one length, masking
the padding, and giving each row its own position id; the new key/value column of each
row is then appended to that session's own cache.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from .base import DecodeEngine, _Session

# transformers renamed `past_key_values` to `cache` during 5.x; accept either spelling.
_CACHE_KW = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, H, T, head_dim)


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


def _run(model: GPT2LMHeadModel, ids: torch.Tensor, kv: KV | None = None, **kwargs) -> tuple[torch.Tensor, KV]:
    """ids (B, T) on top of the cache kv → logits (B, T, V) and the extended cache."""
    cache = DynamicCache(ddp_cache_data=kv) if kv else DynamicCache()
    out = model(input_ids=ids, use_cache=True, **{_CACHE_KW: cache}, **kwargs)
    new = getattr(out, "cache", None) or out.past_key_values
    return out.logits, [(layer.keys, layer.values) for layer in new.layers]


class GPT2Engine(DecodeEngine):
    model_type = "gpt2"

    def __init__(self, model: GPT2LMHeadModel, *, max_context: int | None = None):
        limit = model.config.n_positions  # learned position embeddings end here
        super().__init__(model, max_context=min(max_context or limit, limit))

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def _prefill(self, ids: torch.Tensor) -> tuple[KV, torch.Tensor]:
        logits, kv = _run(self.model, ids[None])
        return kv, logits[0, -1]

    def _step(self, sessions: list[_Session], tokens: torch.Tensor) -> torch.Tensor:
        if len(sessions) == 1:
            sess = sessions[0]
            logits, sess.state = _run(self.model, tokens[:, None], sess.state)
            return logits[:, -1]
        lengths = [s.position for s in sessions]
        longest = max(lengths)
        # Left-pad every cache to the longest; the mask hides the padding.
        padded = [
            tuple(torch.cat([F.pad(s.state[i][j], (0, 0, longest - n, 0)) for s, n in zip(sessions, lengths)])
                  for j in (0, 1))
            for i in range(len(sessions[0].state))
        ]
        mask = torch.zeros(len(sessions), longest + 1, dtype=torch.long, device=tokens.device)
        for row, n in enumerate(lengths):
            mask[row, longest - n :] = 1
        positions = torch.tensor(lengths, device=tokens.device)[:, None]
        logits, kv = _run(self.model, tokens[:, None], padded, attention_mask=mask, position_ids=positions)
        for row, sess in enumerate(sessions):
            sess.state = [
                (torch.cat([k, new_k[row : row + 1, :, -1:]], dim=2), torch.cat([v, new_v[row : row + 1, :, -1:]], dim=2))
                for (k, v), (new_k, new_v) in zip(sess.state, kv)
            ]
        return logits[:, -1]

    def _score_logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids[None]).logits[0]
