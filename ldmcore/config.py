"""Two-stage config: Hydra composes and interpolates, pydantic validates.

The Hydra tree ships inside the package (``ldmcore.conf``), so a non-editable install works.
Plugin packages may ship config groups of their own (the ``register_config_dirs`` hook); they are
searched after the host's tree, so ``condition=[edges]`` or ``experiment=shapes_edges`` find a
plugin's files without copying. Every error a user can make here (unknown key, wrong type,
unknown group option, unknown plugin) becomes a ``ConfigError`` naming the key path and the
nearest valid names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from ldmcore.conditioning import EncoderConfig
from ldmcore.conftree import conf_dir, config_sources, group_options
from ldmcore.diffusion.schedule import BetaSchedule, Prediction
from ldmcore.errors import ConfigError, PluginError, nearest
from ldmcore.hardware import choose_precision
from ldmcore.inherit import inherit_base
from ldmcore.loggers import LoggerSpec
from ldmcore.registry import Registry, default_registry
from ldmcore.sampling import SamplerConfig, sampling_plan, switched_to
from ldmcore.schema import Strict, format_validation_error

__all__ = ["SamplerConfig", "Strict", "conf_dir", "config_sources", "format_validation_error",
           "group_options"]  # re-exported for callers


class UNetConfig(Strict):
    model_channels: int = Field(64, ge=8)
    channel_mult: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 2), min_length=1)
    num_res_blocks: int = Field(2, ge=1)
    attention_levels: tuple[int, ...] = (1,)
    middle_attention: bool = True
    num_head_channels: int = Field(32, ge=1)
    num_heads: int = Field(0, ge=0, description="fixed head count at every width (SD 1.x: 8); 0 = from num_head_channels")
    transformer_depth: int = Field(1, ge=1)
    context_dim: int = Field(256, ge=1, description="cross-attention token width plugins project to")
    use_linear_in_transformer: bool = False
    norm_groups: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    vector_projection: Literal["mlp", "linear"] = Field(
        "mlp", description="how vector plugins enter the timestep embedding: 'mlp' (Linear-SiLU-Linear) "
                           "or 'linear' (bias-free; on one-hot vectors an embedding table, as SD x4's noise level)")
    cross_only_levels: tuple[int, ...] = Field(
        (), description="attention levels whose first attention attends to the context instead of the "
                        "features (SD x4 upscaler: CompVis disable_self_attentions)")


class DiffusionConfig(Strict):
    schedule: BetaSchedule = BetaSchedule.SCALED_LINEAR
    timesteps: int = Field(1000, ge=2)
    beta_start: float = Field(0.00085, gt=0, lt=1)
    beta_end: float = Field(0.012, gt=0, lt=1)
    prediction: Prediction = Prediction.EPS
    zero_terminal_snr: bool = Field(False, description="rescale betas to zero terminal SNR "
                                    "(Lin et al. 2023); needs prediction: v")
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR-gamma loss weighting (Hang et "
                                    "al. 2023; 5 is their choice); null: the uniform loss of LDM")
    residual_scale: float = Field(1.0, gt=0, description="with a plugin that gives a base image "
                                  "(conditions.lowres.base, conditions.inpaint.base): the model "
                                  "diffuses residual_scale * (z_0 - base); about 1 / std of the residual")

    @model_validator(mode="after")
    def _v_for_zero_snr(self) -> DiffusionConfig:
        if self.zero_terminal_snr and self.prediction is not Prediction.V:
            raise ValueError("zero_terminal_snr=true needs prediction=v: at zero SNR the last "
                             "timestep is pure noise, from which an eps-prediction cannot "
                             "recover z_0 (Lin et al. 2023, sec. 3.2)")
        return self


class ModelConfig(Strict):
    unet: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    init_from: Path | None = Field(None, description="a pretrained run folder to start from; "
                                                     "plugins added here start at zero (ldmcore.attach)")


class DiscriminatorConfig(Strict):
    enabled: bool = Field(False, description="add a PatchGAN hinge loss to stage 1 (LDM's "
                          "autoencoders use one)")
    weight: float = Field(0.5, ge=0, description="weight of the adversarial term")
    start_step: int = Field(0, ge=0, description="stage-1 step from which it applies")
    channels: int = Field(32, ge=8, description="width of the discriminator's first layer")


class AutoencoderTrainConfig(Strict):
    steps: int = Field(1000, ge=0, description="optimizer steps of stage 1 (0: keep the fresh "
                       "autoencoder, for tests)")
    batch_size: int = Field(64, ge=1, description="images per stage-1 step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (betas 0.5, 0.9)")
    kl_weight: float = Field(1e-6, ge=0, description="weight of the KL term against the per-pixel "
                             "L1 reconstruction loss")
    discriminator: DiscriminatorConfig = DiscriminatorConfig()


class AutoencoderConfig(Strict):
    kind: Literal["kl", "pixels"] = Field(
        "kl", description="kl: a KL autoencoder trained in stage 1 (or loaded); pixels: no first "
                          "stage, diffusion on the images themselves (f = 1, the image's channels)")
    latent_channels: int = Field(4, ge=1, description="kl only; pixels use the image's channels")
    ch: int = Field(64, ge=8)
    ch_mult: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 2, 2), min_length=1)
    num_res_blocks: int = Field(1, ge=1)
    attn_levels: tuple[int, ...] = ()
    norm_groups: int = Field(32, ge=1)
    checkpoint: Path | None = Field(None, description="a trained autoencoder to use instead of training one")
    train: AutoencoderTrainConfig = AutoencoderTrainConfig()

    @property
    def downsample_factor(self) -> int:
        return 1 if self.kind == "pixels" else 2 ** (len(self.ch_mult) - 1)


class DataConfig(Strict):
    name: str = Field("digits", description="a registered dataset (`register_datasets`): digits, "
                                            "shapes, photos, image_folder, coco, or a plugin's")
    path: Path | None = None
    annotations: Path | None = Field(None, description="coco: the instances JSON (boxes, "
                                     "polygon/RLE masks, categories)")
    captions: Path | None = Field(None, description="coco: a captions JSON (optional)")
    missing_captions: Literal["error", "empty"] = Field(
        "error", description="image_folder/coco: images without a caption when others have one: "
                             "error (name them) or empty (caption \"\")")
    image_size: int = Field(32, ge=8)
    channels: Literal[1, 3] = 1
    hflip: bool = False
    shift: float = Field(0.0, ge=0.0, lt=0.5)
    num_workers: int = Field(0, ge=0)
    num_items: int = Field(2000, ge=1, description="shapes/photos: number of scenes or crops")
    max_shapes: int = Field(3, ge=1, description="shapes: most shapes in one scene")
    limit: int | None = Field(None, ge=1, description="use only the first N items (quick runs)")

    def dataset_kwargs(self) -> dict[str, Any]:
        """Options of the dataset's ``build`` (hook ``register_datasets``)."""
        return self.model_dump(exclude={"name", "num_workers", "limit"})


