"""Where a run executes: device, processes (torchrun/DDP), precision, torch.compile, and
the peak throughput MFU is measured against.

Precision follows what the GPU does natively, not what it can emulate:
`torch.cuda.is_bf16_supported()` also says yes on a T4 (7.5) or a P100 (6.0), where bf16
runs emulated and slow. So bf16 needs compute capability 8.0 (Ampere) or newer; older
GPUs get fp16 autocast with a GradScaler, whose loss scaling keeps small fp16 gradients
from flushing to zero.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: native bf16 tensor cores
COMPILE_MIN_CAPABILITY = (7, 0)  # Triton, torch.compile's GPU backend, needs Volta or newer

# Dense tensor-core peaks in TFLOP/s (fp16/bf16 with fp32 accumulate), from the vendors'
# data sheets; matched as substrings of torch.cuda.get_device_name(). float32 runs use
# the fp32 figure where one is given.
PEAK_TFLOPS = {
    "H200": {"half": 989.0, "float32": 67.0},
    "H100": {"half": 989.0, "float32": 67.0},
    "A100": {"half": 312.0, "float32": 19.5},
    "L4": {"half": 121.0, "float32": 30.3},
    "A10G": {"half": 70.0, "float32": 31.2},
    "V100": {"half": 125.0, "float32": 15.7},
    "T4": {"half": 65.0, "float32": 8.1},
    "P100": {"half": 18.7, "float32": 9.3},
}


class RuntimeSetupError(ValueError):
    """A device or precision setting this machine cannot honour."""


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None  # None: plain float32
    compile: bool = False
    peak_tflops: float | None = None  # for MFU; None = unknown (CPU, an unlisted GPU)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def grad_scaling(self) -> bool:
        return self.amp_dtype == torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def choose_precision(device: torch.device, dtype: str = "auto", compile_: str | bool = "auto"
                     ) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use torch.compile) for this device and the two settings."""
    dtype, compile_ = str(dtype).lower(), str(compile_).lower()
    if device.type != "cuda":
        # CPU: autocast and compile cost more than they give for these small models.
        if dtype not in ("auto", "float32"):
            raise RuntimeSetupError(f"dtype {dtype!r} is for GPUs; on {device} use auto or float32")
        return None, compile_ == "true"
    capability = tuple(torch.cuda.get_device_capability(device))
    native_bf16 = capability >= BF16_MIN_CAPABILITY
    if dtype == "bfloat16" and not native_bf16:
        raise RuntimeSetupError(f"dtype bfloat16 needs compute capability {BF16_MIN_CAPABILITY[0]}.0+, this GPU has "
                                f"{capability[0]}.{capability[1]} (bf16 would run emulated); use float16 or auto")
    if dtype == "auto":
        dtype = "bfloat16" if native_bf16 else "float16"
    amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    supported = capability >= COMPILE_MIN_CAPABILITY and sys.platform != "win32"
    use_compile = {"auto": supported, "true": True, "false": False}[compile_]
    return amp, use_compile


def peak_tflops_for(device: torch.device, amp_dtype: torch.dtype | None, override: float | None = None) -> float | None:
    if override:
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks["float32" if amp_dtype is None else "half"]
    return None


def setup_runtime(cfg) -> Runtime:
    """Single process, or one process per GPU when started by torchrun (it sets WORLD_SIZE etc.)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except RuntimeError as e:
            raise RuntimeSetupError(f"device {cfg.device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeSetupError(f"device {cfg.device!r}: no CUDA GPU is visible to torch")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp, use_compile = choose_precision(device, cfg.dtype, cfg.compile)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world, local_rank, amp, use_compile, peak_tflops_for(device, amp, cfg.peak_tflops))


def forward_flops_per_token(model: torch.nn.Module, logits_fn, block_size: int, device: torch.device) -> float:
    """Matmul FLOPs of one forward pass per token, counted by torch on one window.

    Counting beats a formula: the two families spend theirs differently (BDH's
    neuron-space attention grows with the window), and the count covers both. Training
    costs about three forward passes (one forward, two for backward).
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, block_size, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        logits_fn(model, x)
    model.train(was_training)
    return counter.get_total_flops() / block_size


def mfu(train_flops_per_token: float, tokens_per_s: float, world: int, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s per device over its peak."""
    if not peak_tflops:
        return None
    return train_flops_per_token * tokens_per_s / world / (peak_tflops * 1e12)
