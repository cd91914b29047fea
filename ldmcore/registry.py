"""The plugin host: a pluggy PluginManager over the ``ldmcore`` entry-point group.

The registry knows nothing of training: it loads plugin packages, calls their hooks through the
plugin manager, collects what they register (condition encoders, samplers, metrics, datasets,
loggers, Hydra config folders), and lists what is installed (with versions, the hooks each package implements, and
the plugins that failed to load, and why).

A plugin cannot take the host down. Anything a package raises while it is imported or while its
hooks run - any exception, ``SystemExit`` included - marks that package broken (``ldm plugins``
lists it with the reason) and the commands that do not need it run as before. A package's
registrations are all or nothing: if one hook fails, none of them is kept. Two packages that
register the same name are not an error until a run asks for that name: ``condition(name)`` or
``sampler(name)`` then names both packages; every other name works.

Each package's hooks are called through the plugin manager with pluggy's
``subset_hook_caller`` (the hook restricted to that one package), so what a package registers
is known to be its own and a failure stays inside it. The built-in samplers, datasets and loggers
register through the same hooks, from ``ldmcore.diffusion.samplers``, ``ldmcore.data.builtin``
and ``ldmcore.loggers.tensorboard``,
which are always loaded (they are part of the backbone, not optional packages).

Environment: ``LDM_LOAD_PLUGINS=a,b`` loads only those entry points (an allow-list);
``LDM_DISABLE_PLUGINS=a,b`` skips those entry points or distributions;
``LDM_DISABLE_ENTRY_POINTS=1`` loads none (tests).
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
from ldmcore.loggers import LoggerSpec
from ldmcore.loggers import tensorboard as builtin_loggers

ENTRY_POINT_GROUP = "ldmcore"
ALLOW_ENV = "LDM_LOAD_PLUGINS"  # comma-separated entry-point names to load; unset = all
SKIP_ENV = "LDM_DISABLE_PLUGINS"  # comma-separated entry-point or distribution names to skip
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


def _names(env: str) -> set[str]:
    return {s.strip() for s in os.environ.get(env, "").split(",") if s.strip()}


def _why(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) raised while loading"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Registry:
    """Condition encoders by name, config folders, and the plugin modules that failed to load."""

    manager: pluggy.PluginManager
    encoders: dict[str, type[ConditionEncoder]] = field(default_factory=dict)
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (package, version)
    broken: dict[str, str] = field(default_factory=dict)  # entry point -> why
    clashes: dict[str, list[str]] = field(default_factory=dict)  # "condition 'x'" -> packages
    config_dirs: list[ConfigDir] = field(default_factory=list)
    samplers: dict[str, SamplerSpec] = field(default_factory=dict)
    hooks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # package -> hooks it implements
    metrics: list[MetricSpec] = field(default_factory=list)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    loggers: dict[str, LoggerSpec] = field(default_factory=dict)

    def condition(self, name: str) -> type[ConditionEncoder]:
        """The encoder class registered as ``name``; unknown names get a teaching error."""
        self._refuse_clash("condition", name)
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
        return self._named("sampler", self.samplers, name)

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset registered as ``name``; unknown names list every registered dataset."""
        return self._named("dataset", self.datasets, name)

    def logger(self, name: str) -> LoggerSpec:
        """The logger registered as ``name``; unknown names list every registered logger."""
        return self._named("logger", self.loggers, name)

    def metrics_for(self, condition: str) -> list[MetricSpec]:
        """The metrics registered for the condition plugin ``condition``, in registration order."""
        return [m for m in self.metrics if m.condition == condition]

    def _named(self, kind: str, table: dict[str, Any], name: str) -> Any:
        self._refuse_clash(kind, name)
        try:
            return table[name]
        except KeyError:
            raise ConfigError(f"unknown {kind} {name!r}: {nearest(name, table)} "
                              f"{kind.capitalize()}s: {', '.join(sorted(table))}.") from None

    def _refuse_clash(self, kind: str, name: str) -> None:
        packages = self.clashes.get(f"{kind} {name!r}")
        if packages:
            raise _clash(kind, name, packages)

    def infos(self) -> list[PluginInfo]:
        return [
            PluginInfo(name=n, injections=tuple(i.value for i in cls.injections),
                       package=self.origins[n][0], version=self.origins[n][1],
                       module=cls.__module__, trainable=cls.trainable,
                       hooks=self.hooks.get(self.origins[n][0], ()))
            for n, cls in sorted(self.encoders.items())
        ]

    def add_module(self, module: object, package: str = "", version: str = "") -> None:
        """Register a plugin module (or object) directly, as tests and notebooks do. Unlike an
        installed package, a plugin added by hand fails loudly: a clash or a broken hook raises."""
        package = package or getattr(module, "__name__", None) or type(module).__module__
        self._add(module, package, version, name=None, strict=True)

    def _add(self, plugin: object, package: str, version: str, name: str | None,
             strict: bool = False) -> None:
        """Register ``plugin`` with the manager, run its hooks, check everything, then keep it
        all (or, on any error, unregister it and keep nothing). ``strict``: a name another
        package registered is an error now, not a clash left for the runs that use it."""
        self._check_hooks(plugin, package)
        self.manager.register(plugin, name=name)
        try:
            found = self._collect(plugin, package)
            if strict:
                self._refuse_taken(found, package)
        except BaseException:
            self.manager.unregister(plugin)
            raise
        for cls in found["conditions"]:
            self._keep("condition", cls.name, package, self.encoders, cls, self.origins, version)
        for spec in found["samplers"]:
            self._keep("sampler", spec.name, package, self.samplers, spec)
        for spec in found["datasets"]:
            self._keep("dataset", spec.name, package, self.datasets, spec)
        for spec in found["loggers"]:
            self._keep("logger", spec.name, package, self.loggers, spec)
        self.metrics += found["metrics"]
        self.config_dirs += found["config_dirs"]
        self.hooks[package] = tuple(sorted({*self.hooks.get(package, ()), *found["hooks"]}))

    def _refuse_taken(self, found: dict[str, list[Any]], package: str) -> None:
        taken = [("condition", c.name, self.origins[c.name][0]) for c in found["conditions"]
                 if self.encoders.get(c.name, c) is not c]
        taken += [("sampler", s.name, self.samplers[s.name].package) for s in found["samplers"]
                  if not _same(self.samplers.get(s.name, s), s)]
        taken += [("dataset", d.name, self.datasets[d.name].package) for d in found["datasets"]
                  if not _same(self.datasets.get(d.name, d), d)]
        taken += [("logger", g.name, self.loggers[g.name].package) for g in found["loggers"]
                  if not _same(self.loggers.get(g.name, g), g)]
        if taken:
            kind, name, owner = taken[0]
            raise _clash(kind, name, [owner, package])

    def _keep(self, kind: str, name: str, package: str, table: dict[str, Any], value: Any,
              origins: dict[str, tuple[str, str]] | None = None, version: str = "") -> None:
        """Add ``value`` under ``name``; a second package's ``name`` becomes a clash that only
        runs using the name see (both are then withdrawn, so neither wins by install order)."""
        key = f"{kind} {name!r}"
        if key in self.clashes:
            self.clashes[key].append(package)
            return
        owner = table.get(name)
        if owner is not None and not _same(owner, value):
            first = owner.package if isinstance(owner, (SamplerSpec, DatasetSpec, LoggerSpec)) else self.origins[name][0]
            self.clashes[key] = [first, package]
            del table[name]
            return
        table[name] = value
        if origins is not None:
            origins[name] = (package, version)

    def _check_hooks(self, plugin: object, package: str) -> None:
        implemented = [n for n in dir(plugin) if self.manager.parse_hookimpl_opts(plugin, n) is not None]
        known = hook_names()
        unknown = [n for n in implemented if n not in known]
        if unknown:
            raise PluginError(f"package {package!r} implements the hook {unknown[0]!r}, which "
                              f"ldmcore does not define: {nearest(unknown[0], known)}")

    def _collect(self, plugin: object, package: str) -> dict[str, list[Any]]:
        """Call each hook of ``plugin`` through the plugin manager, restricted to ``plugin``."""
        others = [p for p in self.manager.get_plugins() if p is not plugin]
        found: dict[str, list[Any]] = {"conditions": [], "samplers": [], "config_dirs": [], "hooks": [],
                                       "metrics": [], "datasets": [], "loggers": []}
        callbacks: dict[str, Callable[..., None]] = {
            "register_conditions": _condition_callback(package, found["conditions"]),
            "register_samplers": _sampler_callback(package, found["samplers"]),
            "register_config_dirs": _config_dir_callback(package, found["config_dirs"]),
            "register_metrics": _metric_callback(package, found["metrics"]),
            "register_datasets": _dataset_callback(package, found["datasets"]),
            "register_loggers": _logger_callback(package, found["loggers"]),
        }
        for hook in hook_names():
            caller = self.manager.subset_hook_caller(hook, remove_plugins=others)
            if caller.get_hookimpls():
                found["hooks"].append(hook)
                caller(register=callbacks[hook])
        return found


