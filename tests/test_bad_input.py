"""Bad input ends in exit status 2, one paragraph that names what is wrong and what is valid,
and a file system exactly as it was: every case here is one a user met (a typo, a value out of
range, a broken or hostile file), run through ``ldm``'s ``main`` in this process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcore.conditioning import BackboneSpec, read_value
from ldmcore.errors import ConfigError
from ldmcore.images import read_image, read_label_map
from ldmcore.registry import default_registry
from ldmcore.sample import parse_values
from tests.reliability import bomb_png, rewrite_checkpoint, run_cli, snapshot


def refused(where: Path, *argv: str, words: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> str:
    """Run ``argv``; it must exit 2 with one clean paragraph holding ``words`` and change
    nothing under ``where`` (paths in ``ignore`` excepted)."""
    before = snapshot(where)
    out = run_cli(*argv)
    assert out.escaped is None, out.escaped
    assert out.code == 2 and out.clean, out.stderr
    for w in words:
        assert w in out.paragraph, f"{w!r} not in: {out.paragraph}"
    after = snapshot(where)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not {k for k in changed if Path(k).name not in ignore}, changed
    return out.paragraph


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A fresh working folder (so a stray ``runs/`` would show up in its snapshot)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def smoke(run: Path, *extra: str) -> list[str]:
    return ["train", "experiment=smoke", f"run_dir={run}", *extra]


@pytest.mark.parametrize("extra, words", [
    (["data.image_size=9"], ["data.image_size=9", "multiple of 2"]),
    (["trainer.betas=[2,3]"], ["trainer.betas.0", "less than 1"]),
    (["autoencoder.ch_mult=[]"], ["autoencoder.ch_mult", "at least 1"]),
    (["trainer.lr=inf"], ["trainer.lr", "finite"]),
    (["sampler.guidance=nan"], ["sampler.guidance", "finite"]),
    (["conditions.class.drop_prob=nan"], ["conditions.class.drop_prob", "finite"]),
    (["data.limit=10", "trainer.batch_size=64"], ["trainer.batch_size=64", "holds 10", "data.limit=10"]),
    (["data.limit=10", "trainer.batch_size=8"], ["autoencoder.train.batch_size=16", "holds 10"]),
    (["model.init_from=/nonexistent/run"], ["model.init_from='/nonexistent/run'", "ldm train"]),
    (["autoencoder.checkpoint=/nonexistent.safetensors"], ["autoencoder.checkpoint"]),
    (["model.unet.channel_mult=[1,2,2,2,2]"], ["cannot be halved", "channel_mult"]),
])
def test_train_config_errors_leave_nothing(here, extra, words):
    refused(here, *smoke(here / "runs" / "x", *extra), words=tuple(words))


def test_a_name_cannot_leave_runs(here):
    refused(here, "train", "experiment=smoke", "name=../../x", words=("name", "run_dir=PATH"))


def test_an_unwritable_run_dir(here):
    refused(here, *smoke(Path("/proc/x")), words=("'/proc/x'", "writable run_dir"))


def test_an_error_after_the_run_folder_was_made_removes_it(here, trained_run):
    not_a_checkpoint = here / "ae.safetensors"
    not_a_checkpoint.write_bytes(b"not safetensors at all")
    refused(here, *smoke(here / "runs" / "x", f"autoencoder.checkpoint={not_a_checkpoint}"),
            words=("ae.safetensors", "not a readable safetensors file"))


@pytest.mark.parametrize("change, words", [
    (lambda t, m: m.pop("optimizer"), ["no optimizer state"]),
    (lambda t, m: t.pop("rng.torch"), ["no RNG state"]),
    (lambda t, m: m.update(step="seven"), ["'seven'", "not a whole number"]),
])
def test_resume_from_an_incomplete_checkpoint(here, trained_run, change, words):
    run = here / "run"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.safetensors"
    held = {}
    rewrite_checkpoint(last, lambda t: held.update(t=t), lambda m: change(held["t"], m))
    refused(here, *smoke(run, "resume=true"), words=("cannot resume", *words))


def test_training_on_an_image_folder_with_a_broken_file(here):
    for name in ("0", "1"):
        (here / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(here / "data" / name / f"{i}.png")
    (here / "data" / "1" / "empty.png").write_bytes(b"")
    argv = smoke(here / "runs" / "x", "data=image_folder", f"data.path={here / 'data'}", "data.channels=1",
                 "trainer.batch_size=4", "autoencoder.train.batch_size=4")
    refused(here, *argv, words=("empty.png", "remove or replace"))
    (here / "data" / "1" / "empty.png").unlink()
    bomb_png(here / "data" / "1" / "bomb.png")
    refused(here, *argv, words=("bomb.png", "decompression bomb"))


def sample(run: Path, *extra: str) -> list[str]:
    return ["sample", f"run={run}", "steps=2", "n=2", *extra]


@pytest.mark.parametrize("extra, words", [
    (["cond.class=[]"], ["cond.class=[]", "empty list"]),
    (["cond.class=[0,1,"], ["'[0,1,'", "not closed"]),
    (["cond.class=3", "n=100000000"], ["'n'", "10000"]),
    (["cond.class=[0,1,2,3,4,5,6,7,8,9]", "n=1001"], ["10010 images", "at most 10000"]),
    (["cond.class=3", "guidance=nan"], ["guidance", "finite"]),
    (["cond.class=3", "guidance_interval=[0,NaN]"], ["guidance_interval"]),
    (["cond.class=\udcff3"], ["not valid UTF-8", "0xff"]),
    (["cond.class=99"], ["99", "0..9"]),
])
def test_sample_errors_make_no_output_folder(here, trained_run, extra, words):
    refused(here, *sample(trained_run, f"out={here / 'out'}", *extra), words=tuple(words))


@pytest.mark.parametrize("arg", ["init", "mask"])
def test_a_decompression_bomb_as_an_image_argument(here, trained_run, arg):
    bomb = bomb_png(here / "bomb.png")
    extra = [f"{arg}={bomb}"] + ([f"init={bomb}"] if arg == "mask" else [])
    refused(here, *sample(trained_run, f"out={here / 'out'}", "cond.class=3", *extra),
            words=("bomb.png", "decompression bomb"))


@pytest.mark.parametrize("reader", [lambda p: read_image(p, 3, "cond.lowres"),
                                    lambda p: read_label_map(p, "cond.segmap")])
def test_plugin_image_readers_refuse_a_bomb_by_its_header(tmp_path, reader):
    with pytest.raises(ConfigError, match="decompression bomb"):
        reader(bomb_png(tmp_path / "bomb.png"))


def test_a_layout_box_holding_nan_is_refused():
    cls = default_registry().condition("layout")
    spec = BackboneSpec(latent_channels=4, latent_size=(8, 8), context_dim=32, image_channels=3,
                        image_size=(32, 32))
    layout = cls(cls.Config(), spec)
    ok = parse_values({"layout": layout}, [{"layout": read_value("[[0.1,0.1,0.5,0.5,0]]")}])
    assert torch.equal(ok[0]["layout"][0], torch.tensor([[0.1, 0.1, 0.5, 0.5]]))
    with pytest.raises(ConfigError, match="NaN or infinity"):  # 1e999 is JSON, and infinite
        parse_values({"layout": layout}, [{"layout": read_value("[[0.1,1e999,0.5,0.5,0]]")}])
    with pytest.raises(ConfigError, match="not a JSON list of boxes"):  # NaN is not JSON
        parse_values({"layout": layout}, [{"layout": read_value("[[0.1,NaN,0.5,0.5,0]]")}])


def test_a_run_whose_weights_hold_nan(here, trained_run):
    run = here / "run"
    shutil.copytree(trained_run, run)
    rewrite_checkpoint(run / "checkpoints" / "last.safetensors",
                       lambda t: t[next(k for k in t if k.startswith("ema.unet."))].fill_(float("nan")))
    refused(here, *sample(run, "cond.class=3"), words=("non-finite weights", "ema.unet."))


def test_a_file_that_breaks_inside_a_loader_worker_is_one_paragraph(here):
    folder = here / "data" / "0"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((16, 16), 60 * i, np.uint8)).save(folder / f"{i}.png")
    good = (folder / "0.png").read_bytes()
    (folder / "3.png").write_bytes(good[: len(good) // 2])  # its header reads, its pixels do not
    refused(here, *smoke(here / "runs" / "x", "data=image_folder", f"data.path={here / 'data'}",
                         "data.channels=1", "data.hflip=true", "data.num_workers=1",
                         "trainer.batch_size=4", "autoencoder.train.batch_size=4"),
            words=("3.png", "remove or replace"))


def test_a_loss_that_diverges_before_the_first_checkpoint_leaves_no_run(here, trained_run, monkeypatch):
    from ldmcore.model import LatentDiffusion

    real = LatentDiffusion.loss
    monkeypatch.setattr(LatentDiffusion, "loss", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    ae = trained_run / "checkpoints" / "autoencoder.safetensors"
    paragraph = refused(here, *smoke(here / "runs" / "x", f"autoencoder.checkpoint={ae}"),
                        words=("the loss became nan at step 0", "No checkpoint had been written"))
    assert "intact" not in paragraph
