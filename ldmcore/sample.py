"""``ldm sample``: load a run folder, generate images for given conditions, write them out.

Everything a run needs is in its folder: ``checkpoints/last.safetensors`` carries the resolved
config in its metadata, so sampling rebuilds the exact model (EMA weights by default). Each
sample ``i`` starts from noise drawn with seed ``seed + i``, so the same request gives the same
pixels, and a sample does not change when others are added to the request.

The run's ``sampler`` config gives the defaults; the request overrides them: ``sampler=``,
``steps=``, ``sigmas=``, knobs (``eta=``, ``s_noise=``, ``option.NAME=``; the run's knobs apply
only while its own sampler is used), guidance (``guidance=`` global, ``guidance.PLUGIN=`` per
plugin, ``guidance_rescale=``, ``guidance_interval=[lo,hi]``), and image-to-image / masked
sampling (``init=PNG strength=0.6``, ``mask=PNG``, white = generate).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError
from PIL import Image

from ldmcore.conditioning import read_value
from ldmcore.diffusion.plan import SamplingPlan
from ldmcore.diffusion.sigmas import SigmaKind, Spacing
from ldmcore.errors import ConfigError, LdmError, nearest
from ldmcore.hardware import HardwareChoice, autocast, choose
from ldmcore.images import open_image, save_grid, save_png
from ldmcore.model import LatentDiffusion
from ldmcore.nn.execution import for_inference
from ldmcore.progress import progress_bar, step_counter
from ldmcore.registry import Registry
from ldmcore.runfolder import RunFolder, check_output_folder, load_run, make_output_folder
from ldmcore.sampling import sampling_plan
from ldmcore.schema import Strict, format_validation_error
from ldmcore.summary import startup_line


MAX_IMAGES = 10_000  # one request's images, all held in memory before they are written


class SampleRequest(Strict):
    run: Path = Field(description="the run folder to sample")
    n: int = Field(8, ge=1, le=MAX_IMAGES, description="samples per condition value")
    sampler: str | None = Field(None, description="default: the run's sampler config; NAME: that "
                                "sampler with its own config (sampler/NAME.yaml)")
    steps: int | None = Field(None, ge=1)
    sigmas: SigmaKind | None = None
    spacing: Spacing | None = None
    rho: float | None = Field(None, gt=0)
    eta: float | None = Field(None, ge=0, le=1)
    s_noise: float | None = Field(None, ge=0)
    options: dict[str, str] = Field(default_factory=dict, description="other sampler knobs")
    guidance: float | None = Field(None, description="default: the run's; 1 = no guidance")
    plugin_guidance: dict[str, float] = Field(default_factory=dict, description="a scale per "
                                              "plugin (compositional guidance)")
    guidance_rescale: float | None = Field(None, ge=0, le=1)
    guidance_interval: tuple[float, float] | None = Field(None, description="guide only for "
                                                          "sigmas in [lo,hi]")
    init: Path | None = Field(None, description="image-to-image / masked sampling from this PNG")
    strength: float | None = Field(None, ge=0, le=1, description="default 0.75 with init, 1 "
                                   "with a mask")
    mask: Path | None = Field(None, description="white = generate, black = keep the init image")
    seed: int = Field(0, description="sample i starts from the noise of seed + i")
    out: Path | None = Field(None, description="default: RUN/samples/sample_<seed>")
    overwrite: bool = Field(False, description="write into a non-empty out= folder that ldm "
                            "sample did not make")
    batch: int = Field(64, ge=1, description="images per forward pass")
    precision: str = Field("auto", pattern="^(auto|bf16|fp32|fp16)$",
                           description="auto: bf16 where the hardware runs it natively, else fp32 "
                                       "(CPU) or fp16 (GPU); not inherited from training")
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description="auto: the cores other processes "
                                                               "leave free; N: exactly N")
    ema: bool = Field(True, description="sample with the EMA weights")
    progress: bool = Field(True, description="a progress bar while sampling (never when the "
                                             "output is not a terminal)")
    cond: dict[str, str] = Field(default_factory=dict, description="a plugin's value; a list "
                                 "such as [0,1,2] gives one grid row each")
    conditions: dict[str, str] = Field(default_factory=dict, description="replace a value of "
                                       "the run's plugin config (a path given here is trusted, "
                                       "unlike the checkpoint's)")


PREFIXED = {"cond.": "cond", "guidance.": "plugin_guidance", "option.": "options",
            "conditions.": "conditions"}


def parse_request(args: list[str]) -> SampleRequest:
    """``key=value`` words (``cond.NAME=VALUE`` for conditions, ``guidance.NAME=SCALE`` per
    plugin, ``option.NAME=VALUE`` for sampler knobs) into a validated request."""
    raw: dict[str, Any] = {field: {} for field in PREFIXED.values()}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"`{arg}` is not key=value; write e.g. run=runs/demo n=8 "
                              f"cond.class=3 (keys: {', '.join(SampleRequest.model_fields)}).")
        prefix = next((p for p in PREFIXED if key.startswith(p)), None)
        if prefix is not None:
            raw[PREFIXED[prefix]][key[len(prefix):]] = value
        elif key == "guidance_interval":
            try:
                raw[key] = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"guidance_interval={value!r}: write two sigmas as a list, "
                                  f"e.g. guidance_interval=[0.3,5].") from None
        else:
            raw[key] = value
    try:
        return SampleRequest.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=SampleRequest, write_value=str)) from None


def condition_rows(model: LatentDiffusion, cond: dict[str, str]) -> list[dict[str, Any]]:
    """Expand ``cond`` strings into one dict of plain values (``read_value``) per grid row.

    A value written as a JSON list (``[0,1,2]`` or ``["a","b"]``) gives one row per item;
    several lists must have the same length; single values apply to every row. Each string is
    decoded here, once: plugins' ``parse`` and ``samples.json`` receive the decoded values.
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
    lists = {key: _rows_of(key, text.strip(), encoders[key].list_value) for key, text in cond.items()}
    empty = [k for k, v in lists.items() if not v]
    if empty:
        raise ConfigError(f"cond.{empty[0]}=[] is an empty list; give a value, or a list with "
                          f"one item per grid row such as [0,1,2].")
    rows = max(len(v) for v in lists.values()) if lists else 1
    bad = {k: len(v) for k, v in lists.items() if len(v) not in (1, rows)}
    if bad:
        raise ConfigError(f"condition lists must have equal lengths, got {bad}.")
    return [{k: (v[0] if len(v) == 1 else v[r]) for k, v in lists.items()} for r in range(rows)]


