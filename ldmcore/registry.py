"""The plugin host: a pluggy PluginManager over the ``ldmcore`` entry-point group.

The registry knows nothing of training: it loads plugin packages, collects what their hooks
register (condition encoders, samplers, metrics, datasets, Hydra config folders), reports name
clashes, and lists what is installed (with versions, the hooks each package implements, and the
plugins that failed to load, and why - a broken plugin never breaks the host). A package's
registrations are all or nothing: if one hook fails, none of the package's registrations are
kept. The built-in samplers and datasets register through the same hooks, from
``ldmcore.diffusion.samplers`` and ``ldmcore.data.builtin``, which are always loaded (part of the
backbone, not optional packages).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from ldmcore import hookspecs
from ldmcore.conditioning import ConditionEncoder
from ldmcore.data import builtin as builtin_datasets
from ldmcore.data.spec import DatasetSpec
from ldmcore.diffusion import samplers as builtin_samplers
from ldmcore.diffusion.samplers import SamplerSpec
from ldmcore.errors import ConfigError, PluginClash, PluginError, nearest
from ldmcore.eval.metric import MetricSpec

ENTRY_POINT_GROUP = "ldmcore"
ALLOW_ENV = "LDM_LOAD_PLUGINS"  # comma-separated entry-point names to load; unset = all
DISABLE_ENV = "LDM_DISABLE_ENTRY_POINTS"  # "1" = load no entry points (tests)


@dataclass(frozen=True)
class PluginInfo:
    """One registered condition encoder and where it came from."""

    name: str
    injections: tuple[str, ...]
    package: str
    version: str
    module: str
    trainable: bool
    hooks: tuple[str, ...] = ()  # the hooks its package implements


@dataclass(frozen=True)
class ConfigDir:
    """A folder of Hydra config groups shipped by a plugin package."""

    package: str
    path: Path


def hook_names() -> list[str]:
    """Every hook declared in ``ldmcore.hookspecs``, in declaration order."""
    return [name for name, fn in vars(hookspecs).items()
            if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")]


@dataclass
class Registry:
    """Condition encoders by name, config folders, and the plugin modules that failed to load."""

    manager: pluggy.PluginManager
    encoders: dict[str, type[ConditionEncoder]] = field(default_factory=dict)
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (package, version)
    broken: dict[str, str] = field(default_factory=dict)  # entry point -> why
    config_dirs: list[ConfigDir] = field(default_factory=list)
    samplers: dict[str, SamplerSpec] = field(default_factory=dict)
    hooks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # package -> hooks it implements
    metrics: list[MetricSpec] = field(default_factory=list)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)

    def condition(self, name: str) -> type[ConditionEncoder]:
        """The encoder class registered as ``name``; unknown names get a teaching error."""
        try:
            return self.encoders[name]
        except KeyError:
            hint = nearest(name, self.encoders)
            why = ""
            if self.broken:
                why = " Plugins that failed to load: " + "; ".join(
                    f"{k} ({v})" for k, v in sorted(self.broken.items())) + "."
            raise PluginError(f"unknown condition plugin {name!r}: {hint} "
                              f"`ldm plugins` lists what is installed.{why}") from None

    def sampler(self, name: str) -> SamplerSpec:
        """The sampler registered as ``name``; unknown names list every registered sampler."""
        return _named(self.samplers, name, "sampler")

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset registered as ``name``; unknown names list every registered dataset."""
        return _named(self.datasets, name, "dataset")

    def metrics_for(self, condition: str) -> list[MetricSpec]:
        """The metrics registered for the condition plugin ``condition``, in registration order."""
        return [m for m in self.metrics if m.condition == condition]

    def infos(self) -> list[PluginInfo]:
        return [
            PluginInfo(name=n, injections=tuple(i.value for i in cls.injections),
                       package=self.origins[n][0], version=self.origins[n][1],
                       module=cls.__module__, trainable=cls.trainable,
                       hooks=self.hooks.get(self.origins[n][0], ()))
            for n, cls in sorted(self.encoders.items())
        ]

    def add_module(self, module: ModuleType | object, package: str = "", version: str = "") -> None:
        """Register a plugin module (or object) directly, as tests and notebooks do."""
        package = package or getattr(module, "__name__", None) or type(module).__module__
        self._add(module, package, version, name=None)

    def _add(self, plugin: object, package: str, version: str, name: str | None) -> None:
        """Run the plugin's hooks, check everything, then keep it all (or nothing)."""
        found = self._collect(plugin, package)
        self.manager.register(plugin, name=name)
        for cls in found["encoders"]:
            self.encoders[cls.name] = cls
            self.origins[cls.name] = (package, version)
        self.config_dirs += found["config_dirs"]
        self.samplers.update({spec.name: spec for spec in found["samplers"]})
        self.metrics += found["metrics"]
        self.datasets.update({spec.name: spec for spec in found["datasets"]})
        self.hooks[package] = tuple(sorted({*self.hooks.get(package, ()), *found["hooks"]}))

    def _collect(self, plugin: object, package: str) -> dict[str, Any]:
        implemented = [n for n in dir(plugin)
                       if self.manager.parse_hookimpl_opts(plugin, n) is not None]
        known = hook_names()
        unknown = [n for n in implemented if n not in known]
        if unknown:
            raise PluginError(f"package {package!r} implements the hook {unknown[0]!r}, which "
                              f"ldmcore does not define: {nearest(unknown[0], known)}")
        encoders: list[type[ConditionEncoder]] = []
        dirs: list[ConfigDir] = []

        def register_condition(cls: type) -> None:
            _check_encoder_class(cls, package)
            mine = {c.name: c for c in encoders}
            if cls.name in mine and mine[cls.name] is not cls:
                raise PluginError(f"package {package!r} registers two classes named "
                                  f"{cls.name!r}: {mine[cls.name].__qualname__} and "
                                  f"{cls.__qualname__}; give each a distinct `name`.")
            owner = self.encoders.get(cls.name)
            if owner is not None and owner is not cls:
                other = self.origins[cls.name][0]
                raise PluginClash(
                    f"two packages register the condition {cls.name!r}: {other!r} and "
                    f"{package!r}. Uninstall one, or restrict loading with {ALLOW_ENV}.")
            encoders.append(cls)

        def register_config_dir(folder: Any) -> None:
            path = Path(os.fspath(folder) if isinstance(folder, (str, os.PathLike)) else str(folder))
            if not path.is_dir():
                raise PluginError(f"package {package!r} registers the config folder "
                                  f"{str(path)!r}, which is not a folder; ship it as package "
                                  f"data (see docs/publishing.md).")
            dirs.append(ConfigDir(package, path))

        samplers: list[SamplerSpec] = []

        def register_sampler(fn: Any, name: str | None = None, evals_per_step: int = 1) -> None:
            if not callable(fn):
                raise PluginError(f"package {package!r} registered the sampler {fn!r}, which is "
                                  f"not callable.")
            name = name or getattr(fn, "__name__", "").removeprefix("sample_")
            if not name:
                raise PluginError(f"package {package!r} registered a sampler without a name; "
                                  f"pass register(fn, name=...).")
            owner = self.samplers.get(name) or next((s for s in samplers if s.name == name), None)
            if owner is not None and owner.fn is not fn:
                raise PluginClash(f"two packages register the sampler {name!r}: {owner.package!r} "
                                  f"and {package!r}. Uninstall one, or restrict loading with "
                                  f"{ALLOW_ENV}.")
            if not isinstance(evals_per_step, int) or evals_per_step < 1:
                raise PluginError(f"sampler {name!r} from {package!r}: evals_per_step must be a "
                                  f"positive int, got {evals_per_step!r}.")
            samplers.append(SamplerSpec(name, fn, evals_per_step, package))

        metrics: list[MetricSpec] = []

        def register_metric(condition: str, score: Any, *, name: str | None = None, **options: Any) -> None:
            if not callable(score):
                raise PluginError(f"package {package!r} registered the metric {score!r} of "
                                  f"{condition!r}, which is not callable.")
            metrics.append(MetricSpec(condition, name or getattr(score, "__name__", condition), score,
                                      package=package, **options))

        datasets: list[DatasetSpec] = []

        def register_dataset(name: str, build: Any, *, held_out: Any = None) -> None:
            owner = self.datasets.get(name) or next((d for d in datasets if d.name == name), None)
            if owner is not None and owner.build is not build:
                raise PluginClash(f"two packages register the dataset {name!r}: {owner.package!r} "
                                  f"and {package!r}. Uninstall one, or restrict loading with "
                                  f"{ALLOW_ENV}.")
            datasets.append(DatasetSpec(name, build, held_out, package))

        callbacks = {"register_conditions": register_condition, "register_samplers": register_sampler,
                     "register_config_dirs": register_config_dir, "register_metrics": register_metric,
                     "register_datasets": register_dataset}
        for hook in implemented:
            getattr(plugin, hook)(register=callbacks[hook])
        return {"encoders": encoders, "config_dirs": dirs, "samplers": samplers, "hooks": implemented,
                "metrics": metrics, "datasets": datasets}


