import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses too: the test models are tiny

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A smoke-size class-conditional run (both stages, float32), trained once for the
    reliability tests; tests that change a run work on a copy."""
    from ldmcore.config import load
    from ldmcore.train import train

    run = tmp_path_factory.mktemp("trained") / "smoke"
    train(load(["experiment=smoke", f"run_dir={run}", "trainer.precision=fp32"]))
    return run


@pytest.fixture(scope="session")
def shapes_multi_run(tmp_path_factory):
    """A few-step text + layout + segmap run on shapes scenes (16x16), trained once."""
    from ldmcore.config import load
    from ldmcore.train import train
    from tests.test_plugins import SMOKE

    run = tmp_path_factory.mktemp("shapes_multi") / "run"
    train(load(["experiment=shapes_multi", f"run_dir={run}", *SMOKE]))
    return run


@pytest.fixture(scope="session")
def photos_server(tmp_path_factory):
    """``ldm serve`` over a few-step lowres + inpaint run on photo crops (the image inputs)."""
    from ldmcore.config import load
    from ldmcore.train import train
    from tests.serve_helpers import serving
    from tests.test_plugins import SMOKE

    root = tmp_path_factory.mktemp("photos_server")
    run = train(load(["experiment=photos_inpaint", "condition=[lowres,inpaint]",
                      "conditions.inpaint.base=none", "model.diffusion.residual_scale=1",
                      f"run_dir={root / 'trained'}", *SMOKE])).root
    yield from serving(run, root)


@pytest.fixture(scope="session")
def class_server(trained_run, tmp_path_factory):
    """``ldm serve`` over a copy of the class run, for the session (stopped with Ctrl-C)."""
    from tests.serve_helpers import serving

    yield from serving(trained_run, tmp_path_factory.mktemp("class_server"))


@pytest.fixture(scope="session")
def shapes_server(shapes_multi_run, tmp_path_factory):
    """``ldm serve`` over a copy of the text + layout + segmap run, for the session."""
    from tests.serve_helpers import serving

    yield from serving(shapes_multi_run, tmp_path_factory.mktemp("shapes_server"))


@pytest.fixture(scope="session")
def pretrained_text_run(tmp_path_factory):
    """A smoke-size text-to-image run on the shapes scenes (3 steps, float32): the pretrained
    backbone the gated_attention and decoupled_crossattn plugins are attached to."""
    from ldmcore.config import load
    from ldmcore.train import train

    run = tmp_path_factory.mktemp("pretrained_text") / "run"
    train(load(["experiment=smoke", "data=shapes", "data.channels=3", "trainer.precision=fp32",
                "condition=[text]", f"run_dir={run}", "trainer.max_steps=3"]))
    return run
