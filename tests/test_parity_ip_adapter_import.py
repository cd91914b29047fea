"""``ldm import IP_ADAPTER.safetensors OUT attach_to=RUN image_encoder=DIR`` against diffusers, in
float32 on random weights.

A tiny Stable Diffusion 1.x (tests/sd_fixtures.py) is imported as a run; an IP-Adapter file in the
original layout is written here with random tensors, numbered as the original repository numbers
them (the index of each cross-attention among all of the UNet's attention processors), and a
tiny CLIP vision model with projection stands for its image encoder. diffusers reads the same file
with its own loader (``_load_ip_adapter_weights``, the IP-Adapter processors and
``ImageProjection``), so the key order is checked against diffusers' reading, not ours. Compared:
the UNet output for one call and a 10-step DDIM sample at guidance 7.5 from
``StableDiffusionPipeline`` given the same image embeddings (its unconditional branch has a zero
embedding, as the plugin's null). Tolerances as tests/test_parity_residual.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ldm_ip_adapter.encoder import ImagePrompt
from ldmcore import checkpoint
from ldmcore.cli import main
from ldmcore.interop.convert import import_pretrained
from ldmcore.runfolder import load_run

diffusers = pytest.importorskip("diffusers")

from tests.sd_fixtures import build_pipeline, final_latents  # noqa: E402

TOL = 1e-4  # one network call, relative to the reference's largest |value|
SAMPLE_RTOL = 2e-4  # 10 guided steps
PROMPT = "a red circle"
EMBED = 24  # the vision model's projection width


def original_ip_adapter(unet, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random IP-Adapter tensors in the original file's names for diffusers' ``unet``."""
    g = torch.Generator().manual_seed(seed)
    context = unet.config.cross_attention_dim
    tensors = {"image_proj.proj.weight": torch.randn(4 * context, EMBED, generator=g) * 0.2,
               "image_proj.proj.bias": torch.randn(4 * context, generator=g) * 0.1,
               "image_proj.norm.weight": 1 + 0.1 * torch.randn(context, generator=g),
               "image_proj.norm.bias": 0.1 * torch.randn(context, generator=g)}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            width = unet.get_submodule(name[:-len(".attn2.processor")]).attn2.to_q.out_features
            for kind in ("to_k_ip", "to_v_ip"):
                tensors[f"ip_adapter.{index}.{kind}.weight"] = torch.randn(width, context, generator=g) * 0.1
    return tensors


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("ip")
    pipe = build_pipeline("sd1")
    pipe.save_pretrained(str(root / "diffusers"), safe_serialization=True)
    run = import_pretrained(root / "diffusers", root / "run", progress=False)
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8, projection_dim=EMBED)).save_pretrained(root / "clip", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(root / "clip")
    tensors = original_ip_adapter(pipe.unet)
    checkpoint.save(root / "ip-adapter_test.safetensors", tensors)
    out = root / "with_ip"
    assert main(["import", str(root / "ip-adapter_test.safetensors"), str(out), f"attach_to={run}",
                 f"image_encoder={root / 'clip'}"]) == 0
    reference = copy.deepcopy(pipe)
    reference.unet._load_ip_adapter_weights([
        {part: {k[len(part) + 1:]: v for k, v in tensors.items() if k.startswith(part + ".")}
         for part in ("image_proj", "ip_adapter")}])
    reference.set_ip_adapter_scale(1.0)
    return pipe, reference, run, out


def reference_image(seed: int) -> torch.Tensor:
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    image[:, :, 10:30, 12:44] = torch.tensor([0.9, -0.8, -0.8]).view(1, 3, 1, 1)
    return image


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def test_the_imported_ip_adapter_computes_what_diffusers_computes(setup):
    pipe, reference, run, out = setup
    _, model, _ = load_run(out)
    _, base, _ = load_run(run)
    assert (out / "image_encoder" / "config.json").is_file()  # the run holds its image encoder
    enc = model.conditioner.encoders["ip_adapter"]
    image = torch.cat([reference_image(1), reference_image(2)])
    embeds = enc.embed(image)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([900, 40])
    values = {"text": [PROMPT, "a blue square"], "ip_adapter": ImagePrompt(image)}
    cond = model.conditioner(values, 2)
    want = reference.unet(x, t, encoder_hidden_states=cond.context,
                          added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
    got = model.network(x, t, cond)
    without = base.network(x, t, base.conditioner({"text": values["text"]}, 2))
    assert rel(got, want) <= TOL
    assert rel(without, want) > 100 * TOL  # the image prompt did count


@torch.no_grad()
def test_a_guided_sample_matches_the_diffusers_pipeline(setup):
    pipe, reference, _, out = setup
    _, model, _ = load_run(out)
    image = reference_image(4)
    embeds = model.conditioner.encoders["ip_adapter"].embed(image)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    reference.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    want = reference(PROMPT, num_inference_steps=10, guidance_scale=7.5, latents=noise.clone(),
                     output_type="latent", ip_adapter_image_embeds=[
                         torch.cat([torch.zeros_like(embeds), embeds])[:, None]]).images
    got = final_latents(model, {"text": [PROMPT], "ip_adapter": ImagePrompt(image)}, noise)
    assert float((got - want).abs().max()) <= SAMPLE_RTOL * float(want.abs().max())


def test_an_ip_adapter_without_its_image_encoder_or_pickled_is_refused(setup, tmp_path, capsys):
    _, _, run, out = setup
    source = out.parent / "ip-adapter_test.safetensors"
    assert main(["import", str(source), str(tmp_path / "a"), f"attach_to={run}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "not the image encoder" in err and "image_encoder=DIR" in err
    (tmp_path / "ip-adapter_sd15.bin").write_bytes(b"not read")
    assert main(["import", str(tmp_path / "ip-adapter_sd15.bin"), str(tmp_path / "b"), f"attach_to={run}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pickled" in err and ".safetensors" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@torch.no_grad()
def test_export_writes_the_original_file_and_image_encoder_that_diffusers_loads(setup, tmp_path):
    """``ldm export layout=diffusers``: the pipeline folder holds ``ip_adapter/ip-adapter.safetensors``
    (the imported file's tensors, exactly) and ``image_encoder/``; diffusers loads both with
    ``load_ip_adapter`` and computes what the reference computes."""
    pipe, reference, _, out = setup
    assert main(["export", str(out), str(tmp_path / "exported"), "layout=diffusers", "progress=false"]) == 0
    written, _ = checkpoint.load(tmp_path / "exported" / "ip_adapter" / "ip-adapter.safetensors")
    original, _ = checkpoint.load(out.parent / "ip-adapter_test.safetensors")
    assert set(written) == set(original) and all(torch.equal(written[k], original[k]) for k in original)
    back = diffusers.StableDiffusionPipeline.from_pretrained(str(tmp_path / "exported"))
    back.load_ip_adapter(str(tmp_path / "exported"), subfolder="ip_adapter", weight_name="ip-adapter.safetensors")
    assert back.image_encoder is not None
    g = torch.Generator().manual_seed(6)
    x, t, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 77, 64, generator=g)
    embeds = [torch.randn(1, 1, EMBED, generator=g)]
    want = reference.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"image_embeds": embeds}).sample
    got = back.unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs={"image_embeds": embeds}).sample
    assert float((got - want).abs().max()) <= TOL * float(want.abs().max())