def _named(table: dict[str, Any], name: str, what: str) -> Any:
    """``table[name]``; an unknown name is a ``ConfigError`` with the nearest and every name."""
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}: {nearest(name, table)} "
                          f"{what.capitalize()}s: {', '.join(sorted(table))}.") from None


def _check_encoder_class(cls: type, package: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ConditionEncoder)):
        raise PluginError(f"package {package!r} registered {cls!r}, which is not a "
                          f"ConditionEncoder subclass.")
    for attr in ("name", "injections"):
        if not getattr(cls, attr, None):
            raise PluginError(f"condition encoder {cls.__qualname__} from {package!r} does not "
                              f"declare `{attr}`.")


def build_registry(load_entry_points: bool | None = None) -> Registry:
    """Load every plugin package of the ``ldmcore`` entry-point group.

    ``LDM_LOAD_PLUGINS=a,b`` restricts loading to those entry-point names;
    ``LDM_DISABLE_ENTRY_POINTS=1`` (or ``load_entry_points=False``) loads none.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry(manager=pm)
    reg._add(builtin_samplers, "ldmcore", "", name="ldmcore:samplers")
    reg._add(builtin_datasets, "ldmcore", "", name="ldmcore:datasets")
    if load_entry_points is None:
        load_entry_points = os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes")
    if not load_entry_points:
        return reg
    allow = {s.strip() for s in os.environ.get(ALLOW_ENV, "").split(",") if s.strip()}
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if allow and ep.name not in allow:
            continue
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist else ep.value
        version = dist.version if dist else ""
        try:
            module = ep.load()
            reg._add(module, package, version, name=f"{package}:{ep.name}")
        except PluginClash:
            raise
        except Exception as exc:  # a broken plugin (import error, bad class) never breaks the host
            reg.broken[f"{package}:{ep.name}"] = f"{type(exc).__name__}: {exc}"
    return reg


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        _default = build_registry()
    return _default
