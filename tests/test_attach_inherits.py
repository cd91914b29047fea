"""``model.init_from=RUN`` takes the base run's backbone settings: the experiment's own model
and autoencoder give way to the base's, a shape-free key may still be set, and a key that would
change a tensor's shape is refused naming the key and both values."""

from __future__ import annotations

from pathlib import Path

import pytest

from ldmcore import cli
from ldmcore.attach import attach_pretrained
from ldmcore.build import build_model
from ldmcore.config import load
from ldmcore.errors import ConfigError
from tests.test_sampling import write_run

BASE = ("model.unet.model_channels=48", "model.unet.attention_levels=[0,1]",
        "autoencoder.latent_channels=3", "model.diffusion.prediction=v")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A run whose backbone differs from experiment=smoke's in width, attention and latents."""
    return write_run(tmp_path_factory.mktemp("base") / "run", *BASE)


def test_the_base_runs_backbone_settings_are_taken(base, tmp_path):
    plain = load(["experiment=smoke"])
    assert plain.model.unet.model_channels == 32  # what smoke says, and the base does not
    cfg = load(["experiment=smoke", f"run_dir={tmp_path}", f"model.init_from={base}"])
    assert cfg.model.unet.model_channels == 48 and cfg.model.unet.attention_levels == (0, 1)
    assert cfg.autoencoder.latent_channels == 3 and cfg.model.diffusion.prediction.value == "v"
    assert cfg.autoencoder.train == plain.autoencoder.train  # stage-1 training is not inherited
    model = build_model(cfg)
    attached = attach_pretrained(model, base)  # every tensor fits: nothing is new
    assert attached.loaded == len(model.state_dict()) and attached.new_plugins == []


def test_a_shape_free_key_may_be_set(base):
    cfg = load(["experiment=smoke", f"model.init_from={base}", "model.diffusion.snr_gamma=5",
                "model.unet.dropout=0.1"])
    assert cfg.model.diffusion.snr_gamma == 5 and cfg.model.unet.dropout == 0.1
    assert cfg.model.unet.model_channels == 48


@pytest.mark.parametrize("override, key, theirs, mine", [
    ("model.unet.attention_levels=[1]", "model.unet.attention_levels", "[0, 1]", "[1]"),
    ("autoencoder.latent_channels=4", "autoencoder.latent_channels", "3", "4"),
    ("model=small", "model.unet.model_channels", "48", "64"),
    ("data=shapes", "data.channels", "1", "3"),
])
def test_a_differing_shape_key_is_named_with_both_values(base, override, key, theirs, mine):
    with pytest.raises(ConfigError) as caught:
        load(["experiment=smoke", f"model.init_from={base}", override])
    message = str(caught.value)
    assert f"trained with {key}={theirs}" in message and f"sets {key}={mine}" in message
    assert override in message  # which word of the command line set it


def test_training_from_a_base_says_what_it_loaded(base, tmp_path, capsys):
    code = cli.main(["train", "experiment=smoke", f"run_dir={tmp_path / 'run'}",
                     f"model.init_from={base}", "trainer.max_steps=1", "trainer.precision=fp32"])
    out = capsys.readouterr()
    assert code == 0, out.err
    (line,) = [x for x in out.out.splitlines() if x.startswith("ldmcore:")]
    built = build_model(load(["experiment=smoke", f"model.init_from={base}"]))
    assert f"init_from {base}: {len(built.state_dict())} tensors loaded, new: no plugin" in line
    assert "plugins: class (vector" in line and "parameters:" in line and "trained" in line
