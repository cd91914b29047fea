"""The summary of a sweep folder: one row per job, its overrides and final figures, written as
``summary.md`` (to read) and ``summary.csv`` (to load into a spreadsheet or pandas).

Read from files only (``SWEEP/jobs/N.json``, each job's ``metrics.jsonl`` and ``eval.json``),
so it describes jobs that any launcher ran, in this process or elsewhere. The Markdown table
shows the overrides that differ between jobs (the swept ones); the CSV has every override.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmcore.curves import final_figures, read_records
from ldmcore.tables import markdown, write_csv

FIGURES = ("steps", "loss", "loss_smoothed", "lr", "time_s", "images_per_s")


@dataclass
class SweepSummary:
    """The jobs of one sweep folder and where their table was written."""

    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)  # override keys whose values differ by job
    markdown: Path | None = None
    csv: Path | None = None

    @property
    def failed(self) -> int:
        return sum(r["status"] != "completed" for r in self.rows)


def collect(folder: Path) -> SweepSummary:
    """Every job record of ``folder`` with its run's final figures and ``eval.json`` numbers."""
    rows = []
    for path in sorted((folder / "jobs").glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
        job = json.loads(path.read_text())
        run = folder / str(job.get("run", path.stem))
        row: dict[str, Any] = {"job": job.get("job"), "run": str(run), "status": job.get("status"),
                               "overrides": _as_dict(job.get("overrides", []))}
        row.update(final_figures(read_records(run / "metrics.jsonl")))
        report = run / "eval.json"
        if report.is_file():
            row.update({f"eval.{k}": v for k, v in json.loads(report.read_text()).items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if job.get("error"):
            row["error"] = job["error"]
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    swept = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    return SweepSummary(folder, rows, swept or keys)  # one job (a sweep stopped early): all


def write_summary(folder: Path) -> SweepSummary:
    """Collect ``folder``'s jobs and write ``summary.md`` and ``summary.csv`` into it."""
    summary = collect(folder)
    every = list(dict.fromkeys(k for r in summary.rows for k in r["overrides"]))
    figures = _figure_columns(summary.rows)
    summary.markdown = folder / "summary.md"
    summary.markdown.write_text(markdown_table(summary, figures))
    summary.csv = write_csv(folder / "summary.csv", ["job", "run", "status", *every, *figures, "error"],
                            [[r["job"], r["run"], r["status"], *(r["overrides"].get(k, "") for k in every),
                              *(r.get(k) for k in figures), r.get("error")] for r in summary.rows])
    return summary


def markdown_table(summary: SweepSummary, figures: list[str]) -> str:
    """The jobs as a Markdown table: swept overrides, then figures (4 significant digits)."""
    head = ["job", *summary.swept, "status", *figures]
    rows = [[r["job"], *(r["overrides"].get(k, "") for k in summary.swept), r["status"],
             *(r.get(k) for k in figures)] for r in summary.rows]
    lines = [f"# Sweep {summary.folder}", "",
             f"{_counted(summary.rows)}; every override of every job: summary.csv.", "",
             *markdown(head, rows)]
    errors = [f"- job {r['job']}: {r['error']}" for r in summary.rows if r.get("error")]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def _counted(rows: list[dict[str, Any]]) -> str:
    """``4 jobs: 3 completed, 1 failed``."""
    statuses = Counter(str(r["status"]) for r in rows)
    jobs = f"{len(rows)} job{'s' if len(rows) != 1 else ''}"
    return f"{jobs}: " + ", ".join(f"{n} {status}" for status, n in statuses.items())


def _figure_columns(rows: list[dict[str, Any]]) -> list[str]:
    present = {k for r in rows for k in r}
    evals = list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval.")))
    return [k for k in FIGURES if k in present] + evals


def _as_dict(overrides: list[str]) -> dict[str, str]:
    """``["++trainer.lr=0.001", "model=tiny"]`` as ``{"trainer.lr": "0.001", "model": "tiny"}``."""
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        out[key.lstrip("+~")] = value
    return out
