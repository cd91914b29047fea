"""``ldm eval`` with comma lists: the run scored once per combination of settings.

::

    ldm eval run=runs/shapes_layout n=32 guidance=1,3,5 sampler=euler,dpmpp_2m [out=DIR]

writes, in ``DIR`` (default ``RUN_DIR/eval_sweep``), a folder per combination
(``guidance=3_sampler=euler/``: ``eval.json`` and the ``eval_grid.png`` it scored),
``contact_sheet.png`` (every grid captioned with its settings), and ``summary.md`` /
``summary.csv`` (settings -> each metric). Every combination's options are checked before the
first is scored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldmcore.combinations import combinations, swept
from ldmcore.contact_sheet import save_contact_sheet
from ldmcore.eval.request import EvalRequest, parse_eval_request
from ldmcore.runfolder import RunFolder, check_output_folder, make_output_folder
from ldmcore.tables import markdown, write_csv

SWEEPABLE = {"n", "steps", "seed", "average", "precision", "sampler", "guidance"}
Evaluate = Callable[[EvalRequest, Path], tuple[dict[str, Any], Path]]


def eval_lists(args: list[str]) -> dict[str, list[str]]:
    """The comma lists of an ``ldm eval`` command line (none: one evaluation)."""
    return swept(args, SWEEPABLE)


def run_eval_sweep(args: list[str], evaluate: Evaluate) -> tuple[Path, str]:
    """Score every combination of the comma lists in ``args`` with ``evaluate(request,
    folder)`` (``ldm eval``'s own, which writes its grid into ``folder``); ``out=DIR`` names the
    output folder. Returns it and its Markdown summary."""
    lists = eval_lists(args)
    given = dict(a.partition("=")[::2] for a in args)
    combos = combinations([a for a in args if a.partition("=")[0] != "out"], lists)
    requests = [parse_eval_request(c.args) for c in combos]
    out = Path(given.get("out") or RunFolder(requests[0].run).root / "eval_sweep")
    check_output_folder(out, overwrite=False)
    make_output_folder(out)
    reports, tiles = [], []
    for combo, req in zip(combos, requests):
        folder = out / combo.folder
        folder.mkdir(exist_ok=True)
        report, _ = evaluate(req, folder)
        (folder / "eval.json").write_text(json.dumps(report, indent=1))
        reports.append(report)
        if (folder / "eval_grid.png").is_file():
            tiles.append((combo.label, folder / "eval_grid.png"))
    if tiles:
        save_contact_sheet(tiles, len(list(lists.values())[-1]), out / "contact_sheet.png")
    figures = list(dict.fromkeys(k for r in reports for k, v in r.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)))
    head = [*lists, *figures]
    rows = [[*c.values.values(), *(r.get(k) for k in figures)] for c, r in zip(combos, reports)]
    write_csv(out / "summary.csv", head, rows)
    table = "\n".join([f"# ldm eval of {requests[0].run}", "", *markdown(head, rows)]) + "\n"
    (out / "summary.md").write_text(table)
    return out, table
