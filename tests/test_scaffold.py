"""``ldm new-plugin NAME [injection=KIND]`` writes a package that installs and passes its own
tests as generated, for every injection kind.

The default (vector) package is installed with pip (no dependencies, no build isolation: ldmcore
is already here) into a folder of its own rather than into the shared environment, so this test
leaves no plugin behind; its tests then run in a fresh interpreter that sees that folder. The
other kinds share everything but the encoder and its config: their generated conformance case
runs the kit in this process, imported from the generated folder.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ldmcore import cli
from ldmcore.conditioning import Injection
from ldmcore.scaffold import KINDS, names, write_plugin
from ldmcore.testing import RULES, check_plugin

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}


def test_the_generated_package_installs_and_passes_its_tests(tmp_path, capsys):
    assert cli.main(["new-plugin", "demo_cond", f"out={tmp_path}"]) == 0
    root = tmp_path / "ldm-demo-cond"
    assert str(root) in capsys.readouterr().out
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "ldm_demo_cond/__init__.py",
                     "ldm_demo_cond/conf/condition/demo_cond.yaml", "ldm_demo_cond/encoder.py",
                     "ldm_demo_cond/value.py", "pyproject.toml", "tests/test_demo_cond.py"]
    for path in root.rglob("*"):
        if path.is_file():
            assert "$" not in path.read_text(), f"unfilled template name in {path}"
    assert 'demo_cond = "ldm_demo_cond"' in (root / "pyproject.toml").read_text()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(root)],
                   check=True, capture_output=True, env=ENV, timeout=300)
    assert (site / "ldm_demo_cond" / "conf" / "condition" / "demo_cond.yaml").is_file()
    # run from outside the source folder, so the installed copy (with its entry point) is used
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(root), str(root / "tests")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**ENV, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{len(RULES) + 4} passed" in proc.stdout  # one test per conformance rule + 4 of its own


def test_there_is_a_scaffold_for_every_injection_kind():
    assert set(KINDS) == {i.value for i in Injection}


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "vector"])
def test_each_kind_scaffolds_a_plugin_of_that_kind_that_passes_the_kit(kind, tmp_path, monkeypatch, capsys):
    name = f"demo_{kind}"
    assert cli.main(["new-plugin", name, f"injection={kind}", f"out={tmp_path}"]) == 0
    root = tmp_path / names(name)["dist"]
    assert f"injection={kind}" in (root / "README.md").read_text()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.syspath_prepend(str(root / "tests"))
    generated = importlib.import_module(f"test_{name}")
    case = next(v for k, v in vars(generated).items() if k.endswith("Conformance")).case
    assert case.encoder.injections == (Injection(kind),)
    check_plugin(case)  # every rule, the rules of its kind included
    generated.test_training_value_is_the_mean_brightness()


def test_names_follow_python_and_pip_conventions():
    assert names("demo_cond") == {"name": "demo_cond", "module": "ldm_demo_cond",
                                  "dist": "ldm-demo-cond", "Class": "DemoCond"}


@pytest.mark.parametrize("argv, words", [
    (["new-plugin"], ["one NAME"]),
    (["new-plugin", "a", "b"], ["one NAME"]),
    (["new-plugin", "Demo"], ["'Demo'", "lower-case identifier"]),
    (["new-plugin", "demo-cond"], ["'demo-cond'"]),
    (["new-plugin", "demo__cond"], ["'demo__cond'"]),
    (["new-plugin", "class"], ["'class' is already installed", "'ldmcore'"]),
    (["new-plugin", "demo", "outdir=x"], ["'outdir=x'", "'out'"]),
    (["new-plugin", "demo", "injection=film"], ["injection='film'", "vector, concat, crossattn, "
                                                "residual, gated_attention, decoupled_crossattn"]),
])
def test_bad_input_is_one_paragraph_and_exit_status_2(capsys, tmp_path, argv, words):
    assert cli.main([*argv, f"out={tmp_path}"] if argv[1:2] and "=" not in argv[-1] else argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    for w in words:
        assert w in err, err
    assert not any(tmp_path.iterdir())


def test_an_existing_folder_is_never_overwritten(tmp_path, capsys):
    write_plugin("demo", tmp_path)
    keep = tmp_path / "ldm-demo" / "README.md"
    keep.write_text("mine")
    assert cli.main(["new-plugin", "demo", f"out={tmp_path}"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert keep.read_text() == "mine"
