"""Loggers (``trainer.loggers``, hook ``register_loggers``), the plots and the training grids'
sidecars, held to what the run itself wrote: every logged scalar is a ``metrics.jsonl`` number,
TensorBoard's own event reader reads back those numbers, a logged image is the grid PNG's
pixels, and each sidecar cell names the data item and seed that the grid was drawn from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldmcore.config import load
from ldmcore.curves import smoothed
from ldmcore.errors import ConfigError
from ldmcore.hookspecs import hookimpl
from ldmcore.loggers import Logger
from ldmcore.testing import isolated_registry
from ldmcore.train import train


class Recorder(Logger):
    """Keeps everything it is given (one instance per run, found through ``opened``)."""

    opened: list[Recorder] = []

    def __init__(self, run_dir: Path, config: dict) -> None:
        self.run_dir, self.config = run_dir, config
        self.scalar_calls: list[tuple[int, dict]] = []
        self.images: list[tuple[int, str, np.ndarray]] = []
        self.hparams: tuple[dict, dict] | None = None
        self.closed = False
        Recorder.opened.append(self)

    def scalars(self, step, values):
        self.scalar_calls.append((step, values))

    def image(self, step, tag, image):
        self.images.append((step, tag, image))

    def hyperparameters(self, params, metrics):
        self.hparams = (params, metrics)

    def close(self):
        self.closed = True


class Broken(Logger):
    def __init__(self, run_dir, config):
        pass

    def scalars(self, step, values):
        raise RuntimeError("the logging service is down")


class LoggerPlugins:
    @hookimpl
    def register_loggers(self, register):
        register("recorder", Recorder)
        register("broken", Broken)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, Recorder, str]:
    """A smoke run with a grid at step 3 and at the end, logged to TensorBoard, to a recording
    plugin and to a plugin whose logger fails at its first call."""
    import contextlib
    import io

    import ldm_class

    run = tmp_path_factory.mktemp("logged") / "run"
    registry = isolated_registry(ldm_class, LoggerPlugins(), builtins=False)
    cfg = load(["experiment=smoke", f"run_dir={run}", "trainer.precision=fp32",
                "trainer.sample_every=3", "trainer.loggers=[tensorboard,broken,recorder]"], registry)
    Recorder.opened.clear()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        train(cfg, registry)
    (recorder,) = Recorder.opened
    return run, recorder, err.getvalue()


def test_a_plugin_logger_gets_every_metrics_record(logged_run) -> None:
    run, recorder, _ = logged_run
    expected = {}
    for r in metrics(run):
        if isinstance(r.get("step"), int):
            for k, v in r.items():
                if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    expected[(r["step"], f"{r['stage']}/{k}")] = float(v)
    got = {(step, tag): v for step, values in recorder.scalar_calls for tag, v in values.items()}
    assert got == expected
    assert {tag for _, tag in got} >= {"diffusion/loss", "diffusion/lr", "autoencoder/l1"}
    assert recorder.closed and recorder.run_dir == run


def test_a_plugin_logger_gets_the_grids_and_the_hyperparameters(logged_run) -> None:
    run, recorder, _ = logged_run
    assert [(step, tag) for step, tag, _ in recorder.images] == [(3, "samples"), (6, "samples")]
    for step, _, image in recorder.images:
        png = np.asarray(Image.open(run / "samples" / f"step_{step}.png").convert("RGB"))
        assert image.dtype == np.uint8 and np.array_equal(image, png)
    params, final = recorder.hparams
    assert params["trainer.lr"] == recorder.config["trainer"]["lr"]
    assert params["conditions.class.num_classes"] == 10
    losses = [r["loss"] for r in metrics(run) if r["stage"] == "diffusion" and "loss" in r]
    assert final["loss"] == losses[-1]
    assert final["loss_smoothed"] == pytest.approx(smoothed(losses)[-1], rel=1e-12)


def test_a_failing_logger_is_dropped_and_the_run_goes_on(logged_run) -> None:
    run, recorder, stderr = logged_run
    assert "logger 'broken' failed" in stderr and "the logging service is down" in stderr
    assert (run / "checkpoints" / "last.safetensors").is_file()


def test_tensorboard_event_files_hold_the_logged_scalars(logged_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = logged_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for stage, key in (("diffusion", "loss"), ("diffusion", "lr"), ("autoencoder", "l1")):
        logged = [(r["step"], r[key]) for r in metrics(run) if r["stage"] == stage and key in r]
        read = [(e.step, e.value) for e in events.Scalars(f"{stage}/{key}")]
        assert [s for s, _ in read] == [s for s, _ in logged]
        # event files store float32: equal to within its rounding
        assert np.allclose([v for _, v in read], [v for _, v in logged], rtol=2 ** -23, atol=0)
    assert "samples" in events.Tags()["images"]
    assert "hparam/loss" in events.Tags()["scalars"]


def test_plots_are_written_at_the_end_of_training(logged_run) -> None:
    run, _, _ = logged_run
    for name in ("loss.png", "lr.png"):
        image = Image.open(run / "plots" / name)
        assert image.format == "PNG" and image.size == (640, 400)
        pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10  # lines, labels and axes drawn, not a blank canvas


def test_training_grids_have_a_sidecar_of_conditions_and_seeds(logged_run) -> None:
    """Cell i shows data item i (the class of the i-th digit of the run's data), noise seed
    seed + i, and the sampler the run samples with."""
    from ldmcore.build import build_dataset

    run, recorder, _ = logged_run
    cfg = recorder.config
    data = build_dataset("digits", cfg["data"]["limit"], None, **{
        k: v for k, v in cfg["data"].items() if k not in ("name", "num_workers", "limit")})
    for step in (3, 6):
        side = json.loads((run / "samples" / f"step_{step}.json").read_text())
        assert side["grid"] == f"step_{step}.png" and side["step"] == step
        assert side["sampler"] == cfg["sampler"]["name"] and side["steps"] == cfg["sampler"]["steps"]
        cells = side["samples"]
        assert len(cells) == 16 and [c["seed"] for c in cells] == [cfg["seed"] + i for i in range(16)]
        assert [c["conditions"]["class"] for c in cells] == [int(data[i]["class"]) for i in range(16)]
        assert [(c["row"], c["col"]) for c in cells[:9]] == [(0, c) for c in range(8)] + [(1, 0)]


def test_a_logger_that_is_not_registered_or_not_installed_stops_before_work(monkeypatch) -> None:
    import importlib.util

    with pytest.raises(ConfigError, match="unknown logger 'tensorbord'.*tensorboard"):
        load(["experiment=smoke", "trainer.loggers=[tensorbord]"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'ldmcore\[tensorboard\]'"):
        load(["experiment=smoke", "trainer.loggers=[tensorboard]"])


def test_ldm_eval_figures_join_the_record_and_the_plots(logged_run, tmp_path) -> None:
    """``ldm eval``'s numbers land in metrics.jsonl at the step of the checkpoint it scored,
    and plots/eval.png shows them."""
    import shutil

    from ldmcore.eval.record import record_eval

    run = tmp_path / "run"
    shutil.copytree(logged_run[0], run)
    written = record_eval(run, {"samples": 8, "data": "digits", "class_fidelity": 0.625})
    (last,) = [r for r in metrics(run) if r["stage"] == "eval"]
    assert last["step"] == 6 and last["class_fidelity"] == 0.625 and last["samples"] == 8
    assert run / "plots" / "eval.png" in written
    assert Image.open(run / "plots" / "eval.png").size[0] == 640


def test_smoothed_is_the_moving_average_without_its_start_up_bias() -> None:
    values = np.random.default_rng(0).normal(1.0, 0.3, 40)
    w = 0.9
    got = smoothed(list(values), w)
    for i in range(len(values)):
        weights = (1 - w) * w ** np.arange(i, -1, -1)  # w^(i-j) (1 - w) for j = 0..i
        assert got[i] == pytest.approx(weights @ values[: i + 1] / weights.sum(), rel=1e-12)
    assert smoothed([0.25] * 5, w) == pytest.approx([0.25] * 5, rel=1e-15)


def test_a_torn_last_line_of_a_killed_run_is_skipped(tmp_path) -> None:
    from ldmcore.curves import read_records, series

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "diffusion", "step": 2, "loss": 0.5}\n'
                    '{"stage": "diffusion", "step": 4, "loss": NaN}\n{"stage": "diffu')
    assert series(read_records(path), "diffusion", "loss") == ([2], [0.5])


def test_the_final_grid_sidecar_reproduces_the_grid_with_ldm_sample(logged_run, tmp_path) -> None:
    """The sidecar's conditions and seeds, given to ``ldm sample`` (n=1, the run's seed, fp32
    like the run), draw the final training grid again, pixel for pixel."""
    from ldmcore.sample import parse_request, run_sampling

    run, _, _ = logged_run
    side = json.loads((run / "samples" / "step_6.json").read_text())
    classes = json.dumps([c["conditions"]["class"] for c in side["samples"]]).replace(" ", "")
    out = run_sampling(parse_request([f"run={run}", f"cond.class={classes}", "n=1",
                                      f"seed={side['sampler_seed']}", "precision=fp32",
                                      "threads=1", f"out={tmp_path / 'again'}"]))
    grid = np.asarray(Image.open(run / "samples" / "step_6.png"))
    for cell in side["samples"]:
        image = np.asarray(Image.open(out / f"{cell['cell']:04d}.png"))
        size = image.shape[0]
        top, left = 2 + cell["row"] * (size + 2), 2 + cell["col"] * (size + 2)  # grid pad 2
        assert np.array_equal(grid[top:top + size, left:left + size], image)
