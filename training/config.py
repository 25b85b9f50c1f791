"""Training settings: the preset file, `--set` overrides, and their checks.

Everything here runs before any data or checkpoint is read, so a typo or a wrong type
(`lr=fast`, `batch_size=2.5`, `block_size="64"`) stops the command at once with a message
naming the key and the type it wants, never a TypeError from deep inside a run.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

from plotarmour.checkpoint import read_json
from plotarmour.models import FAMILIES


class ConfigError(ValueError):
    """A preset or an override that cannot be used; the message names the key."""


@dataclass
class TrainConfig:
    data: str = "data/tinystories"  # directory written by training.prepare
    out: str = "results/checkpoints/{model}"  # best checkpoint; {model} is replaced
    state_dir: str = "results/state/{model}"  # latest state, for --resume
    log_dir: str = "results"  # CSV logs
    block_size: int = 256
    batch_size: int = 16  # windows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 1000
    max_tokens: int | None = None  # if set, max_steps = the steps that see this many tokens
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    eval_interval: int = 100
    eval_windows: int = 200  # validation windows (evenly spread, the same every time)
    log_interval: int = 10
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    min_delta: float = 0.0
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast; GPU only)
    compile: str | bool = "auto"  # auto | true | false (torch.compile; GPU only)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    peak_tflops: float | None = None  # the device's peak for MFU; None = look the GPU up in a table
    threads: int | None = None  # torch CPU threads; None = torch's choice
    device: str = "auto"
    seed: int = 1337

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        check_train_settings(d)
        return cls(**d)


CHOICES = {"dtype": ("auto", "float32", "bfloat16", "float16"), "compile": ("auto", "true", "false")}
POSITIVE = ("block_size", "batch_size", "grad_accum", "max_steps", "eval_interval", "eval_windows", "log_interval")
NON_NEGATIVE = ("lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip", "patience", "min_delta", "seed")
POSITIVE_OR_NULL = ("threads", "peak_tflops")

# What `--resume` may change: the budget, evaluation, logging, paths and the hardware side.
# Everything else (architecture, window, batch, optimizer, schedule shape, seed) would make
# the resumed run a different run than the one saved, so it is refused.
RESUME_SAFE = {"max_steps", "max_tokens", "eval_interval", "eval_windows", "log_interval", "patience",
               "min_delta", "data", "out", "state_dir", "log_dir", "device", "dtype", "compile",
               "grad_checkpointing", "peak_tflops", "threads"}

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _expected(annotation) -> tuple[tuple[type, ...], str]:
    """A field's annotation -> (types a value may have, words for the message)."""
    args = typing.get_args(annotation) or (annotation,)
    allowed = tuple(a for a in args if a is not type(None))
    words = " or ".join(_TYPE_NAMES[a] for a in allowed)
    if type(None) in args:
        words += " or null"
    return allowed, words


def _fits(value, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):  # JSON true is a Python int too: only a bool field takes it
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True  # 3 is a fine learning rate
    return isinstance(value, tuple(a for a in allowed if a is not bool))


