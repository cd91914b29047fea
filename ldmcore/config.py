"""Two-stage config: Hydra composes and interpolates, pydantic validates.

The Hydra tree ships inside the package (``ldmcore.conf``), so a non-editable install works.
Plugin packages may ship config groups of their own (the ``register_config_dirs`` hook); they are
searched after the host's tree, so ``condition=[edges]`` or ``experiment=shapes_edges`` find a
plugin's files without copying. Every error a user can make here (unknown key, wrong type,
unknown group option, unknown plugin) becomes a ``ConfigError`` naming the key path and the
nearest valid names.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from ldmcore.conditioning import EncoderConfig
from ldmcore.diffusion.schedule import BetaSchedule, Prediction
from ldmcore.errors import ConfigError, PluginClash, PluginError, nearest
from ldmcore.hardware import choose_precision
from ldmcore.loggers import LoggerSpec
from ldmcore.registry import Registry, default_registry
from ldmcore.sampling import SamplerConfig, sampling_plan
from ldmcore.schema import Strict, format_validation_error

__all__ = ["SamplerConfig", "Strict", "format_validation_error"]  # re-exported for callers


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
    enabled: bool = False
    weight: float = Field(0.5, ge=0)
    start_step: int = Field(0, ge=0)
    channels: int = Field(32, ge=8)


class AutoencoderTrainConfig(Strict):
    steps: int = Field(1000, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)
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
    max_steps: int = Field(2000, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warmup: hold lr, or decay it to 0 at max_steps along a "
                                "half cosine (Loshchilov & Hutter 2017)")
    grad_accum: int = Field(1, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 where the hardware runs it natively (AMX/AVX-512-BF16 "
                            "CPUs, Ampere+ GPUs), else fp32 on CPU and fp16 on GPU "
                            "(ldmcore/hardware/precision.py)")
    cache_latents: bool = True
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="auto (or null): the cores no other process is using, re-checked "
                            "while training; N: exactly N (ldmcore/hardware/threads.py)")
    log_every: int = Field(50, ge=1)
    loggers: tuple[str, ...] = Field(
        (), description="registered loggers fed every metrics.jsonl record, the sample grids and "
                        "the hyper-parameters: tensorboard (RUN_DIR/tensorboard), or a plugin's "
                        "(hook register_loggers); metrics.jsonl is written either way")
    sample_every: int = Field(0, ge=0, description="0 = only at the end")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=0, description="periodic step_N files kept besides last")
    progress: bool = True
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
    resume: bool = False
    overwrite: bool = False
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


def conf_dir() -> Path:
    """The Hydra config tree shipped in the package."""
    return Path(str(importlib.resources.files("ldmcore.conf")))


def config_sources(registry: Registry | None = None) -> list[tuple[str, Path]]:
    """(package, folder) of every config tree, the host's first: the order Hydra searches them.

    Two trees that ship the same ``group/option.yaml`` are a clash naming both packages: which
    one Hydra would pick would depend on install order, so neither is silently preferred.
    """
    registry = registry or default_registry()
    sources = [("ldmcore", conf_dir())] + [(d.package, d.path) for d in registry.config_dirs]
    seen: dict[str, str] = {}
    for package, folder in sources:
        for path in sorted(folder.glob("*/*.yaml")):
            key = f"{path.parent.name}/{path.name}"
            if key in seen and seen[key] != package:
                raise PluginClash(f"two packages ship the config {key!r}: {seen[key]!r} and "
                                  f"{package!r}. Rename one (a plugin's files are best named "
                                  f"after its condition), or restrict loading with "
                                  f"LDM_LOAD_PLUGINS.")
            seen[key] = package
    return sources


def group_options(group: str, registry: Registry | None = None) -> list[str]:
    """Every option of a config group, the host's and the plugins'."""
    return sorted({p.stem for _, folder in config_sources(registry)
                   for p in (folder / group).glob("*.yaml")})


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
        raw = run(opened)
        plugin_keys = [o for o in overrides if o.startswith("conditions.") and "=" in o]
        if plugin_keys:
            enabled = run([o for o in opened if o[2:] not in plugin_keys]).get("conditions", {})
            _check_enabled(plugin_keys, enabled)
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
        raise ConfigError(f"unknown {group} '{option}': {nearest(option, options)} "
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


def _check_enabled(plugin_keys: list[str], enabled: dict[str, Any]) -> None:
    """A ``conditions.NAME.KEY=...`` override configures an enabled plugin; it never enables one."""
    for override in plugin_keys:
        name = override.split("=", 1)[0].split(".")[1]
        if name not in enabled:
            raise ConfigError(
                f"{override}: the plugin {name!r} is not enabled in this config (enabled: "
                f"{', '.join(enabled) or 'none'}); enable it with condition=[...,{name}], or "
                f"write +{override} to enable it with this setting.")


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

    Plugin sections are validated here too (through the registry), so a bad condition key
    fails before any work starts, and come back complete: every plugin key with its value (the
    YAML files hold only differences, but a run records everything it was built with).
    """
    return from_composed(compose(overrides, registry), registry)


def from_composed(raw: dict[str, Any], registry: Registry | None = None) -> ExperimentConfig:
    """Validate a composed, resolved config (``compose``'s, or a multirun job's) as ``load``
    does: the schema, every plugin section, the sampler and the dataset."""
    cfg = validate(raw)
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
