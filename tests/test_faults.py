"""Faults while training: SIGKILL at random moments (also mid-checkpoint), SIGTERM, a second
writer, a full disk, temp files left by a kill. Nothing a run learned before the last checkpoint
is lost, a resumed run ends bit-identical to an uninterrupted one, and what went wrong is said
in one paragraph.

Real processes, because only they can be killed; each costs seconds of imports, so the kill
harness runs ``KILLS`` kills here and 20 in ``make bench`` (python -m benchmarks.reliability).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ldmcore import checkpoint
from tests.reliability import ldm_process, run_cli, same_weights, temp_files, train_with_kills, wait_for

KILLS = 2


def quick(run: Path, trained: Path, *extra: str) -> list[str]:
    """Overrides of a stage-2-only smoke run (the trained run's autoencoder), float32."""
    return ["experiment=smoke", f"run_dir={run}", "trainer.precision=fp32",
            f"autoencoder.checkpoint={trained / 'checkpoints' / 'autoencoder.safetensors'}", *extra]


def logged_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    return [r["step"] for r in map(json.loads, lines) if r.get("stage") == "diffusion" and "step" in r]


def test_sigkills_at_random_moments_resume_to_the_uninterrupted_weights(trained_run, tmp_path):
    every_step = ("trainer.max_steps=8", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
                  "trainer.log_every=1")
    reference = tmp_path / "reference"
    assert run_cli("train", *quick(reference, trained_run, *every_step)).code == 0
    killed = tmp_path / "killed"
    report = train_with_kills(killed, quick(killed, trained_run, *every_step), KILLS, seed=0)
    assert report.kills >= 1, report.events  # else nothing was tested
    assert report.during_write >= 1, report.events  # the even kills wait for a checkpoint write
    assert temp_files(killed) == []  # the torn writes' temp files were removed at the next start
    last = killed / "checkpoints" / "last.safetensors"
    assert checkpoint.load(last)[1]["step"] == 8
    assert same_weights(last, reference / "checkpoints" / "last.safetensors") == []


def test_sigterm_finishes_the_step_checkpoints_and_a_second_writer_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    proc = ldm_process("train", *quick(run, trained_run, "trainer.max_steps=100000",
                                       "trainer.checkpoint_every=100000", "trainer.log_every=1"),
                       stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(logged_steps(run)) >= 2, proc, poll=0.05), proc.stderr.read()
        second = run_cli("train", *quick(run, trained_run, "resume=true"))
        assert second.clean and second.code == 2
        assert f"process {proc.pid} is training in it" in second.paragraph, second.paragraph
    finally:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    message = " ".join(err.split())
    assert "Traceback" not in err and message.startswith("ldm train: error: stopped by SIGTERM after step")
    step = checkpoint.load(run / "checkpoints" / "last.safetensors")[1]["step"]
    assert f"after step {step} of 100000" in message and "resume=true" in message
    assert step >= max(logged_steps(run))  # every logged step is in the checkpoint
    assert temp_files(run) == []
    resumed = run_cli("train", *quick(run, trained_run, "resume=true", f"trainer.max_steps={step + 1}"))
    assert resumed.code == 0, resumed.stderr  # the lock went with the process


def test_a_file_size_limit_on_resume_keeps_the_previous_checkpoint(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.safetensors"
    before = last.read_bytes()
    limit = len(before) // 4  # the metrics lines fit, the checkpoint does not
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # Python ignores SIGXFSZ: EFBIG
    try:
        out = run_cli("train", *quick(run, trained_run, "resume=true", "trainer.max_steps=7"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert out.clean and out.code == 2, out.escaped or out.stderr
    message = out.paragraph
    assert message.startswith("ldm train: error: cannot write checkpoint")
    assert "ulimit -f" in message and " free" in message
    needed = float(re.search(r"needs about ([0-9.]+) MB", message).group(1))
    assert abs(needed - len(before) / 2**20) < 0.01 * needed  # tensors and metadata: the file
    assert last.read_bytes() == before and temp_files(run) == []


def _tmpfs(folder: Path, megabytes: int) -> bool:
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_keeps_the_last_checkpoint_and_names_the_disk(trained_run, tmp_path):
    """A real full disk: a 30 MB tmpfs holds one 17 MB checkpoint, not a second beside it."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, 30):
        pytest.skip("mounting a tmpfs needs root (the file-size-limit test covers the same path)")
    try:
        run = disk / "run"
        out = run_cli("train", *quick(run, trained_run, "trainer.max_steps=6", "trainer.checkpoint_every=3",
                                      "trainer.keep_checkpoints=0"))
        assert out.clean and out.code == 2, out.escaped or out.stderr
        assert "No space left on device" in out.paragraph and str(run / "checkpoints") in out.paragraph
        meta = checkpoint.load(run / "checkpoints" / "last.safetensors")[1]
        assert meta["step"] == 3 and temp_files(run) == []
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)  # lazy: mapped files close later


def test_temp_files_of_killed_writes_are_removed_at_the_next_start(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    orphans = [run / "checkpoints" / ".last.safetensors.k1ll3d.tmp", run / "plugins" / ".x.safetensors.abc.tmp"]
    for o in orphans:
        o.parent.mkdir(exist_ok=True)
        o.write_bytes(b"torn")
    out = run_cli("train", *quick(run, trained_run, "resume=true", "trainer.max_steps=7"))
    assert out.code == 0, out.escaped or out.stderr
    assert temp_files(run) == []
