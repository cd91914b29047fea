"""``ldm new-plugin NAME [injection=KIND]``: write a condition-plugin package of any injection
kind that passes its tests as generated.

The template (``template/``, ``.tmpl`` files) is a complete package but for its encoder:
pyproject with the entry point, the condition's value (a scalar per image - its mean brightness -
read from batches and parsed from the command line, to be replaced by the author's own), the
hooks with an ``ldm eval`` metric, a README and tests that run the conformance kit. Each kind
(``kinds/<kind>/``, laid over the template) adds the encoder that feeds that scalar through its
injection, and its Hydra config. Names in paths and files are filled in with
``string.Template``: ``$name`` (the condition name), ``$module`` (``ldm_$name``), ``$dist``
(``ldm-$name`` with dashes), ``$Class`` (CamelCase), ``$injection`` (the kind) and ``$how`` (what
the kind does, in words).
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

# injection kind -> how the generated encoder feeds the backbone (kinds/<kind>/ holds its files)
KINDS = {
    "vector": "a vector added to the timestep embedding",
    "concat": "channels concatenated to the latents",
    "crossattn": "tokens read by the UNet's cross-attention",
    "residual": "feature maps added to a pretrained UNet's encoder through zero-initialised "
                "layers (ControlNet, T2I-Adapter)",
    "gated_attention": "grounding tokens read by a gated self-attention layer of its own in "
                       "every transformer block, gates at zero (GLIGEN)",
    "decoupled_crossattn": "tokens read by a key/value projection of its own in every "
                           "cross-attention layer, added beside the text's (IP-Adapter)",
}


class NewPluginOptions(Strict):
    out: Path = Field(Path("."), description="the folder to write ldm-NAME/ in")
    injection: str = Field("vector", description="how the generated encoder feeds the backbone: "
                                                 "one of " + ", ".join(KINDS))


def names(name: str) -> dict[str, str]:
    """The identifiers a plugin called ``name`` gets (module, distribution, class prefix)."""
    return {"name": name, "module": f"ldm_{name}", "dist": "ldm-" + name.replace("_", "-"),
            "Class": "".join(part.capitalize() for part in name.split("_") if part)}


def write_plugin(name: str, out: Path, injection: str = "vector") -> Path:
    """Write the package for condition ``name``, feeding the backbone through ``injection``,
    into ``out/ldm-<name>``; returns that folder."""
    if injection not in KINDS:
        raise ConfigError(f"injection={injection!r} is not an injection kind; ldm new-plugin "
                          f"writes a plugin of one of {', '.join(KINDS)} (injection= absent: "
                          f"vector).")
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
    subs = {**names(name), "injection": injection, "how": KINDS[injection]}
    root = Path(out) / subs["dist"]
    if root.exists():
        raise ConfigError(f"{str(root)!r} already exists; remove it or give out=DIR to write "
                          f"the package elsewhere.")
    scaffold = files("ldmcore.scaffold")
    for folder in (scaffold / "template", scaffold / "kinds" / injection):
        _fill(Path(str(folder)), root, subs)
    return root


def _fill(template: Path, root: Path, subs: dict[str, str]) -> None:
    """Every ``.tmpl`` file under ``template``, names filled in, written under ``root``."""
    for source in _walk(template):
        rel = source.relative_to(template)
        target = root / Path(*(Template(p.replace("_module_", "$module").replace("_name_", "$name"))
                               .substitute(subs) for p in rel.parts)).with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(source.read_text()).substitute(subs))


def _walk(folder) -> list[Path]:
    return sorted(p for p in Path(str(folder)).rglob("*.tmpl") if p.is_file())