def check_train_settings(d: dict) -> None:
    """Names, types and ranges of a train block; raises ConfigError naming the first bad key."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ConfigError(f"unknown train setting(s) {unknown}; known: {sorted(hints)}")
    for key, value in d.items():
        allowed, words = _expected(hints[key])
        nullable = type(None) in typing.get_args(hints[key])
        if not (value is None and nullable) and not _fits(value, allowed):
            raise ConfigError(f"train setting {key!r} must be {words}, got {json.dumps(value)} "
                              f"({type(value).__name__})")
        if key in CHOICES and str(value).lower() not in CHOICES[key]:
            raise ConfigError(f"train setting {key!r} must be one of {list(CHOICES[key])}, got {value!r}")
        if key in POSITIVE and value <= 0:
            raise ConfigError(f"train setting {key!r} must be positive, got {value}")
        if key in NON_NEGATIVE and value < 0:
            raise ConfigError(f"train setting {key!r} must not be negative, got {value}")
    for key in ("max_tokens", *POSITIVE_OR_NULL):
        if d.get(key) is not None and d[key] <= 0:
            raise ConfigError(f"train setting {key!r} must be positive or null, got {d[key]}")


# Architecture keys that count things (layers, widths, heads, positions): positive integers.
# Which names a family takes at all, its builder checks.
COUNTS = ("n_layer", "n_embd", "n_head", "mlp_internal_dim_multiplier", "n_positions", "n_inner")
FRACTIONS = ("dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")  # in [0, 1)


def check_architecture(model: str, arch: dict) -> None:
    """Architecture values are numbers, counts are positive integers and dropouts in [0, 1)."""
    for key, value in arch.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{model} architecture setting {key!r} must be a number, got {json.dumps(value)} "
                              f"({type(value).__name__})")
        if key in COUNTS and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{model} architecture setting {key!r} must be a positive integer, got {value}")
        if key in FRACTIONS and not 0 <= value < 1:
            raise ConfigError(f"{model} architecture setting {key!r} must be in [0, 1), got {value}")


def parse_override(item: str) -> tuple[list[str], object]:
    """'lr=3e-4' -> (['lr'], 0.0003); 'bdh.n_layer=4' -> (['bdh', 'n_layer'], 4). Values are JSON, else strings."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def split_overrides(overrides: Sequence[str], model: str) -> tuple[dict, dict]:
    """--set items -> (train settings, `model`'s architecture settings); the other family's are skipped."""
    train, arch = {}, {}
    for item in overrides:
        keys, value = parse_override(item)
        if len(keys) == 1:
            train[keys[0]] = value
        elif len(keys) == 2 and keys[0] == model:
            arch[keys[1]] = value
        elif len(keys) == 2 and keys[0] in FAMILIES:
            continue  # the other family's setting: one preset, one override list, both models
        else:
            raise ConfigError(f"--set {item!r}: use a train key or {model}.<architecture key>")
    return train, arch


def _with_budget(train: dict, changes: dict) -> dict:
    out = {**train, **changes}
    if "max_steps" in changes and "max_tokens" not in changes:
        out["max_tokens"] = None  # an explicit step count wins over an inherited token budget
    return out


def preset_blocks() -> set[str]:
    """The top-level keys a preset may have: a description, each family's architecture, the
    shared "train" block and each family's own train settings ("bdh_train"), which win over
    "train" for that family (BDH trains on longer windows than GPT-2: its state has no
    length limit, while GPT-2 is bounded by n_positions)."""
    return {"description", "train"} | set(FAMILIES) | {f"{m}_train" for m in FAMILIES}


def load_preset(path: str | Path, model: str, overrides: Sequence[str] = ()) -> tuple[dict, TrainConfig]:
    """Read a preset file and apply overrides -> (architecture of `model`, TrainConfig).

    The train settings are the "train" block, then `model`'s own "<model>_train" block,
    then the --set overrides, each over the one before."""
    path = Path(path)
    preset = read_json(path, ConfigError, "config file not found")
    unknown = sorted(set(preset) - preset_blocks())
    if unknown:
        raise ConfigError(f"{path}: unknown block(s) {unknown}; a preset has {sorted(preset_blocks())}")
    if model not in preset:
        raise ConfigError(f"{path}: has no {model!r} architecture block")
    own = f"{model}_train"
    for block in (model, "train", own):
        if not isinstance(preset.get(block, {}), dict):
            raise ConfigError(f"{path}: the {block!r} block must be a JSON object")
    train_changes, arch_changes = split_overrides(overrides, model)
    arch = {**preset[model], **arch_changes}
    check_architecture(model, arch)
    train = _with_budget(dict(preset.get("train", {})), preset.get(own, {}))
    cfg = TrainConfig.from_dict(_with_budget(train, train_changes))
    cfg.out, cfg.state_dir = cfg.out.format(model=model), cfg.state_dir.format(model=model)
    return arch, cfg


def resume_config(saved: dict, model: str, overrides: Sequence[str]) -> TrainConfig:
    """A saved run's settings with the overrides `--resume` allows; refuses the others by name."""
    train_changes, arch_changes = split_overrides(overrides, model)
    refused = sorted({f"{model}.{k}" for k in arch_changes}
                     | {k for k, v in train_changes.items() if k not in RESUME_SAFE and saved.get(k) != v})
    if refused:
        raise ConfigError(f"--resume cannot change {refused}: they change the model or how it is trained; "
                          f"start a new run instead (a resume may change {sorted(RESUME_SAFE)})")
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict(_with_budget({k: v for k, v in saved.items() if k in known}, train_changes))
