"""``ldm sample`` with comma lists: one labelled grid per combination and a contact sheet.

::

    ldm sample run=runs/demo cond.class=[0,1,2] n=4 guidance=1,3,5 sampler=euler,dpmpp_2m out=cmp

writes ``cmp/guidance=1_sampler=euler/`` ... (each an ordinary ``ldm sample`` folder: PNGs,
``grid.png``, ``samples.json``), ``cmp/contact_sheet.png`` (every grid captioned with its
settings; one row per value of the first list, one column per value of the last, for two
lists) and ``cmp/sweep.json`` (each combination and its folder). Every combination's request is
checked before the first is sampled. The run is loaded once for all the combinations that can
share it (all but those of another ``precision``, ``ema`` or plugin setting).
"""

from __future__ import annotations

import json
from pathlib import Path

from ldmcore.combinations import Combination, combinations, swept
from ldmcore.contact_sheet import save_contact_sheet
from ldmcore.errors import ConfigError
from ldmcore.registry import Registry
from ldmcore.runfolder import RunFolder, check_output_folder, make_output_folder
from ldmcore.sample import LoadedRun, load_for_sampling, loading_key, parse_request, run_sampling

# SampleRequest keys a comma list may sweep (their values hold no commas)
SWEEPABLE = {"sampler", "steps", "sigmas", "spacing", "rho", "eta", "s_noise", "guidance",
             "guidance_rescale", "strength", "seed", "precision", "ema", "n"}
SWEEPABLE_PREFIXES = ("guidance.", "option.")


def sample_lists(args: list[str]) -> dict[str, list[str]]:
    """The comma lists of an ``ldm sample`` command line (none: a plain request)."""
    return swept(args, SWEEPABLE, SWEEPABLE_PREFIXES)


def run_sample_sweep(args: list[str], registry: Registry | None = None) -> Path:
    """Sample every combination of the comma lists in ``args`` into one folder; returns it."""
    lists = sample_lists(args)
    base = [a for a in args if a.partition("=")[0] != "out"]
    given = {a.partition("=")[0]: a.partition("=")[2] for a in args}
    requests = [(c, parse_request([*c.args, "out=."])) for c in combinations(base, lists)]
    run = Path(given.get("run", "."))
    out = Path(given["out"]) if given.get("out") else RunFolder(run).samples / "sweep"
    check_output_folder(out, requests[0][1].overwrite)
    taken = [c.folder for c, _ in requests]
    if len(set(taken)) != len(taken):
        written = " ".join(f"{k}={','.join(v)}" for k, v in lists.items())
        raise ConfigError(f"two combinations of {written} name the same folder; give each "
                          f"value once.")
    make_output_folder(out)
    done: list[tuple[Combination, Path]] = []
    loaded: dict[tuple, LoadedRun] = {}  # the run loaded once per precision, EMA choice...
    for combo, _ in requests:
        req = parse_request([*combo.args, f"out={out / combo.folder}"])
        key = loading_key(req)
        if key not in loaded:
            loaded[key] = load_for_sampling(req.run, registry, req.ema, req.conditions,
                                            req.precision, req.threads)
        done.append((combo, run_sampling(req, registry, loaded[key])))
    columns = len(list(lists.values())[-1])
    save_contact_sheet([(c.label, f / "grid.png") for c, f in done], columns, out / "contact_sheet.png")
    (out / "sweep.json").write_text(json.dumps(
        {"lists": lists, "combinations": [{"values": c.values, "folder": f.name} for c, f in done]},
        indent=1))
    return out