def _rows_of(key: str, text: str, list_value: bool) -> list[Any]:
    """One plain value per row. A JSON list gives a row per item; for plugins whose single value
    is itself a JSON list (``list_value``, e.g. layout boxes), rows need one more level of list.
    A list of bare words (``[a red circle, a blue square]``) splits at its commas."""
    value = read_value(text)
    if isinstance(value, list):
        if not list_value:
            return value
        nested = value and isinstance(value[0], list) and value[0] and isinstance(value[0][0], list)
        return value if nested else [value]
    if not text.startswith("[") or list_value:
        return [value]
    if not text.endswith("]") or text.count("[") != 1 or text.count("]") != 1:
        raise ConfigError(f"cond.{key}={text!r} opens a list that is not closed (or nests "
                          f"brackets); write one item per grid row, e.g. cond.{key}=[0,1,2] "
                          f"or cond.{key}='[\"a cat\",\"a dog\"]'.")
    return [s.strip() for s in text[1:-1].split(",") if s.strip()]


def request_plan(req: SampleRequest, model: LatentDiffusion, cfg: Any,
                 registry: Registry | None = None) -> SamplingPlan:
    """The run's sampling plan overridden by the request, every part checked (unknown sampler,
    knob, plugin; steps; interval) before work."""
    strength = req.strength
    if strength is None:
        strength = 1.0 if req.mask is not None or req.init is None else 0.75
    if req.mask is not None and req.init is None:
        raise ConfigError("mask= needs init=: the mask says which parts of the init image to "
                          "keep (black) and which to generate (white).")
    knobs = {**req.options, **({} if req.s_noise is None else {"s_noise": req.s_noise})}
    plan = sampling_plan(
        cfg.sampler, registry, where="", strength=strength, name=req.sampler, steps=req.steps,
        sigmas=req.sigmas, spacing=req.spacing, rho=req.rho, eta=req.eta, options=knobs,
        guidance=req.guidance, plugin_guidance=req.plugin_guidance,
        guidance_rescale=req.guidance_rescale, guidance_interval=req.guidance_interval)
    try:
        plan.levels(model.schedule)
    except ValueError as err:
        raise ConfigError(f"steps={plan.steps} with sigmas={plan.sigmas.kind.value}: {err} (the "
                          f"model was trained on {model.schedule.num_timesteps} timesteps).") from None
    plan.guidance.branches(list(model.conditioner.encoders))  # unknown plugin names fail here
    return plan


