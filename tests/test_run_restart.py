"""Run folders that forgive: a start that failed (or was killed) before its first checkpoint
can be run again as it was typed, ``resume=true`` on such a folder says there is nothing to
continue and stops, and ``resume=auto`` continues when it can and starts afresh when not."""

from __future__ import annotations

import json
from pathlib import Path

from ldmcore import checkpoint
from ldmcore.runfolder import MARKER
from tests.reliability import run_cli
from tests.test_bad_input import refused
from tests.test_run_ownership import stage2


def failed_start(run: Path) -> None:
    """The folder a start leaves when it is killed before its first checkpoint."""
    (run / "checkpoints").mkdir(parents=True)
    (run / "samples").mkdir()
    (run / MARKER).write_text(json.dumps({"made_by": "ldmcore"}) + "\n")
    (run / "config.yaml").write_text("name: smoke\n")
    (run / "metrics.jsonl").write_text(json.dumps({"stage": "hardware"}) + "\n")


def step_of(run: Path) -> int:
    return checkpoint.metadata(run / "checkpoints" / "last.safetensors")["step"]


def test_resume_true_without_a_checkpoint_stops_and_says_so(tmp_path, trained_run):
    run = tmp_path / "run"
    failed_start(run)
    said = refused(tmp_path, *stage2(run, trained_run, "resume=true"),
                   words=("resume=true", "no checkpoint to continue from", "resume=auto"))
    assert str(run / "checkpoints" / "last.safetensors") in said


def test_a_failed_start_is_retried_as_typed(tmp_path, trained_run):
    run = tmp_path / "run"
    failed_start(run)
    out = run_cli(*stage2(run, trained_run))
    assert out.code == 0, out.escaped or out.stderr
    assert step_of(run) == 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["stage"] == "hardware" and "precision" in lines[0]  # the old metrics are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_auto_starts_afresh_then_continues(tmp_path, trained_run):
    run = tmp_path / "run"
    failed_start(run)
    first = run_cli(*stage2(run, trained_run, "resume=auto"))
    assert first.code == 0, first.escaped or first.stderr
    assert step_of(run) == 1
    again = run_cli(*stage2(run, trained_run, "resume=auto", "trainer.max_steps=2"))
    assert again.code == 0, again.escaped or again.stderr
    assert step_of(run) == 2
    steps = [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("stage") == "diffusion"]
    assert [s for s in steps if s is not None] == [1, 2]  # continued: step 1 was not redone


def test_a_run_with_a_checkpoint_is_never_replaced_unasked(tmp_path, trained_run):
    run = tmp_path / "run"
    assert run_cli(*stage2(run, trained_run)).code == 0
    refused(tmp_path, *stage2(run, trained_run), words=("already holds a run", "resume=true"),
            ignore=(".lock",))