class TrainerConfig(Strict):
    max_steps: int = Field(2000, ge=0, description="optimizer steps of stage 2 (the diffusion model)")
    batch_size: int = Field(64, ge=1, description="images per step and process (the global batch "
                            "is batch_size x processes x grad_accum)")
    lr: float = Field(2e-4, gt=0, description="AdamW's peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="AdamW's moment decays")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up from 0 to lr")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warmup: hold lr, or decay it to 0 at max_steps along a "
                                "half cosine (Loshchilov & Hutter 2017)")
    grad_accum: int = Field(1, ge=1, description="micro-batches whose gradients add up to one step")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the gradient's global norm to "
                                    "this; null: no clipping")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="decay of the weights' moving "
                             "average, which checkpoints keep and sampling uses (warmed up as "
                             "min(decay, (1 + step) / (10 + step)))")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the hardware runs it natively (AMX/AVX-512-BF16 "
                            "CPUs, Ampere+ GPUs), else fp32 on CPU and fp16 on GPU "
                            "(ldmcore/hardware/precision.py)")
    cache_latents: bool = Field(True, description="encode the dataset once with the frozen "
                                "autoencoder (deterministic data that fits in memory)")
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="auto (or null): the cores no other process is using, re-checked "
                            "while training; N: exactly N (ldmcore/hardware/threads.py)")
    log_every: int = Field(50, ge=1, description="steps between metrics.jsonl records (loss, "
                           "lr, speed)")
    loggers: tuple[str, ...] = Field(
        (), description="registered loggers fed every metrics.jsonl record, the sample grids and "
                        "the hyper-parameters: tensorboard (RUN_DIR/tensorboard), or a plugin's "
                        "(hook register_loggers); metrics.jsonl is written either way")
    sample_every: int = Field(0, ge=0, description="steps between grids of EMA samples "
                              "(samples/step_N.png, conditioned on the first 16 data items, 8 per "
                              "row); 0: only the final grid")
    checkpoint_every: int = Field(500, ge=1, description="steps between writes of "
                                  "last.safetensors (and a periodic step_N copy)")
    keep_checkpoints: int = Field(2, ge=0, description="periodic step_N files kept besides last")
    progress: bool = Field(True, description="progress bars of both stages (never when the "
                           "output is not a terminal)")
    stop_signals: tuple[Literal["SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGHUP"], ...] = Field(
        ("SIGINT", "SIGTERM"), description="signals that finish the current step, write "
                                           "last.safetensors and stop the run (ldmcore/stopping.py)")
    train_only: tuple[str, ...] | None = Field(None, description="train only these: 'plugins', plugin "
                                                                 "names or parameter prefixes; the rest is frozen")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: 'ddp' replicates the model and averages gradients; 'fsdp' "
                           "shards the UNet's weights, gradients, optimizer state and EMA (FSDP2). "
                           "Checkpoints are full either way (ldmcore/parallel.py)")

    @model_validator(mode="after")
    def _fsdp_trains_the_whole_unet(self) -> TrainerConfig:
        if self.strategy == "fsdp" and self.train_only:
            raise ValueError("trainer.strategy=fsdp shards whole UNet tensors, while trainer.train_only "
                             "trains slices of them (gradient masks on the input convolution); use "
                             "trainer.strategy=ddp with train_only, or drop train_only to use fsdp.")
        return self