def load_image(path: Path, size: int, channels: int, what: str = "init") -> torch.Tensor:
    """A PNG/JPEG as a (1, C, size, size) tensor in [-1, 1] (``what`` names the argument)."""
    image = open_image(path, what).convert("L" if channels == 1 else "RGB")
    image = image.resize((size, size), Image.BICUBIC)
    t = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 127.5 - 1.0
    return (t[None] if channels == 1 else t.permute(2, 0, 1))[None]


def parse_values(encoders: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's plain values through their plugin's ``parse``, once per distinct value.
    Whatever a plugin raises on a user's value is that value's error (named, exit 2), and a
    parsed value holding NaN or infinity is refused before it can give blank images."""
    parsed: dict[tuple[str, str], Any] = {}
    out = []
    for row in rows:
        values = {}
        for name, value in row.items():
            key = (name, json.dumps(value, sort_keys=True))
            if key not in parsed:
                parsed[key] = _parse_one(encoders[name], name, value)
            values[name] = parsed[key]
        out.append(values)
    return out


def _parse_one(encoder: Any, name: str, value: Any) -> Any:
    """One plain value through ``encoder.parse``; a failure or a non-finite result is the
    user's input error, named."""
    try:
        result = encoder.parse(value)
    except LdmError:
        raise
    except Exception as exc:  # a value the plugin cannot read is the user's input error
        raise ConfigError(f"cond.{name}={_shown(value)} cannot be read by the {name!r} "
                          f"plugin ({type(exc).__name__}: {exc}); see `ldm plugins` and "
                          f"the plugin's documentation for the values it takes.") from None
    if not _finite(result):
        raise ConfigError(f"cond.{name}={_shown(value)} holds NaN or infinity; give "
                          f"finite numbers.")
    return result


def _shown(value: Any) -> str:
    """A plain value as the person wrote it, quoted for an error message."""
    return repr(value if isinstance(value, str) else json.dumps(value))


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, float):
        return np.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return bool(np.isfinite(value).all())
    return True


@dataclass
class LoadedRun:
    """A run's model made ready for sampling once (weights, precision, threads), so that many
    requests can share it: ``ldm sample`` loads one per command, ``ldm serve`` one per server."""

    run: Path
    cfg: Any
    model: LatentDiffusion
    hardware: HardwareChoice
    bf16_weights: bool
    ema: bool
    registry: Registry | None = None


def load_for_sampling(run: Path, registry: Registry | None = None, ema: bool = True,
                      conditions: dict[str, str] | None = None, precision: str = "auto",
                      threads: int | str = "auto") -> LoadedRun:
    """Load ``run`` (EMA weights by default), resolve precision and threads, prepare the
    networks for inference, and print the start-up line."""
    cfg, model, _ = load_run(run, registry, ema, conditions)
    ex = cfg.execution
    device = next(model.unet.parameters()).device
    hardware = choose(precision, threads, device, announce=False)
    bf16_weights = hardware.precision.name == "bf16" and ex.bf16_weights
    model.unet = for_inference(model.unet, bf16_weights=bf16_weights,
                               channels_last=ex.channels_last, compile=ex.compile)
    for_inference(model.autoencoder, bf16_weights=bf16_weights, channels_last=ex.channels_last)
    print(startup_line(hardware, model, registry), flush=True)
    return LoadedRun(run, cfg, model, hardware, bf16_weights, ema, registry)


@dataclass
class PreparedRequest:
    """A request checked against a loaded run: its plan, images and parsed values, one per
    sample (``plain``: the values as decoded, what ``samples.json`` records)."""

    plan: SamplingPlan
    init: torch.Tensor | None
    mask: torch.Tensor | None
    plain: list[dict[str, Any]]
    values: list[dict[str, Any]]


def prepare_request(loaded: LoadedRun, req: SampleRequest) -> PreparedRequest:
    """Check every part of ``req`` (plan, init and mask images, conditions) before the model
    runs; each mistake is a ``ConfigError`` naming it."""
    model, cfg = loaded.model, loaded.cfg
    plan = request_plan(req, model, cfg, loaded.registry)
    size, channels = cfg.data.image_size, cfg.data.channels
    init = None if req.init is None else load_image(req.init, size, channels)
    mask = None if req.mask is None else (load_image(req.mask, size, 1, "mask") + 1) / 2
    rows = condition_rows(model, req.cond)
    if len(rows) * req.n > MAX_IMAGES:
        raise ConfigError(f"{len(rows)} condition rows x n={req.n} asks for {len(rows) * req.n} "
                          f"images; one request makes at most {MAX_IMAGES} (they are held in "
                          f"memory); lower n or split the list over several requests.")
    plain: list[dict[str, Any]] = [row for row in rows for _ in range(req.n)]
    return PreparedRequest(plan, init, mask, plain, parse_values(model.conditioner.encoders, plain))


