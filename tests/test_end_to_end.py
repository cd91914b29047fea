"""End to end: train -> checkpoint -> sample -> eval on the real digits, at smoke size.

Checks behaviour that can be known exactly: same seed gives the same pixels, resume gives the
same weights as an uninterrupted run, a killed run leaves a loadable checkpoint, a non-finite
loss keeps the last good checkpoint, and a plugin defined here trains and samples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ldmcore import checkpoint
from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, EncoderConfig, Injection,
                                  OutputSpec)
from ldmcore.config import load
from ldmcore.errors import TrainingDiverged
from ldmcore.hardware import cpu_info
from ldmcore.hookspecs import hookimpl
from ldmcore.registry import build_registry
from ldmcore.runfolder import load_run
from ldmcore.sample import parse_request, run_sampling
from ldmcore.train import train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def ldm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "ldmcore.cli", *args], capture_output=True,
                          text=True, env=ENV, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """One smoke-size run through the real command line (both stages)."""
    run = tmp_path_factory.mktemp("runs") / "smoke"
    ldm("train", "experiment=smoke", f"run_dir={run}")
    return run


def overrides(tmp: Path, smoke_run: Path, *extra: str) -> list[str]:
    """Smoke config reusing the smoke run's autoencoder (stage 1 is tested once)."""
    return ["experiment=smoke", f"run_dir={tmp}", "trainer.precision=fp32",
            f"autoencoder.checkpoint={smoke_run / 'checkpoints' / 'autoencoder.safetensors'}", *extra]


def test_run_folder_layout(smoke_run: Path) -> None:
    assert (smoke_run / "config.yaml").is_file()
    assert (smoke_run / "checkpoints" / "last.safetensors").is_file()
    assert (smoke_run / "checkpoints" / "autoencoder.safetensors").is_file()
    assert (smoke_run / "samples" / "step_6.png").is_file()
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["stage"] == "diffusion" and "loss" in r]
    assert steps == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    _, meta = checkpoint.load(smoke_run / "checkpoints" / "last.safetensors")
    assert meta["step"] == 6
    assert meta["plugins"]["class"]["package"] == "ldmcore"
    assert meta["config"]["conditions"]["class"]["num_classes"] == 10
    scale = [r["scale_factor"] for r in records if "scale_factor" in r]
    assert len(scale) == 1 and scale[0] > 0


def _hardware_records(run: Path) -> tuple[dict, dict]:
    """The precision/threads record of a run's metrics.jsonl and of its last checkpoint."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["stage"] == "hardware")
    return first, checkpoint.load(run / "checkpoints" / "last.safetensors")[1]["hardware"]


def test_auto_precision_is_chosen_from_the_cpu_and_recorded(smoke_run: Path) -> None:
    logged, saved = _hardware_records(smoke_run)
    expected = "bf16" if cpu_info().native_bf16 else "fp32"
    assert logged["precision"] == saved["precision"] == expected
    assert logged["precision_requested"] == "auto" and logged["threads"] == 1  # smoke sets 1
    assert cpu_info().model in saved["machine"]


def test_the_other_kind_of_cpu_trains_in_its_own_precision(smoke_run: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """``auto`` as it would choose on the other kind of CPU (AVX2-only <-> AMX) trains too."""
    native = cpu_info().native_bf16
    monkeypatch.setenv("LDM_NATIVE_BF16", "0" if native else "1")
    cpu_info.cache_clear()
    try:
        args = [a for a in overrides(tmp_path / "other", smoke_run, "trainer.max_steps=2")
                if a != "trainer.precision=fp32"]
        train(load(args))
    finally:
        monkeypatch.delenv("LDM_NATIVE_BF16")
        cpu_info.cache_clear()
    logged, saved = _hardware_records(tmp_path / "other")
    assert logged["precision"] == saved["precision"] == ("fp32" if native else "bf16")
    assert "LDM_NATIVE_BF16" in saved["precision_reason"]


def test_scale_factor_is_one_over_latent_std(smoke_run: Path) -> None:
    """LDM's scale_by_std: latents of the first batch have unit std after scaling."""
    cfg, model, _ = load_run(smoke_run)
    from ldmcore.build import build_dataset
    from ldmcore.data.datasets import collate

    ds = build_dataset("digits", image_size=cfg.data.image_size, channels=1)
    images = collate([ds[i] for i in range(256)])["image"]
    with torch.no_grad():
        z = model.autoencoder.latents(images, torch.Generator().manual_seed(0))
    assert abs(z.std().item() - 1.0) < 0.25


def test_sample_same_seed_same_pixels(smoke_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        ldm("sample", f"run={smoke_run}", "cond.class=[3,7]", "n=2", f"out={out}", "seed=5")
    index = json.loads((a / "samples.json").read_text())
    assert index["precision"] == ("bf16" if cpu_info().native_bf16 else "fp32")  # auto
    assert [r["conditions"]["class"] for r in index["samples"]] == [3, 3, 7, 7]
    assert [r["seed"] for r in index["samples"]] == [5, 6, 7, 8]
    for r in index["samples"]:
        assert (a / r["file"]).read_bytes() == (b / r["file"]).read_bytes()
    assert (a / "grid.png").is_file()


def test_sample_takes_precision_and_threads_settings(smoke_run: Path, tmp_path: Path) -> None:
    refused = ldm("sample", f"run={smoke_run}", "cond.class=1", "n=1", "precision=fp16",
                  f"out={tmp_path / 'fp16'}", check=False)
    assert refused.returncode == 2 and "fp16 is for CUDA" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "fp16").exists()
    ldm("sample", f"run={smoke_run}", "cond.class=1", "n=1", "precision=fp32", "threads=2",
        f"out={tmp_path / 'ok'}")
    index = json.loads((tmp_path / "ok" / "samples.json").read_text())
    assert (index["precision"], index["threads"], index["threads_requested"]) == ("fp32", 2, "2")