class ExecutionConfig(Strict):
    """How the backbone runs (``ldmcore/nn/execution.py``): speed only, never saved with weights,
    each within a stated tolerance of the float32 eager result (tests/test_execution.py)."""

    channels_last: bool = Field(True, description="NHWC weights and activations for the UNet "
                                                  "and autoencoder, in training and sampling")
    bf16_weights: bool = Field(True, description="sampling at precision=bf16: store the UNet and "
                                                 "autoencoder in bf16 once (norms stay float32) "
                                                 "instead of autocast re-casting every call")
    compile: bool = Field(False, description="sampling: torch.compile the UNet (minutes of "
                                             "compilation per shape on CPU), eager on failure")
    checkpointing: bool = Field(False, description="training: recompute each UNet block's "
                                                   "activations in backward (memory for time)")


class ExperimentConfig(Strict):
    name: str = Field("run", description="the run's folder name under runs/: one path component")
    seed: int = 0
    run_dir: Path = Path("runs/run")
    resume: bool | Literal["auto"] = Field(
        False, description="true: continue from checkpoints/last.safetensors (stops, saying so, "
                           "when there is none); auto: continue when there is one, else start "
                           "afresh (for jobs a scheduler requeues)")
    overwrite: bool = Field(False, description="replace the run in run_dir (only a folder "
                                               "ldmcore made; a run that stopped before its "
                                               "first checkpoint is replaced without it)")
    model: ModelConfig = ModelConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    data: DataConfig = DataConfig()
    sampler: SamplerConfig = SamplerConfig()
    trainer: TrainerConfig = TrainerConfig()
    execution: ExecutionConfig = ExecutionConfig()
    conditions: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, v: str) -> str:
        if not v or v in (".", "..") or any(c in v for c in "/\\\x00"):
            raise ValueError("name is the run's folder name inside runs/, so it cannot be empty, "
                             "'.' or '..', or hold '/' or '\\'; to train elsewhere give "
                             "run_dir=PATH")
        return v

    @model_validator(mode="after")
    def _guided_plugins_are_enabled(self) -> ExperimentConfig:
        unknown = [p for p in self.sampler.plugin_guidance if p not in self.conditions]
        if unknown:
            raise ValueError(f"sampler.plugin_guidance.{unknown[0]} names no enabled condition: "
                             f"{nearest(unknown[0], self.conditions)} Enabled conditions: "
                             f"{', '.join(self.conditions) or 'none'}")
        return self


