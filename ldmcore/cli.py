"""The ``ldm`` command.

::

    ldm train experiment=NAME [hydra overrides ...]
    ldm train -m experiment=NAME KEY=A,B ... [hydra/launcher=joblib sweep.eval=true]
    ldm sample run=RUN_DIR cond.NAME=VALUE [n=8 sampler=dpmpp_2m sigmas=karras steps=20
               guidance=3 guidance.NAME=5 eta=1 init=PNG strength=0.6 mask=PNG seed=0 out=DIR
               precision=auto|fp32|bf16|fp16 threads=auto|N overwrite=true
               conditions.NAME.KEY=VALUE]   (comma lists, e.g. guidance=1,3,5 sampler=euler,ddim:
               a grid per combination and a contact sheet)
    ldm eval run=RUN_DIR [samples=DIR | n=64 steps=50 seed=0 average=1 precision=auto threads=auto
             sampler=NAME guidance=G]   (comma lists, e.g. guidance=1,3,5: every combination)
    ldm serve run=RUN_DIR [host=127.0.0.1 port=7860 precision=auto threads=auto max_images=16]
    ldm plugins [--json]
    ldm doctor [--json]
    ldm import SOURCE OUT_DIR [tokenizer=DIR prediction=eps|v image_size=N overwrite=true]
    ldm import PLUGIN_SOURCE OUT_DIR attach_to=RUN [condition=image name=N image_encoder=DIR overwrite=true]
    ldm export RUN_DIR OUT [layout=sd|diffusers ema=true overwrite=true]
    ldm new-plugin NAME [out=DIR injection=vector|concat|crossattn|residual|gated_attention|decoupled_crossattn]
    ldm COMMAND --help                  each command's keys, with their types and defaults

Errors a user can cause print one paragraph and exit with status 2; a traceback means a bug.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import textwrap
from typing import TYPE_CHECKING

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from ldmcore.arguments import parse_options, positional  # noqa: E402
from ldmcore.errors import ConfigError, LdmError, nearest  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

    from ldmcore.eval.request import EvalRequest

# a full disk, a quota, a file-size limit, a read-only disk: the machine's state, not a bug
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}

USAGE = __doc__.split("::", 1)[1].split("Errors", 1)[0].rstrip() + "\n"
HELP = {"-h", "--help"}  # after a command: its keys, types and defaults (ldmcore/helptext.py)


def cmd_train(args: list[str]) -> int:
    from ldmcore.config import load
    from ldmcore.sweep import MULTIRUN_FLAGS
    from ldmcore.train import train

    if any(a in MULTIRUN_FLAGS for a in args):
        return _train_sweep([a for a in args if a not in MULTIRUN_FLAGS])
    cfg = load(args)
    run = train(cfg)
    print(f"trained: {run.root} (checkpoint {run.last}, samples in {run.samples}, "
          f"metrics in {run.metrics})")
    return 0


def _train_sweep(args: list[str]) -> int:
    """``ldm train -m``: one run per combination, through Hydra's sweeper and launcher."""
    from ldmcore.sweep import run_sweep

    summary = run_sweep(args)
    print(summary.markdown.read_text() if summary.markdown else "", end="")
    print(f"sweep: {summary.folder} ({len(summary.rows)} runs, {summary.failed} failed; "
          f"summary.md, summary.csv)")
    return 0 if summary.rows and not summary.failed else 1


def cmd_sample(args: list[str]) -> int:
    from ldmcore.sample import parse_request, run_sampling
    from ldmcore.sample_sweep import run_sample_sweep, sample_lists

    if sample_lists(args):  # guidance=1,3,5 ...: a grid per combination and a contact sheet
        out = run_sample_sweep(args)
        print(f"samples: {out} (a folder per combination, contact_sheet.png, sweep.json)")
        return 0
    out = run_sampling(parse_request(args))
    print(f"samples: {out} (grid.png, samples.json)")
    return 0


def cmd_serve(args: list[str]) -> int:
    """A local web page over a run: see ``ldmcore.serve``."""
    try:
        from ldmcore.serve.command import serve_command
    except ImportError as exc:
        if exc.name not in ("fastapi", "starlette", "uvicorn"):
            raise
        raise ConfigError(f"the web page needs FastAPI and uvicorn ({exc.name} is not installed): "
                          f"pip install 'ldmcore[serve]'.") from None
    return serve_command(args)


