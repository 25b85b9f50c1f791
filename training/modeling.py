"""What training and evaluation need to know per model family: how to build one from a
preset plus the data's vocabulary, and how to get a mean next-token loss from it.

Both families are trained and scored through the same `next_token_loss(x, y)` on windows
already shifted by one, so their losses are measured identically.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from plotarmour.models import FAMILIES

from .config import ConfigError
from .data import window_batch


def build_model(model_type: str, arch: dict, vocab_size: int, eot: int) -> nn.Module:
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model {model_type!r}; expected one of {sorted(FAMILIES)}")
    try:
        return FAMILIES[model_type].build(dict(arch), vocab_size, eot)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        # an unknown key, or values that do not fit together (n_embd not divisible by n_head)
        raise ValueError(f"bad {model_type} architecture {arch}: {type(e).__name__}: {e}") from None


def context_limit(model: nn.Module, model_type: str) -> int | None:
    """Longest window the model can take (GPT-2's learned positions); None = unbounded."""
    return FAMILIES[model_type].context_limit(model)


def next_token_loss(model: nn.Module, model_type: str, x: torch.Tensor, y: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """x, y (B, T) with y[t] = the token after x[t] -> cross-entropy (float32)."""
    logits = FAMILIES[model_type].logits(model, x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction=reduction)


def enable_grad_checkpointing(model: nn.Module, model_type: str) -> None:
    """Recompute each block's activations during backward instead of keeping them: memory
    for one block instead of all, for about a third more compute. Uses the module's own
    switch (Hugging Face's `gradient_checkpointing_enable`), so it works for any family
    whose module has one."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None:
        raise ConfigError(f"grad_checkpointing: the {model_type} module has no gradient_checkpointing_enable(); "
                          f"set grad_checkpointing=false or give that family's module one")
    # Non-reentrant: works with DDP and torch.compile, and replays dropout masks exactly.
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@torch.no_grad()
def position_losses(model: nn.Module, model_type: str, tokens: np.ndarray, starts: list[int], block_size: int,
                    batch_size: int, device: torch.device, autocast=contextlib.nullcontext,
                    progress: bool = False, desc: str = "windows") -> np.ndarray:
    """Cross-entropy summed over the windows starting at `starts`, per position in the window:
    (block_size,) float64. Windows go through the model batch_size at a time."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(block_size, dtype=torch.float64, device=device)
    with tqdm(total=len(starts), unit="window", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for i in range(0, len(starts), batch_size):
            x, y = window_batch(tokens, starts[i : i + batch_size], block_size)
            with autocast():
                loss = next_token_loss(model, model_type, x.to(device), y.to(device), reduction="none")
            sums += loss.view(y.shape).sum(0, dtype=torch.float64)
            bar.update(len(x))
    model.train(was_training)
    return sums.cpu().numpy()


def loss_on_windows(model: nn.Module, model_type: str, tokens: np.ndarray, starts: list[int], block_size: int,
                    batch_size: int, device: torch.device, autocast=contextlib.nullcontext) -> tuple[float, int]:
    """Summed cross-entropy and token count over the windows starting at `starts`."""
    sums = position_losses(model, model_type, tokens, starts, block_size, batch_size, device, autocast)
    return float(sums.sum()), len(starts) * block_size


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once
