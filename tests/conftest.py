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
def pretrained_text_run(tmp_path_factory):
    """A smoke-size text-to-image run on the shapes scenes (3 steps, float32): the pretrained
    backbone the gated_attention and decoupled_crossattn plugins are attached to."""
    from ldmcore.config import load
    from ldmcore.train import train

    run = tmp_path_factory.mktemp("pretrained_text") / "run"
    train(load(["experiment=smoke", "data=shapes", "data.channels=3", "trainer.precision=fp32",
                "condition=[text]", f"run_dir={run}", "trainer.max_steps=3"]))
    return run
