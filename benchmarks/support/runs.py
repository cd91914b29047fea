"""Trained runs that a benchmark reads, loaded through ``ldmcore.runfolder``.

Several benchmarks score a run that another command trained (``make demo``,
``python -m benchmarks.plugins``). When that run is missing or unreadable the benchmark stops
with the run folder's own error and the command that makes the run, not with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ldmcore.errors import LdmError


def load_trained_run(run: Path, made_by: str) -> tuple[Any, Any, dict[str, Any]]:
    """``ldmcore.runfolder.load_run(run)``: (config, model with EMA weights, metadata). A run
    that cannot be loaded ends the benchmark with exit status 2 and a message naming
    ``made_by``, the command that trains such a run."""
    from ldmcore.runfolder import load_run

    try:
        return load_run(run)
    except LdmError as exc:
        print(f"{Path(sys.argv[0]).stem}: cannot read the trained run: {exc} This benchmark "
              f"scores a trained run: make one with `{made_by}`, or name another run folder.",
              file=sys.stderr)
        raise SystemExit(2) from None
