"""Attaching plugins to a pretrained backbone: output unchanged at step 0, only new parts train.

The pretrained run is the smoke experiment (digits, class plugin as a vector). A concat plugin
and a second vector plugin, defined here as a third party would, are attached to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ldmcore import checkpoint
from ldmcore.attach import IN_CONV, VEC_IN, attach_pretrained, load_plugin_weights
from ldmcore.build import build_model
from ldmcore.conditioning import ConditionEncoder, EncoderConfig, Injection, OutputSpec
from ldmcore.config import load
from ldmcore.hookspecs import hookimpl
from ldmcore.registry import build_registry
from ldmcore.runfolder import load_run
from ldmcore.train import train


class Edges(ConditionEncoder):
    """Concat: the image's gradient magnitude at latent resolution, through a learned 1x1 conv."""

    name = "attach_edges"
    injections = (Injection.CONCAT,)

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.conv = torch.nn.Conv2d(1, 2, 1)

    def output_specs(self):
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (2, *self.backbone.latent_size))}

    def batch_value(self, batch):
        return batch["image"] if "image" in batch else batch[self.name]

    def forward(self, image):
        gray = image.float().mean(1, keepdim=True)
        edges = (gray - gray.roll(1, -1)).abs() + (gray - gray.roll(1, -2)).abs()
        return {Injection.CONCAT: self.conv(F.adaptive_avg_pool2d(edges, self.backbone.latent_size))}

    def null(self, batch_size):
        return {Injection.CONCAT: torch.zeros(batch_size, 2, *self.backbone.latent_size,
                                              device=self.conv.weight.device)}


class Brightness(ConditionEncoder):
    """Vector: the image's mean brightness, embedded by a small MLP."""

    name = "attach_brightness"
    injections = (Injection.VECTOR,)

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.mlp = torch.nn.Linear(1, 8)

    def output_specs(self):
        return {Injection.VECTOR: OutputSpec(Injection.VECTOR, (8,))}

    def batch_value(self, batch):
        return batch["image"] if "image" in batch else batch[self.name]

    def forward(self, image):
        return {Injection.VECTOR: self.mlp(image.float().mean((1, 2, 3))[:, None])}

    def null(self, batch_size):
        return {Injection.VECTOR: torch.zeros(batch_size, 8, device=self.mlp.weight.device)}


class Module:
    @staticmethod
    @hookimpl
    def register_conditions(register):
        register(Edges)
        register(Brightness)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: threads only add contention
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def registry():
    reg = build_registry()
    reg.add_module(Module, "attach-test-plugins", "0")
    return reg


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, registry) -> Path:
    run = tmp_path_factory.mktemp("pre") / "run"
    train(load(["experiment=smoke", f"run_dir={run}", "trainer.precision=fp32",
                "trainer.max_steps=4"], registry), registry)
    return run


def attached_overrides(run_dir: Path, pretrained: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", f"run_dir={run_dir}", "trainer.precision=fp32",
            f"model.init_from={pretrained}", "+conditions.attach_edges.drop_prob=0.0",
            "+conditions.attach_brightness.drop_prob=0.0", *extra]


@torch.no_grad()
def test_attaching_changes_no_output_at_step_0(pretrained, registry, tmp_path):
    _, old, _ = load_run(pretrained)
    cfg = load(attached_overrides(tmp_path, pretrained), registry)
    model = build_model(cfg, registry=registry).eval()
    att = attach_pretrained(model, pretrained)
    assert att.new_plugins == ["attach_edges", "attach_brightness"]
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 1, 16, 16, generator=g) * 2 - 1, "class": torch.tensor([0, 3, 5, 9])}
    z = torch.randn(4, *old.latent_shape(), generator=g)
    t = torch.tensor([1, 100, 500, 999])
    cond_new = model.conditioner(batch, 4)
    assert cond_new.concat.abs().sum() > 0 and cond_new.vector[:, -8:].abs().sum() > 0
    before = old.network(z, t, old.conditioner(batch, 4))
    after = model.network(z, t, cond_new)
    assert torch.equal(before, after)  # bit for bit, with the new conditions present


def test_train_only_plugins_leaves_backbone_byte_identical(pretrained, registry, tmp_path):
    run = tmp_path / "ft"
    cfg = load(attached_overrides(run, pretrained, "trainer.train_only=[plugins]", "trainer.max_steps=3",
                                  "trainer.lr=1e-2", "trainer.weight_decay=0"), registry)
    train(cfg, registry)
    old, _ = checkpoint.load(pretrained / "checkpoints" / "last.safetensors")
    new, _ = checkpoint.load(run / "checkpoints" / "last.safetensors")
    latent = 2  # smoke latent channels: the pretrained input conv's columns
    for key, value in old.items():
        if not key.startswith(("unet.", "autoencoder.")):
            continue
        value = old.get("ema." + key, value)  # a run is attached with its EMA weights
        got = new[key]
        if key == IN_CONV:
            assert torch.equal(got[:, :latent], value), "pretrained input channels moved"
            assert got[:, latent:].abs().sum() > 0, "the new concat channels did not train"
        elif key == VEC_IN:  # the class plugin's 128 columns stay; brightness's 8 train
            width = value.shape[1]
            assert torch.equal(got[:, :width], value), "pretrained vector columns moved"
            assert got[:, width:].abs().sum() > 0, "the new vector columns did not train"
        else:
            assert torch.equal(got, value), key
    assert not torch.equal(new["conditioner.encoders.attach_edges.conv.weight"],
                           new["conditioner.encoders.attach_edges.conv.weight"] * 0)
    # each plugin's weights also travel alone, with its slice of the backbone
    edges, _ = checkpoint.load(run / "plugins" / "attach_edges.safetensors")
    assert set(edges) == {"encoder.conv.weight", "encoder.conv.bias", "backbone.in_conv"}
    assert torch.equal(edges["backbone.in_conv"], new[IN_CONV][:, latent:latent + 2])

    fresh_cfg = load(attached_overrides(tmp_path / "other", pretrained), registry)
    fresh = build_model(fresh_cfg, registry=registry)
    att = attach_pretrained(fresh, pretrained)
    load_plugin_weights(fresh, "attach_edges", run / "plugins" / "attach_edges.safetensors", att)
    assert torch.equal(fresh.state_dict()[IN_CONV][:, latent:latent + 2], new[IN_CONV][:, latent:latent + 2])
