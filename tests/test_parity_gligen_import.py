"""``ldm import GLIGEN_DIR OUT phrases=...`` against diffusers' ``StableDiffusionGLIGENPipeline``, in
float32 on random weights.

A tiny Stable Diffusion 1.x with GLIGEN's gated UNet (tests/sd_fixtures.py, ``attention_type=
"gated"``; the gates and null features, zero at init, drawn at random so every path counts) is
saved as a GLIGEN pipeline folder and imported: the run has the ``layout`` plugin with
``injection: gated`` embedding each box's phrase with the run's text encoder. diffusers embeds the
phrases itself (its text encoder's pooled output) and is compared on the UNet output for one call and on a 10-step DDIM
sample at guidance 7.5 (the pipeline's scheduled sampling, the gated layers in the first 30% of
the steps, is the imported layout's ``scheduled_sampling_beta``). Then ``ldm export`` writes the run back as a GLIGEN pipeline, which
diffusers loads and samples with the same result.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ldmcore.cli import main
from ldmcore.runfolder import load_run

diffusers = pytest.importorskip("diffusers")

from tests.sd_fixtures import build_pipeline, final_latents  # noqa: E402
from tests.test_parity_adapters import randomize_zero_inits  # noqa: E402

TOL = 1e-4
SAMPLE_RTOL = 2e-4
PROMPT = "a red circle"
PHRASES = ("a red circle", "a blue square")
BOXES = [[0.1, 0.2, 0.5, 0.6], [0.55, 0.5, 0.95, 0.9]]


def gligen_pipeline(folder):
    from diffusers import StableDiffusionGLIGENPipeline

    pipe = build_pipeline("sd1", attention_type="gated")
    randomize_zero_inits(pipe.unet)
    with torch.no_grad():  # gated layers that steer as much as a trained GLIGEN's do
        for name, p in pipe.unet.named_parameters():
            if ".fuser." in name and name.endswith(("attn.to_out.0.weight", "ff.net.2.weight")):
                p.mul_(4)
    gligen = StableDiffusionGLIGENPipeline(**{k: v for k, v in pipe.components.items()
                                              if k != "image_encoder"}, requires_safety_checker=False)
    gligen.set_progress_bar_config(disable=True)
    gligen.save_pretrained(str(folder), safe_serialization=True)
    return gligen


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gligen")
    pipe = gligen_pipeline(root / "gligen")
    assert main(["import", str(root / "gligen"), str(root / "run"), f"phrases={','.join(PHRASES)}",
                 "progress=false"]) == 0
    return pipe, root


def layout_value():
    return [(torch.tensor(BOXES), torch.tensor([0, 1]))]


def phrase_embeddings(pipe) -> torch.Tensor:
    """GLIGEN's (1, 30, width) phrase features, as the pipeline makes them."""
    ids = pipe.tokenizer(list(PHRASES), padding=True, return_tensors="pt")
    out = torch.zeros(1, 30, pipe.unet.config.cross_attention_dim)
    out[0, :len(PHRASES)] = pipe.text_encoder(**ids).pooler_output
    return out


@torch.no_grad()
def test_the_imported_gated_layout_computes_what_the_gligen_unet_computes(imported):
    pipe, root = imported
    _, model, _ = load_run(root / "run")
    layout = model.conditioner.encoders["layout"]
    assert layout.config.injection == "gated" and layout.config.class_names == PHRASES
    assert layout.config.phrase_model == "text_encoder"  # the run's own, which the text plugin reads
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([700])
    values = {"text": [PROMPT], "layout": layout_value()}
    cond = model.conditioner(values, 1)
    boxes, masks = torch.zeros(1, 30, 4), torch.zeros(1, 30)
    boxes[0, :2], masks[0, :2] = torch.tensor(BOXES), 1
    want = pipe.unet(x, t, encoder_hidden_states=cond.context, cross_attention_kwargs={"gligen": {
        "boxes": boxes, "masks": masks, "positive_embeddings": phrase_embeddings(pipe)}}).sample
    got = model.network(x, t, cond)
    left_out = model.network(x, t, replace(cond, inserted=None))  # no gated layers
    assert float((got - want).abs().max()) <= TOL * float(want.abs().max())
    assert float((left_out - want).abs().max()) > 100 * TOL * float(want.abs().max())


