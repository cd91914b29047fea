"""``precision``: which number format the network computes in, chosen per device.

``auto`` (the default everywhere: training, ``ldm sample``, ``ldm eval``, benchmarks) picks

* on CUDA: bf16 where the GPU has it (Ampere and later), else fp16 (training then scales the
  loss with a gradient scaler, since fp16's range underflows small gradients);
* on CPU: bf16 where the CPU executes it natively (AMX or AVX-512-BF16), else float32: on an
  AVX2-only CPU oneDNN emulates bf16, 7-36x slower than float32.

An explicit choice is obeyed; ``bf16`` on a CPU that would emulate it warns once, with the
slowdown measured on the spot. Mixed precision means autocast over float32 master weights in
training, and (for sampling) optionally bf16 weights (``ldmcore/nn/execution.py``).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ldmcore.errors import ConfigError
from ldmcore.hardware.cpu import cpu_info
from ldmcore.hardware.measure import bf16_slowdown  # measures only when warning

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_warned: set[str] = set()


@dataclass(frozen=True)
class PrecisionChoice:
    requested: str    # what the user asked for: auto | fp32 | bf16 | fp16
    name: str         # what runs: fp32 | bf16 | fp16
    device: str       # "cpu", "cuda", ...
    reason: str       # one sentence: why ``name``

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def grad_scaler(self) -> bool:
        """fp16 training needs loss scaling; bf16 has float32's range and does not."""
        return self.name == "fp16"

    def autocast(self):
        """The autocast context of this choice (nothing for fp32)."""
        return autocast(self.name, torch.device(self.device))

    def line(self) -> str:
        return f"precision: {self.name} ({self.reason})"


def autocast(precision: str, device: torch.device):
    """bf16/fp16 autocast on ``device``, or nothing for fp32."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=DTYPES[precision])
    return nullcontext()


def _cuda_bf16(device: torch.device) -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3 has no including_emulation
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8


def choose_precision(requested: str, device: torch.device | str = "cpu") -> PrecisionChoice:
    """Resolve ``requested`` (auto | fp32 | bf16 | fp16) for ``device``, with the reason."""
    device = torch.device(device)
    if requested not in PRECISIONS:
        raise ConfigError(f"precision={requested!r} is not one of {', '.join(PRECISIONS)}; auto "
                          f"picks bf16 where the hardware runs it natively, else fp32 (CPU) or fp16 (GPU).")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        has_bf16 = _cuda_bf16(device)
        if requested == "auto":
            if has_bf16:
                return PrecisionChoice(requested, "bf16", device.type, f"auto: {name} has bf16")
            return PrecisionChoice(requested, "fp16", device.type,
                                   f"auto: {name} lacks bf16, so fp16 (training scales the loss)")
        return PrecisionChoice(requested, requested, device.type, f"asked for {requested} on {name}")
    cpu = cpu_info()
    if requested == "fp16":
        raise ConfigError("precision=fp16 is for CUDA GPUs; on a CPU use precision=auto, bf16 or "
                          "fp32 (auto picks bf16 where the CPU runs it natively, else fp32).")
    if requested == "auto":
        name = "bf16" if cpu.native_bf16 else "fp32"
        return PrecisionChoice(requested, name, device.type, f"auto on {cpu.capability}: {cpu.bf16_note}")
    if requested == "bf16" and not cpu.native_bf16:
        _warn_emulated_bf16(cpu.bf16_note)
        return PrecisionChoice(requested, "bf16", device.type,
                               f"asked for bf16, which this CPU emulates ({cpu.bf16_note})")
    return PrecisionChoice(requested, requested, device.type, f"asked for {requested}")


def _warn_emulated_bf16(note: str) -> None:
    if "bf16" in _warned:
        return
    _warned.add("bf16")
    slower = bf16_slowdown()
    measured = (f"{slower:.1f}x slower than float32" if slower >= 1
                else f"{1 / slower:.1f}x faster than float32 (the hardware has bf16: check the override)")
    print(f"ldmcore: warning: precision=bf16 on a CPU without native bf16 ({note}); a bf16 "
          f"matmul measured {measured} here. precision=auto (or fp32) runs float32 on this CPU.",
          file=sys.stderr)
