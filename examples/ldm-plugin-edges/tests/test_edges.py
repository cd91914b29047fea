"""Tests of ldm-plugin-edges: the ldmcore conformance kit, the edge maps themselves against
known geometry, and the whole path a user takes (install -> list -> train -> sample)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ldm_edges
from ldm_edges import EdgesEncoder, canny, load_edge_map
from ldmcore.config import validate_condition
from ldmcore.errors import ConfigError, PluginError
from ldmcore.testing import ConformanceTests, PluginCase

# one thread: at these tiny sizes more threads only add OpenMP overhead (and CI shares its cores)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}


def square(size: int = 16, lo: int = 4, hi: int = 12) -> torch.Tensor:
    """A white square [lo, hi) on black, as a (1, 1, size, size) image in [-1, 1]."""
    image = -torch.ones(1, 1, size, size)
    image[..., lo:hi, lo:hi] = 1.0
    return image


def write_png(map01: torch.Tensor, path: Path) -> Path:
    Image.fromarray((map01.squeeze().numpy() * 255).astype(np.uint8)).save(path)
    return path


def edge_pngs(tmp: Path) -> list[str]:
    """Two edge maps as a user would give them: a square outline and a circle outline, 24x24
    (not the model's size: the plugin resamples)."""
    yy, xx = np.mgrid[:24, :24]
    ring = (np.abs(np.hypot(yy - 12, xx - 12) - 7) < 0.8).astype(np.float32)
    return [str(write_png(canny(square(24, 6, 18))[0], tmp / "square.png")),
            str(write_png(torch.from_numpy(ring), tmp / "ring.png"))]


def bad_values(tmp: Path) -> list[str]:
    (tmp / "notes.png").write_text("not an image")
    return [str(tmp / "missing.png"), str(tmp / "notes.png")]


class TestEdgesConformance(ConformanceTests):
    case = PluginCase(EdgesEncoder, config={"channels": 2, "hidden": 8}, cli_values=edge_pngs,
                      bad_cli_values=bad_values, dataset="shapes", image_channels=3,
                      plugin=ldm_edges)


# -- the edge maps against known geometry -------------------------------------------------------

def test_canny_finds_the_outline_of_a_square_and_nothing_else():
    edges = canny(square())[0, 0]
    assert set(edges.unique().tolist()) == {0.0, 1.0}
    ys, xs = torch.nonzero(edges, as_tuple=True)
    # every edge pixel lies on the square's boundary (rows/cols 3..4 or 11..12), none inside
    on_boundary = ((ys - 3.5).abs() <= 1) | ((ys - 11.5).abs() <= 1) | \
                  ((xs - 3.5).abs() <= 1) | ((xs - 11.5).abs() <= 1)
    assert on_boundary.all()
    assert edges[6:10, 6:10].sum() == 0 and edges[:2].sum() == 0
    # all four sides are found
    for side in (edges[3:5, 4:12], edges[11:13, 4:12], edges[4:12, 3:5], edges[4:12, 11:13]):
        assert side.sum() >= 6


def test_canny_of_a_flat_image_is_empty_and_colour_images_work():
    assert canny(torch.zeros(2, 3, 16, 16)).sum() == 0
    rgb = square().expand(1, 3, 16, 16)
    assert torch.equal(canny(rgb), canny(square()))


def test_the_eval_metric_is_one_on_the_images_own_edges_and_zero_on_none():
    image = -torch.ones(2, 1, 32, 32)
    image[:, :, 8:24, 8:24] = 1.0  # a white square: its outline is the edge map
    own = canny(image)
    assert own.sum() > 0
    assert ldm_edges.edge_agreement(image, own, {}) == {"edges_f1": 1.0}
    shifted = torch.roll(own, shifts=6, dims=-1)  # the outline six pixels away: mostly missed
    assert ldm_edges.edge_agreement(image, shifted, {})["edges_f1"] < 0.6
    assert ldm_edges.edge_agreement(-torch.ones(2, 1, 32, 32), own, {}) == {"edges_f1": 0.0}


def test_an_edge_png_reads_back_exactly(tmp_path):
    edges = canny(square())[0]
    assert torch.equal(load_edge_map(write_png(edges, tmp_path / "e.png")), edges)


def test_maps_of_another_size_are_resampled_to_the_image_size(tmp_path):
    spec_enc = EdgesEncoder(EdgesEncoder.Config(), _spec())
    big = load_edge_map(write_png(canny(square(32, 8, 24))[0], tmp_path / "big.png"))
    batch = spec_enc.collate([big, canny(square())[0]])
    assert batch.shape == (2, 1, 16, 16)
    assert torch.equal(batch[0], torch.nn.functional.avg_pool2d(big[None], 2)[0])


def _spec():
    from ldmcore.conditioning import BackboneSpec

    return BackboneSpec(latent_channels=2, latent_size=(8, 8), context_dim=32, image_channels=3,
                        image_size=(16, 16))


def test_an_explicit_value_wins_over_the_images():
    enc = EdgesEncoder(EdgesEncoder.Config(), _spec())
    given = torch.zeros(1, 1, 16, 16)
    assert enc.batch_value({"image": square(), "edges": given}) is given
    assert torch.equal(enc.batch_value({"image": square()}), canny(square()))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="conditions.edges.high_threshold"):
        validate_condition("edges", EdgesEncoder.Config, {"high_threshold": 300})
    with pytest.raises(ConfigError, match="low_threshold=200"):
        validate_condition("edges", EdgesEncoder.Config, {"low_threshold": 200, "high_threshold": 100})
    with pytest.raises(ConfigError, match=r"'conditions.edges.chanels'.*\`conditions.edges.channels=2\`"):  # pasteable
        validate_condition("edges", EdgesEncoder.Config, {"chanels": 2})


