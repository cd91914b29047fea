"""``ldm train -m``: Hydra's sweeper expands the lists, its launcher runs the jobs, and the
summary reports each job's overrides and final figures.

The truth each test holds the sweep to: the jobs are the cartesian product of the lists (read
back from each run's own config and checkpoint), every run trained as many steps as its job
asked, the summary's losses are the ones the runs logged, and the joblib launcher (jobs in
worker processes) trains the same weights as the basic launcher (one after another).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ldmcore import checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
LRS, STEPS = ("0.001", "0.0005"), ("2", "3")
SWEEP = ["experiment=smoke", "trainer.precision=fp32", f"trainer.lr={','.join(LRS)}",
         f"trainer.max_steps={','.join(STEPS)}"]


def ldm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldmcore.cli", *args], capture_output=True,
                          text=True, env=ENV, timeout=300)


def suggested_command(stderr: str) -> list[str]:
    """The ``ldm train -m ...`` an error message suggests, as words."""
    found = re.search(r"\(ldm (train -m [^)]*)\)", " ".join(stderr.split()))
    assert found, stderr
    return found.group(1).split()


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    """The same 2x2 sweep with the basic launcher (the command the error without -m suggests,
    pasted) and with the joblib launcher (two worker processes)."""
    root = tmp_path_factory.mktemp("sweeps")
    refused = ldm("train", *SWEEP, f"run_dir={root / 'single'}")
    assert refused.returncode == 2 and "add -m" in refused.stderr
    assert not (root / "single").exists()
    pasted = suggested_command(refused.stderr)
    folders = {"basic": root / "basic", "joblib": root / "joblib"}
    basic = ldm(*pasted, f"hydra.sweep.dir={folders['basic']}")
    assert basic.returncode == 0, basic.stderr
    joblib = ldm("train", "-m", *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 f"hydra.sweep.dir={folders['joblib']}")
    assert joblib.returncode == 0, joblib.stderr
    return folders


def job_runs(folder: Path) -> dict[tuple[str, str], Path]:
    """(lr, max_steps) of each run folder, read from the run's own resolved config."""
    import yaml

    runs = {}
    for marker in folder.glob("*/.ldmcore-run"):
        cfg = yaml.safe_load((marker.parent / "config.yaml").read_text())
        runs[(repr(cfg["trainer"]["lr"]), str(cfg["trainer"]["max_steps"]))] = marker.parent
    return runs


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_runs_every_combination(sweeps: dict[str, Path], launcher: str) -> None:
    runs = job_runs(sweeps[launcher])
    assert set(runs) == set(itertools.product(LRS, STEPS))
    for (_, steps), run in runs.items():
        _, meta = checkpoint.load(run / "checkpoints" / "last.safetensors")
        assert meta["step"] == int(steps)


def test_joblib_launcher_ran_the_jobs(sweeps: dict[str, Path]) -> None:
    """The launcher Hydra was told to use is the one that ran (its own multirun.yaml says so),
    and jobs in worker processes train the same weights as jobs run one after another."""
    import torch
    import yaml

    used = yaml.safe_load((sweeps["joblib"] / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert "joblib" in used["_target_"] and used["n_jobs"] == 2
    basic, parallel = job_runs(sweeps["basic"]), job_runs(sweeps["joblib"])
    for key in basic:
        a, _ = checkpoint.load(basic[key] / "checkpoints" / "last.safetensors")
        b, _ = checkpoint.load(parallel[key] / "checkpoints" / "last.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng."))


def test_summary_reports_each_job(sweeps: dict[str, Path]) -> None:
    folder = sweeps["basic"]
    with (folder / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    for row in rows:
        run = Path(row["run"])
        logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in logged if r["stage"] == "diffusion" and "loss" in r]
        assert float(row["loss"]) == pytest.approx(losses[-1], rel=1e-12)
        assert (row["trainer.lr"], row["trainer.max_steps"]) in set(itertools.product(LRS, STEPS))
        assert row["steps"] == row["trainer.max_steps"]
    table = (folder / "summary.md").read_text().splitlines()
    head = next(line for line in table if line.startswith("| job"))
    assert "trainer.lr" in head and "trainer.max_steps" in head and "experiment" not in head
    assert sum(line.startswith("| ") for line in table) == 1 + 4


def test_bad_value_stops_the_sweep_before_any_job(tmp_path: Path) -> None:
    proc = ldm("train", "-m", "experiment=smoke", "trainer.lr=1e-3,fast",
               f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2
    assert "trainer.lr" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_failed_job_is_reported_and_the_others_run(tmp_path: Path) -> None:
    """A batch larger than the data is refused when the job starts (not at composition): that
    job fails with its message, the other trains, and the sweep's status says one failed."""
    folder = tmp_path / "sweep"
    proc = ldm("train", "-m", "experiment=smoke", "trainer.max_steps=1", "data.limit=32",
               "trainer.batch_size=8,64", f"hydra.sweep.dir={folder}")
    assert proc.returncode == 1, proc.stderr
    jobs = {json.loads(p.read_text())["overrides"][-1]: json.loads(p.read_text())
            for p in (folder / "jobs").glob("*.json")}
    assert jobs["++trainer.batch_size=8"]["status"] == "completed"
    failed = jobs["++trainer.batch_size=64"]
    assert failed["status"] == "failed" and "trainer.batch_size=64" in failed["error"]
    assert "2 jobs: 1 completed, 1 failed" in (folder / "summary.md").read_text()


def test_a_signal_stops_the_whole_sweep_and_keeps_what_ran(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM (a scheduler's) in job 0 stops the sweep there, with the signal's exit status;
    the stopped run is kept to resume, later jobs never start, and the summary says so."""
    import signal

    from ldmcore import train as train_module
    from tests.reliability import run_cli

    def interrupted_stage_1(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(train_module, "train_autoencoder", interrupted_stage_1)
    folder = tmp_path / "sweep"
    out = run_cli("train", "-m", "experiment=smoke", "trainer.lr=1e-3,5e-4", f"hydra.sweep.dir={folder}")
    assert out.escaped is None and out.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in out.paragraph
    assert json.loads((folder / "jobs" / "0.json").read_text())["status"] == "stopped"
    assert not (folder / "jobs" / "1.json").exists() and not (folder / "1").exists()
    assert (folder / "0" / ".ldmcore-run").is_file()
    assert "1 job: 1 stopped" in (folder / "summary.md").read_text()
    assert "| 0 | smoke | 0.001 | stopped |" in (folder / "summary.md").read_text()


def test_sweep_eval_puts_each_runs_ldm_eval_figures_in_the_summary(tmp_path: Path) -> None:
    from tests.reliability import run_cli

    folder = tmp_path / "sweep"
    out = run_cli("train", "-m", "experiment=smoke", "data=shapes", "data.channels=3",
                  "condition=[layout]", "data.limit=32", "trainer.max_steps=1", "trainer.lr=1e-3,5e-4",
                  "sweep.eval=true", "sweep.eval_n=2", f"hydra.sweep.dir={folder}")
    assert out.escaped is None and out.code == 0, out.paragraph
    with (folder / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        report = json.loads((Path(row["run"]) / "eval.json").read_text())
        assert report["samples"] == 2
        assert float(row["eval.layout_mean_iou"]) == report["layout_mean_iou"]
    refused = run_cli("train", "-m", "experiment=smoke", "trainer.lr=1e-3,5e-4", "sweep.eval=true",
                      f"hydra.sweep.dir={tmp_path / 'digits'}")
    assert refused.code == 2 and "held-out" in refused.paragraph
    assert not (tmp_path / "digits").exists()
