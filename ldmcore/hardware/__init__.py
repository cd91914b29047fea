"""What machine this is and what runs best on it: precision and threads chosen from the hardware.

* ``cpu``: the CPU's model and instruction sets, and whether it executes bf16 natively
  (AMX or AVX-512-BF16) or would emulate it (AVX2-only CPUs: 7-36x slower than float32).
* ``precision``: ``precision=auto`` -> bf16, fp16 or fp32 for a device, with the reason.
* ``threads``: ``threads=auto`` -> the cores no other process is using, re-checked while training.
* ``choice``: both chosen once per command, announced, and recorded with the machine's name.
* ``measure``: a short matmul measurement in float32 and bf16 (``ldm doctor``, warnings).
"""

from ldmcore.hardware.choice import HardwareChoice, choose, machine_line
from ldmcore.hardware.cpu import CpuInfo, cpu_info
from ldmcore.hardware.precision import PRECISIONS, PrecisionChoice, autocast, choose_precision
from ldmcore.hardware.threads import ThreadChoice, ThreadGovernor, choose_threads

__all__ = ["HardwareChoice", "choose", "machine_line", "CpuInfo", "cpu_info", "PRECISIONS",
           "PrecisionChoice", "autocast", "choose_precision", "ThreadChoice", "ThreadGovernor",
           "choose_threads"]
