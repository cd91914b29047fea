"""A short matmul measurement: how fast this device multiplies in float32 and in bf16.

Used by ``ldm doctor`` and by the warning for an explicit ``precision=bf16`` on a CPU that
emulates it, so the reason given is a number measured on the machine at hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MatmulRate:
    dtype: str
    size: int
    gflops: float      # median of the timed repetitions
    repetitions: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(dtype: torch.dtype, seconds: float = 0.5, size: int = 512,
                device: torch.device | str = "cpu") -> MatmulRate:
    """GFLOP/s of a ``size``x``size`` matmul in ``dtype``: the median of as many repetitions
    as fit in about ``seconds`` (at least three), after one warm-up call."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times: list[float] = []
    a @ b  # warm-up: kernel selection, weight packing
    _sync(device)
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 1000):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    median = sorted(times)[len(times) // 2]
    return MatmulRate(str(dtype).removeprefix("torch."), size, 2 * size**3 / median / 1e9, len(times))


def bf16_slowdown(seconds: float = 0.2, size: int = 256) -> float:
    """How many times slower a bf16 matmul runs than a float32 one on this CPU (>1: slower)."""
    fp32 = matmul_rate(torch.float32, seconds / 2, size)
    bf16 = matmul_rate(torch.bfloat16, seconds / 2, size)
    return fp32.gflops / bf16.gflops
