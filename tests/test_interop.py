"""Stable Diffusion / diffusers interoperability, proven by numerical parity with diffusers.

For SD 1.5 and SD 2.1 (v-prediction) architectures at reduced width (tests/sd_fixtures.py), a
random-weight diffusers pipeline is saved as a diffusers folder, imported, exported as an SD
single file (which diffusers' own single-file loader must read back bit-identically), and that
file imported again. Each import must match diffusers on the same inputs: text embeddings, UNet
noise prediction, VAE encode/decode and a full 10-step DDIM sample with guidance, within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ldmcore.diffusion.sigmas import SigmaPlan

pytest.importorskip("diffusers")

from ldmcore import checkpoint, from_pretrained  # noqa: E402
from ldmcore.cli import main  # noqa: E402
from ldmcore.runfolder import MARKER  # noqa: E402
from ldmcore.errors import CheckpointError, ConfigError  # noqa: E402
from ldmcore.interop.convert import import_pretrained  # noqa: E402
from ldmcore.interop.export import export_run  # noqa: E402

from tests.sd_fixtures import build_pipeline  # noqa: E402

TOL = 1e-4  # one network call on unit-scale inputs: float32 round-off of other kernels is ~1e-6
# 10 guided sampling steps: float32 round-off (eps 1.2e-7) of different kernels grows through the
# steps, each multiplied by up to 1 + guidance: measured 2.1e-5 of the latents' scale with AVX2
# kernels, 5e-6 with AVX-512/AMX ones; a wrong update rule or schedule is off by more than 1e-2
SAMPLE_RTOL = 2e-4
PROMPTS = ["a red circle", "a blue square and a green triangle"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models on a shared 2-core machine: a second thread only adds contention
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def sd(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    pipe = build_pipeline(family, prediction="v_prediction" if family == "sd2" else "epsilon")
    pipe.save_pretrained(str(root / "diffusers"), safe_serialization=True)
    runs = {"diffusers": import_pretrained(root / "diffusers", root / "run_diffusers")}
    single = export_run(runs["diffusers"], root / "model.safetensors", "sd")
    runs["single_file"] = import_pretrained(single, root / "run_single",
                                            tokenizer=root / "diffusers" / "tokenizer")
    return {"family": family, "root": root, "pipe": pipe, "runs": runs, "single": single}


@pytest.fixture(params=["diffusers", "single_file"])
def imported(sd, request):
    return sd, from_pretrained(sd["runs"][request.param])


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _scale(ref: torch.Tensor) -> float:
    """The magnitude that a tolerance relative to ``ref`` is taken of: its largest |value|."""
    return ref.float().abs().max().item()


@torch.no_grad()
def test_text_embeddings_match(imported):
    sd, model = imported
    pipe = sd["pipe"]
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    ref = pipe.text_encoder(ids)[0]
    ours = model.conditioner({"text": PROMPTS}, 2)
    assert ours.context.shape == ref.shape
    assert bool(ours.context_mask.all())  # SD attends to every token, padding included
    assert _max_err(ours.context, ref) <= TOL


@torch.no_grad()
def test_unet_noise_prediction_matches(imported):
    sd, model = imported
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([981, 17])
    ctx = torch.randn(2, 77, model.unet.shape.context_dim, generator=g)
    ref = sd["pipe"].unet(x, t, encoder_hidden_states=ctx).sample
    assert ref.abs().max() > 0.1  # a non-trivial output
    assert _max_err(model.unet(x, t, ctx), ref) <= TOL


@torch.no_grad()
def test_vae_encode_decode_match(imported):
    sd, model = imported
    vae = sd["pipe"].vae
    g = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    ref, ours = vae.encode(image).latent_dist, model.autoencoder.encode(image)
    assert _max_err(ours.mean, ref.mean) <= TOL
    assert _max_err(ours.logvar, ref.logvar) <= TOL
    z = torch.randn(2, 4, 8, 8, generator=g)
    assert _max_err(model.autoencoder.decode(z), vae.decode(z).sample) <= TOL
    assert float(model.autoencoder.scale_factor) == pytest.approx(vae.config.scaling_factor)


@torch.no_grad()
def test_ddim_sample_matches(imported):
    """10 DDIM steps with guidance 7.5: SD's schedule, leading spacing, steps_offset=1, as the
    imported run's own sampling plan says (``from_pretrained(run).sample`` without a plan)."""
    sd, model = imported
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = sd["pipe"](PROMPTS[0], num_inference_steps=10, guidance_scale=7.5, latents=noise.clone(),
                     output_type="latent").images
    ref_image = sd["pipe"].vae.decode(ref / sd["pipe"].vae.config.scaling_factor).sample
    cfg = json.loads((sd["runs"]["diffusers"] / "import.json").read_text())["sampler"]
    # the imported run's own sampling settings are the model's default: only the steps change
    own = model.sampling
    assert own.sigmas == SigmaPlan(spacing=cfg["spacing"], offset=cfg["offset"],
                                   set_alpha_to_one=cfg["set_alpha_to_one"])
    assert (own.sampler.name, own.guidance.scale) == ("ddim", 7.5)
    latents = {}
    image = model.sample({"text": [PROMPTS[0]]}, 1, own.but(steps=10), noise=noise.clone(),
                         callback=lambda info: latents.update(x=info["x"]))
    # the sampler works in x = z / sqrt(abar); SD's last step ends on abar of t=0
    last = float(own.sigmas.sigmas(model.schedule, 10)[-1])
    assert _max_err(latents["x"] / (1 + last ** 2) ** 0.5, ref) <= SAMPLE_RTOL * _scale(ref)
    assert _max_err(image, ref_image.clamp(-1, 1)) <= SAMPLE_RTOL * _scale(ref_image.clamp(-1, 1))


