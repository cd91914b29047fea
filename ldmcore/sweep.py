"""``ldm train -m``: a multirun through Hydra's own sweeper and launcher.

::

    ldm train -m experiment=smoke trainer.lr=1e-3,5e-4 trainer.batch_size=8,16
    ldm train -m ... hydra/launcher=joblib          # jobs in parallel processes (joblib)
    ldm train -m ... hydra/sweeper=optuna 'trainer.lr=interval(1e-4,1e-3)'  # if installed
    ldm train -m ... sweep.eval=true sweep.eval_n=32  # score each run with `ldm eval` too

ldmcore does not expand the lists itself: it hands the overrides to Hydra's ``multirun``, so
the sweeper named by ``hydra/sweeper`` (basic by default) decides the jobs and the launcher
named by ``hydra/launcher`` (basic: one after another in this process; joblib, submitit, ray:
whatever is installed) runs them. Each job composes its own config through Hydra's config
loader and calls ``train_job`` (the task function), which validates it as ``ldm train`` does
and trains in ``hydra.sweep.dir/hydra.sweep.subdir`` (``runs/NAME_sweep/DATE/N`` by default).
Because a launcher may run the job in another process or on another machine, everything the
summary needs travels through the file system, never through the launcher's return values:
the job writes ``SWEEP/jobs/N.json`` (its overrides, status, objective) beside its run folder,
and ``ldmcore.sweep_summary`` reads those files and the runs' ``metrics.jsonl`` / ``eval.json``
into ``summary.md`` and ``summary.csv``. The task returns the final training loss, the float
an optimising sweeper (optuna, nevergrad, ax) minimises. Why this design: docs/sweeps.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from ldmcore.arguments import key_values
from ldmcore.config import (conf_dir, from_composed, hydra_overrides, load, register_resolvers,
                            with_sampler_choice)
from ldmcore.curves import final_figures, read_records
from ldmcore.errors import ConfigError, Interrupted, LdmError
from ldmcore.eval.record import record_eval
from ldmcore.eval.tasks import evaluate_run
from ldmcore.registry import Registry, default_registry
from ldmcore.schema import Strict, format_validation_error
from ldmcore.sweep_summary import SweepSummary, write_summary
from ldmcore.train import train

MULTIRUN_FLAGS = ("-m", "--multirun")
JOBS = "jobs"  # SWEEP/jobs/N.json: one record per job, written by the job itself
CHECKED_JOBS = 64  # the most job configs validated before any job starts


class SweepInterrupted(KeyboardInterrupt):
    """A job stopped by a signal. A ``KeyboardInterrupt``, so it passes the ``except Exception``
    with which Hydra's ``run_job`` records a failed job, and stops the launcher's loop."""

    def __init__(self, error: Interrupted) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class TrainJob:
    """The task function Hydra's launcher calls once per job (picklable: launchers such as
    joblib and submitit send it to other processes). ``eval_n`` > 0 scores the trained run on
    that many held-out conditions (``ldm eval``) and writes ``RUN/eval.json``."""

    eval_n: int = 0

    def __call__(self, job_cfg: Any) -> float:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        hydra = HydraConfig.get()
        run_dir = Path(hydra.runtime.output_dir)
        num = int(hydra.job.num)
        record: dict[str, Any] = {"job": num, "run": run_dir.name,
                                  "overrides": list(hydra.overrides.task)}
        register_resolvers()  # a launcher's worker process starts without them
        try:
            given = [o.lstrip("+") for o in hydra.overrides.task]  # as the command line wrote them
            raw = OmegaConf.to_container(job_cfg, resolve=True, throw_on_missing=True)
            raw = with_sampler_choice({**raw, "run_dir": str(run_dir)}, given)
            cfg = from_composed(raw, overrides=given)
            train(cfg)
            if self.eval_n:
                report = evaluate_run(run_dir, n=self.eval_n, out=run_dir)
                (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
                record_eval(run_dir, report)
            record.update(status="completed",
                          objective=final_figures(read_records(run_dir / "metrics.jsonl")).get("loss"))
        except Interrupted as err:  # Ctrl-C or SIGTERM stops the sweep, not just this job
            record.update(status="stopped", error=str(err), objective=None)
            _write_json(run_dir.parent / JOBS / f"{num}.json", record)
            raise SweepInterrupted(err) from None
        except LdmError as err:  # a user error or a diverged run ends this job, not the sweep
            record.update(status="failed", error=str(err), objective=None)
        _write_json(run_dir.parent / JOBS / f"{num}.json", record)
        objective = record["objective"]
        return float("nan") if objective is None else float(objective)


def split_sweep_options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """(the ``sweep.*`` options of ``ldm train -m``, the Hydra overrides)."""
    mine = [a for a in args if a.partition("=")[0].startswith("sweep.")]
    allowed = {f"sweep.{k}" for k in SweepOptions.model_fields}
    return key_values(mine, allowed), [a for a in args if a not in mine]


def run_sweep(args: list[str], registry: Registry | None = None) -> SweepSummary:
    """Run the multirun that ``args`` (Hydra overrides and ``sweep.*`` options) describe and
    write its summary; every job's config is checked before the first one starts."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    registry = registry or default_registry()
    options, overrides = split_sweep_options(args)
    if any(o.partition("=")[0].lstrip("+") == "run_dir" for o in overrides):
        raise ConfigError("run_dir= names one run folder, but a sweep trains each job in its own: "
                          "hydra.sweep.dir/N (default runs/NAME_sweep/DATE_TIME/N). Drop run_dir "
                          "and set the sweep's folder with hydra.sweep.dir=PATH.")
    chosen = sweep_options(options)
    task = TrainJob(eval_n=chosen.eval_n if chosen.eval else 0)
    _check_jobs(overrides, registry, needs_held_out=task.eval_n > 0)
    ovr = hydra_overrides(overrides, registry)
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="ldm_train"):
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            folder = _sweep_dir(hydra, ovr)
            _claim_sweep_dir(folder)
            hydra.multirun(config_name="config", task_function=task,
                           overrides=[*ovr, f"hydra.sweep.dir={_quoted(str(folder))}"])
    except SweepInterrupted as stop:  # the jobs that ran keep their runs and their rows
        write_summary(folder)
        raise stop.error from None
    except HydraException as exc:  # composing the sweep (a launcher or sweeper not installed, ...)
        raise ConfigError(f"cannot run the sweep {' '.join(overrides)}: {' '.join(str(exc).split())} "
                          f"(installed sweepers and launchers: {_installed_plugins()}).") from None
    finally:
        GlobalHydra.instance().clear()
    return write_summary(folder)


