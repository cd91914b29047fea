"""The benchmarks are one package: every module imports by its package name, each runnable one
says how to run it, and the shared helpers (results folders, medians, ratios, tables, trained
runs) give the values worked out by hand here. Nothing is timed: fake clocks stand in."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import benchmarks
from benchmarks.support import results, timing
from benchmarks.support.runs import load_trained_run

FOLDER = Path(benchmarks.__file__).parent


def module_names() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks."))


def runnable() -> list[str]:
    """The benchmarks proper: modules outside ``support`` with a top-level ``main`` (read from
    the source, so collecting the tests imports none of them)."""
    names = []
    for path in FOLDER.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if "support" not in path.parts and any(isinstance(n, ast.FunctionDef) and n.name == "main"
                                               for n in tree.body):
            names.append(".".join(("benchmarks", *path.relative_to(FOLDER).with_suffix("").parts)))
    return sorted(names)


def test_every_python_file_is_a_module_of_the_package():
    files = {".".join(("benchmarks", *p.relative_to(FOLDER).with_suffix("").parts)).removesuffix(".__init__")
             for p in FOLDER.rglob("*.py")}
    assert files - {"benchmarks"} == set(module_names()), "a folder of benchmarks lacks __init__.py"


@pytest.mark.parametrize("name", module_names())
def test_module_imports_as_a_package_module_without_touching_sys_path(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} needs a docstring saying what it measures or holds"
    tree = ast.parse(Path(module.__file__).read_text())
    touched = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and n.attr == "path" and isinstance(n.value, ast.Name) and n.value.id == "sys"]
    assert not touched, f"{name} uses sys.path (line {touched[0]}): import through the package"


@pytest.mark.parametrize("name", runnable())
def test_each_benchmark_says_how_to_run_it(name):
    assert f"python -m {name}" in importlib.import_module(name).__doc__


def test_the_makefile_runs_the_benchmarks_as_modules():
    makefile = (FOLDER.parent / "Makefile").read_text()
    assert "benchmarks/" not in makefile.replace("benchmarks/results", "")
    ran = set(re.findall(r"-m (benchmarks\.[a-z_.]+)", makefile))
    assert ran and ran <= set(runnable())


def test_results_go_in_one_folder_per_benchmark(tmp_path):
    assert results.results_dir("perf", tmp_path) == tmp_path / "perf"
    assert (tmp_path / "perf").is_dir()
    assert results.result_paths("auto_choice", "avx2-kernels", tmp_path) == (
        tmp_path / "auto_choice" / "avx2-kernels.json", tmp_path / "auto_choice" / "avx2-kernels.md")
    assert results.result_paths("run", root=tmp_path)[0] == tmp_path / "run" / "full.json"
    for bad in ("", "../elsewhere", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            results.result_paths("run", bad, tmp_path)
        with pytest.raises(ValueError):
            results.results_dir(bad, tmp_path)


def test_the_committed_results_follow_the_layout():
    loose = [p.name for p in (FOLDER / "results").iterdir() if p.is_file()]
    assert not loose, f"results belong in their benchmark's folder: {loose}"


def test_markdown_table_and_result_files(tmp_path, capsys):
    table = results.markdown_table(["sampler", "NFE", "RMSE"], [["euler", 10, 0.25], ["heun", 20, "-"]])
    assert table == ("| sampler | NFE | RMSE |\n|---|---|---|\n"
                     "| euler | 10 | 0.25 |\n| heun | 20 | - |")
    with pytest.raises(ValueError, match="2 cells"):
        results.markdown_table(["a", "b", "c"], [[1, 2]])
    md = results.write_result("demo", "quick", {"steps": 3, "fidelity": 0.5}, "# quick", tmp_path)
    assert md == tmp_path / "demo" / "quick.md" and md.read_text() == "# quick\n"
    assert json.loads((tmp_path / "demo" / "quick.json").read_text()) == {"steps": 3, "fidelity": 0.5}
    assert capsys.readouterr().out == "# quick\n"


def test_machine_line_names_the_machine_and_its_load():
    from ldmcore.hardware import machine_line

    line = results.machine()
    assert line.startswith(machine_line()) and "load average" in line


class FakeClock:
    """Both clocks of ``timing``: each call advances them by the next duration of its variant."""

    def __init__(self, durations: dict[str, list[float]]) -> None:
        self.now, self.durations, self.calls = 0.0, {k: iter(v) for k, v in durations.items()}, []

    def call(self, name: str):
        def run() -> None:
            self.calls.append(name)
            self.now += next(self.durations[name])
        return run


def test_alternate_takes_medians_round_robin_after_warmup(monkeypatch):
    # warm-up round first (10 and 20 are ignored), then three rounds a, b, a, b, a, b
    clock = FakeClock({"a": [10.0, 3.0, 1.0, 2.0], "b": [20.0, 0.5, 0.7, 0.6]})
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock.now,
                                                        process_time=lambda: clock.now))
    clocks = timing.alternate_clocks({"a": clock.call("a"), "b": clock.call("b")}, reps=3)
    assert clock.calls == ["a", "b"] * 4
    assert clocks["wall"] == pytest.approx({"a": 2.0, "b": 0.6})
    assert clocks["cpu"] == pytest.approx({"a": 2.0, "b": 0.6})


def test_ratios_set_the_best_of_diffusers_against_ldmcore():
    seconds = {"diffusers fp32": 2.0, "ldmcore fp32": 1.0, "diffusers bf16 autocast": 1.0,
               "diffusers bf16 weights+cl": 0.8, "ldmcore bf16": 0.5, "ldmcore bf16 compiled": 0.4}
    # fp32 2.0 / 1.0; bf16 diffusers' best 0.8 / 0.5; compiled 0.8 / 0.4
    assert timing.ratios(seconds) == {"fp32": 2.0, "bf16": 1.6, "bf16_compiled": 2.0}


def test_a_missing_trained_run_stops_with_the_command_that_makes_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        load_trained_run(tmp_path / "no_such_run", "make demo")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "no_such_run") in err and "`make demo`" in err


def test_position_readout_finds_a_linear_place_and_not_noise():
    """Features that hold x and y linearly are read back exactly (R^2 = 1); features of pure
    noise explain nothing of the place on the held-out half (R^2 about 0 or below)."""
    from benchmarks.condition_signal import _readout

    b, h, w = 16, 4, 4
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    place = torch.stack([xs.flatten(), ys.flatten()], -1).float()
    mixing = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    linear = (place @ mixing).expand(b, -1, -1)
    exact = _readout(linear, (h, w))
    assert exact["map"] == "4x4" and min(exact["r2_x"], exact["r2_y"]) > 1 - 1e-4
    noise = _readout(torch.randn(b, h * w, 8, generator=torch.Generator().manual_seed(1)), (h, w))
    assert max(noise["r2_x"], noise["r2_y"]) < 0.2