def cmd_eval(args: list[str]) -> int:
    """Score a run with the metrics its condition plugins register: samples of held-out
    conditions when its dataset has a held-out split, else a folder of ``ldm sample`` output
    (``samples=DIR``, default ``RUN_DIR/samples/final``); see ``ldmcore.eval.tasks``. Comma
    lists (``guidance=1,3,5``) score every combination (``ldmcore.eval.sweep``)."""
    from ldmcore.eval.record import record_eval
    from ldmcore.eval.request import parse_eval_request
    from ldmcore.eval.sweep import eval_lists, run_eval_sweep

    if eval_lists(args):
        out, table = run_eval_sweep(args, _evaluate)
        print(table, end="")
        print(f"report: {out} (a folder per combination, contact_sheet.png, summary.md, summary.csv)")
        return 0
    req = parse_eval_request(args)
    run = req.run
    metrics, scored = _evaluate(req, run)
    report = run / "eval.json"
    report.write_text(json.dumps(metrics, indent=1))
    record_eval(run, metrics)  # metrics.jsonl (stage eval, the checkpoint's step) and plots/
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else (
            json.dumps(value) if isinstance(value, (dict, list)) else value)
        print(f"{key:32s} {shown}")
    print(f"report: {report}; samples: {scored}; plots: {run / 'plots'}")
    return 0


def _evaluate(req: EvalRequest, out: Path) -> tuple[dict, Path]:
    """One evaluation as ``req`` asks; a held-out grid is written into ``out``. Returns the
    report and what was scored."""
    from ldmcore.eval.tasks import evaluate_folder, evaluate_run
    from ldmcore.registry import default_registry
    from ldmcore.runfolder import run_config

    run = req.run
    held_out = default_registry().dataset(run_config(run).data.name).held_out is not None
    if req.samples is not None or not held_out:
        folder = req.samples or run / "samples" / "final"
        return evaluate_folder(run, folder), folder
    metrics = evaluate_run(run, n=req.n, steps=req.steps, seed=req.seed, out=out,
                           average=req.average, precision=req.precision, threads=req.threads,
                           sampler=req.sampler, progress=req.progress, guidance=req.guidance,
                           plugin_guidance=req.plugin_guidance)
    return metrics, out / "eval_grid.png"


