"""Comma lists on ``ldm sample`` and ``ldm eval``: every combination, each exactly what the same
command with single values gives, a contact sheet that holds every grid, and a table per
combination for ``ldm eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldmcore.cli import _evaluate, main
from ldmcore.combinations import combinations, swept
from ldmcore.config import load
from ldmcore.errors import ConfigError
from ldmcore.eval.request import parse_eval_request
from ldmcore.eval.sweep import run_eval_sweep
from ldmcore.sample import parse_request, run_sampling
from ldmcore.sample_sweep import run_sample_sweep, sample_lists
from ldmcore.train import train


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory) -> Path:
    """A few-step layout run on shapes (a dataset with held-out scenes, so ``ldm eval``
    samples and scores them)."""
    run = tmp_path_factory.mktemp("lists") / "layout"
    train(load(["experiment=smoke", "data=shapes", "data.channels=3", "condition=[layout]",
                "data.limit=64", "trainer.max_steps=2", "trainer.precision=fp32", f"run_dir={run}"]))
    return run


def test_lists_expand_to_their_product_in_order() -> None:
    args = ["run=r", "guidance=1,3", "sampler=euler,ddim,heun", "cond.text=a cat, a dog",
            "guidance_interval=[0.3,5]", "seed=0"]
    lists = sample_lists(args)
    assert lists == {"guidance": ["1", "3"], "sampler": ["euler", "ddim", "heun"]}
    combos = combinations(args, lists)
    assert [tuple(c.values.values()) for c in combos] == [
        (g, s) for g in ("1", "3") for s in ("euler", "ddim", "heun")]
    assert combos[4].args == ["run=r", "guidance=3", "sampler=ddim", "cond.text=a cat, a dog",
                              "guidance_interval=[0.3,5]", "seed=0"]
    assert combos[4].folder == "guidance=3_sampler=ddim"
    with pytest.raises(ConfigError, match="empty item"):
        swept(["guidance=1,,3"], {"guidance"})


def find(sheet: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Every top-left position where ``tile`` appears in ``sheet`` exactly."""
    h, w = tile.shape[:2]
    ys, xs = np.nonzero((sheet[: sheet.shape[0] - h + 1, : sheet.shape[1] - w + 1] == tile[0, 0]).all(-1))
    return [(y, x) for y, x in zip(ys, xs) if np.array_equal(sheet[y:y + h, x:x + w], tile)]


def test_sample_lists_give_each_combination_and_a_contact_sheet(layout_run: Path, tmp_path: Path) -> None:
    boxes = '[[0.1,0.1,0.6,0.6,"circle"]]'
    common = [f"run={layout_run}", f"cond.layout={boxes}", "n=2", "steps=2", "precision=fp32", "threads=1"]
    out = run_sample_sweep([*common, "guidance=1,4", "seed=0,7", f"out={tmp_path / 'cmp'}"])
    index = json.loads((out / "sweep.json").read_text())
    assert [c["values"] for c in index["combinations"]] == [
        {"guidance": g, "seed": s} for g in ("1", "4") for s in ("0", "7")]
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    positions = []
    for combo in index["combinations"]:
        folder = out / combo["folder"]
        record = json.loads((folder / "samples.json").read_text())
        assert record["guidance"] == float(combo["values"]["guidance"])
        assert [s["seed"] for s in record["samples"]] == [int(combo["values"]["seed"]) + i for i in range(2)]
        grid = np.asarray(Image.open(folder / "grid.png").convert("RGB"))
        found = find(sheet, grid)
        assert found, f"the contact sheet lacks the grid of {combo['values']}"
        positions.append(found[0])
    rows, cols = sorted({y for y, _ in positions}), sorted({x for _, x in positions})
    assert len(rows) == 2 and len(cols) == 2  # one row per guidance, one column per seed
    # a combination is exactly the same request with single values
    single = run_sampling(parse_request([*common, "guidance=4", "seed=7", f"out={tmp_path / 'one'}"]))
    assert np.array_equal(np.asarray(Image.open(single / "grid.png")),
                          np.asarray(Image.open(out / "guidance=4_seed=7" / "grid.png")))


def test_the_run_is_loaded_once_per_precision(layout_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Combinations that can share the loaded model share it; another precision loads anew."""
    import ldmcore.sample_sweep as sweep

    loads = []
    real = sweep.load_for_sampling
    monkeypatch.setattr(sweep, "load_for_sampling", lambda *a, **k: loads.append(a) or real(*a, **k))
    run_sample_sweep([f"run={layout_run}", 'cond.layout=[[0.1,0.1,0.6,0.6,"circle"]]', "n=1",
                      "steps=1", "threads=1", "guidance=1,4", "seed=0,7", "precision=fp32,auto",
                      f"out={tmp_path / 'cmp'}"])
    assert len(loads) == 2


def test_eval_lists_score_each_combination(layout_run: Path, tmp_path: Path) -> None:
    args = [f"run={layout_run}", "n=4", "steps=2", "precision=fp32", "threads=1", "guidance=1,4",
            f"out={tmp_path / 'ev'}"]
    out, table = run_eval_sweep(args, _evaluate)
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("guidance,") and len(lines) == 3
    for g in ("1", "4"):
        report = json.loads((out / f"guidance={g}" / "eval.json").read_text())
        alone, _ = _evaluate(parse_eval_request([f"run={layout_run}", "n=4", "steps=2", "precision=fp32",
                                                 "threads=1", f"guidance={g}"]), tmp_path)
        assert report == alone
        assert "layout_mean_iou" in report and f"| {g} |" in table
    assert (out / "contact_sheet.png").is_file()


def test_a_bad_item_stops_before_any_sampling(layout_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    status = main(["sample", f"run={layout_run}", 'cond.layout=[[0.1,0.1,0.6,0.6,"circle"]]',
                   "guidance=1,loud", f"out={out}"])
    assert status == 2 and "guidance" in capsys.readouterr().err
    assert not out.exists()
