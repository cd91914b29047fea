"""A ControlNet attached to a pretrained run: its copy starts as the pretrained encoder half, the
output is unchanged at step 0, training it alone leaves the backbone byte-identical, its weights
travel alone in RUN/plugins/controlnet.safetensors, and removing it restores the backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained, load_plugin_weights
from ldmcore.build import build_model
from ldmcore.config import load
from ldmcore.runfolder import load_run
from ldmcore.train import train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pre") / "run"
    train(load(["experiment=smoke", f"run_dir={run}", "trainer.precision=fp32", "trainer.max_steps=4"]))
    return run


def attached(run_dir: Path, pretrained: Path, *extra: str):
    # digits: a hint of the image itself (condition=image), one channel
    return load(["experiment=smoke", f"run_dir={run_dir}", "trainer.precision=fp32",
                 f"model.init_from={pretrained}", "+conditions.controlnet.condition=image", *extra])


def digits(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, "class": torch.tensor([0, 3, 5, 9][:n])}


@torch.no_grad()
def test_the_copy_is_the_pretrained_encoder_half_and_step_0_is_unchanged(pretrained, tmp_path):
    _, old, _ = load_run(pretrained)
    model = build_model(attached(tmp_path, pretrained)).eval()
    att = attach_pretrained(model, pretrained)
    assert att.new_plugins == ["controlnet"]
    control = model.conditioner.encoders["controlnet"]
    for part in ("time_embed", "label_emb", "input_blocks", "middle_block"):
        mine, theirs = getattr(control, part).state_dict(), getattr(old.unet, part).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), part
        assert all(p.data_ptr() != q.data_ptr() for p, q in
                   zip(getattr(control, part).parameters(), getattr(model.unet, part).parameters()))
    batch = digits()
    z = torch.randn(4, *old.latent_shape(), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 100, 500, 999])
    cond = model.conditioner(batch, 4)
    assert cond.residuals.parts["controlnet"].features["hint"].abs().sum() == 0  # zero hint conv
    assert torch.equal(old.network(z, t, old.conditioner(batch, 4)), model.network(z, t, cond))


def test_trained_alone_it_owns_its_weights_and_removal_restores_the_backbone(pretrained, tmp_path):
    run = tmp_path / "ft"
    train(attached(run, pretrained, "trainer.train_only=[controlnet]", "trainer.max_steps=3",
                   "trainer.lr=1e-2", "trainer.weight_decay=0"))
    old, _ = checkpoint.load(pretrained / "checkpoints" / "last.safetensors")
    new, _ = checkpoint.load(run / "checkpoints" / "last.safetensors")
    for key, value in old.items():
        if key.startswith(("unet.", "autoencoder.", "conditioner.encoders.class.")):
            assert torch.equal(new[key], old.get("ema." + key, value)), key  # byte for byte
    assert not any(k.startswith("unet.") for k in set(new) - set(old))  # nothing added to the UNet
    zero_conv = "conditioner.encoders.controlnet.zero_convs.0.0.weight"
    assert new[zero_conv].abs().sum() > 0  # the zero convolutions trained

    # its file carries the whole plugin, copy included; loaded into a fresh attachment it is that
    file, _ = checkpoint.load(run / "plugins" / "controlnet.safetensors")
    assert "encoder.input_blocks.0.0.weight" in file and "encoder.input_hint_block.0.weight" in file
    assert not any(k.startswith("backbone.") for k in file)
    fresh = build_model(attached(tmp_path / "other", pretrained)).eval()
    attach_pretrained(fresh, pretrained)
    load_plugin_weights(fresh, "controlnet", run / "plugins" / "controlnet.safetensors")
    _, trained, _ = load_run(run, use_ema=False)
    batch, t = digits(), torch.tensor([1, 100, 500, 999])
    z = torch.randn(4, *trained.latent_shape(), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with_control = trained.network(z, t, trained.conditioner(batch, 4))
        assert torch.equal(with_control, fresh.network(z, t, fresh.conditioner(batch, 4)))
        # removing the plugin: the trained run's backbone without it is the pretrained model
        _, base, _ = load_run(pretrained)
        without = trained.network(z, t, trained.conditioner(batch, 4, keep={"class"}))
        assert torch.equal(without, base.network(z, t, base.conditioner(batch, 4)))
        assert not torch.equal(with_control, without)
