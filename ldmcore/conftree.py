"""The Hydra config trees: the host's (shipped inside the package, so a non-editable install
works) and those plugin packages ship (hook ``register_config_dirs``), searched in that order.

``ldmcore.config`` composes experiments from them; ``ldmcore.sampling`` reads a sampler's own
config (``sampler/NAME.yaml``) from them when a command switches samplers.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ldmcore.errors import PluginClash
from ldmcore.registry import Registry, default_registry


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
