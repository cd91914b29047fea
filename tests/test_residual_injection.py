"""The residual injection: the UNet's taps, their routing through the Conditioner, and several
instances of one plugin summed (two adapters on different conditions in one model)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ldm_t2i_adapter.encoder import T2IAdapterEncoder
from ldmcore.build import build_model
from ldmcore.conditioning import Injection, OutputSpec, Residual, UNetInput
from ldmcore.config import load
from ldmcore.errors import LdmError, PluginError
from ldmcore.nn.taps import residual_taps
from ldmcore.nn.unet import UNetModel, UNetShape

SHAPES = ["experiment=smoke", "data=shapes", "data.channels=3", "trainer.precision=fp32"]


def randomised(model):
    """Every trainable weight random (zero-initialised layers included), as a trained model's."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def shapes_batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 16, 16, dtype=torch.long)
    mask[:, 3:9, 4:12] = 1
    mask[1:, 10:15, 2:7] = 2
    image = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    return {"image": image, "mask": mask, "class": torch.arange(n)}


@pytest.mark.parametrize("shape", [
    UNetShape(in_channels=2, out_channels=2, model_channels=16, channel_mult=(1, 2, 2),
              num_res_blocks=2, attention_levels=(1,), num_head_channels=16, norm_groups=8),
    UNetShape(in_channels=2, out_channels=2, model_channels=8, channel_mult=(1, 3),
              num_res_blocks=1, attention_levels=(), middle_attention=False, norm_groups=4),
])
@torch.no_grad()
def test_taps_are_the_unets_own_feature_shapes(shape):
    """Each tap's width and size are those of the features the UNet computes there."""
    unet = UNetModel(shape).eval()
    seen = {}
    for i, block in enumerate(unet.input_blocks):
        block.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"skip.{i}", out.shape[1:]))
    unet.middle_block.register_forward_hook(lambda m, a, out: seen.__setitem__("middle", out.shape[1:]))
    unet(torch.randn(1, 2, 16, 12), torch.tensor([3]))
    taps = residual_taps(shape, (16, 12))
    for tap in taps:
        if tap.adds_to == "encoder":  # the end of a level: its last ResBlock's output
            last = tap.level * (shape.num_res_blocks + 1) + shape.num_res_blocks
            assert tuple(seen[f"skip.{last}"]) == tap.shape
    for tap in taps:
        if tap.adds_to == "skip":
            assert tuple(seen.pop(tap.name)) == tap.shape
    assert not seen  # every skip connection and the middle block has a tap


@torch.no_grad()
def test_skip_taps_reach_the_decoder_only_and_encoder_taps_flow_on():
    """A map at ``skip.i`` changes what the decoder reads from skip i and nothing the encoder
    computes after it; a map at ``encoder.l`` changes the encoder's later features too."""
    shape = UNetShape(in_channels=2, out_channels=2, model_channels=8, channel_mult=(1, 2),
                      num_res_blocks=1, attention_levels=(), middle_attention=False, norm_groups=4)
    unet = randomised(UNetModel(shape))
    taps = {t.name: t for t in residual_taps(shape, (8, 8))}
    x, t = torch.randn(1, 2, 8, 8), torch.tensor([5])
    middle = []
    unet.middle_block.register_forward_hook(lambda m, a, out: middle.append(out))
    unet(x, t)
    unet(x, t, residuals={"skip.1": torch.ones(1, *taps["skip.1"].shape)})
    assert torch.equal(middle[0], middle[1])  # the encoder went on unchanged
    unet(x, t, residuals={"encoder.0": torch.ones(1, *taps["encoder.0"].shape)})
    assert not torch.equal(middle[0], middle[2])  # it flowed on through the encoder
    # encoder.0 ends at input block 1 (one ResBlock per level): it also reaches skip 1
    plain = unet(x, t, residuals={"skip.1": torch.ones(1, *taps["skip.1"].shape)})
    assert not torch.equal(plain, unet(x, t))


def test_two_instances_of_one_plugin_are_summed():
    """Two adapters (a class map and edges) as two instances of one plugin: the UNet receives
    the sum of their maps, each checked against its own spec."""
    cfg = load([*SHAPES, "condition=[t2i_adapter]", "+conditions.edge_adapter.plugin=t2i_adapter",
                "+conditions.edge_adapter.condition=edges"])
    assert cfg.conditions["edge_adapter"]["plugin"] == "t2i_adapter"  # the run records it
    model = randomised(build_model(cfg))
    enc = model.conditioner.encoders
    assert isinstance(enc["edge_adapter"], T2IAdapterEncoder) and enc["edge_adapter"].name == "edge_adapter"
    batch = shapes_batch()
    values = model.conditioner.resolve(batch)
    assert values["edge_adapter"].shape == (2, 1, 16, 16)  # Canny edges derived from the image
    z, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 700])
    with torch.no_grad():
        cond = model.conditioner(values, 2)
        got = model.network(z, t, cond)
        a = enc["t2i_adapter"](values["t2i_adapter"])[Injection.RESIDUAL].maps(None)
        b = enc["edge_adapter"](values["edge_adapter"])[Injection.RESIDUAL].maps(None)
        want = model.unet(z, t, residuals={k: a[k] + b[k] for k in a})
        alone = model.unet(z, t, residuals=a)
    assert torch.equal(got, want)
    assert not torch.equal(got, alone)