def _searchpath_override(overrides: list[str], sources: list[tuple[str, Path]]) -> list[str]:
    """``overrides`` with the plugins' folders added to ``hydra.searchpath`` (after any the user
    gave), so Hydra looks in them after the host's tree."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    user: list[str] = []
    rest = []
    for o in overrides:
        if o.split("=", 1)[0] == "hydra.searchpath":
            user = [str(v) for v in OverridesParser.create().parse_overrides([o])[0].value()]
        else:
            rest.append(o)
    paths = user + [f"file://{folder}" for _, folder in sources[1:]]
    if not paths:
        return rest
    quoted = ",".join("'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in paths)
    return [*rest, f"hydra.searchpath=[{quoted}]"]


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain (composed, resolved) config dict."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model=ExperimentConfig)) from None


def validate_condition(name: str, cls_config: type[EncoderConfig], section: dict[str, Any]) -> EncoderConfig:
    """Validate one plugin's section with the plugin's own pydantic model."""
    try:
        return cls_config.model_validate(section or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix=f"conditions.{name}.", model=cls_config)) from None


def compose(overrides: list[str], registry: Registry | None = None) -> dict[str, Any]:
    """Compose ``conf/config.yaml`` with Hydra overrides into a resolved plain dict.

    The YAML files hold only what differs from the pydantic defaults, so ``KEY=VALUE`` may set a
    key no file mentions (Hydra's ``++``): pydantic then rejects a key that does not exist,
    naming the nearest. A plugin section is set this way only when the plugin is enabled
    (``condition=[...]``); ``+conditions.NAME.KEY=...`` enables it on purpose. The config folders
    of installed plugins (``register_config_dirs``) are searched after the host's tree.
    ``data=NAME`` of a registered dataset that ships no ``data/NAME.yaml`` selects it with the
    data defaults (``data.name=NAME``).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    sources = config_sources(registry)
    overrides = [_dataset_choice(o, registry) for o in overrides]
    opened = [_settable(o, _groups(sources)) for o in overrides]
    register_resolvers()

    def run(ovr: list[str]) -> dict[str, Any]:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=_searchpath_override(ovr, sources))
        # a mandatory value (``???``) left unset must fail here, not pass on as the string "???"
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]

    try:
        raw = with_sampler_choice(run(opened), overrides, registry)
        plugin_keys = [o for o in overrides if o.startswith("conditions.") and "=" in o]
        if plugin_keys:
            enabled = run([o for o in opened if o[2:] not in plugin_keys]).get("conditions", {})
            _check_enabled(plugin_keys, enabled, registry)
        return raw
    except MissingMandatoryValue as exc:
        key = exc.full_key
        raise ConfigError(f"config key '{key}' needs a value and has none (it is ??? in "
                          f"the config); give it on the command line: {key}=...") from None
    except MissingConfigException as exc:
        group, _, option = (exc.missing_cfg_file or "").partition("/")
        if not option:
            raise ConfigError(f"cannot compose the config from {overrides}: {exc}") from None
        options = group_options(group, registry)
        hint = nearest(option, options, write=lambda o: f"{group}={o}")
        raise ConfigError(f"unknown {group} '{option}': {hint} "
                          f"Options for {group}=: {', '.join(options)}.{_broken_note(registry)}"
                          ) from None
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's override grammar and merge errors: all user errors here
        msg = " ".join(str(exc).split())
        if "--multirun" in msg:  # Hydra's "Ambiguous value": a comma list outside a multirun
            swept = [o for o in overrides if "," in o.partition("=")[2] and "[" not in o]
            kept = [o for o in overrides if o.partition("=")[0].lstrip("+") != "run_dir"]
            raise ConfigError(
                f"{swept[0] if swept else 'a value'} is a list of values to sweep over; add -m "
                f"(ldm train -m {' '.join(kept)}) to train one run per value, one folder each "
                f"under a sweep folder (hydra.sweep.dir=PATH, not run_dir). To give a list as "
                f"one value write KEY=[A,B]; a string with a comma, KEY='A,B'.") from None
        raise ConfigError(f"cannot compose the config from {overrides}: {msg}") from None


