"""Data parallelism: 2 CPU processes under torchrun (gloo) reproduce the single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldmcore import checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}


def _train(prefix: list[str], run: Path, ae: Path, batch: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, "-m", "ldmcore.cli", "train", "experiment=smoke", f"run_dir={run}",
         f"autoencoder.checkpoint={ae}", "trainer.precision=fp32", "trainer.threads=1",
         f"trainer.batch_size={batch}", "trainer.max_steps=4", "trainer.checkpoint_every=2",
         "sampler.steps=2", *extra],
        env=ENV, capture_output=True, text=True, timeout=600)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ae") / "ae"
    proc = _train([sys.executable], run, Path("unused"), 8, "autoencoder.checkpoint=null",
                  "trainer.max_steps=0")
    assert proc.returncode == 0, proc.stderr
    return run / "checkpoints" / "autoencoder.safetensors"


def test_two_processes_match_one_with_the_same_global_batch(autoencoder: Path, tmp_path: Path) -> None:
    single = _train([sys.executable], tmp_path / "single", autoencoder, 16)
    assert single.returncode == 0, single.stderr
    ddp = _train(TORCHRUN, tmp_path / "ddp", autoencoder, 8)
    assert ddp.returncode == 0, ddp.stderr + ddp.stdout
    a, meta_a = checkpoint.load(tmp_path / "single" / "checkpoints" / "last.safetensors")
    b, meta_b = checkpoint.load(tmp_path / "ddp" / "checkpoints" / "last.safetensors")
    assert meta_a["step"] == meta_b["step"] == 4
    trained = [k for k in a if k.startswith(("unet.", "ema.", "conditioner."))]
    assert trained
    for key in trained:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # the weights moved: the comparison is not between two untouched initialisations
    init_moved = any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.startswith("unet.out."))
    assert init_moved
    metrics = (tmp_path / "ddp" / "metrics.jsonl").read_text()
    assert '"world_size": 2' in metrics and '"global_batch": 16' in metrics


def test_a_failing_rank_stops_the_job_with_its_error(autoencoder: Path, tmp_path: Path) -> None:
    """Rank 1 raises while rank 0 waits in an all-reduce: the job ends, with rank 1's message."""
    script = Path(__file__).parent / "scripts" / "train_with_failing_rank.py"
    proc = subprocess.run(
        [*TORCHRUN, str(script), "experiment=smoke", f"run_dir={tmp_path / 'fail'}",
         f"autoencoder.checkpoint={autoencoder}", "trainer.precision=fp32", "trainer.threads=1",
         "trainer.batch_size=8", "trainer.max_steps=4"],
        env=ENV, capture_output=True, text=True, timeout=300)  # a hang would time out
    assert proc.returncode != 0
    assert "rank 1 cannot read its shard" in proc.stderr
