"""``ldm new-plugin NAME``: write a condition-plugin package that passes its tests as generated.

The template (``template/``, ``.tmpl`` files) is a complete package: pyproject with the entry
point, an encoder (a scalar per image - its mean brightness - as a vector condition, to be
replaced by the author's own), its Hydra config, and tests that run the conformance kit. Names
in paths and files are filled in with ``string.Template``: ``$name`` (the condition name),
``$module`` (``ldm_$name``), ``$dist`` (``ldm-$name`` with dashes) and ``$Class`` (CamelCase).
"""

from __future__ import annotations

import keyword
import re
from importlib.resources import files
from pathlib import Path
from string import Template

from pydantic import Field

from ldmcore.errors import ConfigError
from ldmcore.registry import default_registry
from ldmcore.schema import Strict

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class NewPluginOptions(Strict):
    out: Path = Field(Path("."), description="the folder to write ldm-NAME/ in")


def names(name: str) -> dict[str, str]:
    """The identifiers a plugin called ``name`` gets (module, distribution, class prefix)."""
    return {"name": name, "module": f"ldm_{name}", "dist": "ldm-" + name.replace("_", "-"),
            "Class": "".join(part.capitalize() for part in name.split("_") if part)}


def write_plugin(name: str, out: Path) -> Path:
    """Write the package for condition ``name`` into ``out/ldm-<name>``; returns that folder."""
    if not NAME.match(name) or name.endswith("_") or "__" in name:
        raise ConfigError(f"plugin name {name!r} is not a lower-case identifier; use letters, "
                          f"digits and single underscores, starting with a letter (e.g. "
                          f"demo_cond). It becomes conditions.<name> and cond.<name>=... .")
    installed = default_registry().encoders
    if name in installed:
        package = default_registry().origins[name][0]
        raise ConfigError(f"a condition named {name!r} is already installed (package "
                          f"{package!r}); two packages registering one name clash. Choose "
                          f"another name.")
    subs = names(name)
    root = Path(out) / subs["dist"]
    if root.exists():
        raise ConfigError(f"{str(root)!r} already exists; remove it or give out=DIR to write "
                          f"the package elsewhere.")
    template = files("ldmcore.scaffold") / "template"
    for source in _walk(template):
        rel = source.relative_to(Path(str(template)))
        target = root / Path(*(Template(p.replace("_module_", "$module").replace("_name_", "$name"))
                               .substitute(subs) for p in rel.parts)).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(source.read_text()).substitute(subs))
    return root


def _walk(folder) -> list[Path]:
    return sorted(p for p in Path(str(folder)).rglob("*.tmpl") if p.is_file())