def _clash(kind: str, name: str, packages: list[str]) -> PluginClash:
    return PluginClash(f"two packages register the {kind} {name!r}: "
                       f"{' and '.join(repr(p) for p in packages)}. Uninstall one, or skip one "
                       f"with {SKIP_ENV}=NAME (or list the ones to load in {ALLOW_ENV}); runs "
                       f"that do not use {name!r} are not affected.")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, SamplerSpec):
        return a.fn is b.fn
    if isinstance(a, LoggerSpec):
        return a.open is b.open
    return (a.build is b.build) if isinstance(a, DatasetSpec) else a is b


def _condition_callback(package: str, found: list[type]) -> Callable[[type], None]:
    def register(cls: type) -> None:
        _check_encoder_class(cls, package)
        mine = {c.name: c for c in found}
        if cls.name in mine and mine[cls.name] is not cls:
            raise PluginError(f"package {package!r} registers two classes named "
                              f"{cls.name!r}: {mine[cls.name].__qualname__} and "
                              f"{cls.__qualname__}; give each a distinct `name`.")
        if cls.name not in mine:
            found.append(cls)

    return register


def _sampler_callback(package: str, found: list[SamplerSpec]) -> Callable[..., None]:
    def register(fn: Any, name: str | None = None, evals_per_step: int = 1) -> None:
        if not callable(fn):
            raise PluginError(f"package {package!r} registered the sampler {fn!r}, which is "
                              f"not callable.")
        name = name or getattr(fn, "__name__", "").removeprefix("sample_")
        if not name:
            raise PluginError(f"package {package!r} registered a sampler without a name; "
                              f"pass register(fn, name=...).")
        if any(s.name == name and s.fn is not fn for s in found):
            raise PluginError(f"package {package!r} registers two samplers named {name!r}; "
                              f"give each a distinct name.")
        if not isinstance(evals_per_step, int) or evals_per_step < 1:
            raise PluginError(f"sampler {name!r} from {package!r}: evals_per_step must be a "
                              f"positive int, got {evals_per_step!r}.")
        found.append(SamplerSpec(name, fn, evals_per_step, package))

    return register


