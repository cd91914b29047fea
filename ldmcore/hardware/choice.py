"""The precision and threads a command runs with, chosen once, announced once, recorded.

``ldm train``, ``ldm sample`` and ``ldm eval`` each call ``choose`` at start: it resolves both
settings (``auto`` or explicit) for the device, sets torch's thread count, prints one line
saying what was picked and why, and gives the record that run metadata, ``metrics.jsonl``,
``samples.json`` and benchmark tables keep, with the machine it was made on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ldmcore.hardware.cpu import cpu_info
from ldmcore.hardware.precision import PrecisionChoice, choose_precision
from ldmcore.hardware.threads import ThreadChoice, choose_threads


def machine_line() -> str:
    """One line naming the machine (GPU and CPU) and torch, for results tables."""
    where = cpu_info().summary
    if torch.cuda.is_available():
        where = f"{torch.cuda.get_device_name(0)} + {where}"
    return f"{where}; torch {torch.__version__}"


@dataclass(frozen=True)
class HardwareChoice:
    precision: PrecisionChoice
    threads: ThreadChoice

    def line(self) -> str:
        return f"ldmcore: {self.precision.line()}; {self.threads.line()}"

    def record(self) -> dict[str, Any]:
        """The choices with their reasons, and the machine they were made on."""
        p, t = self.precision, self.threads
        return {"precision": p.name, "precision_requested": p.requested, "precision_reason": p.reason,
                "threads": t.threads, "threads_requested": t.requested, "threads_reason": t.reason,
                "machine": machine_line()}


def choose(precision: str = "auto", threads: int | str | None = "auto",
           device: torch.device | str = "cpu", *, announce: bool = True) -> HardwareChoice:
    """Resolve both settings for ``device``, apply the thread count, print the choice."""
    thread_choice = choose_threads(threads)
    torch.set_num_threads(thread_choice.threads)
    choice = HardwareChoice(choose_precision(precision, device), thread_choice)
    if announce:
        print(choice.line(), flush=True)  # stdout: stderr carries only warnings and errors
    return choice
