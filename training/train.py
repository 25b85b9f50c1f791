"""Train a BDH or a GPT-2 on prepared token files (docs/ARCHITECTURE.md §8), nanoGPT-style.

    python -m training.train --model bdh --config training/configs/tiny_cpu.json
    python -m training.train --resume results/state/bdh          # continue exactly
    python -m training.train --resume results/state/bdh --set max_tokens=5000000   # and train longer
    torchrun --nproc_per_node 4 -m training.train --model gpt2 --config training/configs/gpu_large.json

A preset holds one architecture block per family, a "train" block (see TrainConfig) and,
optionally, a family's own train settings ("bdh_train": BDH on longer windows than GPT-2);
`--set key=value` overrides a train key, `--set bdh.n_layer=4` an architecture key. The
best checkpoint (lowest validation loss) goes to `out`; the latest state for resuming
goes to `state_dir`; a CSV log goes under `log_dir`. A new run refuses an `out` or
`state_dir` that already holds files (another run's, or the shipped pair) unless --force.

Exact resume: the learning rate is a function of the step, the data windows and the
dropout masks are functions of (seed, rank, step), and the optimizer's moments are saved
as safetensors beside the model; so a resumed run repeats, bit for bit on CPU, what an
uninterrupted one would have done. Ctrl-C stops after the current optimizer step, saves
the state and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from plotarmour.checkpoint import CheckpointError, load_checkpoint, read_json, save_checkpoint
from plotarmour.models import FAMILIES
from plotarmour.tokenizer import fingerprint, load_tokenizer

from .config import (ConfigError, TrainConfig, load_preset, parse_override, resume_config,  # noqa: F401 (API)
                     split_overrides)
from .data import DataError, RandomWindows, eval_windows, open_tokens, read_meta
from .modeling import (build_model, context_limit, enable_grad_checkpointing, loss_on_windows, next_token_loss,
                       num_parameters)
from .runlog import CsvLog, StopFlag, TrainingInterrupted, claim_log
from .runtime import Runtime, RuntimeSetupError, forward_flops_per_token, mfu, setup_runtime

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
EXIT_INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1)[0])


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
# Checks before anything is written
# --------------------------------------------------------------------------


def check_output_dir(path: str | Path, what: str, run_id: str | None, force: bool) -> None:
    """Refuse a path that is a file (or lies under one); refuse a non-empty directory that
    is not this run's (its run.json carries another run_id, or none) unless forced."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is a file, not a directory")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {p}: {parent} is a file, not a directory")
            break
    if not p.is_dir() or not any(p.iterdir()) or force:
        return
    owner = None
    for marker in (p / "run.json", p / STATE_JSON):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(marker.read_text(encoding="utf-8"))
            owner = data.get("run_id") or data.get("progress", {}).get("run_id")
            break
    if run_id is None or owner != run_id:
        raise ConfigError(f"{what} {p} already holds files from another run; choose another directory "
                          f"or pass --force to overwrite them")


def check_tokenizers(data_dir: str, meta: dict, data_tokenizer, model_vocab: int,
                     checkpoint_tokenizer=None) -> None:
    """The data, the model and (on resume) the checkpoint must all use one tokenizer."""
    fp = fingerprint(data_tokenizer)
    if fp != meta["tokenizer_fingerprint"]:
        raise DataError(f"{data_dir}: tokenizer.json does not match the fingerprint in meta.json")
    if checkpoint_tokenizer is not None and fingerprint(checkpoint_tokenizer) != fp:
        raise DataError(f"{data_dir} was tokenized with another tokenizer than the checkpoint's "
                        f"(fingerprints {fp[:12]}… and {fingerprint(checkpoint_tokenizer)[:12]}…); "
                        f"prepare the data with the checkpoint's tokenizer.json")
    if model_vocab != meta["vocab_size"]:
        raise DataError(f"{data_dir}: vocabulary of {meta['vocab_size']} tokens, the model has {model_vocab}")


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


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
    run_id: str = ""  # marks the directories this run owns