def with_sampler_choice(raw: dict[str, Any], overrides: list[str],
                        registry: Registry | None = None) -> dict[str, Any]:
    """``raw`` with the sampler config that ``sampler=NAME`` in ``overrides`` chose: its own
    config beats an experiment's sampler keys, and ``sampler.KEY=...`` overrides beat both."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "sampler"]
    if chosen:
        raw["sampler"] = _explicit(switched_to(raw["sampler"], chosen[-1], registry),
                                   overrides, "sampler")
    return raw


def hydra_overrides(overrides: list[str], registry: Registry | None = None) -> list[str]:
    """The command line's overrides as Hydra itself must read them: ``data=NAME`` of a dataset
    without a config file, ``KEY=VALUE`` as ``++KEY=VALUE``, the plugins' config folders on
    ``hydra.searchpath``. ``compose`` and a multirun (``ldmcore.sweep``) both read these."""
    sources = config_sources(registry)
    opened = [_settable(_dataset_choice(o, registry), _groups(sources)) for o in overrides]
    return _searchpath_override(opened, sources)


def register_resolvers() -> None:
    """The interpolations ldmcore's configs use (``${per_precision:...}``), in this process."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("per_precision", per_precision, replace=True)


def _groups(sources: list[tuple[str, Path]]) -> set[str]:
    return {p.name for _, folder in sources for p in folder.iterdir() if p.is_dir()}


def _explicit(section: dict[str, Any], overrides: list[str], name: str) -> dict[str, Any]:
    """``section`` (the config's ``name:`` section) with the command line's ``name.KEY=VALUE``
    overrides set again, as Hydra reads their values: what the user wrote wins."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = {**section}
    for o in overrides:
        if not o.lstrip("+").startswith(f"{name}.") or "=" not in o:
            continue
        parsed = parser.parse_overrides([o])[0]
        *parents, last = parsed.key_or_group.split(".")[1:]
        node = out
        for key in parents:
            child = dict(node.get(key) or {})
            node[key] = child
            node = child
        node[last] = parsed.value()
    return out


def _settable(override: str, groups: set[str]) -> str:
    """``KEY=VALUE`` as ``++KEY=VALUE`` (set, or add when no YAML file mentions the key), except
    group choices (``data=shapes``), Hydra's own keys and groups (``hydra/launcher=joblib``)
    and overrides already prefixed."""
    key, sep, _ = override.partition("=")
    if not sep or override.startswith(("+", "~")) or key in groups or key.startswith(("hydra.", "hydra/")):
        return override
    return f"++{override}"


def per_precision(precision: str, mixed: Any, fp32: Any) -> Any:
    """``${per_precision:${trainer.precision},A,B}`` in a config: ``A`` where ``precision``
    resolves to bf16/fp16 on this machine's device (AMX CPUs, GPUs), ``B`` where it resolves to
    float32 (AVX2-only CPUs under ``auto``). Lets an experiment fit its time budget on both."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return fp32 if choose_precision(str(precision), device).name == "fp32" else mixed


def _check_enabled(plugin_keys: list[str], enabled: dict[str, Any],
                   registry: Registry | None = None) -> None:
    """A ``conditions.NAME.KEY=...`` override configures an enabled plugin; it never enables one.
    The message's suggestions are whole overrides that work when pasted."""
    registry = registry or default_registry()
    for override in plugin_keys:
        key, _, value = override.partition("=")
        name, _, rest = key.split(".", 1)[1].partition(".")
        if name in enabled:
            continue
        if name not in registry.encoders:
            hint = nearest(name, [*enabled, *registry.encoders],
                           write=lambda n, rest=rest, value=value: f"conditions.{n}.{rest}={value}")
            raise ConfigError(f"{override}: no plugin is named {name!r}: {hint} Enabled in this "
                              f"config: {', '.join(enabled) or 'none'}; installed: "
                              f"{', '.join(registry.encoders)}.")
        ways = [f"`+{override}` (enables it with only this setting)"]
        if name in group_options("condition", registry):
            listed = [n for n in enabled if n in group_options("condition", registry)] + [name]
            ways.insert(0, f"`condition=[{','.join(listed)}] {override}` (its config file, then "
                           f"this setting)")
        raise ConfigError(f"{override}: the plugin {name!r} is not enabled in this config "
                          f"(enabled: {', '.join(enabled) or 'none'}); enable it with "
                          f"{' or '.join(ways)}.")


