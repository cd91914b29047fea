"""The CPU this process runs on: model, instruction sets, and whether bf16 is native.

bf16 matmuls and convolutions are fast only where the CPU has instructions for them: AMX tiles
(Intel Sapphire Rapids and later) or AVX-512-BF16 (Cooper Lake, AMD Zen 4 and later). Elsewhere
(AVX2-only CPUs such as many AMD EPYC and laptops) oneDNN emulates bf16, measured 7-36x slower
than float32, so ``precision=auto`` must not pick it there.

Two environment settings override what the CPU reports, so both choices of ``auto`` can be
exercised on any machine:

* ``LDM_NATIVE_BF16=0`` (or ``1``) says the CPU lacks (has) native bf16;
* oneDNN's own ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``) caps the instruction sets oneDNN uses;
  a cap below ``AVX512_CORE_BF16`` means bf16 runs emulated, and is honoured the same way.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

import torch

# oneDNN ISA caps under which bf16 has no hardware path (oneDNN's dnnl_cpu_isa names)
_EMULATED_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                       "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class CpuInfo:
    model: str            # e.g. "AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8480+"
    capability: str       # torch's kernel dispatch level: "AVX2", "AVX512", "DEFAULT", ...
    avx2: bool            # the CPU has AVX2 (whatever the dispatch level is capped to)
    avx512: bool          # the CPU has AVX-512
    amx: bool             # AMX tiles (bf16 matmul units)
    avx512_bf16: bool     # AVX-512-BF16 dot products
    native_bf16: bool     # bf16 runs on hardware instructions (after any override)
    bf16_note: str        # why native_bf16 is what it is, in words
    cores: int            # cores this process may run on (affinity), not the whole machine's

    @property
    def summary(self) -> str:
        """One line naming the machine, for figures and reports."""
        units = "AMX" if self.amx else "AVX-512-BF16" if self.avx512_bf16 else "no bf16 units"
        bf16 = "bf16 native" if self.native_bf16 else "bf16 emulated"
        return f"{self.model} ({self.capability} kernels, {units}, {bf16}), {self.cores} cores"


def _model_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _flag(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)  # private helpers; absent on some torch builds
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - a probe that cannot run means: not known to be there
        return False


def available_cores() -> int:
    """Cores this process may use: its CPU affinity where the OS has one, else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _native_bf16(amx: bool, avx512_bf16: bool) -> tuple[bool, str]:
    forced = os.environ.get("LDM_NATIVE_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"LDM_NATIVE_BF16={forced} overrides the CPU's report"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa in _EMULATED_BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={isa} caps oneDNN below its bf16 instructions"
    if amx:
        return True, "AMX tiles run bf16 matmuls natively"
    if avx512_bf16:
        return True, "AVX-512-BF16 runs bf16 dot products natively"
    return False, "no AMX and no AVX-512-BF16: bf16 would be emulated"


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The CPU, read once per process."""
    amx, avx512_bf16 = _flag("_is_amx_tile_supported"), _flag("_is_avx512_bf16_supported")
    native, note = _native_bf16(amx, avx512_bf16)
    return CpuInfo(model=_model_name(), capability=torch.backends.cpu.get_cpu_capability(),
                   avx2=_flag("_is_avx2_supported"), avx512=_flag("_is_avx512_supported"), amx=amx, avx512_bf16=avx512_bf16, native_bf16=native, bf16_note=note,
                   cores=available_cores())
