"""The Hydra tree in conf/ and the pydantic validation in ldmcore/config.py.

The independent truth for "every config composes" is the YAML files themselves, read with
PyYAML (not Hydra): every value a file sets must arrive, unchanged, at its place in the
validated config. Error tests check what a user needs from the message: the key path they
wrote and the valid names near it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ldmcore.config import ExperimentConfig, conf_dir, load, validate
from ldmcore.errors import ConfigError, PluginError

CONF = conf_dir()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def read_yaml(group: str, option: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def file_values(group: str, option: str) -> dict[str, Any]:
    """What a group file sets, with its same-group ``defaults`` (e.g. kl_f8 extends kl_f4) merged
    by hand, in list order with ``_self_`` where it appears (last when absent)."""
    data = read_yaml(group, option)
    defaults = data.pop("defaults", [])
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    out: dict[str, Any] = {}
    for entry in defaults:
        out = merge(out, data if entry == "_self_" else file_values(group, entry))
    return out


def package_of(group: str, option: str) -> list[str]:
    """Where a group file's values land: its ``# @package`` line, else the group's name."""
    for line in (CONF / group / f"{option}.yaml").read_text().splitlines():
        if line.startswith("# @package"):
            pkg = line.split()[-1]
            return [] if pkg == "_global_" else pkg.split(".")
    return [group]


def nest(path: list[str], value: dict[str, Any]) -> dict[str, Any]:
    for part in reversed(path):
        value = {part: value}
    return value


def assert_subset(expected: Any, actual: Any, where: str = "") -> None:
    """Every value in ``expected`` equals the one at the same place in ``actual``."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for k, v in expected.items():
            assert k in actual, f"{where}.{k} missing from the composed config"
            assert_subset(v, actual[k], f"{where}.{k}")
    elif isinstance(expected, (list, tuple)):
        assert list(actual) == list(expected), where
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected), where
    elif isinstance(expected, str) and expected.startswith("${per_precision:"):
        # a value per resolved precision (A for bf16/fp16, B for fp32; tests/test_hardware.py)
        assert str(actual) in expected.rstrip("}").split(",")[1:], where
    elif expected != "???":  # ??? = mandatory, given on the command line (see load_with)
        assert str(actual) == str(expected), where  # paths and enums compare as text


def dumped(cfg: ExperimentConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def load_with(group: str, option: str) -> ExperimentConfig:
    """Select one option of one group, giving whatever that option cannot do without."""
    if group == "condition":
        return load([f"condition=[{option}]"])
    extra = {("data", "image_folder"): ["data.path=/some/images"],
             ("data", "coco"): ["data.path=/some/images", "data.annotations=/some/instances.json"],
             }.get((group, option), [])
    return load([f"{group}={option}", *extra])


# -- every config composes and validates -------------------------------------------------------

def test_the_tree_has_the_groups_of_the_design():
    assert set(GROUPS) >= {"model", "autoencoder", "condition", "data", "sampler", "trainer",
                           "experiment"}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS if g != "experiment"
                                           for o in options(g)])
def test_every_group_option_composes_validates_and_keeps_its_values(group, option):
    cfg = load_with(group, option)
    assert_subset(nest(package_of(group, option), file_values(group, option)), dumped(cfg))


@pytest.mark.parametrize("name", options("autoencoder"))
def test_autoencoder_option_name_states_its_downsampling_factor(name):
    f = 1 if name == "pixels" else int(name.rsplit("_f", 1)[1])  # pixels: no first stage
    assert load([f"autoencoder={name}"]).autoencoder.downsample_factor == f


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes_validates_and_applies_its_overrides(name):
    cfg = load([f"experiment={name}"])
    data = read_yaml("experiment", name)
    expected: dict[str, Any] = {}
    for entry in data.pop("defaults", []):
        if not isinstance(entry, dict):
            continue
        (key, value), = entry.items()
        group = key.removeprefix("override ").strip("/")
        for option in value if isinstance(value, list) else [value]:
            expected = merge(expected, nest(package_of(group, option), file_values(group, option)))
    expected = merge(expected, data)  # the experiment's own values win over its groups'
    assert_subset(expected, dumped(cfg), f"experiment={name}")
    assert cfg.name == data.get("name", "run")
    assert cfg.run_dir == Path("runs") / cfg.name  # run_dir: runs/${name}, interpolated


def test_interpolation_follows_an_overridden_name():
    assert load(["name=abc"]).run_dir == Path("runs/abc")
    assert load(["name=abc", "run_dir=/elsewhere"]).run_dir == Path("/elsewhere")


def test_condition_sections_validate_with_the_plugins_own_model():
    from ldm_class import ClassEncoder

    cfg = load(["condition=[class]", "conditions.class.num_classes=7"])
    from ldmcore.config import resolve_conditions

    (cls, conf), = resolve_conditions(cfg).values()
    assert cls is ClassEncoder
    assert isinstance(conf, ClassEncoder.Config) and conf.num_classes == 7


# -- unknown keys, wrong types, unknown options ------------------------------------------------

def message(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value)


def test_unknown_key_names_the_path_and_suggests_the_near_key():
    with pytest.raises(ConfigError) as exc:
        load(["trainer.max_stepz=1"])
    assert "'trainer.max_stepz'" in message(exc)
    assert "`trainer.max_steps=1`" in message(exc)
    assert "Valid keys here: max_steps, batch_size" in message(exc)  # every key of the section


def test_unknown_key_added_with_plus_is_caught_by_validation():
    with pytest.raises(ConfigError) as exc:
        load(["+model.unet.chanels=3"])
    assert "'model.unet.chanels'" in message(exc)


