"""The gated_attention injection (GLIGEN): grounding tokens read by the plugin's own gated
self-attention in every transformer block.

A `text` model on the shapes scenes is pretrained for a few steps; the `layout` plugin with
`injection: gated` is attached to it. Its output is byte-identical at step 0 with boxes present,
`train_only=[layout]` trains the plugin alone (its layers and tokenizer; the backbone stays
byte-identical), and the plugin's file carries its layers, so loading it reproduces the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained, load_plugin_weights
from ldmcore.build import build_model
from ldmcore.config import load
from ldmcore.nn.attention import BasicTransformerBlock
from ldmcore.nn.unet import UNetModel, UNetShape
from ldmcore.runfolder import load_run
from ldmcore.train import train

BASE = ["experiment=smoke", "data=shapes", "data.channels=3", "trainer.precision=fp32"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pre") / "run"
    train(load([*BASE, "condition=[text]", f"run_dir={run}", "trainer.max_steps=3"]))
    return run


def gated(run_dir: Path, pretrained: Path, *extra: str) -> list[str]:
    return [*BASE, "condition=[text,layout]", "conditions.layout.injection=gated",
            "conditions.layout.drop_prob=0.0", f"run_dir={run_dir}", f"model.init_from={pretrained}",
            *extra]


def inputs(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    values = {"text": ["a red circle left of a blue square", "a green triangle"],
              "layout": [(torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.6, 0.5, 0.9, 0.9]]), torch.tensor([0, 1])),
                         (torch.tensor([[0.2, 0.3, 0.7, 0.8]]), torch.tensor([2]))]}
    z = torch.randn(2, *model.latent_shape(), generator=g)
    return values, z, torch.tensor([20, 700])


def test_transformer_blocks_are_listed_in_forward_order():
    """The spec a plugin sizes its layers from is the UNet the backbone builds, block by block."""
    shape = UNetShape(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2, 3),
                      num_res_blocks=2, attention_levels=(0, 2), num_head_channels=8,
                      transformer_depth=2, context_dim=8, norm_groups=8)
    unet = UNetModel(shape)
    order = []
    unet.eval()
    hooks = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in unet.modules()
             if isinstance(m, BasicTransformerBlock)]
    with torch.no_grad():
        unet(torch.randn(1, 4, 16, 16), torch.tensor([3]), torch.randn(1, 2, 8))
    for h in hooks:
        h.remove()
    listed = shape.transformer_blocks()
    assert [m.index for m in order] == list(range(len(listed))) and len(listed) == 2 * (2 * 2 + 1 + 2 * 3)  # depth 2: (input, middle, output) blocks
    assert [(m.attn1.heads * m.attn1.head_dim, m.attn1.heads, m.attn1.head_dim) for m in order] == \
        [(b.width, b.heads, b.head_dim) for b in listed]


@torch.no_grad()
def test_gated_layout_attached_changes_no_output_at_step_0(pretrained, tmp_path):
    _, old, _ = load_run(pretrained)
    model = build_model(load(gated(tmp_path, pretrained))).eval()
    att = attach_pretrained(model, pretrained)
    assert att.new_plugins == ["layout"]
    values, z, t = inputs(model)
    cond = model.conditioner(values, 2)
    assert cond.inserted is not None and cond.inserted.gated[0].tokens.abs().sum() > 0
    before = old.network(z, t, old.conditioner({"text": values["text"]}, 2))
    assert torch.equal(before, model.network(z, t, cond))  # bit for bit, boxes present
    assert not any(k.startswith("unet.") and "fuser" in k for k in model.state_dict())


def test_train_only_trains_the_gates_alone_and_saves_them(pretrained, tmp_path):
    run = tmp_path / "ft"
    train(load(gated(run, pretrained, "trainer.train_only=[layout]", "trainer.max_steps=3",
                     "trainer.lr=1e-2", "trainer.weight_decay=0")))
    old, _ = checkpoint.load(pretrained / "checkpoints" / "last.safetensors")
    new, _ = checkpoint.load(run / "checkpoints" / "last.safetensors")
    for key, value in old.items():
        if key.startswith(("unet.", "autoencoder.", "conditioner.encoders.text.")):
            assert torch.equal(new[key], old.get("ema." + key, value)), key  # attached with EMA weights
    gates = [v for k, v in new.items() if k.startswith("conditioner.encoders.layout.fusers.")
             and k.endswith("alpha_attn")]
    assert len(gates) == 4 and all(g.abs() > 0 for g in gates), "the gates did not open"

    # the plugin's file holds its layers; loading it into a fresh attachment is the trained model
    plugin, _ = checkpoint.load(run / "plugins" / "layout.safetensors")
    assert {k for k in plugin if k.startswith("encoder.fusers.0.")} >= {
        "encoder.fusers.0.alpha_attn", "encoder.fusers.0.alpha_dense", "encoder.fusers.0.linear.weight"}
    fresh = build_model(load(gated(tmp_path / "other", pretrained))).eval()
    att = attach_pretrained(fresh, pretrained)
    load_plugin_weights(fresh, "layout", run / "plugins" / "layout.safetensors", att)
    _, trained, _ = load_run(run, use_ema=False)
    trained.eval()
    values, z, t = inputs(fresh, seed=1)
    with torch.no_grad():
        a = fresh.network(z, t, fresh.conditioner(values, 2))
        b = trained.network(z, t, trained.conditioner(values, 2))
    assert torch.equal(a, b)
