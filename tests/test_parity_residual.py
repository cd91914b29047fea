"""Parity of the residual plugins with diffusers on the same random weights, in float32.

A tiny Stable Diffusion 1.x (tests/sd_fixtures.py) is imported as an ldmcore run, and a
``controlnet`` and a ``t2i_adapter`` plugin are attached to it, each loaded with the weights of a
diffusers ``ControlNetModel`` / ``T2IAdapter`` (random, every layer non-zero) through
``ldmcore.interop.residual_keys``. Compared: the ControlNet's down- and mid-block residuals, the
UNet given them (``down_block_additional_residuals``, ``mid_block_additional_residual``), a
10-step DDIM sample with guidance 7.5 (ldmcore's null of a residual plugin is "no residual", so
the reference loop runs the unconditional branch without the ControlNet), the adapter's features
and the UNet given them (``down_intrablock_additional_residuals``). Tolerances are those of
tests/test_interop.py: 1e-4 of the reference's largest value for one call, 2e-4 after 10 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldmcore import checkpoint
from ldmcore.attach import attach_pretrained
from ldmcore.build import build_model
from ldmcore.cli import main
from ldmcore.conditioning import Injection, UNetInput
from ldmcore.interop.convert import import_pretrained
from ldmcore.interop.residual_keys import controlnet_from_diffusers, t2i_adapter_from_diffusers
from ldmcore.runfolder import load_run, run_config

diffusers = pytest.importorskip("diffusers")

from tests.sd_fixtures import build_pipeline, final_latents, pipeline_like  # noqa: E402

TOL = 1e-4  # one network call, relative to the reference's largest |value|
SAMPLE_RTOL = 2e-4  # 10 guided steps (tests/test_interop.py says how it was measured)
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    pipe = build_pipeline("sd1")
    pipe.save_pretrained(str(root / "diffusers"), safe_serialization=True)
    return pipe, import_pretrained(root / "diffusers", root / "run")


def attached(run: Path, plugin: str, **options):
    """The imported run with ``plugin`` (reading an image hint) attached, as model.init_from does."""
    cfg = run_config(run)
    cfg = cfg.model_copy(update={"conditions": {**cfg.conditions, plugin: {"condition": "image", **options}}})
    model = build_model(cfg, root=run).eval()
    attach_pretrained(model, run)
    return model


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def scale(ref: torch.Tensor) -> float:
    return ref.float().abs().max().item()


@pytest.fixture(scope="module")
def controlnet(sd):
    """A diffusers ControlNet from the SD UNet, every weight moved off the copy and the zero
    layers made non-zero, and the attached ldmcore model holding the same weights."""
    pipe, run = sd
    ref = diffusers.ControlNetModel.from_unet(pipe.unet).eval()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
    model = attached(run, "controlnet")
    state = controlnet_from_diffusers(ref.state_dict(), model.unet.shape, "diffusers ControlNetModel")
    checkpoint.load_into(model.conditioner.encoders["controlnet"], state, "controlnet", "test")
    return ref, model


def hint_image(seed: int) -> torch.Tensor:
    """A (1, 3, 64, 64) image in [-1, 1] with structure (a bright square on noise)."""
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 0.4 - 0.8
    image[:, :, 16:40, 20:52] = 0.9
    return image


@torch.no_grad()
def test_controlnet_residuals_and_the_unet_given_them_match(sd, controlnet):
    pipe, _ = sd
    ref, model = controlnet
    enc = model.conditioner.encoders["controlnet"]
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([981, 17])
    ctx = torch.randn(2, 77, 64, generator=g)
    image = torch.cat([hint_image(2), hint_image(3)])
    down, mid = ref(x, t, encoder_hidden_states=ctx, controlnet_cond=(image + 1) / 2, return_dict=False)
    residual = enc(image)[Injection.RESIDUAL]
    maps = residual.maps(UNetInput(x, t, ctx))
    assert len(maps) == len(down) + 1
    for i, want in enumerate(down):
        assert scale(want) > 1e-2  # a residual that matters
        assert max_err(maps[f"skip.{i}"], want) <= TOL * scale(want), f"skip.{i}"
    assert max_err(maps["middle"], mid) <= TOL * scale(mid)
    want = pipe.unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                     mid_block_additional_residual=mid).sample
    got = model.unet(x, t, ctx, residuals=maps)
    assert max_err(want, pipe.unet(x, t, encoder_hidden_states=ctx).sample) > 1e-2  # it steers
    assert max_err(got, want) <= TOL * scale(want)


@torch.no_grad()
def test_controlnet_guided_ddim_sample_matches(sd, controlnet):
    """10 DDIM steps, guidance 7.5 (SD's settings, the imported run's own plan): the conditional
    branch has the prompt and the ControlNet, the unconditional the empty prompt and none."""
    pipe, _ = sd
    ref, model = controlnet
    image = hint_image(4)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ids = [pipe.tokenizer([p], padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids for p in (PROMPT, "")]
    text, empty = (pipe.text_encoder(i)[0] for i in ids)
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(10)
    latents = noise.clone() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        down, mid = ref(latents, t, encoder_hidden_states=text, controlnet_cond=(image + 1) / 2,
                        return_dict=False)
        cond = pipe.unet(latents, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        uncond = pipe.unet(latents, t, encoder_hidden_states=empty).sample
        latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
    assert (model.sampling.sampler.name, model.sampling.guidance.scale) == ("ddim", 7.5)
    got = final_latents(model, {"text": [PROMPT], "controlnet": image}, noise)
    assert max_err(got, latents) <= SAMPLE_RTOL * scale(latents)


@pytest.mark.parametrize("guess_mode", [True, False], ids=["guess_mode", "both_branches"])
@torch.no_grad()
def test_controlnet_options_match_the_controlnet_pipeline(sd, controlnet, guess_mode):
    """diffusers' StableDiffusionControlNetPipeline with ``control_guidance_start=0.2``,
    ``control_guidance_end=0.7``, 10 DDIM steps at guidance 7.5, against the plugin with the same
    options: in guess mode the ControlNet feeds the conditional branch only, its maps scaled by
    logspace(-1, 0) over the taps; outside it (``guided=false`` here) it feeds both branches.
    Either way it acts at steps 2..6 only."""
    pipe, run = sd
    ref, same_weights = controlnet
    model = attached(run, "controlnet", guess_mode=guess_mode, guided=guess_mode,
                     control_guidance_start=0.2, control_guidance_end=0.7)
    enc = model.conditioner.encoders["controlnet"]
    enc.load_state_dict(same_weights.conditioner.encoders["controlnet"].state_dict())
    image = hint_image(8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(12))
    reference = pipeline_like(diffusers.StableDiffusionControlNetPipeline, pipe, controlnet=ref)
    kwargs = {"num_inference_steps": 10, "guidance_scale": 7.5, "output_type": "latent", "height": 64,
              "width": 64, "guess_mode": guess_mode}
    want = reference(PROMPT, (image + 1) / 2, latents=noise.clone(), control_guidance_start=0.2,
                     control_guidance_end=0.7, **kwargs).images
    everywhere = reference(PROMPT, (image + 1) / 2, latents=noise.clone(), **kwargs).images
    other_mode = reference(PROMPT, (image + 1) / 2, latents=noise.clone(), control_guidance_start=0.2,
                           control_guidance_end=0.7, **{**kwargs, "guess_mode": not guess_mode}).images
    got = final_latents(model, {"text": [PROMPT], "controlnet": image}, noise)
    assert max_err(got, want) <= SAMPLE_RTOL * scale(want)
    assert max_err(everywhere, want) > 100 * SAMPLE_RTOL * scale(want)  # the window counted
    assert max_err(other_mode, want) > 10 * SAMPLE_RTOL * scale(want)  # and the mode (2% here)


@torch.no_grad()
def test_t2i_adapter_features_and_the_unet_given_them_match(sd):
    pipe, run = sd
    torch.manual_seed(5)
    ref = diffusers.T2IAdapter(in_channels=3, channels=list(pipe.unet.config.block_out_channels),
                               num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter").eval()
    model = attached(run, "t2i_adapter")
    enc = model.conditioner.encoders["t2i_adapter"]
    checkpoint.load_into(enc, t2i_adapter_from_diffusers(ref.state_dict(), "diffusers T2IAdapter"),
                         "t2i_adapter", "test")
    image = torch.cat([hint_image(6), hint_image(7)])
    features = ref((image + 1) / 2)
    maps = enc(image)[Injection.RESIDUAL].maps(None)
    assert len(maps) == len(features) == 4
    for level, want in enumerate(features):
        assert max_err(maps[f"encoder.{level}"], want) <= TOL * scale(want), level
    g = torch.Generator().manual_seed(8)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([700, 40])
    ctx = torch.randn(2, 77, 64, generator=g)
    # tame the random adapter's magnitude so the UNet stays in the range a trained one sees
    small = [f * 0.05 for f in features]
    want = pipe.unet(x, t, encoder_hidden_states=ctx,
                     down_intrablock_additional_residuals=[f.clone() for f in small]).sample
    got = model.unet(x, t, ctx, residuals={f"encoder.{i}": f for i, f in enumerate(small)})
    assert max_err(want, pipe.unet(x, t, encoder_hidden_states=ctx).sample) > 1e-2  # it steers
    assert max_err(got, want) <= TOL * scale(want)


@torch.no_grad()
def test_an_unguided_t2i_adapter_matches_the_adapter_pipeline(sd):
    """``guided=false``: the adapter's features in both guidance branches, as
    StableDiffusionAdapterPipeline adds them; 10 DDIM steps at guidance 7.5, scale 0.05 (the
    random adapter's features tamed to a trained one's magnitude)."""
    pipe, run = sd
    torch.manual_seed(5)
    ref = diffusers.T2IAdapter(in_channels=3, channels=list(pipe.unet.config.block_out_channels),
                               num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter").eval()
    model = attached(run, "t2i_adapter", guided=False, scale=0.05)
    checkpoint.load_into(model.conditioner.encoders["t2i_adapter"],
                         t2i_adapter_from_diffusers(ref.state_dict(), "diffusers T2IAdapter"), "t2i_adapter", "test")
    image = hint_image(9)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(13))
    reference = pipeline_like(diffusers.StableDiffusionAdapterPipeline, pipe, adapter=ref)
    want = reference(PROMPT, (image + 1) / 2, num_inference_steps=10, guidance_scale=7.5, height=64,
                     width=64, adapter_conditioning_scale=0.05, latents=noise.clone(),
                     output_type="latent").images
    values = {"text": [PROMPT], "t2i_adapter": image}
    got = final_latents(model, values, noise)
    guided = attached(run, "t2i_adapter", scale=0.05)
    guided.conditioner.encoders["t2i_adapter"].load_state_dict(model.conditioner.encoders["t2i_adapter"].state_dict())
    assert max_err(got, want) <= SAMPLE_RTOL * scale(want)
    # guided (the default: the unconditional branch without the adapter), it differs
    assert max_err(final_latents(guided, values, noise), want) > 100 * SAMPLE_RTOL * scale(want)


def test_ldm_import_attaches_a_diffusers_controlnet_and_export_writes_it_back(sd, controlnet, tmp_path):
    """``ldm import CONTROLNET_DIR OUT attach_to=RUN``: the run with the ControlNet gives the same
    output as the model tested above; ``ldm export`` writes a ControlNet pipeline folder whose
    ``controlnet/`` diffusers loads with the original weights."""
    _, run = sd
    ref, model = controlnet
    ref.save_pretrained(str(tmp_path / "cn"), safe_serialization=True)
    out = tmp_path / "with_cn"
    assert main(["import", str(tmp_path / "cn"), str(out), f"attach_to={run}"]) == 0
    assert (out / "plugins" / "controlnet.safetensors").is_file()
    _, imported, _ = load_run(out)
    g = torch.Generator().manual_seed(9)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    values = {"text": [PROMPT], "controlnet": hint_image(5)}
    with torch.no_grad():
        got = imported.network(x, t, imported.conditioner(values, 1))
        assert torch.equal(got, model.network(x, t, model.conditioner(values, 1)))

    assert main(["export", str(out), str(tmp_path / "exported"), "layout=diffusers"]) == 0
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionControlNetPipeline"
    back = diffusers.ControlNetModel.from_pretrained(str(tmp_path / "exported" / "controlnet"))
    mine, theirs = back.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_importing_a_folder_that_does_not_fit_the_run_names_what_is_wrong(sd, tmp_path, capsys):
    _, run = sd
    adapter = diffusers.T2IAdapter(in_channels=1, channels=[32, 64, 64, 64], num_res_blocks=1,
                                   downscale_factor=8)
    adapter.save_pretrained(str(tmp_path / "ad"), safe_serialization=True)
    assert main(["import", str(tmp_path / "ad"), str(tmp_path / "out"), f"attach_to={run}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "reads hints of 1 channels; condition=image gives 3" in err and "condition=edges" in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_the_original_controlnet_layout_is_the_plugins_and_imports(sd, controlnet, tmp_path):
    """The plugin's names are the original ControlNet's (``control_model.*``): diffusers' own
    converter of original files reads the plugin's state as the reference ControlNet, and
    ``ldm import FILE OUT attach_to=RUN`` attaches such a file."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    _, run = sd
    ref, model = controlnet
    state = {f"control_model.{k}": v.clone() for k, v in
             model.conditioner.encoders["controlnet"].state_dict().items()}
    converted = convert_controlnet_checkpoint(dict(state), dict(ref.config))
    theirs = ref.state_dict()
    assert set(converted) == set(theirs) and all(torch.equal(converted[k], theirs[k]) for k in theirs)
    checkpoint.save(tmp_path / "control_sd15_test.safetensors", state)
    out = tmp_path / "with_original"
    assert main(["import", str(tmp_path / "control_sd15_test.safetensors"), str(out), f"attach_to={run}"]) == 0
    _, imported, _ = load_run(out)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(10)), torch.tensor([300])
    values = {"text": [PROMPT], "controlnet": hint_image(6)}
    with torch.no_grad():
        assert torch.equal(imported.network(x, t, imported.conditioner(values, 1)),
                           model.network(x, t, model.conditioner(values, 1)))
