"""Where a benchmark's results go and what heads them: the machine, the load, Markdown tables.

Each benchmark writes into its own folder, ``benchmarks/results/<benchmark>/``, one file pair
per variant: ``<variant>.json`` (everything measured) and ``<variant>.md`` (the table a person
reads). The variant is ``full`` for a benchmark's default settings, ``quick`` for its smoke
size, or a name given on the command line (``--variant quick-avx2-kernels``) for a run that
differs in something the files' names should say.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results"


def results_dir(benchmark: str, root: Path = ROOT) -> Path:
    """The folder of ``benchmark``'s results (created), e.g. ``benchmarks/results/perf``."""
    if not benchmark or "/" in benchmark or benchmark.startswith("."):
        raise ValueError(f"a benchmark name is one plain folder name, not {benchmark!r}")
    folder = root / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def result_paths(benchmark: str, variant: str = "full", root: Path = ROOT) -> tuple[Path, Path]:
    """(``<variant>.json``, ``<variant>.md``) in ``benchmark``'s results folder."""
    if not variant or "/" in variant or variant.startswith("."):
        raise ValueError(f"a variant is a plain file stem such as 'quick', not {variant!r}")
    folder = results_dir(benchmark, root)
    return folder / f"{variant}.json", folder / f"{variant}.md"


def write_result(benchmark: str, variant: str, result: dict, markdown: str,
                 root: Path = ROOT) -> Path:
    """Write ``result`` as JSON and ``markdown`` beside it; print the Markdown; return the
    Markdown file's path."""
    json_path, md_path = result_paths(benchmark, variant, root)
    json_path.write_text(json.dumps(result, indent=1))
    md_path.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(markdown)
    return md_path


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was (others share it)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def machine() -> str:
    """The machine and torch (``machine_line``), Python, what ``precision=auto`` and
    ``threads=auto`` pick here, and the load when the benchmark started."""
    from ldmcore.hardware import choose_precision, choose_threads, machine_line

    return (f"{machine_line()}; python {platform.python_version()}; precision=auto -> "
            f"{choose_precision('auto').name}, threads=auto -> {choose_threads('auto').threads}; "
            f"{load_average()}")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table: a header of ``columns``, then one line per row (cells as ``str``)."""
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} cells, the table {len(columns)} columns: {row!r}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
