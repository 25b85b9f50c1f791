"""Precision and compile decisions per GPU generation, with the device query mocked (no
GPU needed): bf16 only where it is native (compute capability 8.0+), fp16 with a
GradScaler below, torch.compile from 7.0 (Triton's floor)."""

from __future__ import annotations

import pytest
import torch

from training.runtime import PEAK_TFLOPS, Runtime, RuntimeSetupError, choose_precision, mfu, peak_tflops_for

CUDA = torch.device("cuda", 0)


@pytest.fixture
def capability(monkeypatch):
    def set_to(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    return set_to


@pytest.mark.parametrize("cap, dtype, compiled", [
    ((6, 0), torch.float16, False),   # P100: no bf16, no Triton
    ((7, 5), torch.float16, True),    # T4: is_bf16_supported() says yes (emulated); fp16 it is
    ((8, 0), torch.bfloat16, True),   # A100
    ((9, 0), torch.bfloat16, True),   # H100
])
def test_auto_precision_follows_native_support(capability, cap, dtype, compiled):
    capability(*cap)
    amp, use_compile = choose_precision(CUDA, "auto", "auto")
    assert amp == dtype and use_compile == compiled
    rt = Runtime(CUDA, amp_dtype=amp)
    assert rt.grad_scaling == (dtype == torch.float16)  # fp16 needs loss scaling; bf16 has fp32's range


def test_bf16_is_refused_where_it_would_be_emulated(capability):
    capability(7, 5)
    with pytest.raises(RuntimeSetupError, match="compute capability 8.0"):
        choose_precision(CUDA, "bfloat16", "auto")
    capability(8, 6)
    assert choose_precision(CUDA, "bfloat16", "false") == (torch.bfloat16, False)


def test_explicit_choices_and_cpu(capability):
    capability(9, 0)
    assert choose_precision(CUDA, "float32", "auto") == (None, True)
    assert choose_precision(CUDA, "float16", "false") == (torch.float16, False)
    cpu = torch.device("cpu")
    assert choose_precision(cpu, "auto", "auto") == (None, False)
    assert choose_precision(cpu, "auto", True) == (None, True)
    with pytest.raises(RuntimeSetupError, match="for GPUs"):
        choose_precision(cpu, "float16", "auto")


def test_mfu_from_the_peak_table(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    peak = peak_tflops_for(CUDA, torch.float16)
    assert peak == PEAK_TFLOPS["T4"]["half"]
    assert peak_tflops_for(CUDA, None) == PEAK_TFLOPS["T4"]["float32"]
    assert peak_tflops_for(CUDA, torch.float16, override=100.0) == 100.0
    assert peak_tflops_for(torch.device("cpu"), None) is None
    # 6.5e13 FLOP/s achieved per device out of 65 TFLOP/s is 100%
    assert mfu(1e9, 2 * 6.5e4, 2, peak) == pytest.approx(1.0)
    assert mfu(1e9, 1e4, 1, None) is None
