"""Pixel space (``autoencoder.kind: pixels``): the identity first stage of the LDM paper's f=1
baseline. It must be exactly the identity, need no stage 1, and run the whole pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldmcore.build import backbone_spec, build_autoencoder
from ldmcore.config import load
from ldmcore.nn.autoencoder import AutoencoderShape
from ldmcore.nn.pixel_space import PixelSpace
from ldmcore.runfolder import load_run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def ldm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldmcore.cli", *args], capture_output=True,
                          text=True, env=ENV, timeout=300)


def test_pixel_space_is_exactly_the_identity():
    ps = PixelSpace(AutoencoderShape(in_channels=3, out_channels=3, latent_channels=3, ch_mult=(1,)))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    z = ps.latents(x, torch.Generator().manual_seed(0))
    assert torch.equal(z, x) and torch.equal(ps.images(z), x)
    assert torch.equal(ps.encode(x).sample(torch.Generator().manual_seed(1)), x)  # point mass
    assert list(ps.parameters()) == []
    with pytest.raises(ValueError, match="latent_channels must equal in_channels"):
        PixelSpace(AutoencoderShape(in_channels=3, latent_channels=4, ch_mult=(1,)))


def test_pixels_config_derives_f1_and_the_image_channels():
    cfg = load(["experiment=smoke", "autoencoder=pixels", "data.channels=3"])
    assert cfg.autoencoder.kind == "pixels" and cfg.autoencoder.downsample_factor == 1
    spec = backbone_spec(cfg)
    assert spec.latent_channels == 3 and spec.latent_size == (16, 16)
    assert isinstance(build_autoencoder(cfg), PixelSpace)


def test_pixel_space_trains_samples_and_refuses_export(tmp_path: Path):
    run = tmp_path / "pixels"
    proc = ldm("train", "experiment=smoke", "autoencoder=pixels", f"run_dir={run}")
    assert proc.returncode == 0, proc.stderr
    assert not (run / "checkpoints" / "autoencoder.safetensors").exists()  # no stage 1
    _, model, _ = load_run(run)
    assert isinstance(model.autoencoder, PixelSpace) and model.latent_shape() == (1, 16, 16)
    out = tmp_path / "samples"
    proc = ldm("sample", f"run={run}", f"out={out}", "n=2", "cond.class=3", "steps=2")
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("*.png"))) >= 2
    proc = ldm("export", str(run), str(tmp_path / "exported"), "layout=diffusers")
    assert proc.returncode == 2 and "pixel-space model" in proc.stderr
