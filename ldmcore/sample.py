"""``ldm sample``: load a run folder, generate images for given conditions, write them out.

Everything a run needs is in its folder: ``checkpoints/last.safetensors`` carries the resolved
config in its metadata, so sampling rebuilds the exact model (EMA weights by default). Each
sample ``i`` starts from noise drawn with seed ``seed + i``, so the same request gives the same
pixels, and a sample does not change when others are added to the request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError, field_validator

from ldmcore import checkpoint
from ldmcore.build import build_model
from ldmcore.config import Strict, format_validation_error, validate
from ldmcore.diffusion.samplers import SAMPLERS
from ldmcore.errors import ConfigError, nearest
from ldmcore.images import save_grid, save_png
from ldmcore.model import LatentDiffusion
from ldmcore.registry import Registry
from ldmcore.runfolder import RunFolder
from ldmcore.train_autoencoder import autocast


class SampleRequest(Strict):
    run: Path
    n: int = Field(8, ge=1, description="samples per condition value")
    sampler: str | None = None  # default: the run's sampler config
    steps: int | None = Field(None, ge=1)
    guidance: float | None = None
    eta: float | None = Field(None, ge=0)
    seed: int = 0
    out: Path | None = None  # default: RUN/samples/sample_<seed>
    batch: int = Field(64, ge=1)
    precision: str = Field("bf16", pattern="^(bf16|fp32)$")
    ema: bool = True
    cond: dict[str, str] = Field(default_factory=dict)

    @field_validator("sampler")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}: {nearest(v, SAMPLERS)}")
        return v


def parse_request(args: list[str]) -> SampleRequest:
    """``key=value`` words (``cond.NAME=VALUE`` for conditions) into a validated request."""
    raw: dict[str, Any] = {"cond": {}}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"`{arg}` is not key=value; write e.g. run=runs/demo n=8 "
                              f"cond.class=3 (keys: {', '.join(SampleRequest.model_fields)}).")
        if key.startswith("cond."):
            raw["cond"][key[5:]] = value
        else:
            raw[key] = value
    try:
        return SampleRequest.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=SampleRequest)) from None


def load_run(run_dir: Path, registry: Registry | None = None, use_ema: bool = True
             ) -> tuple[Any, LatentDiffusion, dict[str, Any]]:
    """Rebuild the model of a run folder from its last checkpoint (config from its metadata)."""
    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise ConfigError(f"run={str(run_dir)!r} is not a folder; name a run folder made by "
                          f"`ldm train` (e.g. run=runs/demo).")
    tensors, meta = checkpoint.load(run.last)
    if meta.get("kind") != "latent_diffusion" or "config" not in meta:
        raise ConfigError(f"{str(run.last)!r} is not an ldmcore diffusion checkpoint (its "
                          f"metadata has no config); was it written by `ldm train`?")
    cfg = validate(meta["config"])
    model = build_model(cfg, registry=registry, root=run.root)
    state = {k: v for k, v in tensors.items() if not k.startswith(("ema.", "optim.", "rng."))}
    checkpoint.load_into(model, state, "model", run.last)
    if use_ema:
        own = model.state_dict()
        with torch.no_grad():
            for key, value in tensors.items():
                if key.startswith("ema."):
                    own[key[4:]].copy_(value)
    model.eval()
    return cfg, model, meta


def condition_rows(model: LatentDiffusion, cond: dict[str, str]) -> list[dict[str, Any]]:
    """Expand ``cond`` strings into one dict of parsed values per grid row.

    A value written as a JSON list (``[0,1,2]`` or ``["a","b"]``) gives one row per item;
    several lists must have the same length; single values apply to every row.
    """
    encoders = model.conditioner.encoders
    unknown = [k for k in cond if k not in encoders]
    if unknown:
        raise ConfigError(f"cond.{unknown[0]} names no condition of this model: "
                          f"{nearest(unknown[0], encoders)} This run's conditions: "
                          f"{', '.join(encoders) or 'none (unconditional)'}.")
    missing = [k for k in encoders if k not in cond]
    if missing:
        raise ConfigError(f"this model is conditioned on {', '.join(encoders)}; give "
                          f"cond.{missing[0]}=VALUE (a list such as [0,1,2] gives one row each).")
    lists = {key: _rows_of(text.strip(), encoders[key].list_value) for key, text in cond.items()}
    rows = max(len(v) for v in lists.values()) if lists else 1
    bad = {k: len(v) for k, v in lists.items() if len(v) not in (1, rows)}
    if bad:
        raise ConfigError(f"condition lists must have equal lengths, got {bad}.")
    return [{k: (v[0] if len(v) == 1 else v[r]) for k, v in lists.items()} for r in range(rows)]


def _rows_of(text: str, list_value: bool) -> list[str]:
    """One string per row. A JSON list gives a row per item; for plugins whose single value is
    itself a JSON list (``list_value``, e.g. layout boxes), rows need one more level of list."""
    if not text.startswith("["):
        return [text]
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return [text] if list_value else [s.strip() for s in text[1:-1].split(",") if s.strip()]
    if list_value:
        nested = items and isinstance(items[0], list) and items[0] and isinstance(items[0][0], list)
        return [json.dumps(i) for i in items] if nested else [text]
    return [i if isinstance(i, str) else json.dumps(i) for i in items]


def run_sampling(req: SampleRequest, registry: Registry | None = None) -> Path:
    cfg, model, _ = load_run(req.run, registry, req.ema)
    sampler = req.sampler or cfg.sampler.name
    steps = req.steps or cfg.sampler.steps
    guidance = cfg.sampler.guidance if req.guidance is None else req.guidance
    eta = cfg.sampler.eta if req.eta is None else req.eta
    options: dict[str, Any] = {"spacing": cfg.sampler.spacing, "offset": cfg.sampler.offset}
    if sampler == "ddim":
        options["eta"] = eta
        options["set_alpha_to_one"] = cfg.sampler.set_alpha_to_one
    out = req.out or RunFolder(req.run).samples / f"sample_{req.seed}"
    out.mkdir(parents=True, exist_ok=True)

    rows = condition_rows(model, req.cond)
    encoders = model.conditioner.encoders
    texts: list[dict[str, str]] = [row for row in rows for _ in range(req.n)]
    values = [{k: encoders[k].parse(v) for k, v in row.items()} for row in texts]
    device = next(model.unet.parameters()).device
    images = []
    for start in range(0, len(values), req.batch):
        chunk = values[start:start + req.batch]
        batch = {k: encoders[k].collate([v[k] for v in chunk]) for k in encoders}
        noise = torch.stack([torch.randn(model.latent_shape(), generator=torch.Generator().manual_seed(req.seed + start + i))
                             for i in range(len(chunk))])
        with autocast(req.precision, device):
            images.append(model.sample(batch, len(chunk), sampler=sampler, steps=steps,
                                       guidance=guidance, noise=noise, sampler_options=options,
                                       generator=torch.Generator().manual_seed(req.seed + start)))
    images_t = torch.cat(images)
    records = []
    for i, (image, row) in enumerate(zip(images_t, texts)):
        name = f"{i:04d}.png"
        save_png(image, out / name)
        records.append({"file": name, "seed": req.seed + i, "row": i // req.n,
                        "conditions": {k: _plain(v) for k, v in row.items()}})
    save_grid(images_t, out / "grid.png", nrow=req.n)
    (out / "samples.json").write_text(json.dumps({
        "run": str(req.run), "sampler": sampler, "steps": steps, "guidance": guidance,
        "precision": req.precision, "ema": req.ema, "samples": records}, indent=1))
    return out


def _plain(text: str) -> Any:
    """A condition string as JSON would read it (``"3"`` -> 3), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
