"""The package ships what a non-editable install needs: the Hydra tree and the built-in plugins."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_config_tree_and_plugins(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("ldmcore-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    yaml_in_tree = {f"ldmcore/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert yaml_in_tree and yaml_in_tree <= names, sorted(yaml_in_tree - names)
    assert "ldm_class/__init__.py" in names and "ldm_class/encoder.py" in names
    modules = {f"ldmcore/{p.relative_to(ROOT / 'ldmcore')}" for p in (ROOT / "ldmcore").rglob("*.py")
               if "template" not in p.parts}
    assert modules <= names, sorted(modules - names)  # a new subpackage must be listed in pyproject
    templates = {f"ldmcore/scaffold/{p.relative_to(ROOT / 'ldmcore' / 'scaffold')}"
                 for p in (ROOT / "ldmcore" / "scaffold").rglob("*.tmpl")}
    assert templates and templates <= names, sorted(templates - names)  # ldm new-plugin needs them
    info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(info).decode()
    assert "[ldmcore]" in entry_points and "class = ldm_class" in entry_points
    assert "ldm = ldmcore.cli:main" in entry_points
