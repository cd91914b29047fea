"""Result tables as people and programs read them: Markdown (numbers to 4 significant digits)
and CSV (numbers in full). A sweep's summary and a settings comparison of ``ldm eval`` use it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def shown(value: Any) -> str:
    """A cell as Markdown shows it: floats to 4 significant digits, None empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(head: list[str], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown table."""
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
            ["| " + " | ".join(shown(v) for v in row) + " |" for row in rows])


def write_csv(path: Path, head: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(head)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path
