"""Train a BDH or a GPT-2 on prepared token files (DESIGN.md §8.2), nanoGPT-style.

    python -m training.train --model bdh --config training/configs/tiny_cpu.json
    python -m training.train --resume results/state/bdh          # continue exactly
    torchrun --nproc_per_node 4 -m training.train --model gpt2 --config training/configs/gpu_large.json

A preset holds one architecture block per family ("bdh", "gpt2") and a "train" block
(see TrainConfig); `--set key=value` overrides a train key, `--set bdh.n_layer=4` an
architecture key. The best checkpoint (lowest validation loss) goes to `out`; the
latest state for resuming goes to `state_dir`; a CSV log goes under `log_dir`.

Exact resume: the learning rate is a function of the step, the data windows and the
dropout masks are functions of (seed, rank, step), and the optimizer's moments are saved
as safetensors beside the model; so a resumed run repeats, bit for bit on CPU, what an
uninterrupted one would have done.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from plotarmour.checkpoint import load_checkpoint, save_checkpoint
from plotarmour.models import FAMILIES
from plotarmour.tokenizer import fingerprint, load_tokenizer

from .data import RandomWindows, eval_windows, open_tokens, read_meta
from .modeling import build_model, context_limit, loss_on_windows, next_token_loss, num_parameters

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"


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
    compile: str = "auto"  # auto | true | false (torch.compile; GPU only)
    device: str = "auto"
    seed: int = 1337

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown train setting(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def parse_override(item: str) -> tuple[list[str], object]:
    """'lr=3e-4' -> (['lr'], 0.0003); 'bdh.n_layer=4' -> (['bdh', 'n_layer'], 4). Values are JSON, else strings."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {item!r}: expected key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def load_preset(path: str | Path, model: str, overrides: Sequence[str] = ()) -> tuple[dict, TrainConfig]:
    """Read a preset file and apply overrides -> (architecture of `model`, TrainConfig)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    try:
        preset = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if model not in preset:
        raise ValueError(f"{path}: has no {model!r} architecture block (it has {sorted(preset)})")
    arch, train = dict(preset[model]), dict(preset.get("train", {}))
    for item in overrides:
        keys, value = parse_override(item)
        if len(keys) == 1:
            train[keys[0]] = value
        elif len(keys) == 2 and keys[0] == model:
            arch[keys[1]] = value
        elif len(keys) == 2 and keys[0] in FAMILIES:
            continue  # the other family's setting
        else:
            raise ValueError(f"--set {item!r}: use a train key or {model}.<architecture key>")
    cfg = TrainConfig.from_dict(train)
    cfg.out, cfg.state_dir = cfg.out.format(model=model), cfg.state_dir.format(model=model)
    return arch, cfg


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])


# --------------------------------------------------------------------------
# Device, precision, processes
# --------------------------------------------------------------------------


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None  # None: plain float32
    compile: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Single process, or one process per GPU when started by torchrun (it sets WORLD_SIZE etc.)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rt = Runtime(device, rank, world, local_rank)
    if device.type == "cuda":
        # bf16 on Ampere and newer; T4/P100 have no bf16, so fp16 with loss scaling.
        want = {"auto": "bfloat16" if torch.cuda.is_bf16_supported() else "float16"}.get(cfg.dtype, cfg.dtype)
        rt.amp_dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[want]
        # Triton (torch.compile's GPU backend) needs compute capability 7.0+: not on a P100.
        capable = torch.cuda.get_device_capability(device)[0] >= 7
        rt.compile = {"auto": capable, "true": True, "false": False}[str(cfg.compile).lower()]
    else:
        # CPU: autocast and compile cost more than they give for these small models.
        rt.compile = str(cfg.compile).lower() == "true"
    return rt


# --------------------------------------------------------------------------
# Optimizer state as safetensors + JSON (no pickles)
# --------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Matrices and embeddings decay; biases and LayerNorm gains do not.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


class CsvLog:
    COLUMNS = ["time", "step", "tokens", "lr", "train_loss", "val_loss", "tokens_per_s"]

    def __init__(self, path: Path):
        self.path = path
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", newline="")
        self._w = csv.writer(self._fh)
        if new:
            self._w.writerow(self.COLUMNS)

    def row(self, **values) -> None:
        values["time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._w.writerow(["" if values.get(c) is None else values[c] for c in self.COLUMNS])
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@dataclass
class Progress:
    """Everything besides weights and optimizer moments that a resumed run needs."""

    step: int = 0
    tokens: int = 0
    best_val: float = math.inf
    best_step: int = 0
    last_val: float | None = None
    bad_evals: int = 0  # evaluations in a row without improvement
    train_seconds: float = 0.0
    csv: str = ""


class Trainer:
    def __init__(self, model_type: str, model: torch.nn.Module, cfg: TrainConfig, rt: Runtime,
                 arch: dict | None = None):
        self.model_type, self.cfg, self.rt = model_type, cfg, rt
        self.meta = read_meta(cfg.data)
        self.tokenizer = load_tokenizer(Path(cfg.data) / self.meta["tokenizer"])
        if fingerprint(self.tokenizer) != self.meta["tokenizer_fingerprint"]:
            raise ValueError(f"{cfg.data}: tokenizer.json does not match the fingerprint in meta.json")
        self.train_tokens = open_tokens(Path(cfg.data) / "train.bin", self.meta["dtype"])
        self.val_tokens = open_tokens(Path(cfg.data) / "val.bin", self.meta["dtype"])
        limit = context_limit(model, model_type)
        if limit is not None and cfg.block_size > limit:
            raise ValueError(f"block_size {cfg.block_size} is longer than the model's context {limit} (n_positions)")
        self.tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * rt.world
        if cfg.max_tokens:
            cfg.max_steps = math.ceil(cfg.max_tokens / self.tokens_per_step)
        self.model = model.to(rt.device)  # the plain module: what gets saved
        self.arch = arch or {}
        self.opt = make_optimizer(self.model, cfg, rt.device)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
        self.progress = Progress()
        self.sampler = RandomWindows(self.train_tokens, cfg.block_size, cfg.batch_size, cfg.seed, rt.rank)
        self.val_starts = eval_windows(self.val_tokens, cfg.block_size, cfg.eval_windows)
        net = torch.compile(self.model) if rt.compile else self.model
        if rt.world > 1:
            ids = [rt.local_rank] if rt.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
        self.net = net  # what the forward pass goes through

    # -- state ---------------------------------------------------------------------
    def save_state(self, directory: str | Path) -> None:
        d = Path(directory)
        save_checkpoint(d, self.model, self.tokenizer, self.run_info())
        tensors, opt_meta = optimizer_to_files(self.opt)
        save_file(tensors, str(d / (STATE_TENSORS + ".tmp")))
        os.replace(d / (STATE_TENSORS + ".tmp"), d / STATE_TENSORS)
        state = {"model_type": self.model_type, "arch": self.arch, "config": asdict(self.cfg),
                 "progress": asdict(self.progress), "optimizer": opt_meta, "scaler": self.scaler.state_dict()}
        (d / (STATE_JSON + ".tmp")).write_text(json.dumps(state, indent=1))
        os.replace(d / (STATE_JSON + ".tmp"), d / STATE_JSON)

    def load_state(self, directory: str | Path, state: dict) -> None:
        d = Path(directory)
        optimizer_from_files(self.opt, load_file(str(d / STATE_TENSORS)), state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])

    def run_info(self) -> dict:
        p = self.progress
        return {
            "model_type": self.model_type,
            "steps": p.step,
            "tokens_seen": p.tokens,
            "val_loss": p.last_val,
            "best_val_loss": None if math.isinf(p.best_val) else p.best_val,
            "best_step": p.best_step,
            "train_tokens_per_s": round(p.tokens / p.train_seconds / self.rt.world, 1) if p.train_seconds else None,
            "num_parameters": num_parameters(self.model),
            "world_size": self.rt.world,
            "device": str(self.rt.device),
            "amp_dtype": str(self.rt.amp_dtype).removeprefix("torch.") if self.rt.amp_dtype else "float32",
            "compiled": self.rt.compile,
            "architecture": self.arch,
            "train_config": asdict(self.cfg),
            "data": {k: self.meta[k] for k in ("vocab_size", "dtype", "splits")},
            "csv_log": p.csv,
            "torch": torch.__version__,
        }

    # -- steps -----------------------------------------------------------------------
    def evaluate(self) -> float:
        starts = self.val_starts[self.rt.rank :: self.rt.world]
        total, count = loss_on_windows(self.model if self.rt.world > 1 else self.net, self.model_type,
                                       self.val_tokens, starts, self.cfg.block_size, self.cfg.batch_size,
                                       self.rt.device, self.rt.autocast)
        if self.rt.world > 1:
            t = torch.tensor([total, count], dtype=torch.float64, device=self.rt.device)
            dist.all_reduce(t)
            total, count = float(t[0]), int(t[1])
        return total / count

    def train_step(self) -> float:
        cfg, rt, step = self.cfg, self.rt, self.progress.step
        lr = lr_at(step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            # Dropout masks depend on (seed, rank, step, micro) only: resumable without RNG state.
            torch.manual_seed(step_seed(cfg.seed, rt.rank, step, micro))
            x, y = self.sampler.batch(step * cfg.grad_accum + micro)
            x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
            # Under DDP, gradients are averaged across processes only on the last micro-batch.
            last = micro == cfg.grad_accum - 1
            sync = self.net.no_sync() if rt.world > 1 and not last else contextlib.nullcontext()
            with sync:
                with rt.autocast():
                    loss = next_token_loss(self.net, self.model_type, x, y) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
        if cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.tokens += self.tokens_per_step
        return loss_sum

    def fit(self, stop_after: int | None = None, quiet: bool = False) -> Progress:
        cfg, rt, p = self.cfg, self.rt, self.progress
        log = None
        if rt.main:
            if not p.csv:
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                p.csv = str(Path(cfg.log_dir) / f"{self.model_type}-{stamp}.csv")
            log = CsvLog(Path(p.csv))
        bar = tqdm(total=cfg.max_steps, initial=p.step, unit="step", desc=self.model_type,
                   disable=quiet or not rt.main, dynamic_ncols=True)
        window_losses, window_start, window_tokens = [], time.perf_counter(), 0
        stopped_early = False
        try:
            while p.step < cfg.max_steps:
                t0 = time.perf_counter()
                loss = self.train_step()
                p.train_seconds += time.perf_counter() - t0
                window_losses.append(loss)
                window_tokens += self.tokens_per_step
                do_eval = p.step % cfg.eval_interval == 0 or p.step == cfg.max_steps
                do_log = p.step % cfg.log_interval == 0 or do_eval
                # Training throughput only: taken before validation runs.
                tps = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                val = self.evaluate() if do_eval else None
                if val is not None:
                    stopped_early = self.after_eval(val)
                if do_log:
                    if log:
                        log.row(step=p.step, tokens=p.tokens, lr=repr(lr_at(p.step - 1, cfg)),
                                train_loss=repr(float(np.mean(window_losses))),
                                val_loss=None if val is None else repr(val), tokens_per_s=round(tps, 1))
                    bar.set_postfix(loss=f"{np.mean(window_losses):.3f}", val=f"{p.last_val or math.nan:.3f}",
                                    tok_s=f"{tps:,.0f}", refresh=False)
                    window_losses, window_start, window_tokens = [], time.perf_counter(), 0
                bar.update(1)
                if stopped_early or (stop_after and p.step >= stop_after):
                    break
        except KeyboardInterrupt:
            if rt.main:
                print(f"\ninterrupted at step {p.step}; saving state to {cfg.state_dir}", file=sys.stderr)
                self.save_state(cfg.state_dir)
            raise
        finally:
            bar.close()
            if log:
                log.close()
        if rt.main:
            self.save_state(cfg.state_dir)
            if stopped_early:
                print(f"early stop at step {p.step}: no improvement in {cfg.patience} evaluations", file=sys.stderr)
        return p

    def after_eval(self, val: float) -> bool:
        """Record a validation loss; save the best model; True when early stopping says stop."""
        p, cfg = self.progress, self.cfg
        p.last_val = val
        if val < p.best_val - cfg.min_delta:
            p.best_val, p.best_step, p.bad_evals = val, p.step, 0
            if self.rt.main:
                save_checkpoint(cfg.out, self.model, self.tokenizer, self.run_info())
        else:
            p.bad_evals += 1
        if self.rt.main and p.step % cfg.eval_interval == 0:
            self.save_state(cfg.state_dir)
        return bool(cfg.patience) and p.bad_evals >= cfg.patience


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(FAMILIES), help="model family (not needed with --resume)")
    ap.add_argument("--config", help="preset JSON, e.g. training/configs/tiny_cpu.json")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a train setting (lr=3e-4) or an architecture one (bdh.n_layer=4); repeatable")
    ap.add_argument("--resume", metavar="STATE_DIR", help="continue the run saved in this state directory")
    ap.add_argument("--stop-after", type=int, metavar="STEP",
                    help="stop (saving state) once this step is reached, as if interrupted; the schedule still "
                         "runs to max_steps")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def build_trainer(args: argparse.Namespace) -> Trainer:
    if args.resume:
        state_path = Path(args.resume) / STATE_JSON
        if not state_path.is_file():
            raise ValueError(f"{state_path}: missing; not a training state directory")
        state = json.loads(state_path.read_text(encoding="utf-8"))
        cfg = TrainConfig.from_dict(state["config"])
        rt = setup_runtime(cfg)
        ckpt = load_checkpoint(args.resume)
        trainer = Trainer(state["model_type"], ckpt.model.train(), cfg, rt, state["arch"])
        trainer.load_state(args.resume, state)
        return trainer
    if not args.model or not args.config:
        raise ValueError("give --model and --config (or --resume STATE_DIR)")
    arch, cfg = load_preset(args.config, args.model, args.overrides)
    rt = setup_runtime(cfg)
    meta = read_meta(cfg.data)
    torch.manual_seed(cfg.seed)  # the initial weights; identical on every DDP rank
    model = build_model(args.model, arch, meta["vocab_size"], meta["eot_id"])
    return Trainer(args.model, model, cfg, rt, arch)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        trainer = build_trainer(args)
    except (ValueError, OSError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    rt = trainer.rt
    if rt.main and not args.quiet:
        print(f"{trainer.model_type}: {num_parameters(trainer.model):,} parameters on {rt.device} "
              f"(x{rt.world}), {trainer.tokens_per_step:,} tokens/step, {trainer.cfg.max_steps} steps, "
              f"autocast {rt.amp_dtype or 'off'}, compile {'on' if rt.compile else 'off'}", file=sys.stderr)
    try:
        p = trainer.fit(args.stop_after, args.quiet)
    finally:
        if rt.world > 1:
            dist.destroy_process_group()
    if rt.main:
        print(f"step {p.step}: best val loss {p.best_val:.4f} at step {p.best_step} -> {trainer.cfg.out}; "
              f"state in {trainer.cfg.state_dir}; log {p.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
