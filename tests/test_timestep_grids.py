"""Timestep grids of every spacing, offset and final level, for every step count: the levels
diffusers' DDIM visits, strictly descending, and every sampler runs them, from the function and
from the command line on an imported Stable Diffusion run.

Truth: diffusers' ``DDIMScheduler.set_timesteps`` (the grid) and its final alpha-bar (1, or
alpha-bar of t = 0 with ``set_alpha_to_one=False``). A level that diffusers visits twice in a
row (its last timestep t = 0, then the final level sigma(t=0)) is an identity step there, so
ldmcore visits it once. Where an offset pushes a leading timestep past T - 1 (offset 1 at
T steps) diffusers indexes past its table; ldmcore clamps it onto T - 1 and visits that once.
Trailing grids have exactly ``steps`` timesteps (diffusers' has one more, -1, for 50 counts).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from ldmcore.diffusion.samplers import SAMPLERS
from ldmcore.diffusion.schedule import NoiseSchedule
from ldmcore.diffusion.sigmas import SigmaPlan

diffusers = pytest.importorskip("diffusers")

T = 1000
SCHEDULE = NoiseSchedule.build("scaled_linear", T)
GRIDS = [(spacing, offset, alpha) for spacing, offset, alpha in
         itertools.product(("leading", "linspace", "trailing"), (0, 1), (True, False))
         if offset == 0 or spacing == "leading"]  # diffusers adds steps_offset to leading only


def diffusers_levels(scheduler, steps: int) -> list[float]:
    """The distinct noise levels diffusers' DDIM walks for ``steps`` steps, ending level last."""
    scheduler.set_timesteps(steps)
    # trailing: numpy's arange overshoots for 50 step counts (61, 103, ...) and diffusers then
    # appends timestep -1, which indexes its table from the end; that step is not on the grid
    ts = scheduler.timesteps[:steps].clamp(max=T - 1)
    # diffusers' tables are float32: its final alpha-bar is 1 or its own alpha-bar of t = 0
    final = 0.0 if float(scheduler.final_alpha_cumprod) == 1.0 else float(SCHEDULE.sigmas[0])
    assert final == 0.0 or scheduler.final_alpha_cumprod == scheduler.alphas_cumprod[0]
    levels = SCHEDULE.sigmas[ts].tolist() + [final]
    return [v for i, v in enumerate(levels) if i == 0 or v != levels[i - 1]]


@pytest.mark.parametrize("spacing,offset,alpha", GRIDS)
def test_every_step_count_gives_diffusers_levels_descending_strictly(spacing, offset, alpha) -> None:
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                        beta_end=0.012, num_train_timesteps=T,
                                        steps_offset=offset, set_alpha_to_one=alpha,
                                        timestep_spacing=spacing)
    plan = SigmaPlan(spacing=spacing, offset=offset, set_alpha_to_one=alpha)
    for steps in range(1, T + 1):
        levels = plan.sigmas(SCHEDULE, steps)
        assert bool((levels[1:] < levels[:-1]).all()), (steps, levels)
        expected = torch.tensor(diffusers_levels(scheduler, steps), dtype=torch.float64)
        torch.testing.assert_close(levels, expected, rtol=1e-12, atol=0, msg=f"steps={steps}")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("spacing,offset,alpha", GRIDS)
def test_every_sampler_runs_the_grids_that_repeat_a_level(name, spacing, offset, alpha) -> None:
    """1, 2 and 10 steps (the grid ends at t = 0 for linspace and leading offset 0) and T steps
    (offset 1 clamps the top timestep): each sampler runs and, for one step on a grid that
    collapses to a single level, returns its start untouched, as diffusers' identity step does."""
    plan = SigmaPlan(spacing=spacing, offset=offset, set_alpha_to_one=alpha)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (1, 2, 10, T):
        levels = plan.sigmas(SCHEDULE, steps)
        out = SAMPLERS[name](lambda z, s: 0.5 * z, x * float(levels[0]), levels,
                             generator=torch.Generator().manual_seed(1))
        assert bool(out.isfinite().all())
        if len(levels) == 1:
            assert torch.equal(out, x * float(levels[0]))


# -- the command line, on an imported SD run (steps_offset 1, set_alpha_to_one False) -------------

@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    from ldmcore.interop.convert import import_pretrained
    from tests.sd_fixtures import saved_pipeline

    root = tmp_path_factory.mktemp("sd1")
    saved_pipeline("sd1", root)
    return import_pretrained(root / "diffusers", root / "run")


def test_cli_setup_takes_every_grid_of_an_imported_run(sd_run) -> None:
    """``ldm sample``'s own request handling (``request_plan``) on the imported run, with its
    offset and final level set each way, for every spacing and step count 1..T: no error, and
    the levels the sampler then walks are the function's, strictly descending."""
    from ldmcore.runfolder import load_run
    from ldmcore.sample import SampleRequest, request_plan

    cfg, model, _ = load_run(sd_run)
    for spacing, offset, alpha in GRIDS:
        run_cfg = cfg.model_copy(update={"sampler": cfg.sampler.model_copy(
            update={"offset": offset, "set_alpha_to_one": alpha})})
        plan = SigmaPlan(spacing=spacing, offset=offset, set_alpha_to_one=alpha)
        for steps in range(1, T + 1):
            request = SampleRequest(run=sd_run, steps=steps, spacing=spacing, cond={"text": "x"})
            levels = request_plan(request, model, run_cfg).levels(model.schedule)
            assert bool((levels[1:] < levels[:-1]).all()), (spacing, offset, alpha, steps)
            assert torch.equal(levels, plan.sigmas(SCHEDULE, steps)), (spacing, offset, alpha, steps)


@pytest.mark.parametrize("args,evals", [(["steps=10", "spacing=linspace"], 9),
                                        (["steps=1", "spacing=linspace"], 0),
                                        (["steps=10", "spacing=trailing"], 10),
                                        (["steps=1000", "guidance=1"], 999)])
def test_cli_samples_an_imported_run_on_grids_that_repeat_a_level(sd_run, tmp_path, args,
                                                                   evals) -> None:
    """Exit status 0 and a sample, one network evaluation per distinct level above the last."""
    from ldmcore.cli import main

    config = json.loads((sd_run / "import.json").read_text())["sampler"]
    assert config["offset"] == 1 and config["set_alpha_to_one"] is False
    calls: list[int] = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: calls.append(1) if type(module).__name__ == "UNetModel" else None)
    try:
        code = main(["sample", f"run={sd_run}", "cond.text=x", "n=1", "sampler=ddim",
                     "precision=fp32", f"out={tmp_path / 'out'}", *args])
    finally:
        handle.remove()
    assert code == 0
    assert (tmp_path / "out" / "grid.png").is_file()
    assert len(calls) == evals
