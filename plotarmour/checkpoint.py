"""Checkpoint directories (docs/ARCHITECTURE.md §3): JSON and safetensors only, never a pickle.

    config.json        architecture; "model_type": "bdh" | "gpt2"
    model.safetensors  weights
    tokenizer.json     the tokenizer the model was trained with
    run.json           what training knows: steps, tokens, losses, its config, fingerprint

A GPT-2 directory is also a Hugging Face GPT-2 directory (same config and key names),
so `GPT2LMHeadModel.from_pretrained(dir)` loads it, and real `gpt2` downloads load here.
Every problem is reported with the file it is in.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .models import FAMILIES
from .models.base import DecodeEngine
from .tokenizer import TOKENIZER_FILE, fingerprint, load_tokenizer, save_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RUN_FILE = "run.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the others; names the file."""


@dataclass
class Checkpoint:
    model: torch.nn.Module
    model_type: str
    tokenizer: Tokenizer
    config: dict
    run: dict = field(default_factory=dict)
    path: Path | None = None

    def engine(self, **kwargs) -> DecodeEngine:
        return FAMILIES[self.model_type].engine(self.model, **kwargs)


def save_checkpoint(directory: str | os.PathLike, model: torch.nn.Module, tokenizer: Tokenizer,
                    run: dict | None = None) -> Path:
    """Write a checkpoint directory. Files are written beside their final names and
    renamed into place, so a crash never leaves a half-written model.safetensors."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    family = FAMILIES[model_type_of(model)]
    weights = {k: v.detach().to("cpu").contiguous() for k, v in family.state_dict(model).items()}
    _atomic(d / WEIGHTS_FILE, lambda p: save_file(weights, p, metadata={"format": "pt"}))
    _atomic(d / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(family.config_dict(model), indent=2)))
    save_tokenizer(tokenizer, d)
    meta = {**(run or {}), "tokenizer_fingerprint": fingerprint(tokenizer)}
    _atomic(d / RUN_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2, default=str)))
    return d


def load_checkpoint(directory: str | os.PathLike, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> Checkpoint:
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    config = read_json(d / CONFIG_FILE)
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{d / CONFIG_FILE}: model_type {model_type!r} is not one of {sorted(FAMILIES)}")
    family = FAMILIES[model_type]
    try:
        model = family.from_config(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / CONFIG_FILE}: {e}") from None

    weights_path = d / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing weights file")
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file (truncated or corrupt?): {e}") from None
    try:
        family.load_weights(model, weights)
    except ValueError as e:
        raise CheckpointError(f"{weights_path}: does not match {CONFIG_FILE}: {e}") from None

    try:
        tokenizer = load_tokenizer(d / TOKENIZER_FILE)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{d / TOKENIZER_FILE}: {e}") from None
    vocab = config["vocab_size"]
    if tokenizer.get_vocab_size() > vocab:
        raise CheckpointError(
            f"{d / TOKENIZER_FILE}: tokenizer has {tokenizer.get_vocab_size()} tokens but "
            f"{CONFIG_FILE} says vocab_size {vocab}")
    run = read_json(d / RUN_FILE) if (d / RUN_FILE).exists() else {}
    model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    return Checkpoint(model.eval(), model_type, tokenizer, config, run, d)


def model_type_of(model: torch.nn.Module) -> str:
    for name, family in FAMILIES.items():
        if isinstance(model, family.module_class):
            return name
    raise TypeError(f"{type(model).__name__} is not a model this project can save")


def read_json(path: Path, error: type[Exception] = CheckpointError, missing: str = "missing file") -> dict:
    """A JSON object from a file, or `error` naming the file: missing (`missing` says what to
    do), unreadable, or not an object."""
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object")
    return data


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.chmod(tmp, 0o644)  # safetensors writes 0600; servers in containers run as another user
    os.replace(tmp, path)


def resolve_device(device: str) -> str:
    """"auto" → cuda when torch sees a GPU, else cpu; an explicit cuda without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return device
