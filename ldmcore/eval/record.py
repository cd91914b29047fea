"""``ldm eval``'s figures into the run's record: a ``stage: eval`` line in ``metrics.jsonl`` at the
step of the checkpoint it scored (so evaluating a run as it trains on, after each resume, gives
a curve), and the plots redrawn (``ldmcore.plots``: ``plots/eval.png`` among them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ldmcore import checkpoint
from ldmcore.plots import write_plots
from ldmcore.runfolder import MetricsLog, RunFolder


def record_eval(run_dir: Path, report: dict[str, Any]) -> list[Path]:
    """Append ``report``'s numbers to ``run_dir``'s metrics at its checkpoint's step and redraw
    the plots; returns the plot files."""
    run = RunFolder(run_dir)
    step = checkpoint.metadata(run.last).get("step")
    numbers = {k: v for k, v in report.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "samples"}
    MetricsLog(run.metrics).write(stage="eval", step=step, samples=report.get("samples"), **numbers)
    return write_plots(run.root)
