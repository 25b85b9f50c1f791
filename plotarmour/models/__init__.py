"""The model families, by the `model_type` their config.json names.

Each family says how to build its module from a config dict, how its weights are
checked and loaded, and which decode engine serves it; checkpoint I/O, the servers and
training look families up here instead of branching on the type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from .base import DecodeEngine, InvalidInput, ModelInfo, UnknownSession
from .bdh import BDH, BDHConfig, check_state_dict
from .bdh_engine import BDHEngine
from .gpt2 import GPT2Engine, gpt2_config


@dataclass(frozen=True)
class Family:
    module_class: type[torch.nn.Module]
    from_config: Callable[[dict], torch.nn.Module]
    config_dict: Callable[[torch.nn.Module], dict]
    state_dict: Callable[[torch.nn.Module], dict[str, torch.Tensor]]
    load_weights: Callable[[torch.nn.Module, dict[str, torch.Tensor]], None]
    engine: Callable[..., DecodeEngine]
    # training: a module from a preset's architecture block plus the data's vocabulary
    # (arch, vocab_size, eot_id), and its logits (B, T, V) for token windows (B, T)
    build: Callable[[dict, int, int], torch.nn.Module]
    logits: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    # longest sequence the module can take (learned positions); None = unbounded
    context_limit: Callable[[torch.nn.Module], int | None]


def _gpt2_state_dict(model: GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    # The output layer is the embedding (tied); Hugging Face leaves it out of the file too.
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def _gpt2_load_weights(model: GPT2LMHeadModel, weights: dict[str, torch.Tensor]) -> None:
    # Files from the hub name the body without the "transformer." prefix and may carry
    # old attention-mask buffers; bring them to this module's names.
    sd = {}
    for key, tensor in weights.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        sd[key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key] = tensor
    expected = _gpt2_state_dict(model)
    check_state_dict(expected, {k: v for k, v in sd.items() if k != "lm_head.weight" or k in expected})
    model.load_state_dict(sd, strict=False)
    model.tie_weights()


def _bdh_load_weights(model: BDH, weights: dict[str, torch.Tensor]) -> None:
    model.load_reference_state_dict(weights)


FAMILIES: dict[str, Family] = {
    "bdh": Family(
        module_class=BDH,
        from_config=lambda d: BDH(BDHConfig.from_dict(d)),
        config_dict=lambda m: m.config.to_dict(),
        state_dict=lambda m: m.state_dict(),
        load_weights=_bdh_load_weights,
        engine=BDHEngine,
        build=lambda arch, vocab_size, eot: BDH(BDHConfig(**arch, vocab_size=vocab_size)),
        logits=lambda m, x: m(x)[0],
        context_limit=lambda m: None,
    ),
    "gpt2": Family(
        module_class=GPT2LMHeadModel,
        from_config=lambda d: GPT2LMHeadModel(GPT2Config.from_dict(d)),
        config_dict=lambda m: m.config.to_dict(),
        state_dict=_gpt2_state_dict,
        load_weights=_gpt2_load_weights,
        engine=GPT2Engine,
        build=lambda arch, vocab_size, eot: GPT2LMHeadModel(gpt2_config(vocab_size=vocab_size, eot_id=eot, **arch)),
        logits=lambda m, x: m(input_ids=x).logits,
        context_limit=lambda m: m.config.n_positions,
    ),
}

__all__ = [
    "BDH", "BDHConfig", "BDHEngine", "DecodeEngine", "FAMILIES", "Family", "GPT2Engine",
    "InvalidInput", "ModelInfo", "UnknownSession", "gpt2_config",
]
