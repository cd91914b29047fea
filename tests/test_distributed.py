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


@pytest.fixture(scope="module")
def single(autoencoder: Path, tmp_path_factory) -> Path:
    """The reference: one process, global batch 16, 4 steps (checkpoints at steps 2 and 4)."""
    run = tmp_path_factory.mktemp("single") / "single"
    proc = _train([sys.executable], run, autoencoder, 16)
    assert proc.returncode == 0, proc.stderr
    return run


def _assert_same_training(run: Path, reference: Path) -> None:
    """Weights, EMA and optimizer moments equal the reference run's within float32 tolerance."""
    a, meta_a = checkpoint.load(reference / "checkpoints" / "last.safetensors")
    b, meta_b = checkpoint.load(run / "checkpoints" / "last.safetensors")
    assert meta_a["step"] == meta_b["step"] == 4
    assert set(a) == set(b)  # full (unsharded) tensors under every strategy
    trained = [k for k in a if k.startswith(("unet.", "ema.", "conditioner.", "optim."))]
    assert trained
    for key in trained:
        assert a[key].shape == b[key].shape, key
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # the weights moved: the comparison is not between two untouched initialisations
    init_moved = any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.startswith("unet.out."))
    assert init_moved


def test_two_processes_match_one_with_the_same_global_batch(autoencoder: Path, single: Path,
                                                           tmp_path: Path) -> None:
    ddp = _train(TORCHRUN, tmp_path / "ddp", autoencoder, 8)
    assert ddp.returncode == 0, ddp.stderr + ddp.stdout
    _assert_same_training(tmp_path / "ddp", single)
    metrics = (tmp_path / "ddp" / "metrics.jsonl").read_text()
    assert '"world_size": 2' in metrics and '"global_batch": 16' in metrics


def test_fsdp_matches_one_process_and_writes_full_checkpoints(autoencoder: Path, single: Path,
                                                               tmp_path: Path) -> None:
    """FSDP shards the UNet over 2 processes; the checkpoint is the single process's, unsharded."""
    fsdp = _train(TORCHRUN, tmp_path / "fsdp", autoencoder, 8, "trainer.strategy=fsdp")
    assert fsdp.returncode == 0, fsdp.stderr + fsdp.stdout
    _assert_same_training(tmp_path / "fsdp", single)
    assert (tmp_path / "fsdp" / "samples" / "step_4.png").is_file()  # sampled with the sharded UNet


def test_resume_across_strategies(autoencoder: Path, single: Path, tmp_path: Path) -> None:
    """A 2-step single-process run resumed under FSDP, and an FSDP step-2 checkpoint resumed by
    one process, both end where 4 uninterrupted single-process steps end."""
    first = tmp_path / "one_then_fsdp"
    assert _train([sys.executable], first, autoencoder, 16, "trainer.max_steps=2").returncode == 0
    resumed = _train(TORCHRUN, first, autoencoder, 8, "trainer.strategy=fsdp", "resume=true")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    _assert_same_training(first, single)

    # the FSDP run above wrote step_2 from its own (resumed at 2) state: start over from an
    # FSDP-written step-2 checkpoint instead
    fsdp = tmp_path / "fsdp_then_one"
    two = _train(TORCHRUN, fsdp, autoencoder, 8, "trainer.strategy=fsdp", "trainer.max_steps=2")
    assert two.returncode == 0, two.stderr + two.stdout
    back = _train([sys.executable], fsdp, autoencoder, 16, "resume=true")
    assert back.returncode == 0, back.stderr
    _assert_same_training(fsdp, single)


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