def _dataset_choice(override: str, registry: Registry | None) -> str:
    """``data=NAME`` as ``data.name=NAME`` when NAME is a registered dataset without a config file."""
    key, sep, name = override.partition("=")
    if key != "data" or not sep or name in group_options("data", registry):
        return override
    return f"data.name={name}" if name in (registry or default_registry()).datasets else override


def _broken_note(registry: Registry | None = None) -> str:
    """A plugin that failed to load takes its configs with it: say so where they are missed."""
    broken = (registry or default_registry()).broken
    if not broken:
        return ""
    return " Plugins that failed to load (`ldm plugins` lists them): " + "; ".join(
        f"{k} ({v})" for k, v in sorted(broken.items())) + "."


def load(overrides: list[str], registry: Registry | None = None) -> ExperimentConfig:
    """Compose and validate: the one entry point the command line uses.

    With ``model.init_from`` the base run's backbone settings replace the experiment's
    (``ldmcore.inherit``). Plugin sections are validated here too (through the registry), so a
    bad condition key fails before any work starts, and come back complete: every plugin key with its value (the
    YAML files hold only differences, but a run records everything it was built with).
    """
    return from_composed(compose(overrides, registry), registry, overrides)


def from_composed(raw: dict[str, Any], registry: Registry | None = None,
                  overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Validate a composed, resolved config (``compose``'s, or a multirun job's) as ``load``
    does: the schema, the base run's settings under ``model.init_from`` (the ``overrides`` the
    command line gave win), every plugin section, the sampler, the dataset and the loggers."""
    cfg = validate(raw)
    if cfg.model.init_from is not None:  # the base run's backbone, the command line's keys checked
        given = {o.lstrip("+~").split("=", 1)[0]: o for o in overrides if "=" in o}
        cfg = validate(inherit_base(cfg.model_dump(mode="json"), given))
    sections = {name: instance_section(name, cls, conf)
                for name, (cls, conf) in resolve_conditions(cfg, registry).items()}
    cfg = cfg.model_copy(update={"conditions": sections})
    sampling_plan(cfg.sampler, registry)  # an unknown sampler or knob fails before any work
    try:
        (registry or default_registry()).dataset(cfg.data.name)
    except ConfigError as err:
        raise ConfigError(f"config key 'data.name': {err}") from None
    logger_specs(cfg, registry)
    return cfg


def logger_specs(cfg: ExperimentConfig, registry: Registry | None = None) -> list[LoggerSpec]:
    """The registered loggers ``trainer.loggers`` names, each checked to be able to run here."""
    registry = registry or default_registry()
    specs = []
    for name in cfg.trainer.loggers:
        try:
            spec = registry.logger(name)
        except ConfigError as err:
            raise ConfigError(f"config key 'trainer.loggers': {err}") from None
        why = spec.missing() if spec.missing else None
        if why:
            raise ConfigError(f"trainer.loggers names {name!r}, but {why}; or drop it from "
                              f"trainer.loggers (metrics.jsonl and the plots are written anyway).")
        specs.append(spec)
    return specs


INSTANCE_OF = "plugin"  # the key of a section that enables another instance of a plugin


def resolve_conditions(cfg: ExperimentConfig, registry: Registry | None = None) -> dict[str, tuple[type, EncoderConfig]]:
    """Plugin instance name -> (encoder class, validated plugin config), in config order.

    A section's name is its plugin's unless the section says ``plugin: NAME``: that enables
    another instance of plugin NAME under the section's name (two ControlNets on different
    conditions: ``+conditions.edge_control.plugin=controlnet``), with its own config, weights
    and ``cond.<instance>=`` value.
    """
    registry = registry or default_registry()
    resolved = {}
    for name, section in cfg.conditions.items():
        section = dict(section or {})
        plugin = section.pop(INSTANCE_OF, name)
        try:
            cls = registry.condition(plugin)
        except PluginError as err:
            where = f"conditions.{name}.{INSTANCE_OF}={plugin!r}: " if plugin != name else ""
            raise type(err)(f"{where}{err}") from None
        resolved[name] = (cls, validate_condition(name, cls.Config, section))
    return resolved


def instance_section(name: str, cls: type, config: EncoderConfig) -> dict[str, Any]:
    """A validated plugin section as a run records it: every key, and ``plugin`` for an
    instance whose name is not its plugin's."""
    section = config.model_dump(mode="json")
    return section if cls.name == name else {INSTANCE_OF: cls.name, **section}
