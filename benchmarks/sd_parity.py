"""Parity with diffusers at the full Stable Diffusion 1.5 size (not CI: ~4 GB per copy).

Builds a random-weight SD-1.5 pipeline with diffusers (860M-parameter UNet, CLIP ViT-L text
encoder, SD VAE), saves it as a diffusers folder, imports it, exports an SD single file, imports
that, and reports the max abs error against diffusers of: text embeddings, one UNet prediction,
VAE encode (posterior mean) and decode, and a 10-step DDIM sample with guidance 7.5; plus the
time of each step. The pipeline builder is the one ``tests/test_interop.py`` runs at reduced
width (``tests.sd_fixtures``). Usage::

    python -m benchmarks.sd_parity [--family sd1|sd2] [--latent 64] [--size full|tiny]
        [--steps 10] [--skip-sample] [--out DIR] [--json results.json]

``--size tiny --latent 8`` runs in seconds (the widths CI tests); the full size needs about 4 GB
per copy of the model. The README quotes the figures measured at full size.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ldmcore import from_pretrained  # noqa: E402
from ldmcore.interop.convert import import_pretrained  # noqa: E402
from ldmcore.interop.export import export_run  # noqa: E402
from tests.sd_fixtures import build_pipeline  # noqa: E402


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=["sd1", "sd2"], default="sd1")
    ap.add_argument("--size", choices=["full", "tiny"], default="full",
                    help="tiny: the reduced widths CI tests (use --latent 8)")
    ap.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px images)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--skip-sample", action="store_true", help="skip the DDIM sample")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="sd-parity-"))
    times: dict[str, float] = {}
    errors: dict[str, dict[str, float]] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {times[name]} s", flush=True)
        return out

    pred = "v_prediction" if args.family == "sd2" else "epsilon"
    pipe = timed("build diffusers pipeline", lambda: build_pipeline(args.family, args.size, prediction=pred))
    timed("save diffusers folder", lambda: pipe.save_pretrained(str(work / "diffusers"), safe_serialization=True))
    run = timed("ldm import (diffusers folder)", lambda: import_pretrained(work / "diffusers", work / "run_diffusers"))
    single = timed("ldm export (SD single file)", lambda: export_run(run, work / "model.safetensors", "sd"))
    run_sf = timed("ldm import (SD single file)", lambda: import_pretrained(
        single, work / "run_single", tokenizer=work / "diffusers" / "tokenizer"))
    del run, single

    g = torch.Generator().manual_seed(0)
    lat = args.latent
    prompts = ["a photograph of an astronaut riding a horse"]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    x = torch.randn(1, 4, lat, lat, generator=g)
    t = torch.tensor([500])
    image = torch.rand(1, 3, lat * 8, lat * 8, generator=g) * 2 - 1
    z = torch.randn(1, 4, lat, lat, generator=g)
    noise = torch.randn(1, 4, lat, lat, generator=g)
    ref_ctx = timed("diffusers text", lambda: pipe.text_encoder(ids)[0])
    ref_eps = timed("diffusers unet", lambda: pipe.unet(x, t, encoder_hidden_states=ref_ctx).sample)
    ref_mean = timed("diffusers vae encode", lambda: pipe.vae.encode(image).latent_dist.mean)
    ref_dec = timed("diffusers vae decode", lambda: pipe.vae.decode(z).sample)
    ref_lat = None
    if not args.skip_sample:
        ref_lat = timed("diffusers ddim sample", lambda: pipe(
            prompts[0], num_inference_steps=args.steps, guidance_scale=7.5, latents=noise.clone(),
            output_type="latent").images)
    del pipe
    for name, folder in (("diffusers", work / "run_diffusers"), ("single_file", run_sf)):
        model = timed(f"load ({name})", lambda: from_pretrained(folder))
        e = errors[name] = {}
        ctx = timed(f"ldmcore text ({name})", lambda: model.conditioner({"text": prompts}, 1).context)
        e["text"] = err(ctx, ref_ctx)
        e["unet"] = err(timed(f"ldmcore unet ({name})", lambda: model.unet(x, t, ref_ctx)), ref_eps)
        e["vae_encode"] = err(timed(f"ldmcore vae encode ({name})", lambda: model.autoencoder.encode(image).mean), ref_mean)
        e["vae_decode"] = err(timed(f"ldmcore vae decode ({name})", lambda: model.autoencoder.decode(z)), ref_dec)
        if ref_lat is not None:
            last = {}
            plan = model.sampling.but(steps=args.steps)  # the imported run's own plan: SD's DDIM
            timed(f"ldmcore ddim sample ({name})", lambda: model.sample(
                {"text": prompts}, 1, plan, noise=noise.clone(),
                callback=lambda info: last.update(x=info["x"])))
            # the sampler works in x = z / sqrt(abar); SD's latents are z at its last step's level
            sigma = float(plan.sigmas.sigmas(model.schedule, args.steps)[-1])
            e["ddim_sample"] = err(last["x"] / (1 + sigma ** 2) ** 0.5, ref_lat)
        print(name, json.dumps(e), flush=True)
        del model
    result = {"family": args.family, "size": args.size, "latent": lat, "steps": args.steps, "threads": torch.get_num_threads(),
              "max_abs_error": errors, "seconds": times}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