class Trainer:
    def __init__(self, model_type: str, model: torch.nn.Module, cfg: TrainConfig, rt: Runtime,
                 arch: dict | None = None, checkpoint_tokenizer=None):
        self.model_type, self.cfg, self.rt = model_type, cfg, rt
        self.meta = read_meta(cfg.data)
        self.tokenizer = load_tokenizer(Path(cfg.data) / self.meta["tokenizer"])
        vocab = int(FAMILIES[model_type].config_dict(model)["vocab_size"])
        check_tokenizers(cfg.data, self.meta, self.tokenizer, vocab, checkpoint_tokenizer)
        self.train_tokens = open_tokens(Path(cfg.data) / "train.bin", self.meta["dtype"])
        self.val_tokens = open_tokens(Path(cfg.data) / "val.bin", self.meta["dtype"])
        limit = context_limit(model, model_type)
        if limit is not None and cfg.block_size > limit:
            raise ConfigError(f"block_size {cfg.block_size} is longer than the model's context {limit} (n_positions)")
        self.tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * rt.world
        if cfg.max_tokens:
            cfg.max_steps = math.ceil(cfg.max_tokens / self.tokens_per_step)
        if cfg.max_steps <= cfg.warmup_steps and rt.main:
            print(f"train: warning: max_steps {cfg.max_steps} <= warmup_steps {cfg.warmup_steps}: the learning rate "
                  f"never finishes warming up and never decays", file=sys.stderr)
        self.model = model.to(rt.device)  # the plain module: what gets saved
        self.arch = arch or {}
        # Counted before compile/DDP wrap it, on the plain module; x3 for forward + backward.
        self.train_flops_per_token = 3 * forward_flops_per_token(
            self.model, FAMILIES[model_type].logits, cfg.block_size, rt.device)
        if cfg.grad_checkpointing:
            enable_grad_checkpointing(self.model, model_type)
        self.opt = make_optimizer(self.model, cfg, rt.device)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.grad_scaling)
        self.progress = Progress(run_id=uuid.uuid4().hex[:16])
        self.initialized_from: dict | None = None  # set by --init: the checkpoint this run continues
        self.resumable = False  # a state of this run is in cfg.state_dir (saved, or resumed from)
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
        self.resumable = False  # until the state is whole again
        save_checkpoint(d, self.model, self.tokenizer, self.run_info())
        tensors, opt_meta = optimizer_to_files(self.opt)
        save_file(tensors, str(d / (STATE_TENSORS + ".tmp")))
        os.replace(d / (STATE_TENSORS + ".tmp"), d / STATE_TENSORS)
        state = {"model_type": self.model_type, "arch": self.arch, "config": asdict(self.cfg),
                 "progress": asdict(self.progress), "optimizer": opt_meta, "scaler": self.scaler.state_dict(),
                 "initialized_from": self.initialized_from}
        (d / (STATE_JSON + ".tmp")).write_text(json.dumps(state, indent=1))
        os.replace(d / (STATE_JSON + ".tmp"), d / STATE_JSON)
        self.resumable = True

    def load_state(self, directory: str | Path, state: dict) -> None:
        d = Path(directory)
        optimizer_from_files(self.opt, load_file(str(d / STATE_TENSORS)), state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        self.initialized_from = state.get("initialized_from")
        self.progress.run_id = self.progress.run_id or uuid.uuid4().hex[:16]
        self.resumable = d.resolve() == Path(self.cfg.state_dir).resolve()

    def run_info(self) -> dict:
        p = self.progress
        return {
            "model_type": self.model_type,
            "run_id": p.run_id,
            "steps": p.step,
            "tokens_seen": p.tokens,
            "val_loss": p.last_val,
            "best_val_loss": None if math.isinf(p.best_val) else p.best_val,
            "best_step": p.best_step,
            "train_tokens_per_s": round(p.tokens / p.train_seconds, 1) if p.train_seconds else None,
            "train_flops_per_token": self.train_flops_per_token,
            "num_parameters": num_parameters(self.model),
            "world_size": self.rt.world,
            "device": str(self.rt.device),
            "amp_dtype": str(self.rt.amp_dtype).removeprefix("torch.") if self.rt.amp_dtype else "float32",
            "compiled": self.rt.compile,
            "architecture": self.arch,
            "train_config": asdict(self.cfg),
            "data": {k: self.meta[k] for k in ("vocab_size", "dtype", "splits")},
            "csv_log": p.csv,
            "initialized_from": self.initialized_from,
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

    def train_step(self) -> tuple[float, float]:
        """One optimizer step -> (this rank's mean loss, gradient norm before clipping)."""
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
        self.scaler.unscale_(self.opt)  # true gradients, for the norm and the clip
        # max_norm inf measures without clipping; an inf/nan norm (fp16 overflow) makes the scaler skip the step
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or math.inf)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.progress.step += 1
        self.progress.tokens += self.tokens_per_step
        return loss_sum, float(norm)

    def _mean_over_ranks(self, value: float) -> float:
        """The train loss the bar and the CSV show: every rank's, averaged (rank 0's alone is one sample)."""
        if self.rt.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.rt.device)
        dist.all_reduce(t)
        return float(t[0]) / self.rt.world

    def _any_rank_stopping(self, flag: StopFlag) -> bool:
        """Every rank must stop at the same step, or DDP's next all-reduce would hang."""
        if self.rt.world == 1:
            return flag.requested
        t = torch.tensor([int(flag.requested)], device=self.rt.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t[0])

    def fit(self, stop_after: int | None = None, quiet: bool = False) -> Progress:
        cfg, rt, p = self.cfg, self.rt, self.progress
        log = None
        if rt.main:
            if not p.csv:
                stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
                p.csv = str(claim_log(Path(cfg.log_dir), self.model_type, stamp))
            log = CsvLog(Path(p.csv), keep_through=p.step)
        if p.step == 0:  # where the run starts from: the baseline every curve is read against
            val = self.evaluate()
            self.after_eval(val)
            if log:
                log.row(step=0, tokens=0, lr=repr(lr_at(0, cfg)), val_loss=repr(val))
        bar = tqdm(total=cfg.max_steps, initial=p.step, unit="step", desc=self.model_type,
                   disable=quiet or not rt.main, dynamic_ncols=True)
        window_losses, window_norms, window_start, window_tokens = [], [], time.perf_counter(), 0
        stopped_early = False
        try:
            with StopFlag() as flag:
                while p.step < cfg.max_steps:
                    t0 = time.perf_counter()
                    loss, norm = self.train_step()
                    p.train_seconds += time.perf_counter() - t0
                    window_losses.append(loss)
                    window_norms.append(norm)
                    window_tokens += self.tokens_per_step
                    do_eval = p.step % cfg.eval_interval == 0 or p.step == cfg.max_steps
                    do_log = p.step % cfg.log_interval == 0 or do_eval
                    # Training throughput only: taken before validation runs.
                    tps = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                    val = self.evaluate() if do_eval else None
                    if val is not None:
                        stopped_early = self.after_eval(val)
                    if do_log:
                        train_loss = self._mean_over_ranks(float(np.mean(window_losses)))
                        util = mfu(self.train_flops_per_token, tps, rt.world, rt.peak_tflops)
                        norm_mean = float(np.mean(window_norms))
                        if log:
                            log.row(step=p.step, tokens=p.tokens, lr=repr(lr_at(p.step - 1, cfg)),
                                    train_loss=repr(train_loss), val_loss=None if val is None else repr(val),
                                    tokens_per_s=round(tps, 1), mfu=None if util is None else round(util, 4),
                                    grad_norm=round(norm_mean, 4))
                        shown = {"loss": f"{train_loss:.3f}", "val": f"{p.last_val or math.nan:.3f}",
                                 "tok_s": f"{tps:,.0f}", "gnorm": f"{norm_mean:.2f}"}
                        if util is not None:
                            shown["mfu"] = f"{util:.1%}"
                        bar.set_postfix(shown, refresh=False)
                        window_losses, window_norms, window_start, window_tokens = [], [], time.perf_counter(), 0
                    # The state is saved after the step's CSV row: a kill never loses a row it keeps.
                    if do_eval and rt.main:
                        self.save_state(cfg.state_dir)
                    bar.update(1)
                    if self._any_rank_stopping(flag):
                        if rt.main:
                            self.save_state(cfg.state_dir)
                        raise TrainingInterrupted(p.step, cfg.state_dir)
                    if stopped_early or (stop_after and p.step >= stop_after):
                        break
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
                    help="override a train setting (lr=3e-4) or an architecture one (bdh.n_layer=4); repeatable. "
                         "With --resume only settings that leave the model alone (budget, evaluation, paths)")
    ap.add_argument("--resume", metavar="STATE_DIR", help="continue the run saved in this state directory")
    ap.add_argument("--init", metavar="CHECKPOINT",
                    help="start a new run (fresh optimizer and schedule) from this checkpoint's weights, e.g. to "
                         "continue on longer windows; the architecture is the checkpoint's")
    ap.add_argument("--force", action="store_true",
                    help="write into an `out` or `state_dir` that already holds another run's files")
    ap.add_argument("--stop-after", type=int, metavar="STEP",
                    help="stop (saving state) once this step is reached, as if interrupted; the schedule still "
                         "runs to max_steps")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _read_state(state_dir: str) -> dict:
    path = Path(state_dir) / STATE_JSON
    state = read_json(path, ConfigError, "missing; not a training state directory")
    if state.get("model_type") not in FAMILIES:
        raise ConfigError(f"{path}: model_type {state.get('model_type')!r} is not one of {sorted(FAMILIES)}")
    return state