def pipeline_sample(pipe, noise, **options):
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe(PROMPT, gligen_phrases=list(PHRASES), gligen_boxes=BOXES, num_inference_steps=10,
                guidance_scale=7.5, latents=noise.clone(), output_type="latent", **options).images


@torch.no_grad()
def test_a_guided_sample_matches_the_gligen_pipeline_and_survives_export(imported):
    from diffusers import StableDiffusionGLIGENPipeline

    pipe, root = imported
    _, model, _ = load_run(root / "run")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    want = pipeline_sample(pipe, noise)  # the gated layers in the first 30% of the steps
    got = final_latents(model, {"text": [PROMPT], "layout": layout_value()}, noise)
    assert model.conditioner.encoders["layout"].config.scheduled_sampling_beta == 0.3
    assert float((got - want).abs().max()) <= SAMPLE_RTOL * float(want.abs().max())
    every_step = pipeline_sample(pipe, noise, gligen_scheduled_sampling_beta=1.0)
    # the window counted: the gated layers in the last 7 steps, which refine, move it 2%
    assert float((every_step - want).abs().max()) > 10 * SAMPLE_RTOL * float(want.abs().max())

    assert main(["export", str(root / "run"), str(root / "exported"), "layout=diffusers",
                 "progress=false"]) == 0
    index = json.loads((root / "exported" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionGLIGENPipeline"
    back = StableDiffusionGLIGENPipeline.from_pretrained(str(root / "exported"))
    back.set_progress_bar_config(disable=True)
    again = pipeline_sample(back, noise)
    assert float((again - want).abs().max()) <= TOL * float(want.abs().max())


def test_any_phrase_grounds_a_box_as_gligen_grounds_it(imported):
    """Imported without ``phrases=``, the layout embeds whatever phrase a box carries with the
    run's text encoder: "a horse" and "a green triangle" give the GLIGEN UNet's output."""
    pipe, root = imported
    assert main(["import", str(root / "gligen"), str(root / "free"), "progress=false"]) == 0
    _, model, _ = load_run(root / "free")
    words = ["a horse", "a green triangle"]
    layout = model.conditioner.encoders["layout"]
    value = layout.collate([layout.parse([[*BOXES[0], words[0]], [*BOXES[1], words[1]]])])
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([400])
    with torch.no_grad():
        cond = model.conditioner({"text": ["a horse"], "layout": value}, 1)
        ids = pipe.tokenizer(words, padding=True, return_tensors="pt")
        phrases = torch.zeros(1, 30, pipe.unet.config.cross_attention_dim)
        phrases[0, :2] = pipe.text_encoder(**ids).pooler_output
        boxes, masks = torch.zeros(1, 30, 4), torch.zeros(1, 30)
        boxes[0, :2], masks[0, :2] = torch.tensor(BOXES), 1
        want = pipe.unet(x, t, encoder_hidden_states=cond.context, cross_attention_kwargs={"gligen": {
            "boxes": boxes, "masks": masks, "positive_embeddings": phrases}}).sample
        got = model.network(x, t, cond)
    assert float((got - want).abs().max()) <= TOL * float(want.abs().max())


def test_a_layout_with_a_class_table_is_not_exported_as_gligen(imported, tmp_path):
    from ldmcore.build import build_model
    from ldmcore.errors import ConfigError
    from ldmcore.interop.export import export_diffusers
    from ldmcore.runfolder import run_config

    _, root = imported
    cfg = run_config(root / "run")
    section = {**cfg.conditions["layout"], "phrase_model": None, "embed_dim": 64, "num_classes": 2}
    cfg = cfg.model_copy(update={"conditions": {**cfg.conditions, "layout": section}})
    with pytest.raises(ConfigError, match="does not embed its labels with the run's text encoder"):
        export_diffusers(build_model(cfg, root=root / "run"), cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
