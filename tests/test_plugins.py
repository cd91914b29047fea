"""The built-in spatial and layout plugins: contract, values from the command line, and one
few-step train -> sample run per experiment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldm_inpaint.encoder import InpaintConfig, InpaintEncoder
from ldm_layout.encoder import LayoutConfig, LayoutEncoder
from ldm_lowres.encoder import LowresConfig, LowresEncoder
from ldm_segmap.encoder import SegmapConfig, SegmapEncoder
from ldmcore.conditioning import BackboneSpec, Conditioner, Injection, Tokens
from ldmcore.config import load
from ldmcore.errors import ConfigError
from ldmcore.hole_fill import blur_fill
from ldmcore.runfolder import load_run
from ldmcore.sample import parse_request, run_sampling
from ldmcore.train import train

SPEC = BackboneSpec(latent_channels=4, latent_size=(4, 4), context_dim=16, image_channels=3,
                    image_size=(16, 16), encode=lambda x: torch.nn.functional.avg_pool2d(x, 4)[:, :3].repeat(1, 2, 1, 1)[:, :4])


def test_segmap_is_the_class_proportions_of_each_latent_cell_through_the_rescaler() -> None:
    enc = SegmapEncoder(SegmapConfig(num_classes=4, channels=4, hidden=8), SPEC)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, :8, :8] = 2  # top-left quarter is class 2: latent cells (0..1, 0..1)
    # make the rescaler the identity on classes, to read the pooled one-hot map directly
    with torch.no_grad():
        enc.rescaler[0].weight.zero_()
        enc.rescaler[0].bias.zero_()
        for c in range(4):
            enc.rescaler[0].weight[c, c, 1, 1] = 1.0
        enc.rescaler[1] = torch.nn.Identity()
        enc.rescaler[2].weight.copy_(torch.nn.functional.pad(torch.eye(4), (0, 4)).reshape(4, 8, 1, 1))
        enc.rescaler[2].bias.zero_()
    out = enc(labels)[Injection.CONCAT]
    assert out.shape == (2, 4, 4, 4)
    assert torch.allclose(out[0, 2, :2, :2], torch.ones(2, 2)) and torch.allclose(out[0, 0, :2, :2], torch.zeros(2, 2))
    assert torch.allclose(out[1, 0], torch.ones(4, 4))
    with pytest.raises(ConfigError, match="segmap"):
        enc(torch.zeros(1, 8, 8, dtype=torch.long))  # wrong size
    with pytest.raises(ConfigError, match="num_classes=4"):
        enc(torch.full((1, 16, 16), 7))


def test_layout_tokens_mask_variable_box_counts_and_keep_a_null_key() -> None:
    enc = LayoutEncoder(LayoutConfig(max_boxes=3), SPEC)
    value = [(torch.tensor([[0.1, 0.1, 0.4, 0.4]]), torch.tensor([0])),
             (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
             (torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]), torch.tensor([1, 2]))]
    out = enc(value)[Injection.CROSSATTN]
    assert isinstance(out, Tokens) and out.values.shape == (3, 4, 16)
    assert out.mask.tolist() == [[True, True, False, False], [True, False, False, False],
                                 [True, True, True, False]]
    null = enc.null(3)[Injection.CROSSATTN]
    assert torch.equal(null.values[:, 0], out.values[:, 0])  # the same learned null key everywhere
    assert null.mask[:, 1:].sum() == 0
    # a box's token depends on its coordinates and its label
    moved = enc([(torch.tensor([[0.2, 0.1, 0.5, 0.4]]), torch.tensor([0]))])[Injection.CROSSATTN]
    relabelled = enc([(torch.tensor([[0.1, 0.1, 0.4, 0.4]]), torch.tensor([1]))])[Injection.CROSSATTN]
    assert not torch.allclose(moved.values[0, 1], out.values[0, 1])
    assert not torch.allclose(relabelled.values[0, 1], out.values[0, 1])
    with pytest.raises(ConfigError, match="layout: boxes must be"):
        enc([(torch.tensor([[0.5, 0.1, 1.2, 0.4]]), torch.tensor([0]))])


def test_a_value_is_derived_once_and_forward_base_and_finish_read_it() -> None:
    derived = []

    class CountingInpaint(InpaintEncoder):
        def batch_value(self, batch):
            derived.append(1)
            return super().batch_value(batch)

    cond = Conditioner({"inpaint": CountingInpaint(InpaintConfig(base="blur_fill"), SPEC)})
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    values = cond.resolve({"image": image}, generator=torch.Generator().manual_seed(0))
    cond(values, 2)
    cond.base(values)
    known, hole = values["inpaint"]
    out = cond.finish(torch.zeros_like(image), values)
    assert len(derived) == 1  # one random hole, drawn in resolve
    outside = hole.expand_as(image) <= 0.5
    assert torch.equal(out[outside], known[outside])  # finish pasted back around that same hole


def test_input_keys_come_from_each_plugins_config_and_a_value_under_its_name_wins() -> None:
    image, mask = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randint(0, 4, (2, 16, 16))
    boxes, labels = [torch.tensor([[0.1, 0.1, 0.4, 0.4]])] * 2, [torch.tensor([1])] * 2
    data = {"photo": image, "semantic": mask, "rects": boxes, "kinds": labels}
    segmap = SegmapEncoder(SegmapConfig(input_key="semantic"), SPEC)
    layout = LayoutEncoder(LayoutConfig(boxes_key="rects", labels_key="kinds"), SPEC)
    lowres = LowresEncoder(LowresConfig(input_key="photo"), SPEC)
    inpaint = InpaintEncoder(InpaintConfig(input_key="photo"), SPEC)
    assert segmap.batch_value(data) is mask
    assert layout.batch_value(data) == list(zip(boxes, labels))
    torch.testing.assert_close(lowres.batch_value(data), torch.nn.functional.avg_pool2d(image, 4))
    assert inpaint.batch_value(data)[0] is image
    for enc in (segmap, layout, lowres, inpaint):
        with pytest.raises(KeyError):
            enc.batch_value({"image": image, "mask": mask, "bboxes": boxes, "labels": labels})
        own = object()  # what a sampling request hands over under the plugin's name
        assert enc.batch_value({**data, enc.name: own}) is own


def test_layout_parses_json_boxes_with_names_or_indices() -> None:
    enc = LayoutEncoder(LayoutConfig(), SPEC)
    boxes, labels = enc.parse([[0.1, 0.2, 0.3, 0.4, "square"], [0.5, 0.5, 0.9, 0.9, 2]])
    assert torch.allclose(boxes, torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9]]))
    assert labels.tolist() == [1, 2]
    with pytest.raises(ConfigError, match="cond.layout"):
        enc.parse("a circle")


def test_layout_names_come_from_the_model_config() -> None:
    enc = LayoutEncoder(LayoutConfig(num_classes=2, class_names=("person", "dog")), SPEC)
    assert enc.parse([[0.1, 0.2, 0.3, 0.4, "dog"]])[1].tolist() == [1]
    with pytest.raises(ConfigError, match="person, dog"):
        enc.parse([[0.1, 0.2, 0.3, 0.4, "circle"]])


def test_lowres_concat_is_the_resized_image_and_the_level_is_a_vector() -> None:
    enc = LowresEncoder(LowresConfig(factor=4, sample_noise_level=0.0), SPEC).eval()
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    low = enc.batch_value({"image": image})
    assert torch.allclose(low, torch.nn.functional.avg_pool2d(image, 4))
    out = enc(low)
    assert torch.allclose(out[Injection.CONCAT], low)  # 4x4 low-res == 4x4 latent grid: unchanged
    noisy = LowresEncoder(LowresConfig(sample_noise_level=0.3), SPEC).eval()(low)
    assert not torch.allclose(noisy[Injection.VECTOR], out[Injection.VECTOR])
    assert out[Injection.VECTOR].shape == (2, 64)


def test_lowres_ddpm_levels_noise_as_q_sample_and_index_a_one_hot_table() -> None:
    """SD x4's form: q(x_level | x) of a linear DDPM schedule, the level one-hot (null: zeros)."""
    cfg = LowresConfig(noise="ddpm", level_encoding="onehot", num_levels=1000, sample_noise_level=250,
                       max_noise_level=350)
    enc = LowresEncoder(cfg, SPEC).eval()
    low, eps = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = float(torch.cumprod(1 - betas, 0)[250])
    expected = abar ** 0.5 * low + (1 - abar) ** 0.5 * eps
    torch.testing.assert_close(enc.noised(low, torch.tensor([250.0, 250.0]), eps), expected,
                               rtol=1e-5, atol=1e-5)
    vector = enc(low)[Injection.VECTOR]
    assert vector.shape == (2, 1000) and vector.sum().item() == 2 and vector[:, 250].eq(1).all()
    assert enc.null(2)[Injection.VECTOR].eq(0).all()
    assert enc.train()(low)[Injection.VECTOR].argmax(1).lt(350).all()  # train-time levels < max
    with pytest.raises(ValueError, match="needs noise=ddpm"):
        LowresConfig(level_encoding="onehot")
    with pytest.raises(ValueError, match="integer step"):
        LowresConfig(noise="ddpm", sample_noise_level=0.5)