class SweepOptions(Strict):
    """The ``sweep.*`` options of ``ldm train -m`` (not Hydra overrides: they say what to do
    with the runs, not how to train them)."""

    eval: bool = Field(False, description="score each run with `ldm eval` on held-out "
                                          "conditions; its figures join the summary")
    eval_n: int = Field(64, ge=1, description="held-out conditions each run is scored on")


def sweep_options(words: dict[str, str]) -> SweepOptions:
    """``{"sweep.eval": "true"}`` as validated options; a bad value names its ``sweep.`` key."""
    try:
        return SweepOptions.model_validate({k.removeprefix("sweep."): v for k, v in words.items()})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="sweep.", model=SweepOptions,
                                                  write_value=str)) from None


def _check_jobs(overrides: list[str], registry: Registry, needs_held_out: bool) -> None:
    """Validate the config of every job a list sweep makes (the first ``CHECKED_JOBS``), as
    ``ldm train`` would, so a misspelt key or a bad value stops the sweep before any job runs.
    Sweeps of ranges an optimising sweeper samples (``interval(...)``) are checked in the job."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # Hydra's grammar errors are the user's
        raise ConfigError(f"cannot read the overrides {overrides}: {' '.join(str(exc).split())}") from None
    user = [o for o in parsed if not o.get_key_element().startswith("hydra")]
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in user):
        return
    jobs = BasicSweeper.split_arguments(user, None)[0]
    for job in jobs[:CHECKED_JOBS]:
        cfg = load(job, registry)
        if needs_held_out and registry.dataset(cfg.data.name).held_out is None:
            raise ConfigError(f"sweep.eval=true scores each run on held-out conditions, but the "
                              f"dataset {cfg.data.name!r} has none; drop sweep.eval and score the "
                              f"runs afterwards with ldm sample and ldm eval samples=DIR.")


def _installed_plugins() -> str:
    """``hydra/sweeper=...`` and ``hydra/launcher=...`` choices Hydra finds installed."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper

    names = [f"{kind.__name__}: {', '.join(sorted(p.__name__ for p in Plugins.instance().discover(kind)))}"
             for kind in (Sweeper, Launcher)]
    return "; ".join(names)


def _sweep_dir(hydra: Any, overrides: list[str]) -> Path:
    """The sweep folder, resolved once (its default holds ``${now:...}``) so that every job and
    the summary agree on it."""
    from hydra.types import RunMode

    cfg = hydra.compose_config("config", overrides, run_mode=RunMode.MULTIRUN,
                               with_log_configuration=False)
    return Path(str(cfg.hydra.sweep.dir))


def _claim_sweep_dir(folder: Path) -> None:
    """A sweep folder is new, or empty: two sweeps in one folder would mix their jobs."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        held = "files" if folder.is_dir() else "a file"
        raise ConfigError(f"the sweep folder {str(folder)!r} already holds {held}, and two sweeps "
                          f"in one folder would mix their jobs; name a new or empty one with "
                          f"hydra.sweep.dir=PATH.")


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` whole or not at all (the summary may read it from another process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