def test_sample_is_independent_of_batch_composition(smoke_run: Path, tmp_path: Path) -> None:
    """Sample i depends on seed+i only: asking for more samples does not change the first."""
    one = run_sampling(parse_request([f"run={smoke_run}", "cond.class=4", "n=1", "precision=fp32",
                                      f"out={tmp_path / 'one'}"]))
    four = run_sampling(parse_request([f"run={smoke_run}", "cond.class=4", "n=4", "precision=fp32",
                                       f"out={tmp_path / 'four'}"]))
    from PIL import Image
    import numpy as np

    x = np.asarray(Image.open(one / "0000.png"), dtype=np.int16)
    y = np.asarray(Image.open(four / "0000.png"), dtype=np.int16)
    assert np.abs(x - y).max() <= 1  # batched matmuls may round differently by one level


def test_eval_reports_fidelity(smoke_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "final"
    ldm("sample", f"run={smoke_run}", "cond.class=[0,1]", "n=2", f"out={out}")
    proc = ldm("eval", f"run={smoke_run}", f"samples={out}")
    report = json.loads((smoke_run / "eval.json").read_text())
    assert report["count"] == 4
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["reader_accuracy"] > 0.95  # the independent reader works on real digits
    assert "accuracy" in proc.stdout and "reader_accuracy" in proc.stdout


def test_resume_matches_uninterrupted_run(smoke_run: Path, tmp_path: Path) -> None:
    straight = train(load(overrides(tmp_path / "straight", smoke_run, "trainer.max_steps=6")))
    train(load(overrides(tmp_path / "resumed", smoke_run, "trainer.max_steps=3")))
    resumed = train(load(overrides(tmp_path / "resumed", smoke_run, "trainer.max_steps=6", "resume=true")))
    a, meta_a = checkpoint.load(straight.last)
    b, meta_b = checkpoint.load(resumed.last)
    assert meta_a["step"] == meta_b["step"] == 6
    assert set(a) == set(b)
    for key in a:
        if not key.startswith("rng."):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_non_finite_loss_stops_and_keeps_last_good(smoke_run: Path, tmp_path: Path, monkeypatch) -> None:
    from ldmcore.model import LatentDiffusion

    real = LatentDiffusion.loss
    calls = {"n": 0}

    def loss_that_diverges(self, *args, **kwargs):
        calls["n"] += 1
        value = real(self, *args, **kwargs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(LatentDiffusion, "loss", loss_that_diverges)
    with pytest.raises(TrainingDiverged, match="step 4"):
        train(load(overrides(tmp_path / "nan", smoke_run)))
    tensors, meta = checkpoint.load(tmp_path / "nan" / "checkpoints" / "last.safetensors")
    assert meta["step"] == 3  # checkpoint_every=3: the last good one
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_killed_training_leaves_loadable_checkpoint(smoke_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldmcore.cli", "train", *overrides(run, smoke_run),
         "trainer.max_steps=100000", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and not last.exists():
        time.sleep(0.2)
    time.sleep(1.5)  # let it overwrite last.safetensors a few more times, then kill mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists()
    tensors, meta = checkpoint.load(last)
    assert meta["step"] >= 1
    _, model, _ = load_run(run)
    assert model.unet.shape.vector_dim == 128


# -- a plugin defined here, registered through the plugin manager --------------------------------
class BlurConfig(EncoderConfig):
    channels: int = 1


class BlurEncoder(ConditionEncoder):
    """Concat condition: the image itself, averaged down to latent resolution."""

    name = "blur"
    injections = (Injection.CONCAT,)
    Config = BlurConfig

    def __init__(self, config: BlurConfig, backbone: BackboneSpec) -> None:
        super().__init__(config, backbone)
        self.null_map = torch.nn.Parameter(torch.zeros(config.channels, *backbone.latent_size))

    def output_specs(self) -> dict[Injection, OutputSpec]:
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (self.config.channels, *self.backbone.latent_size))}

    def batch_value(self, batch):
        return batch["image"]

    def forward(self, value: torch.Tensor):
        return {Injection.CONCAT: F.adaptive_avg_pool2d(value.to(self.null_map), self.backbone.latent_size)}

    def null(self, batch_size: int):
        return {Injection.CONCAT: self.null_map.expand(batch_size, -1, -1, -1)}


class BlurPlugin:
    @hookimpl
    def register_conditions(self, register):
        register(BlurEncoder)


def test_plugin_defined_in_test_trains_and_samples(smoke_run: Path, tmp_path: Path) -> None:
    registry = build_registry()
    registry.add_module(BlurPlugin(), package="test-blur", version="0.0.1")
    assert "blur" in {i.name for i in registry.infos()}
    cfg = load(overrides(tmp_path / "blur", smoke_run, "+conditions.blur.drop_prob=0.5",
                         "trainer.max_steps=2"), registry)
    run = train(cfg, registry)
    cfg, model, meta = load_run(run.root, registry)
    assert meta["plugins"]["blur"] == {"package": "test-blur", "version": "0.0.1",
                                        "module": __name__}
    # derived, not hand-set: latent channels + the blur map, and the class vector
    assert model.unet.shape.in_channels == cfg.autoencoder.latent_channels + 1
    assert model.unet.shape.vector_dim == 128
    image = torch.zeros(2, 1, 16, 16)
    out = model.sample({"class": torch.tensor([1, 2]), "image": image}, 2, model.sampling.but(steps=2),
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