def test_validate_on_a_plain_dict_names_nested_unknown_keys():
    with pytest.raises(ConfigError) as exc:
        validate({"trainer": {"max_stepz": 1}})
    assert "'trainer.max_stepz'" in message(exc) and "`trainer.max_steps=1`" in message(exc)


@pytest.mark.parametrize("override, key, shown", [
    ("trainer.lr=abc", "trainer.lr", "'abc'"),
    ("trainer.max_steps=1.5", "trainer.max_steps", "1.5"),
    ("seed=abc", "seed", "'abc'"),
    ("data.channels=2", "data.channels", "2"),
    ("trainer.precision=fp8", "trainer.precision", "'fp8'"),
    ("model.diffusion.schedule=cosinex", "model.diffusion.schedule", "'cosinex'"),
])
def test_wrong_type_names_the_key_and_the_bad_value(override, key, shown):
    with pytest.raises(ConfigError) as exc:
        load([override])
    assert f"'{key}'" in message(exc) and shown in message(exc)


def test_literal_fields_list_their_valid_values():
    with pytest.raises(ConfigError) as exc:
        load(["trainer.precision=fp8"])
    assert all(f"'{p}'" in message(exc) for p in ("auto", "fp32", "bf16", "fp16"))


def test_an_unknown_strategy_lists_ddp_and_fsdp():
    with pytest.raises(ConfigError) as exc:
        load(["trainer.strategy=zero3"])
    assert "'trainer.strategy'" in message(exc) and "'ddp'" in message(exc) and "'fsdp'" in message(exc)


def test_fsdp_refuses_train_only_and_names_the_alternative():
    with pytest.raises(ConfigError) as exc:
        load(["trainer.strategy=fsdp", "trainer.train_only=[plugins]"])
    assert "trainer.train_only" in message(exc) and "trainer.strategy=ddp" in message(exc)


def test_unknown_experiment_lists_the_experiments_that_exist():
    with pytest.raises(ConfigError) as exc:
        load(["experiment=nope"])
    assert "'nope'" in message(exc)
    for name in options("experiment"):
        assert name in message(exc)


@pytest.mark.parametrize("override, suggestion", [
    ("sampler=dpm", "`sampler=ddpm`"),
    ("autoencoder=kl_f3", "`autoencoder=kl_f4`"),
    ("condition=[klass]", "`condition=class`"),
])
def test_unknown_group_option_suggests_the_nearest(override, suggestion):
    with pytest.raises(ConfigError) as exc:
        load([override])
    assert suggestion in message(exc)


def test_unknown_sampler_name_value_suggests_the_nearest():
    with pytest.raises(ConfigError) as exc:
        load(["sampler.name=dpm"])
    assert "'sampler.name'" in message(exc) and "'ddpm'" in message(exc)


def test_a_mandatory_value_left_unset_is_named():
    # data/image_folder.yaml has path: ??? ; it must not reach the dataset as the text "???"
    with pytest.raises(ConfigError) as exc:
        load(["data=image_folder"])
    assert "'data.path'" in message(exc) and "data.path=" in message(exc)
    assert load(["data=image_folder", "data.path=/x"]).data.path == Path("/x")


def test_unknown_plugin_section_is_a_plugin_error_suggesting_the_real_one():
    with pytest.raises(PluginError) as exc:
        load(["+conditions.klass.x=1"])
    assert "'klass'" in message(exc) and "'class'" in message(exc)


def test_bad_key_inside_a_plugin_section_names_its_full_path():
    from ldm_class import ClassEncoder

    with pytest.raises(ConfigError) as exc:
        load(["condition=[class]", "+conditions.class.foo=1"])
    assert "'conditions.class.foo'" in message(exc)
    for field in ClassEncoder.Config.model_fields:
        assert field in message(exc)


def test_bad_key_inside_a_plugin_section_without_plus():
    with pytest.raises(ConfigError) as exc:
        load(["condition=[class]", "conditions.class.num_clases=3"])
    assert "'conditions.class.num_clases'" in message(exc) and "`conditions.class.num_classes=3`" in message(exc)


# -- ranges: the boundary value passes, the one past it fails ---------------------------------

@pytest.mark.parametrize("key, good, bad", [
    ("trainer.batch_size", "1", "0"),
    ("trainer.lr", "1e-9", "0"),
    ("trainer.grad_accum", "1", "0"),
    ("trainer.ema_decay", "0.0", "1.0"),      # a decay of 1 would never move the EMA
    ("sampler.steps", "1", "0"),
    ("sampler.eta", "0.0", "-0.1"),
    ("data.shift", "0.49", "0.5"),
    ("data.image_size", "8", "4"),
    ("model.unet.dropout", "0.0", "1.0"),      # dropout 1 drops everything
    ("model.diffusion.timesteps", "2", "1"),
    ("model.diffusion.beta_end", "0.999", "1.0"),
    ("conditions.class.drop_prob", "1.0", "1.5"),  # a probability
    ("conditions.class.drop_prob", "0.0", "-0.1"),
    ("conditions.class.num_classes", "1", "0"),
])
def test_range_boundaries(key, good, bad):
    base = ["condition=[class]"] if key.startswith("conditions.") else []
    cfg = load([*base, f"{key}={good}"])
    if key.startswith("conditions."):
        assert cfg.conditions["class"][key.rsplit(".", 1)[1]] == pytest.approx(float(good))
    with pytest.raises(ConfigError) as exc:
        load([*base, f"{key}={bad}"])
    assert f"'{key}'" in message(exc) and bad in message(exc)


def test_a_tuple_of_the_wrong_length_is_rejected():
    with pytest.raises(ConfigError) as exc:
        load(["trainer.betas=[0.9]"])
    assert "trainer.betas" in message(exc)


def test_unparseable_override_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        load(["trainer.max_steps"])
    assert "trainer.max_steps" in message(exc)