def sampler_steps(loaded: LoadedRun, req: SampleRequest, prepared: PreparedRequest) -> int:
    """Sampler steps a prepared request runs, over all its batches (what progress counts)."""
    levels = prepared.plan.levels(loaded.model.schedule)
    steps = len(levels) - 1 - (prepared.plan.first_step(levels) if prepared.init is not None else 0)
    return -(-len(prepared.values) // req.batch) * steps


def generate(loaded: LoadedRun, req: SampleRequest, prepared: PreparedRequest,
             progress: Callable[[dict[str, Any]], None] | None = None) -> torch.Tensor:
    """The images of a prepared request, in [-1, 1]: sample ``i`` starts from the noise of seed
    ``seed + i``, in batches of ``req.batch``. ``progress`` is called after each sampler step
    (``sampler_steps`` of them)."""
    model, values, plan = loaded.model, prepared.values, prepared.plan
    encoders = model.conditioner.encoders
    device = next(model.unet.parameters()).device
    precision = "fp32" if loaded.bf16_weights else loaded.hardware.precision.name  # bf16 weights: no casts
    images = []
    for start in range(0, len(values), req.batch):
        chunk = values[start:start + req.batch]
        batch = {k: encoders[k].collate([v[k] for v in chunk]) for k in encoders}
        noise = torch.stack([torch.randn(model.latent_shape(), generator=torch.Generator().manual_seed(req.seed + start + i))
                             for i in range(len(chunk))])
        with autocast(precision, device):
            images.append(model.sample(batch, len(chunk), plan, noise=noise, init=prepared.init,
                                       mask=prepared.mask, callback=progress,
                                       generator=torch.Generator().manual_seed(req.seed + start)))
    return torch.cat(images)


def write_samples(out: Path, req: SampleRequest, loaded: LoadedRun, prepared: PreparedRequest,
                  images: torch.Tensor) -> list[dict[str, Any]]:
    """Each image as ``0000.png``..., the grid (a row per condition row) and ``samples.json``
    (plan, hardware, each file's seed and values); returns the files' records."""
    make_output_folder(out)
    records = []
    for i, (image, row) in enumerate(zip(images, prepared.plain)):
        name = f"{i:04d}.png"
        save_png(image, out / name)
        records.append({"file": name, "seed": req.seed + i, "row": i // req.n,
                        "conditions": row})
    save_grid(images, out / "grid.png", nrow=req.n)
    plan = prepared.plan
    (out / "samples.json").write_text(json.dumps({
        "run": str(req.run), **plan.record(), "init": None if req.init is None else str(req.init),
        "strength": plan.strength if req.init is not None else None,
        "mask": None if req.mask is None else str(req.mask),
        **loaded.hardware.record(), "ema": loaded.ema, "samples": records}, indent=1, allow_nan=False))
    return records


def loading_key(req: SampleRequest) -> tuple:
    """What of a request the loaded model depends on: requests with the same key can share one
    ``LoadedRun`` (sampling never changes it)."""
    return (req.run, req.ema, tuple(sorted(req.conditions.items())), req.precision, req.threads)


def run_sampling(req: SampleRequest, registry: Registry | None = None,
                 loaded: LoadedRun | None = None) -> Path:
    """Sample as ``req`` asks, with ``loaded`` if given (loaded for a request of the same
    ``loading_key``). Every part of the request (conditions, images, output folder) is checked
    before the model runs, and the output folder is made only when the images are."""
    out = req.out or RunFolder(req.run).samples / f"sample_{req.seed}"
    check_output_folder(out, req.overwrite)
    if loaded is None:
        loaded = load_for_sampling(req.run, registry, req.ema, req.conditions, req.precision, req.threads)
    prepared = prepare_request(loaded, req)
    print(f"sampler: {prepared.plan.describe()}", flush=True)
    bar = progress_bar(sampler_steps(loaded, req, prepared),
                       f"sampling {len(prepared.values)} images", req.progress)
    images = generate(loaded, req, prepared, step_counter(bar))
    bar.close()
    write_samples(out, req, loaded, prepared, images)
    return out