def test_lowres_consistency_projection_agrees_with_the_input_and_never_moves_away_from_the_truth() -> None:
    enc = LowresEncoder(LowresConfig(consistent=True), SPEC).eval()
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(8, 3, 16, 16, generator=gen) - 0.5
    low = torch.nn.functional.avg_pool2d(truth, 4)
    samples = truth + 0.1 * torch.randn(8, 3, 16, 16, generator=gen)
    out = enc.finish(samples, low)
    # no clipping was needed here, so the projection is exact: block means are the input
    assert out.abs().max() < 1
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(out, 4), low, rtol=0, atol=1e-6)
    # only the block means changed: the detail inside each block is the sample's
    detail = samples - torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(samples, 4),
                                                       scale_factor=4, mode="nearest")
    torch.testing.assert_close(out - torch.nn.functional.interpolate(low, scale_factor=4, mode="nearest"),
                               detail, rtol=0, atol=1e-6)
    before = (samples - truth).pow(2).flatten(1).sum(1)
    after = (out - truth).pow(2).flatten(1).sum(1)
    assert (after <= before + 1e-6).all() and (after < before).any()
    # saturated samples are clipped into range and still come no further from the truth
    wild = torch.randn(8, 3, 16, 16, generator=gen) * 3
    clipped = enc.finish(wild, low)
    assert clipped.abs().max() <= 1
    assert ((clipped - truth).pow(2).flatten(1).sum(1) <= (wild - truth).pow(2).flatten(1).sum(1)).all()
    assert torch.equal(LowresEncoder(LowresConfig(), SPEC).finish(samples, low), samples)  # off: as is
    with pytest.raises(ConfigError, match="lowres: consistent=true"):
        enc.finish(samples, torch.zeros(8, 3, 5, 5))


