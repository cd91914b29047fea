"""The ``ldm`` command (ldmcore/cli.py): user errors end in one paragraph and exit status 2.

The subprocess tests run the real command (``python -m ldmcore.cli``) because only a real
process shows what a user sees: the exit status, stderr, and whether a traceback leaked. They
cost a few seconds of imports each, so there are few; the rest call ``main()`` in-process.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys

import pytest
import torch

from ldmcore import checkpoint, cli
from ldmcore import registry as registry_mod
from ldmcore.config import ExperimentConfig
from ldmcore.registry import ALLOW_ENV, DISABLE_ENV, build_registry


def ldm(*args: str, cwd) -> subprocess.CompletedProcess:
    """Run the CLI in a child process; the timeout only guards against hangs (loaded CI machines
    can take minutes just to import torch)."""
    env = {k: v for k, v in os.environ.items() if k not in (ALLOW_ENV, DISABLE_ENV)}
    env.update(HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([sys.executable, "-m", "ldmcore.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def error_paragraph(stderr: str) -> str:
    """The error message before any usage text, joined back from its wrapped lines."""
    text = stderr.split("\nusage:")[0].strip()
    assert text, "no message on stderr"
    assert "\n\n" not in text, f"more than one paragraph:\n{text}"
    return " ".join(text.split())


def assert_user_error(proc: subprocess.CompletedProcess, command: str, *words: str) -> str:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == 2, out
    para = error_paragraph(proc.stderr)
    assert para.startswith(f"ldm {command}:") or para.startswith("ldm:"), para
    for w in words:
        assert w in para, f"{w!r} not in: {para}"
    return para


# -- real processes ---------------------------------------------------------------------------

def test_unknown_key(tmp_path):
    assert_user_error(ldm("train", "trainer.max_stepz=1", cwd=tmp_path), "train",
                      "'trainer.max_stepz'", "`trainer.max_steps=1`")


def test_wrong_type(tmp_path):
    assert_user_error(ldm("train", "trainer.lr=abc", cwd=tmp_path), "train", "'trainer.lr'", "'abc'")


def test_unknown_experiment(tmp_path):
    assert_user_error(ldm("train", "experiment=nope", cwd=tmp_path), "train", "'nope'", "demo")


def test_unknown_command(tmp_path):
    proc = ldm("trian", cwd=tmp_path)
    assert_user_error(proc, "trian", "'trian'", "'train'")
    assert "ldm train experiment=NAME" in proc.stderr  # usage follows the message


def test_sample_from_a_run_folder_that_does_not_exist(tmp_path):
    assert_user_error(ldm("sample", "run=/nonexistent", cwd=tmp_path), "sample", "'/nonexistent'")


def test_sample_from_a_truncated_checkpoint(tmp_path):
    last = tmp_path / "my-run" / "checkpoints" / "last.safetensors"
    checkpoint.save(last, {"w": torch.randn(64, 64)}, {"kind": "latent_diffusion"})
    last.write_bytes(last.read_bytes()[:1000])
    assert_user_error(ldm("sample", f"run={tmp_path / 'my-run'}", "cond.class=3", cwd=tmp_path),
                      "sample", str(last), "truncated")


def test_eval_without_samples(tmp_path):
    run = tmp_path / "my-run"
    run.mkdir()
    assert_user_error(ldm("eval", f"run={run}", cwd=tmp_path), "eval", "last.safetensors")
    # a run's config is its checkpoint's metadata
    config = ExperimentConfig(conditions={"class": {}}).model_dump(mode="json")
    checkpoint.save(run / "checkpoints" / "last.safetensors", {"w": torch.zeros(1)},
                    {"kind": "latent_diffusion", "config": config})
    assert_user_error(ldm("eval", f"run={run}", cwd=tmp_path), "eval",
                      str(run / "samples" / "final"), "samples.json", "ldm sample")


def test_train_with_a_missing_data_folder_leaves_no_run_folder(tmp_path):
    run_dir = tmp_path / "runs" / "mine"
    proc = ldm("train", "data=image_folder", "data.path=/no/such/folder", f"run_dir={run_dir}",
               cwd=tmp_path)
    assert_user_error(proc, "train", "'/no/such/folder'", "data.path")
    # fixing the path and running again must not meet "already holds a run"
    assert not run_dir.exists()


def test_plugins_json_lists_the_builtin_class_plugin(tmp_path):
    proc = ldm("plugins", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    plugin = {p["name"]: p for p in listing["plugins"]}["class"]
    assert plugin["injections"] == ["vector", "crossattn"]
    assert plugin["package"] == "ldmcore" and plugin["version"] == md.version("ldmcore")
    assert listing["broken"] == {}


# -- in-process -------------------------------------------------------------------------------

def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, code", [([], 2), (["--help"], 0), (["help"], 0)])
def test_usage(capsys, argv, code):
    got, out, _ = run_main(capsys, *argv)
    assert got == code and "ldm sample run=RUN_DIR" in out


@pytest.mark.parametrize("argv, words", [
    (["plugins", "--jsn"], ["'--jsn'", "--json"]),
    (["eval"], ["run=RUN_DIR"]),
    (["eval", "rn=x"], ["'rn=x'", "'run'"]),
    (["sample", "runs/demo"], ["`runs/demo`", "key=value"]),
    (["sample", "run=x", "n=0"], ["'n'", "0"]),
    (["sample", "run=x", "sampler=ddim"], ["run='x'", "not a folder"]),
    (["sample", "run=x", "stepz=3"], ["'stepz'", "`steps=3`"]),
    (["train", "data=image_folder"], ["'data.path'"]),
])
def test_user_errors_in_process(capsys, argv, words):
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    para = error_paragraph(err)
    for w in words:
        assert w in para, para


def test_long_paths_are_not_broken_when_wrapped(capsys, tmp_path):
    run = tmp_path / ("a-very-long-run-name-with-many-hyphens-" * 3)
    code, _, err = run_main(capsys, "sample", f"run={run}")
    assert code == 2
    assert str(run) in err  # on one line, unbroken, so it can be copied


def test_plugins_table_shows_broken_plugins(capsys, monkeypatch):
    reg = build_registry(load_entry_points=False)
    reg.broken["ldm_text:text"] = "ImportError: No module named 'transformers'"
    monkeypatch.setattr(registry_mod, "_default", reg)
    code, out, _ = run_main(capsys, "plugins")
    assert code == 0
    assert "broken: ldm_text:text: ImportError: No module named 'transformers'" in out
    code, out, _ = run_main(capsys, "plugins", "--json")
    assert json.loads(out) == {"plugins": [], "config_dirs": [], "broken": dict(reg.broken),
                               "clashes": {}}


def test_plugins_table_shows_name_clashes(capsys, monkeypatch):
    reg = build_registry(load_entry_points=False)
    reg.clashes["condition 'vec'"] = ["pkg-a", "pkg-b"]
    monkeypatch.setattr(registry_mod, "_default", reg)
    code, out, _ = run_main(capsys, "plugins")
    assert code == 0 and "clash: condition 'vec' is registered by pkg-a and pkg-b" in out


def test_plugins_table_lists_name_injection_package_version(capsys, monkeypatch):
    monkeypatch.setattr(registry_mod, "_default", build_registry(load_entry_points=True))
    code, out, _ = run_main(capsys, "plugins")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["name", "injection", "package", "version", "trainable", "hooks"]
    # ldmcore's own package implements its plugins' hooks (conditions, metrics) and those of the
    # built-in samplers, datasets and loggers
    assert ["class", "vector,crossattn", "ldmcore", md.version("ldmcore"), "True",
            "register_conditions,register_datasets,register_loggers,register_metrics,register_samplers"] in rows
