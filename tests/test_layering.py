"""Imports go one way: building blocks, the plugin contract, the model, building it from config,
run folders, the commands, the command line. A module may import its own floor or the floors
below it; an upward import (the model importing the registry, a run folder importing the
training loop) fails here, naming both modules.

In-function imports of ldmcore modules are allowed only where they save start-up time, in the
modules listed in ``LAZY`` with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ldmcore

PACKAGE = Path(ldmcore.__file__).parent
REPO = Path(__file__).resolve().parents[1]

# floor -> module prefixes; the longest matching prefix decides a module's floor
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("building blocks", ("ldmcore.errors", "ldmcore.hookspecs", "ldmcore.randomness",
                         "ldmcore.schema", "ldmcore.images", "ldmcore.hole_fill",
                         "ldmcore.checkpoint", "ldmcore.distributed", "ldmcore.parallel",
                         "ldmcore.nn", "ldmcore.data", "ldmcore.diffusion", "ldmcore.eval.pixels",
                         "ldmcore.eval.shapes", "ldmcore.eval.digits", "ldmcore.eval.metric",
                         "ldmcore.hardware", "ldmcore.arguments", "ldmcore.stopping",
                         "ldmcore.curves", "ldmcore.plots", "ldmcore.loggers",
                         "ldmcore.grid_sidecar", "ldmcore.combinations", "ldmcore.contact_sheet",
                         "ldmcore.tables", "ldmcore.progress")),
    ("plugin contract", ("ldmcore.conditioning",)),
    ("guidance and plans", ("ldmcore.diffusion.guidance", "ldmcore.diffusion.plan",
                            "ldmcore.diffusion.step_windows")),
    ("model", ("ldmcore.model",)),
    ("registry", ("ldmcore.registry",)),  # above the model: the model never resolves plugin names
    ("config", ("ldmcore.conftree", "ldmcore.inherit", "ldmcore.sampling", "ldmcore.config")),
    ("build", ("ldmcore.build",)),
    ("runs", ("ldmcore.runfolder",)),
    ("commands", ("ldmcore.attach", "ldmcore.train", "ldmcore.train_autoencoder",
                  "ldmcore.sample", "ldmcore.eval", "ldmcore.interop", "ldmcore.testing",
                  "ldmcore.scaffold", "ldmcore.doctor", "ldmcore.summary", "ldmcore.helptext",
                  "ldmcore.docgen", "ldmcore.serve", "ldmcore.sweep", "ldmcore.sweep_summary",
                  "ldmcore.sample_sweep")),
    ("command line", ("ldmcore.cli", "ldmcore.__init__")),
]

LAZY = {
    "ldmcore.__init__": "`import ldmcore` (the plugin contract) does not load the converters",
    "ldmcore.cli": "each command imports only what it runs: `ldm --help` and `ldm plugins` stay fast",
    "ldmcore.data.builtin": "registering the built-in datasets does not import albumentations and OpenCV",
    "ldmcore.helptext": "`ldm COMMAND --help` imports only that command's models, not every command's",
}


def module_name(path: Path) -> str:
    """``ldmcore.a.b`` for ``a/b.py`` and ``a/b/__init__.py``; the package's own ``__init__``
    keeps its name (it sits on the top floor)."""
    name = ".".join(("ldmcore", *path.relative_to(PACKAGE).with_suffix("").parts))
    return name if name == "ldmcore.__init__" else name.removesuffix(".__init__")


def floor_of(module: str) -> int:
    best, floor = -1, None
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), index
    assert floor is not None, f"{module} is on no floor of tests/test_layering.py: add it"
    return floor


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported ldmcore module, inside a function, line) of every import in ``path``."""
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ldmcore"):
            for alias in node.names:  # `from ldmcore import checkpoint` imports a module
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE / Path(*sub.split(".")[1:])).with_suffix(".py").exists() or \
                    (PACKAGE / Path(*sub.split(".")[1:])).is_dir()
                found.append((sub if is_module else node.module, id(node) in inner, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in inner, node.lineno) for a in node.names
                      if a.name.startswith("ldmcore")]
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts)


def test_every_module_imports_only_its_floor_and_below():
    upward = []
    for path in modules():
        mine = module_name(path)
        for target, _, line in imports(path):
            if target == "ldmcore":
                continue  # `from ldmcore import X` of a name re-exported by the package
            if floor_of(target) > floor_of(mine):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({FLOORS[floor_of(mine)][0]}) "
                              f"imports {target} ({FLOORS[floor_of(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_in_function_imports_only_where_they_save_start_up_time():
    hidden = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function"
              for path in modules() for target, inside, line in imports(path)
              if inside and module_name(path) not in LAZY]
    assert not hidden, ("\n".join(hidden) + "\nimport at the top of the module, or add the module "
                        "to LAZY with the start-up time it saves")


def test_plugins_import_only_the_contract_and_building_blocks():
    """What a plugin needs from the backbone is handed to it at build time (``BackboneSpec``),
    never imported from the model, the config or the training code."""
    contract = next(i for i, (name, _) in enumerate(FLOORS) if name == "plugin contract")
    files = [p for root in (REPO / "plugins", *REPO.glob("examples/*/ldm_*"))
             for p in root.rglob("*.py")]
    assert files
    above = [f"{path.relative_to(REPO)}:{line} imports {target}" for path in files
             for target, _, line in imports(path) if target != "ldmcore" and floor_of(target) > contract]
    assert not above, "plugins reaching above the contract:\n" + "\n".join(above)


def test_the_core_names_no_built_in_plugin():
    """The core never branches on a plugin's name: what it measures, reads or routes comes from
    the hooks. Only ``interop/`` maps Stable Diffusion's parts onto named plugins."""
    plugins = ("segmap", "layout", "lowres", "inpaint")
    literal = re.compile(r"""(["'])(%s)\1""" % "|".join(plugins))
    found = [f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}" for path in modules()
             if "interop" not in path.relative_to(PACKAGE).parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if literal.search(line)]
    assert not found, "built-in plugin names in the core:\n" + "\n".join(found)


def test_the_floors_know_every_module():
    for path in modules():
        floor_of(module_name(path))