def test_a_missing_png_is_a_user_error():
    with pytest.raises(PluginError, match="python -m ldm_edges"):
        EdgesEncoder.parse("/no/such/edges.png")


# -- what a user does -------------------------------------------------------------------------

def test_listed_trained_and_sampled_through_the_command_line(tmp_path, monkeypatch):
    from ldmcore import cli

    proc = subprocess.run([sys.executable, "-m", "ldmcore.cli", "plugins", "--json"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    edges = {p["name"]: p for p in listing["plugins"]}["edges"]
    assert edges["package"] == "ldm-plugin-edges" and edges["injections"] == ["concat"]
    assert edges["hooks"] == ["register_conditions", "register_config_dirs", "register_metrics"]
    assert any(d["package"] == "ldm-plugin-edges" for d in listing["config_dirs"])

    # train and sample in this process (the same `main` the `ldm` script runs, without paying
    # for another interpreter); the experiment ships with the plugin and is shrunk to seconds
    monkeypatch.chdir(tmp_path)
    assert cli.main([
        "train", "experiment=shapes_edges", "run_dir=run", "model=tiny", "data.image_size=16",
        "data.num_items=32", "autoencoder.ch=16", "autoencoder.ch_mult=[1,2]",
        "autoencoder.norm_groups=8", "autoencoder.latent_channels=2", "autoencoder.train.steps=2",
        "autoencoder.train.batch_size=8", "trainer.max_steps=3", "trainer.batch_size=8",
        "trainer.progress=false", "trainer.precision=fp32", "trainer.threads=1",
        "trainer.warmup_steps=0", "trainer.lr=5e-3",
        "sampler.steps=2", "conditions.edges.hidden=8"]) == 0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "edges:" in config and "name: shapes" in config

    square_png, ring_png = edge_pngs(tmp_path)
    pixels = {}
    for name, png in (("square", square_png), ("ring", ring_png)):
        assert cli.main(["sample", "run=run", f"cond.edges={png}", "n=1", "steps=2", "seed=3",
                         "precision=fp32", "ema=false", f"out={name}"]) == 0
        index = json.loads((tmp_path / name / "samples.json").read_text())
        assert index["samples"][0]["conditions"]["edges"] == png
        pixels[name] = np.asarray(Image.open(tmp_path / name / "0000.png"), dtype=np.int16)
    assert pixels["square"].shape == (16, 16, 3)
    # same seed, same noise: only the edge map differs, and it reaches the pixels
    assert np.abs(pixels["square"] - pixels["ring"]).max() > 0
    # ldm eval scores the samples with the metric the package registers, on the asked edge maps
    assert cli.main(["eval", "run=run", "samples=square"]) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert set(report) == {"edges_f1"} and 0.0 <= report["edges_f1"] <= 1.0
    # a bad value is a user error: one paragraph, exit status 2
    assert cli.main(["sample", "run=run", "cond.edges=missing.png", "out=bad"]) == 2


def test_the_edge_map_helper_writes_canny_of_a_picture(tmp_path, capsys):
    from ldm_edges.__main__ import main

    picture = write_png((square(16) + 1) / 2, tmp_path / "picture.png")
    assert main([str(picture), str(tmp_path / "edges.png")]) == 0
    assert torch.equal(load_edge_map(tmp_path / "edges.png"), canny(square())[0])
    assert main([str(tmp_path / "missing.png"), str(tmp_path / "x.png")]) == 2


def test_the_wheel_carries_the_entry_point_and_the_configs(tmp_path):
    """A non-editable install gets the configs too: they are package data of the wheel."""
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True, env=ENV)
    wheel = zipfile.ZipFile(next(tmp_path.glob("ldm_plugin_edges-*.whl")))
    names = set(wheel.namelist())
    assert {"ldm_edges/conf/condition/edges.yaml",
            "ldm_edges/conf/experiment/shapes_edges.yaml"} <= names
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[ldmcore]" in entry_points and "edges = ldm_edges" in entry_points