def cmd_plugins(args: list[str]) -> int:
    from dataclasses import asdict

    from ldmcore.registry import default_registry

    unknown = [a for a in args if a != "--json"]
    if unknown:
        raise ConfigError(f"ldm plugins takes only --json, not {unknown[0]!r}.")
    reg = default_registry()
    infos = reg.infos()
    dirs = [{"package": d.package, "path": str(d.path)} for d in reg.config_dirs]
    if "--json" in args:
        print(json.dumps({"plugins": [asdict(i) for i in infos], "config_dirs": dirs,
                          "broken": reg.broken, "clashes": reg.clashes}, indent=1))
        return 0
    rows = [("name", "injection", "package", "version", "trainable", "hooks")]
    rows += [(i.name, ",".join(i.injections), i.package, i.version, str(i.trainable),
              ",".join(i.hooks)) for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    for d in dirs:
        print(f"configs: {d['package']}: {d['path']}")
    for name, why in sorted(reg.broken.items()):
        print(f"broken: {name}: {why}")
    for what, packages in sorted(reg.clashes.items()):
        print(f"clash: {what} is registered by {' and '.join(packages)} (runs that use it stop)")
    return 0


def cmd_doctor(args: list[str]) -> int:
    from ldmcore.doctor import main as doctor

    return doctor(args)


def cmd_import(args: list[str]) -> int:
    from ldmcore.interop.convert import import_pretrained
    from ldmcore.interop.options import ImportOptions

    usage = ("ldm import SOURCE OUT_DIR [tokenizer=DIR prediction=eps|v image_size=N overwrite=true]"
             " | ldm import PLUGIN_SOURCE OUT_DIR attach_to=RUN [condition=image name=N "
             "image_encoder=DIR]")
    (source, out), rest = positional(args, ("SOURCE", "OUT_DIR"), usage)
    opts = parse_options(rest, ImportOptions)
    attached = ("condition", "name", "image_encoder")
    if opts.attach_to is not None:
        from ldmcore.interop.attach_import import import_attached

        named = {k: getattr(opts, k) for k in attached if getattr(opts, k) is not None}
        run = import_attached(source, out, opts.attach_to, overwrite=opts.overwrite, **named)
        print(f"imported: {run}, the run it was attached to with its plugin (config.yaml, "
              f"checkpoints/last.safetensors, plugins/); sample with ldm sample run={run} "
              f"cond.text=\"a prompt\" cond.<plugin>=HINT_OR_REFERENCE.png")
        return 0
    misplaced = [k for k in attached if getattr(opts, k) is not None]
    if misplaced:
        raise ConfigError(f"{', '.join(misplaced)}= go with attach_to=RUN (importing a ControlNet, "
                          f"T2I-Adapter or IP-Adapter as a plugin of RUN).")
    run = import_pretrained(source, out, **opts.model_dump(exclude_none=True,
                                                           exclude={"attach_to", *attached}))
    print(f"imported: {run} (config.yaml, checkpoints/last.safetensors, import.json); sample with "
          f"ldm sample run={run} cond.text=\"a prompt\"")
    return 0


def cmd_export(args: list[str]) -> int:
    from ldmcore.interop.export import export_command

    path, kind = export_command(args)
    print(f"exported ({kind}): {path}")
    return 0


def cmd_new_plugin(args: list[str]) -> int:
    from ldmcore.scaffold import NewPluginOptions, write_plugin

    names = [a for a in args if "=" not in a]
    opts = parse_options([a for a in args if "=" in a], NewPluginOptions)
    if len(names) != 1:
        raise ConfigError("ldm new-plugin takes one NAME (a lower-case identifier such as "
                          "demo_cond) and optionally out=DIR, the folder to write it in.")
    root = write_plugin(names[0], opts.out, opts.injection)
    print(f"wrote {root}: install it with `pip install -e {root}`, then run its tests with "
          f"`pytest {root}`; `ldm plugins` lists it once installed.")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "plugins": cmd_plugins,
            "import": cmd_import, "export": cmd_export, "new-plugin": cmd_new_plugin,
            "doctor": cmd_doctor, "serve": cmd_serve}


def _check_utf8(args: list[str]) -> None:
    """Arguments that are not valid UTF-8 reach Python as lone surrogates, which would fail
    deep inside a tokenizer or a JSON writer; name the argument instead."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(exc.object[exc.start]) - 0xDC00  # surrogateescape keeps the byte here
            shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise ConfigError(f"argument {shown!r} is not valid UTF-8 (byte 0x{byte:02x} at "
                              f"character {exc.start}); write it in UTF-8.") from None


def _report(command: str, err: LdmError) -> int:
    """Print a user error as one paragraph and return its exit status."""
    # wrap only at spaces: paths and keys in the message stay whole, so they can be copied
    print("\n".join(textwrap.wrap(f"ldm {command}: error: {err}", width=100,
                                   break_long_words=False, break_on_hyphens=False)),
          file=sys.stderr)
    return err.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage:" + USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"ldm: unknown command {command!r}: {nearest(command, COMMANDS)}\nusage:{USAGE}",
              file=sys.stderr)
        return 2
    try:
        _check_utf8(rest)
        if HELP.intersection(rest):
            from ldmcore.helptext import command_help

            print(command_help(command, [a for a in rest if a not in HELP]), end="")
            return 0
        return COMMANDS[command](rest)
    except LdmError as err:
        return _report(command, err)
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        return _report(command, LdmError(
            f"cannot write {err.filename or 'a file'!r}: {err.strerror}. Free space (or raise the "
            f"quota or the file-size limit) and run the command again; a training run keeps its "
            f"last checkpoint (resume=true continues it)."))
    except KeyboardInterrupt:
        print(f"ldm {command}: interrupted; a training run keeps its last checkpoint "
              f"(resume=true continues it).", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