def _config_dir_callback(package: str, found: list[ConfigDir]) -> Callable[[Any], None]:
    def register(folder: Any) -> None:
        path = Path(os.fspath(folder) if isinstance(folder, (str, os.PathLike)) else str(folder))
        if not path.is_dir():
            raise PluginError(f"package {package!r} registers the config folder "
                              f"{str(path)!r}, which is not a folder; ship it as package "
                              f"data (see docs/publishing.md).")
        found.append(ConfigDir(package, path))

    return register


def _metric_callback(package: str, found: list[MetricSpec]) -> Callable[..., None]:
    def register(condition: str, score: Any, *, name: str | None = None, **options: Any) -> None:
        if not callable(score):
            raise PluginError(f"package {package!r} registered the metric {score!r} of "
                              f"{condition!r}, which is not callable.")
        found.append(MetricSpec(condition, name or getattr(score, "__name__", condition), score,
                                package=package, **options))

    return register


def _dataset_callback(package: str, found: list[DatasetSpec]) -> Callable[..., None]:
    def register(name: str, build: Any, *, held_out: Any = None) -> None:
        if not callable(build) or (held_out is not None and not callable(held_out)):
            raise PluginError(f"package {package!r} registered the dataset {name!r} with a "
                              f"build or held_out that is not callable.")
        _add_named("dataset", package, found, DatasetSpec(name, build, held_out, package))

    return register


def _logger_callback(package: str, found: list[LoggerSpec]) -> Callable[..., None]:
    def register(name: str, open: Any, *, missing: Any = None) -> None:
        if not (isinstance(name, str) and name) or not callable(open) or (
                missing is not None and not callable(missing)):
            raise PluginError(f"package {package!r} registered the logger {name!r} without a "
                              f"name, or with an open or missing that is not callable.")
        _add_named("logger", package, found, LoggerSpec(name, open, missing, package))

    return register


def _add_named(kind: str, package: str, found: list[Any], spec: Any) -> None:
    """Add ``spec`` to what ``package`` registers; the same thing twice is kept once, two
    different things under one name are an error."""
    if any(f.name == spec.name and not _same(f, spec) for f in found):
        raise PluginError(f"package {package!r} registers two {kind}s named {spec.name!r}; "
                          f"give each a distinct name.")
    if not any(f.name == spec.name for f in found):
        found.append(spec)


def _check_encoder_class(cls: type, package: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, ConditionEncoder)):
        raise PluginError(f"package {package!r} registered {cls!r}, which is not a "
                          f"ConditionEncoder subclass.")
    for attr in ("name", "injections"):
        if not getattr(cls, attr, None):
            raise PluginError(f"condition encoder {cls.__qualname__} from {package!r} does not "
                              f"declare `{attr}`.")


def build_registry(load_entry_points: bool | None = None) -> Registry:
    """Load every plugin package of the ``ldmcore`` entry-point group (see the module
    docstring for the environment variables that choose which)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    reg = Registry(manager=pm)
    reg._add(builtin_samplers, "ldmcore", "", name="ldmcore:samplers")
    reg._add(builtin_datasets, "ldmcore", "", name="ldmcore:datasets")
    reg._add(builtin_loggers, "ldmcore", "", name="ldmcore:loggers")
    if load_entry_points is None:
        load_entry_points = os.environ.get(DISABLE_ENV, "") not in ("1", "true", "yes")
    if not load_entry_points:
        return reg
    allow, skip = _names(ALLOW_ENV), _names(SKIP_ENV)
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist else ep.value
        if (allow and ep.name not in allow) or ep.name in skip or package in skip:
            continue
        try:
            module = ep.load()
            reg._add(module, package, dist.version if dist else "", name=f"{package}:{ep.name}")
        except (Exception, SystemExit) as exc:  # a broken plugin never breaks the host
            reg.broken[f"{package}:{ep.name}"] = _why(exc)
    return reg


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        _default = build_registry()
    return _default