def test_inpaint_condition_and_paste_back_keep_the_known_region_exact() -> None:
    enc = InpaintEncoder(InpaintConfig(), SPEC)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out = enc((image, mask))[Injection.CONCAT]
    assert out.shape == (1, 5, 4, 4)
    assert torch.equal(out[0, 4], torch.tensor([[0., 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]))
    assert torch.allclose(out[:, :4], SPEC.encode(image * (1 - mask)))
    generated = torch.rand(1, 3, 16, 16)
    done = enc.finish(generated, (image, mask))
    assert torch.equal(done[..., mask[0, 0] == 0], image[..., mask[0, 0] == 0])
    assert torch.equal(done[..., mask[0, 0] == 1], generated[..., mask[0, 0] == 1])
    holes = enc.batch_value({"image": image.repeat(8, 1, 1, 1)})[1]
    area = holes.mean((1, 2, 3))
    assert ((area >= 0.25 ** 2 - 0.02) & (area <= 0.6 ** 2 + 0.05)).all()
    filled = InpaintEncoder(InpaintConfig(shows="filled"), SPEC)((image, mask))[Injection.CONCAT]
    assert torch.allclose(filled[:, :4], SPEC.encode(blur_fill(image, mask)))  # the base it diffuses around
    assert torch.equal(filled[:, 4:], out[:, 4:])


def test_plugins_route_together_with_derived_widths() -> None:
    cond = Conditioner({"segmap": SegmapEncoder(SegmapConfig(channels=8), SPEC),
                        "layout": LayoutEncoder(LayoutConfig(max_boxes=3), SPEC),
                        "lowres": LowresEncoder(LowresConfig(), SPEC),
                        "inpaint": InpaintEncoder(InpaintConfig(), SPEC)})
    assert cond.concat_channels == 8 + 3 + 5 and cond.vector_dim == 64 and cond.context_tokens == 4


SMOKE = ["model=tiny", "data.image_size=16", "data.limit=48", "data.num_items=48",
         "autoencoder.ch=16", "autoencoder.ch_mult=[1,2]", "autoencoder.norm_groups=8",
         "autoencoder.train.steps=2", "autoencoder.train.batch_size=8", "trainer.max_steps=2",
         "trainer.batch_size=8", "trainer.threads=1", "trainer.progress=false",
         "trainer.precision=fp32", "sampler.steps=2", "trainer.checkpoint_every=2"]


def _png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize("experiment", ["shapes_segmap", "shapes_layout", "photos_sr4x", "photos_inpaint",
                                        "shapes_multi"])
def test_each_experiment_trains_and_samples_from_command_line_values(experiment: str, tmp_path: Path) -> None:
    run = train(load([f"experiment={experiment}", f"run_dir={tmp_path / 'run'}", *SMOKE]))
    cfg, model, _ = load_run(run.root)
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    labels = np.zeros((16, 16), dtype=np.uint8)
    labels[2:9, 3:10] = 2
    hole = np.zeros((16, 16), dtype=np.uint8)
    hole[4:12, 4:12] = 255
    value = {"shapes_segmap": ("segmap", _png(tmp_path / "map.png", labels)),
             "shapes_layout": ("layout", '[[0.1,0.1,0.5,0.5,"circle"],[0.6,0.2,0.9,0.6,"square"]]'),
             "photos_sr4x": ("lowres", _png(tmp_path / "low.png", rgb[:4, :4])),
             "photos_inpaint": ("inpaint", f"{_png(tmp_path / 'img.png', rgb)},{_png(tmp_path / 'hole.png', hole)}"),
             }
    if experiment == "shapes_multi":  # text + layout + segmap together
        conds = [f"cond.{k}={v}" for k, v in (value["shapes_segmap"], value["shapes_layout"])]
        conds.append("cond.text=a red circle and a blue square")
        assert model.conditioner.context_tokens > 1 + model.conditioner.encoders["layout"].config.max_boxes
    else:
        conds = ["cond.{}={}".format(*value[experiment])]
    out = run_sampling(parse_request([f"run={run.root}", *conds, "n=2", "precision=fp32",
                                      f"out={tmp_path / 'samples'}"]))
    records = json.loads((out / "samples.json").read_text())["samples"]
    assert len(records) == 2
    first = np.asarray(Image.open(out / records[0]["file"]))
    assert first.shape == (16, 16, 3)
    if experiment == "photos_inpaint":  # the known region is pasted back: exactly the input
        known = hole == 0
        assert np.array_equal(first[known], rgb[known])


def test_a_value_for_a_plugin_the_model_lacks_names_the_plugin(tmp_path: Path) -> None:
    run = train(load(["experiment=shapes_segmap", f"run_dir={tmp_path / 'run'}", *SMOKE]))
    with pytest.raises(ConfigError, match="cond.layout names no condition of this model"):
        run_sampling(parse_request([f"run={run.root}", "cond.layout=[]", "cond.segmap=x.png"]))


def test_eval_scores_every_plugin_on_held_out_conditions(tmp_path: Path) -> None:
    from ldmcore.cli import main

    run = train(load(["experiment=photos_inpaint", f"run_dir={tmp_path / 'run'}", *SMOKE]))
    assert main(["eval", f"run={run.root}", "n=4", "steps=2", "average=2"]) == 0
    report = json.loads((run.root / "eval.json").read_text())
    assert report["inpaint_known_max_abs_error"] == 0.0  # paste-back: the known region is exact
    assert report["blur_fill_hole_psnr"] > 5 and np.isfinite(report["inpaint_hole_psnr"])
    # average=2: the mean of two draws per condition is scored too, and is not the single draw
    assert report["averaged_samples"] == 2 and np.isfinite(report["inpaint_hole_psnr_mean_of_samples"])
    assert report["inpaint_hole_psnr_mean_of_samples"] != report["inpaint_hole_psnr"]
    assert main(["eval", f"run={run.root}", "average=0"]) == 2