def test_diffusers_reads_our_single_file(sd):
    """The exported SD file, loaded by diffusers' own single-file converter, equals the source."""
    from diffusers import StableDiffusionPipeline

    back = StableDiffusionPipeline.from_single_file(
        str(sd["single"]), config=str(sd["root"] / "diffusers"), local_files_only=True,
        safety_checker=None)
    for part in ("unet", "vae", "text_encoder"):
        ref, got = getattr(sd["pipe"], part).state_dict(), getattr(back, part).state_dict()
        assert set(ref) == set(got), part
        assert all(torch.equal(ref[k], got[k]) for k in ref), part


def test_diffusers_export_round_trip(sd, tmp_path):
    """Single file -> run -> diffusers folder: diffusers loads it with identical weights."""
    from diffusers import StableDiffusionPipeline

    out = export_run(sd["runs"]["single_file"], tmp_path / "exported", "diffusers")
    back = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, local_files_only=True)
    for part in ("unet", "vae", "text_encoder"):
        ref, got = getattr(sd["pipe"], part).state_dict(), getattr(back, part).state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref), part
    assert back.scheduler.config.prediction_type == sd["pipe"].scheduler.config.prediction_type
    assert back.scheduler.config.steps_offset == 1
    # overwrite=true replaces an earlier export, never a folder ldm export did not write
    assert export_run(sd["runs"]["single_file"], out, "diffusers", overwrite=True) == out
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="did not write"):
        export_run(sd["runs"]["single_file"], mine, "diffusers", overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"


def test_detected_architecture(sd):
    info = json.loads((sd["runs"]["single_file"] / "import.json").read_text())
    sd2 = sd["family"] == "sd2"
    assert info["variant"] == sd["family"]
    assert info["prediction"] == ("v" if sd2 else "eps")
    assert info["unet"]["use_linear_in_transformer"] is sd2
    assert info["unet"]["num_heads"] == (0 if sd2 else 8)
    assert info["unet"]["attention_levels"] == [0, 1, 2]
    assert info["schedule"]["schedule"] == "scaled_linear"
    assert info["sampler"] == {"spacing": "leading", "offset": 1, "set_alpha_to_one": False}


def test_cli_import_then_sample(sd, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["import", str(sd["single"]), str(out), f"tokenizer={sd['root'] / 'diffusers' / 'tokenizer'}"]) == 0
    assert (out / MARKER).is_file()  # an imported run is ldmcore's: overwrite=true may replace it
    assert main(["sample", f"run={out}", "cond.text=a red circle", "n=1", "steps=2", "precision=fp32",
                 f"out={tmp_path / 'samples'}"]) == 0
    assert (tmp_path / "samples" / "grid.png").is_file()


# -- refusals: nothing half-written --------------------------------------------------------------
def _refused(capsys, args: list[str], out: Path) -> str:
    assert main(args) == 2
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary leftovers
    return capsys.readouterr().err


def test_pickle_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04not really a pickle")
    err = _refused(capsys, ["import", str(ckpt), str(tmp_path / "out")], tmp_path / "out")
    assert "pickle" in err and ".safetensors" in err


def test_unexpected_missing_and_misshaped_keys_are_listed(sd, tmp_path, capsys):
    tensors, _ = checkpoint.load(sd["single"])
    tensors["model.diffusion_model.extra_head.weight"] = torch.zeros(3)
    out_bias = tensors.pop("model.diffusion_model.out.0.bias")
    key = "first_stage_model.decoder.conv_out.bias"
    tensors[key] = torch.zeros(7)
    tensors["something_else.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    checkpoint.save(bad, tensors, {"ldmcore.prediction": "eps"})
    err = _refused(capsys, ["import", str(bad), str(tmp_path / "out")], tmp_path / "out")
    assert "something_else.weight" in err
    tensors.pop("something_else.weight")
    checkpoint.save(bad, tensors, {"ldmcore.prediction": "eps"})
    with pytest.raises(CheckpointError) as info:
        import_pretrained(bad, tmp_path / "out", tokenizer=sd["root"] / "diffusers" / "tokenizer")
    msg = str(info.value)
    assert "extra_head.weight" in msg and "out.0.bias" in msg
    tensors["model.diffusion_model.out.0.bias"] = out_bias
    tensors.pop("model.diffusion_model.extra_head.weight")
    checkpoint.save(bad, tensors, {"ldmcore.prediction": "eps"})
    with pytest.raises(CheckpointError, match=r"decoder.conv_out.bias \(7,\) \(expected \(3,\)\)"):
        import_pretrained(bad, tmp_path / "out", tokenizer=sd["root"] / "diffusers" / "tokenizer")
    assert not (tmp_path / "out").exists()


def test_sd2_file_without_prediction_asks_for_it(sd, tmp_path):
    if sd["family"] != "sd2":
        pytest.skip("SD 1.x files are always eps")
    tensors, _ = checkpoint.load(sd["single"])
    plain = tmp_path / "plain.safetensors"
    checkpoint.save(plain, tensors)  # no ldmcore metadata, like a file from the wild
    with pytest.raises(ConfigError, match="prediction=eps or prediction=v"):
        import_pretrained(plain, tmp_path / "out", tokenizer=sd["root"] / "diffusers" / "tokenizer")
    run = import_pretrained(plain, tmp_path / "out", prediction="v",
                            tokenizer=sd["root"] / "diffusers" / "tokenizer")
    assert json.loads((run / "import.json").read_text())["unet"]["num_head_channels"] == 64


@torch.no_grad()
def test_inpainting_layout_maps_onto_the_inpaint_plugin(tmp_path):
    """SD's 9-channel inpainting UNet reads [z | mask | masked latents]; imported, the ``inpaint``
    plugin feeds [masked latents | mask] and the UNet's prediction is the same."""
    pipe = build_pipeline("sd1", in_channels=9)
    pipe.save_pretrained(str(tmp_path / "inpaint"), safe_serialization=True)
    run = import_pretrained(tmp_path / "inpaint", tmp_path / "run", image_size=64)
    assert json.loads((run / "import.json").read_text())["variant"] == "sd1-inpainting"
    model = from_pretrained(run)
    assert list(model.conditioner.encoders) == ["text", "inpaint"]
    g = torch.Generator().manual_seed(4)
    z, masked = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    t, ctx = torch.tensor([700, 30]), torch.randn(2, 77, 64, generator=g)
    ref = pipe.unet(torch.cat([z, mask, masked], 1), t, encoder_hidden_states=ctx).sample
    ours = model.unet(torch.cat([z, masked, mask], 1), t, ctx)
    assert _max_err(ours, ref) <= TOL
    single = export_run(run, tmp_path / "inpaint.safetensors", "sd")  # back in SD's channel order
    tensors, _ = checkpoint.load(single)
    assert torch.equal(tensors["model.diffusion_model.input_blocks.0.0.weight"], pipe.unet.conv_in.weight)


@torch.no_grad()
def test_x4_upscaler_layout_maps_onto_the_lowres_plugin(tmp_path):
    """SD x4: [z | low-res image noised by the DDPM low_res_scheduler], the noise level through a
    class-embedding table. Imported, the ``lowres`` plugin (ddpm levels, one-hot vector) and the
    text plugin feed the UNet, whose prediction matches diffusers' on the same inputs."""
    from tests.sd_fixtures import build_upscaler

    pipe = build_upscaler()
    pipe.save_pretrained(str(tmp_path / "x4"), safe_serialization=True)
    run = import_pretrained(tmp_path / "x4", tmp_path / "run")
    assert json.loads((run / "import.json").read_text())["variant"] == "sd2-x4-upscaler"
    model = from_pretrained(run)
    assert list(model.conditioner.encoders) == ["text", "lowres"]
    assert model.autoencoder.scale_factor == pytest.approx(0.08333)
    lowres = model.conditioner.encoders["lowres"].config
    assert (lowres.noise, lowres.level_encoding, lowres.num_levels, lowres.max_noise_level,
            lowres.sample_noise_level) == ("ddpm", "onehot", 1000, 350, 20)

    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 4, 8, 8, generator=g)
    low = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1  # the low-res image: latent size, [-1, 1]
    t = torch.tensor([900, 40])
    torch.manual_seed(7)  # the plugin draws its augmentation noise from the global generator
    cond = model.conditioner({"text": PROMPTS, "lowres": low}, 2)
    ours = model.network(z, t, cond)

    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    ctx = pipe.text_encoder(ids)[0]
    torch.manual_seed(7)
    eps = torch.randn_like(low)
    level = torch.tensor([20, 20])  # the pipeline's default noise_level
    noised = pipe.low_res_scheduler.add_noise(low, eps, level)
    ref = pipe.unet(torch.cat([z, noised], 1), t, encoder_hidden_states=ctx, class_labels=level).sample
    assert _max_err(ours, ref) <= TOL

    # other levels through the same table and schedule (the plugin's own noising, the UNet's vector)
    enc = model.conditioner.encoders["lowres"]
    level = torch.tensor([0, 349])
    hot = torch.nn.functional.one_hot(level, 1000).float()
    ref = pipe.unet(torch.cat([z, pipe.low_res_scheduler.add_noise(low, eps, level)], 1), t,
                    encoder_hidden_states=ctx, class_labels=level).sample
    ours = model.unet(torch.cat([z, enc.noised(low, level.float(), eps)], 1), t, ctx, None, hot)
    assert _max_err(ours, ref) <= TOL

    # and back: diffusers loads the export as the same upscaler pipeline, weights bit-identical
    from diffusers import StableDiffusionUpscalePipeline

    out = export_run(run, tmp_path / "x4_again", "diffusers")
    again = StableDiffusionUpscalePipeline.from_pretrained(str(out))
    assert again.config.max_noise_level == 350
    assert again.low_res_scheduler.config.beta_end == pytest.approx(0.02)
    theirs = pipe.unet.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in again.unet.state_dict().items())
    assert set(again.unet.state_dict()) == set(theirs)
    with pytest.raises(ConfigError, match="layout=diffusers"):
        export_run(run, tmp_path / "x4.safetensors", "sd")