def test_dropout_of_a_residual_plugin_is_the_backbone_alone():
    cfg = load([*SHAPES, "condition=[class,t2i_adapter]", "conditions.t2i_adapter.drop_prob=1.0"])
    model = randomised(build_model(cfg))
    z, t = torch.randn(2, 2, 8, 8), torch.tensor([10, 700])
    with torch.no_grad():
        dropped = model.conditioner(shapes_batch(), 2, drop=True, generator=torch.Generator().manual_seed(0))
        out = model.network(z, t, dropped)
        plain = model.network(z, t, replace(dropped, residuals=None))
    assert torch.equal(out, plain)


def test_an_unknown_or_misdeclared_tap_names_the_plugin():
    cfg = load([*SHAPES, "condition=[t2i_adapter]"])
    model = build_model(cfg)
    enc = model.conditioner.encoders["t2i_adapter"]
    spec = enc.backbone
    bad_tap = replace(enc.taps[0], name="encoder.9")
    wide_tap = replace(enc.taps[0], channels=enc.taps[0].channels + 1)
    for taps, words in (((bad_tap,), "does not have"), ((wide_tap,), "instead of restating"),
                        ((), "declares no taps")):
        enc.output_specs = lambda taps=taps: {Injection.RESIDUAL: OutputSpec(Injection.RESIDUAL, (), taps=taps)}
        with pytest.raises(PluginError, match=words) as err:
            type(model.conditioner)({"t2i_adapter": enc})
        assert "'t2i_adapter'" in str(err.value)
    assert spec.taps("encoder") == enc.taps


def test_a_map_of_the_wrong_shape_is_refused_naming_the_plugin():
    cfg = load([*SHAPES, "condition=[t2i_adapter]"])
    model = build_model(cfg)
    enc = model.conditioner.encoders["t2i_adapter"]

    def wrong(features, unet_input):
        return {tap.name: torch.zeros(2, tap.channels, 3, 3) for tap in enc.taps}

    cond = model.conditioner(shapes_batch(), 2)
    cond.residuals.parts["t2i_adapter"] = Residual({}, torch.ones(2), wrong)
    with pytest.raises(PluginError, match=r"'t2i_adapter' made a residual map of shape \(2, 32, 3, 3\)"):
        model.network(torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), cond)
    assert UNetInput  # the input a residual network reads is public


def test_an_instance_of_an_unknown_plugin_names_its_section():
    with pytest.raises(LdmError, match=r"conditions\.mine\.plugin='contrlnet'.*controlnet"):
        load([*SHAPES, "condition=[class]", "+conditions.mine.plugin=contrlnet"])


def test_eval_scores_each_instance_by_the_scene_its_hint_came_from():
    """``ldm eval`` runs a plugin's metrics for each of its instances; the residual plugins'
    metric is the mIoU of the scene's class map with the segmentation of the image: high for the
    scenes' own images, low for images of other scenes."""
    from ldm_controlnet.metric import scene_miou
    from ldmcore.build import build_dataset
    from ldmcore.eval.tasks import run_metrics

    cfg = load([*SHAPES, "condition=[controlnet]", "+conditions.edge_control.plugin=controlnet",
                "+conditions.edge_control.condition=edges"])
    metrics = run_metrics(build_model(cfg), "shapes", has_data=True)
    assert [(name, m.name) for name, m in metrics] == [("controlnet", "scene_miou"),
                                                     ("edge_control", "scene_miou")]
    ds = build_dataset("shapes", image_size=32, num_items=32)
    items = [ds[i] for i in range(32)]
    images = torch.stack([item["image"] for item in items])
    batch = {"mask": torch.stack([item["mask"] for item in items])}
    own = scene_miou(images, None, batch)["scene_miou"]
    other = scene_miou(images.roll(1, 0), None, batch)["scene_miou"]
    assert own > 0.85 and other < own - 0.3


def test_a_residual_network_runs_only_on_the_samples_it_conditions():
    """Guidance's unconditional rows and dropped samples have weight 0: the network never sees
    them, and their maps are exactly zero."""
    cfg = load([*SHAPES, "condition=[t2i_adapter]"])
    taps = build_model(cfg).conditioner.encoders["t2i_adapter"].taps
    seen = []

    def network(features, unet_input):
        seen.append(unet_input.x.shape[0])
        return {tap.name: features["f"][:, :1, :1, :1].expand(-1, *tap.shape) + 1.0 for tap in taps}

    features = {"f": torch.arange(4.0).view(4, 1, 1, 1)}
    x = torch.randn(4, 2, 8, 8)
    maps = Residual(features, torch.tensor([2.0, 0.0, 1.0, 0.0]), network).maps(
        UNetInput(x, torch.arange(4)), taps)
    assert seen == [2]
    for m in maps.values():
        assert m[:, 0, 0, 0].tolist() == [2.0, 0.0, 3.0, 0.0]
    Residual(features, torch.zeros(4), network).maps(UNetInput(x, torch.arange(4)), taps)
    assert seen == [2]  # all null: not run at all
