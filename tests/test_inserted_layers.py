"""The two injection kinds whose plugins insert layers of their own into every transformer block:
``gated_attention`` (GLIGEN: the `layout` plugin with `injection: gated`) and
``decoupled_crossattn`` (IP-Adapter: the `ip_adapter` plugin).

Each is attached to a pretrained `text` model on the shapes scenes: the output is
byte-identical at step 0 with the new condition present, `train_only=[plugin]` trains the plugin
alone (the backbone stays byte-identical), and the plugin's file carries its layers, so loading
it into a fresh attachment reproduces the trained model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ldm_ip_adapter.encoder import ImagePrompt
from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained, load_plugin_weights
from ldmcore.build import build_model
from ldmcore.config import load
from ldmcore.nn.attention import BasicTransformerBlock
from ldmcore.nn.decoupled_attention import DecoupledKeyValue
from ldmcore.nn.inserted_layers import DecoupledTokens, InsertedLayers
from ldmcore.nn.unet import UNetModel, UNetShape
from ldmcore.runfolder import load_run
from ldmcore.train import train

BASE = ["experiment=smoke", "data=shapes", "data.channels=3", "trainer.precision=fp32"]
PLUGINS = {  # plugin -> (overrides, the layers' state-dict prefix, a parameter that must train)
    "layout": (["conditions.layout.injection=gated"], "fusers", "alpha_attn"),
    "ip_adapter": (["conditions.ip_adapter.embed_dim=16"], "adapters", "to_v.weight"),
}


def attached(plugin: str, run_dir: Path, pretrained: Path, *extra: str) -> list[str]:
    return [*BASE, f"condition=[text,{plugin}]", *PLUGINS[plugin][0], f"conditions.{plugin}.drop_prob=0.0",
            f"run_dir={run_dir}", f"model.init_from={pretrained}", *extra]


def inputs(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    region = torch.zeros(2, 1, 16, 16)
    region[0, :, :, :8] = 1  # the first reference acts on the left half only
    region[1] = 1
    values = {"text": ["a red circle left of a blue square", "a green triangle"],
              "layout": [(torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.6, 0.5, 0.9, 0.9]]), torch.tensor([0, 1])),
                         (torch.tensor([[0.2, 0.3, 0.7, 0.8]]), torch.tensor([2]))],
              "ip_adapter": ImagePrompt(images, region)}
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
    assert [m.index for m in order] == list(range(len(listed)))
    assert len(listed) == 2 * (2 * 2 + 1 + 2 * 3)  # depth 2: (input, middle, output) blocks
    assert [(m.attn1.heads * m.attn1.head_dim, m.attn1.heads, m.attn1.head_dim) for m in order] == \
        [(b.width, b.heads, b.head_dim) for b in listed]


@pytest.mark.parametrize("plugin", PLUGINS)
@torch.no_grad()
def test_attached_plugin_changes_no_output_at_step_0(plugin, pretrained_text_run, tmp_path):
    _, old, _ = load_run(pretrained_text_run)
    model = build_model(load(attached(plugin, tmp_path, pretrained_text_run))).eval()
    att = attach_pretrained(model, pretrained_text_run)
    assert att.new_plugins == [plugin]
    values, z, t = inputs(model)
    cond = model.conditioner({"text": values["text"], plugin: values[plugin]}, 2)
    assert cond.inserted is not None
    tokens = (cond.inserted.gated or cond.inserted.decoupled)[0].tokens
    assert tokens.abs().sum() > 0
    before = old.network(z, t, old.conditioner({"text": values["text"]}, 2))
    assert torch.equal(before, model.network(z, t, cond))  # bit for bit, the condition present
    assert set(model.unet.state_dict()) == set(old.unet.state_dict())  # the backbone gained nothing


@pytest.mark.parametrize("plugin", PLUGINS)
def test_train_only_trains_the_plugin_alone_and_its_file_carries_its_layers(
        plugin, pretrained_text_run, tmp_path):
    _, prefix, moving = PLUGINS[plugin]
    run = tmp_path / "ft"
    train(load(attached(plugin, run, pretrained_text_run, f"trainer.train_only=[{plugin}]",
                        "trainer.max_steps=3", "trainer.lr=1e-2", "trainer.weight_decay=0")))
    old, _ = checkpoint.load(pretrained_text_run / "checkpoints" / "last.safetensors")
    new, _ = checkpoint.load(run / "checkpoints" / "last.safetensors")
    for key, value in old.items():
        if key.startswith(("unet.", "autoencoder.", "conditioner.encoders.text.")):
            assert torch.equal(new[key], old.get("ema." + key, value)), key  # attached with EMA weights
    layers = f"conditioner.encoders.{plugin}.{prefix}."
    trained = [v for k, v in new.items() if k.startswith(layers) and k.endswith(moving)]
    assert len(trained) == 4 and all(v.abs().sum() > 0 for v in trained), "the layers did not train"

    plugin_file, _ = checkpoint.load(run / "plugins" / f"{plugin}.safetensors")
    assert {k[len("encoder."):] for k in plugin_file if k.startswith(f"encoder.{prefix}.")} == \
        {k[len(f"conditioner.encoders.{plugin}."):] for k in new if k.startswith(layers)}
    fresh = build_model(load(attached(plugin, tmp_path / "other", pretrained_text_run))).eval()
    att = attach_pretrained(fresh, pretrained_text_run)
    load_plugin_weights(fresh, plugin, run / "plugins" / f"{plugin}.safetensors", att)
    _, loaded, _ = load_run(run, use_ema=False)
    loaded.eval()
    values, z, t = inputs(fresh, seed=1)
    values = {"text": values["text"], plugin: values[plugin]}
    with torch.no_grad():
        a = fresh.network(z, t, fresh.conditioner(values, 2))
        b = loaded.network(z, t, loaded.conditioner(values, 2))
        c = loaded.network(z, t, _without_layers(loaded.conditioner(values, 2)))
    assert torch.equal(a, b)
    assert not torch.equal(b, c), "the trained layers have no effect"


def _without_layers(cond):
    cond.inserted = None
    return cond


def test_a_region_confines_the_decoupled_path_exactly():
    """Block level: where the region is 0 the block's output is the backbone's, bit for bit;
    where it is 1 the image tokens act."""
    torch.manual_seed(0)
    block = BasicTransformerBlock(16, 2, 8, context_dim=8).eval()
    block.index = 0
    layer = DecoupledKeyValue(token_dim=12, heads=2, head_dim=8, scale=0.7)
    torch.nn.init.normal_(layer.to_v.weight)  # trained: the value projection is no longer zero
    x, context = torch.randn(2, 16, 16), torch.randn(2, 3, 8)
    region = torch.zeros(2, 1, 4, 4)
    region[:, :, :2] = 1  # the top half of a 4x4 map
    tokens = DecoupledTokens([layer], torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool), region)
    with torch.no_grad():
        plain = block(x, context, None)
        regional = block(x, context, None, InsertedLayers(decoupled=(tokens,)), (4, 4))
    top = region.flatten(1).bool()
    assert torch.equal(regional[~top], plain[~top])
    assert (regional[top] - plain[top]).abs().amax(-1).min() > 0  # every token inside moved


@torch.no_grad()
def test_both_kinds_together_on_a_bf16_backbone():
    """Sampling in bf16 casts the UNet, not the plugins: their layers run in their own dtype and
    hand back the features' dtype; shut, they leave the bf16 output exactly as it was."""
    from ldmcore.nn.execution import cast_weights

    cfg = load([*BASE, "condition=[text,layout,ip_adapter]", "conditions.layout.injection=gated",
                "conditions.ip_adapter.embed_dim=16"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.unet.out[-1].weight, std=0.05)  # as trained: the output sees the blocks
    cast_weights(model.unet, torch.bfloat16)
    values, z, t = inputs(model)
    cond = model.conditioner(values, 2)
    assert len(cond.inserted.gated) == 1 and len(cond.inserted.decoupled) == 1
    shut = model.network(z, t, cond)
    assert shut.dtype == torch.bfloat16 and torch.equal(shut, model.network(z, t, _without_layers(
        model.conditioner(values, 2))))
    for layer in model.conditioner.encoders["layout"].fusers:
        layer.alpha_attn.fill_(0.5)
    for layer in model.conditioner.encoders["ip_adapter"].adapters:
        torch.nn.init.normal_(layer.to_v.weight)
    opened = model.network(z, t, model.conditioner(values, 2))
    assert bool(opened.isfinite().all()) and not torch.equal(opened, shut)


@torch.no_grad()
def test_every_pretrained_backbone_kind_together_is_the_backbone_at_init():
    """A ControlNet (residual), gated layout and an image prompt beside the text in one model:
    freshly built, their sum of effects is exactly zero, and guided sampling runs them together."""
    from dataclasses import replace

    cfg = load([*BASE, "condition=[text,controlnet,layout,ip_adapter]", "conditions.layout.injection=gated",
                "conditions.ip_adapter.embed_dim=16"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.unet.out[-1].weight, std=0.05)  # as trained: the output sees the blocks
    values, z, t = inputs(model)
    g = torch.Generator().manual_seed(3)
    values["controlnet"] = torch.randint(0, 4, (2, 16, 16), generator=g)
    cond = model.conditioner(values, 2)
    assert cond.residuals is not None and cond.inserted is not None
    assert torch.equal(model.network(z, t, cond), model.network(z, t, replace(cond, inserted=None, residuals=None)))
    images = model.sample(values, 2, model.sampling.but(steps=2), generator=g)
    assert images.shape == (2, 3, 16, 16) and bool(images.isfinite().all())


def test_gated_layer_position_features_break_permutation_equivariance():
    """Without position features a gated layer treats its visual tokens as a set: permuting the
    pixels permutes the output the same way (attention and feed-forward are per token). With
    them it knows where each token lies, so the same permutation no longer commutes; with the
    gates shut both return the input exactly."""
    from ldmcore.nn.gated_attention import GatedSelfAttention

    torch.manual_seed(0)
    x, tokens = torch.randn(2, 12, 16), torch.randn(2, 3, 8)
    perm = torch.randperm(12)
    for freqs in (0, 4):
        layer = GatedSelfAttention(16, 8, heads=2, head_dim=8, position_freqs=freqs).eval()
        assert torch.equal(layer(x, tokens, None, (3, 4)), x)  # gates shut
        with torch.no_grad():
            layer.alpha_attn.fill_(1.0), layer.alpha_dense.fill_(1.0)
        moved = layer(x[:, perm], tokens, None, (3, 4))
        change = (moved - layer(x, tokens, None, (3, 4))[:, perm]).abs().max() / x.abs().max()
        if freqs:
            assert change > 1e-2
        else:
            assert change < 1e-5  # float32 sums in another order


def test_gated_layer_with_positions_needs_the_map_size():
    from ldmcore.nn.gated_attention import GatedSelfAttention

    layer = GatedSelfAttention(16, 8, heads=2, head_dim=8, position_freqs=2)
    with pytest.raises(ValueError, match=r"\(h, w\) of its 12 tokens"):
        layer(torch.randn(1, 12, 16), torch.randn(1, 3, 8), None, (4, 4))