def build_trainer(args: argparse.Namespace) -> Trainer:
    """Settings are checked first (names, types, what a resume may change), then the output
    directories, and only then is data or a checkpoint read."""
    if args.resume:
        if args.init or args.model or args.config:
            raise ConfigError("--resume continues a saved run as it was: leave out --model, --config and --init")
        state = _read_state(args.resume)
        cfg = resume_config(state["config"], state["model_type"], args.overrides)
        run_id = state["progress"].get("run_id")
        if "state_dir" not in {parse_override(item)[0][0] for item in args.overrides}:
            cfg.state_dir = str(args.resume)  # where it was found, even if moved since
        own_state = Path(cfg.state_dir).resolve() == Path(args.resume).resolve()
        for path, what, force in ((cfg.out, "out", args.force), (cfg.state_dir, "state_dir", args.force or own_state),
                                  (cfg.log_dir, "log_dir", True)):
            check_output_dir(path, what, run_id, force)
        rt = setup_runtime(cfg)
        ckpt = load_checkpoint(args.resume)
        trainer = Trainer(state["model_type"], ckpt.model.train(), cfg, rt, state["arch"], ckpt.tokenizer)
        trainer.load_state(args.resume, state)
        return trainer
    if not args.model or not args.config:
        raise ConfigError("give --model and --config (or --resume STATE_DIR)")
    arch, cfg = load_preset(args.config, args.model, args.overrides)
    if args.init and split_overrides(args.overrides, args.model)[1]:
        raise ConfigError(f"--init takes the architecture from {args.init}; drop the --set {args.model}.* overrides")
    if Path(cfg.out).resolve() == Path(cfg.state_dir).resolve():
        raise ConfigError(f"out and state_dir are both {cfg.out}: the best model and the latest state need "
                          f"directories of their own")
    for path, what in ((cfg.out, "out"), (cfg.state_dir, "state_dir"), (cfg.log_dir, "log_dir")):
        check_output_dir(path, what, None, args.force or what == "log_dir")  # logs: one new file per run
    rt = setup_runtime(cfg)
    meta = read_meta(cfg.data)
    torch.manual_seed(cfg.seed)  # the initial weights; identical on every DDP rank
    if args.init:
        ckpt = load_checkpoint(args.init)
        if ckpt.model_type != args.model:
            raise ConfigError(f"--init {args.init} holds a {ckpt.model_type} model, not {args.model}")
        # The architecture the checkpoint's run recorded, with the dropout its config.json
        # holds now (a continued run may set it there: dropout changes no weight).
        arch = dict(ckpt.run.get("architecture", {}))
        if "dropout" in arch:
            arch["dropout"] = ckpt.config.get("dropout", ckpt.config.get("resid_pdrop", arch["dropout"]))
        trainer = Trainer(args.model, ckpt.model.train(), cfg, rt, arch, ckpt.tokenizer)
        trainer.initialized_from = {"checkpoint": str(args.init), "steps": ckpt.run.get("steps"),
                                    "tokens_seen": ckpt.run.get("tokens_seen"),
                                    "block_size": ckpt.run.get("train_config", {}).get("block_size")}
        return trainer
    model = build_model(args.model, arch, meta["vocab_size"], meta["eot_id"])
    return Trainer(args.model, model, cfg, rt, arch)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        trainer = build_trainer(args)
    except (ConfigError, DataError, CheckpointError, RuntimeSetupError, ValueError, OSError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line, not one per rank
            print("train: stopped before training started" + (
                f"; the state is as it was: python -m training.train --resume {args.resume}" if args.resume
                else "; nothing was saved"), file=sys.stderr)
        return EXIT_INTERRUPTED
    rt = trainer.rt
    if rt.main and not args.quiet:
        print(f"{trainer.model_type}: {num_parameters(trainer.model):,} parameters on {rt.device} "
              f"(x{rt.world}), {trainer.tokens_per_step:,} tokens/step, {trainer.cfg.max_steps} steps, "
              f"autocast {rt.amp_dtype or 'off'}{' + GradScaler' if rt.grad_scaling else ''}, "
              f"compile {'on' if rt.compile else 'off'}", file=sys.stderr)
    try:
        p = trainer.fit(args.stop_after, args.quiet)
    except TrainingInterrupted as e:
        if rt.main:
            print(f"train: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C (or one during the step-0 evaluation): stop now
        if rt.main:
            print(f"train: stopped at once; resume from the last saved state: python -m training.train --resume "
                  f"{trainer.cfg.state_dir}" if trainer.resumable else "train: stopped at once, before any state "
                  "of this run was saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if rt.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if rt.main:
        print(f"step {p.step}: best val loss {p.best_val:.4f} at step {p.best_step} -> {trainer.cfg.out}; "
              f"state in {trainer.cfg.state_dir}; log {p.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
