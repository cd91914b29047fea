"""The plugin host (ldmcore/registry.py) and the condition contract (ldmcore/conditioning/).

Registry tests use the real ``ldmcore`` entry-point group (the built-in ``class`` plugin is
installed through it) plus fake entry points for the failure cases. Conditioner tests use tiny
encoders defined here whose outputs are known exactly, so routing, dropout and nulls are checked
value by value, not only by shape.
"""

from __future__ import annotations

import importlib.metadata as md
import math
import types

import pluggy
import pytest
import torch
from pydantic import Field
from torch import nn

from ldmcore import registry as registry_mod
from ldmcore.conditioning import (BackboneSpec, ConditionEncoder, Conditioner, Conditioning,
                                  EncoderConfig, Injection, OutputSpec, Tokens)
from ldmcore.errors import PluginClash, PluginError
from ldmcore.hookspecs import hookimpl
from ldmcore.registry import (ALLOW_ENV, DISABLE_ENV, ENTRY_POINT_GROUP, SKIP_ENV, Registry,
                              build_registry)

BUILTINS = sorted(e.name for e in md.entry_points(group=ENTRY_POINT_GROUP)  # first-party plugins
                  if e.dist is not None and e.dist.metadata["Name"] == "ldmcore")

SPEC = BackboneSpec(latent_channels=4, latent_size=(8, 8), context_dim=16, image_channels=1,
                    image_size=(32, 32))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.delenv(SKIP_ENV, raising=False)


# -- tiny encoders with exactly known outputs --------------------------------------------------

class TokConfig(EncoderConfig):
    tokens: int = Field(3, ge=1)
    width: int | None = None  # None = the backbone's context_dim (a bad width tests the check)


class TokenEncoder(ConditionEncoder):
    """value: (B,) floats -> ``tokens`` tokens all equal to the value; mask keeps the first
    ``1 + (value > 0)`` tokens. null: all -1 tokens, only the first attended."""

    name = "tok"
    injections = (Injection.CROSSATTN,)
    Config = TokConfig

    def output_specs(self):
        width = self.config.width or self.backbone.context_dim
        return {Injection.CROSSATTN: OutputSpec(Injection.CROSSATTN, (self.config.tokens, width))}

    def forward(self, value):
        v = torch.as_tensor(value, dtype=torch.float32)
        n, d = self.config.tokens, self.backbone.context_dim
        values = v.view(-1, 1, 1).expand(-1, n, d).clone()
        mask = torch.arange(n)[None] < (1 + (v > 0).long())[:, None]
        return {Injection.CROSSATTN: Tokens(values, mask)}

    def null(self, batch_size):
        n, d = self.config.tokens, self.backbone.context_dim
        mask = torch.zeros(batch_size, n, dtype=torch.bool)
        mask[:, 0] = True
        return {Injection.CROSSATTN: Tokens(-torch.ones(batch_size, n, d), mask)}


class TokenEncoder2(TokenEncoder):
    name = "tok2"


class MapConfig(EncoderConfig):
    channels: int = 2


class MapEncoder(ConditionEncoder):
    """value: (B, C, h, w) map passed through; null: zeros."""

    name = "map"
    injections = (Injection.CONCAT,)
    Config = MapConfig

    def output_specs(self):
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (self.config.channels, *self.backbone.latent_size))}

    def forward(self, value):
        return {Injection.CONCAT: value}

    def null(self, batch_size):
        return {Injection.CONCAT: torch.zeros(batch_size, self.config.channels, *self.backbone.latent_size)}


class MapEncoder2(MapEncoder):
    name = "map2"


class VecConfig(EncoderConfig):
    dim: int = 4


class VectorEncoder(ConditionEncoder):
    """value: (B, dim) passed through; null: a learned vector (initialised to 7s)."""

    name = "vec"
    injections = (Injection.VECTOR,)
    Config = VecConfig

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.null_vector = nn.Parameter(torch.full((config.dim,), 7.0))

    def output_specs(self):
        return {Injection.VECTOR: OutputSpec(Injection.VECTOR, (self.config.dim,))}

    def forward(self, value):
        return {Injection.VECTOR: value}

    def null(self, batch_size):
        return {Injection.VECTOR: self.null_vector.expand(batch_size, -1)}


class VectorEncoder2(VectorEncoder):
    name = "vec2"


class LowresLike(ConditionEncoder):
    """Feeds two injections at once, as the super-resolution plugin does (map + level)."""

    name = "lowres"
    injections = (Injection.CONCAT, Injection.VECTOR)

    def output_specs(self):
        return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (1, *self.backbone.latent_size)),
                Injection.VECTOR: OutputSpec(Injection.VECTOR, (1,))}

    def forward(self, value):
        image, level = value
        return {Injection.CONCAT: image, Injection.VECTOR: level[:, None]}

    def null(self, batch_size):
        return {Injection.CONCAT: torch.zeros(batch_size, 1, *self.backbone.latent_size),
                Injection.VECTOR: torch.zeros(batch_size, 1)}


def make(cls, spec=SPEC, **config):
    return cls(cls.Config(**config), spec)


def plugin_module(name: str, *classes: type) -> types.ModuleType:
    """A module-like plugin object with a ``register_conditions`` hook implementation."""
    mod = types.ModuleType(name)

    @hookimpl
    def register_conditions(register):
        for cls in classes:
            register(cls)

    mod.register_conditions = register_conditions
    return mod


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint: name, value, dist, load()."""

    def __init__(self, name, value, load):
        self.name, self.value, self.dist, self._load = name, value, None, load
        self.loaded = False

    def load(self):
        self.loaded = True
        return self._load()


def builtin_entry_points() -> list:
    """ldmcore's own entry points: third-party plugins installed beside it (such as the example
    package) are left out, so these tests see a known set."""
    return [e for e in md.entry_points(group=ENTRY_POINT_GROUP) if e.name in BUILTINS]


def with_entry_points(monkeypatch, *fakes: FakeEntryPoint, real: bool = True):
    fake_names = {f.name for f in fakes}  # a fake replaces the real entry point of its name
    eps = [e for e in builtin_entry_points() if e.name not in fake_names] if real else []
    eps += list(fakes)
    monkeypatch.setattr(registry_mod.md, "entry_points",
                        lambda group: [e for e in eps if group == ENTRY_POINT_GROUP])


# -- the registry ------------------------------------------------------------------------------

def test_builtin_class_plugin_comes_through_the_entry_point_group():
    from ldm_class import ClassEncoder

    eps = {e.name: e for e in md.entry_points(group=ENTRY_POINT_GROUP)}
    assert eps["class"].value == "ldm_class"
    reg = build_registry()
    assert reg.condition("class") is ClassEncoder
    info = {i.name: i for i in reg.infos()}["class"]
    assert info.package == "ldmcore"
    assert info.version == md.version("ldmcore") and info.version
    assert info.injections == ("vector", "crossattn")
    assert info.module == "ldm_class.encoder"
    assert "ldmcore:class" in dict(reg.manager.list_name_plugin())
    assert reg.broken == {}


def test_unknown_condition_name_suggests_the_registered_one():
    with pytest.raises(PluginError) as exc:
        build_registry().condition("klass")
    assert "'klass'" in str(exc.value) and "'class'" in str(exc.value)


def test_add_module_lists_a_plugin_defined_here():
    reg = build_registry(load_entry_points=False)
    reg.add_module(plugin_module("my_plugin", VectorEncoder), package="my-pkg", version="1.2.3")
    assert reg.condition("vec") is VectorEncoder
    (info,) = reg.infos()
    assert (info.name, info.injections, info.package, info.version, info.module, info.trainable) == (
        "vec", ("vector",), "my-pkg", "1.2.3", __name__, True)
    # it is a real pluggy hook implementation, callable through the hook like any plugin
    seen = []
    reg.manager.hook.register_conditions(register=seen.append)
    assert seen == [VectorEncoder]


def test_a_plugin_may_register_several_encoders():
    reg = build_registry(load_entry_points=False)
    reg.add_module(plugin_module("multi", TokenEncoder, MapEncoder, VectorEncoder))
    assert [i.name for i in reg.infos()] == ["map", "tok", "vec"]
    assert {i.package for i in reg.infos()} == {"multi"}  # default package: the module's name


def test_same_name_from_two_packages_names_both():
    class OtherVec(VectorEncoder):
        pass

    reg = build_registry(load_entry_points=False)
    reg.add_module(plugin_module("a", VectorEncoder), package="pkg-alpha")
    with pytest.raises(PluginError) as exc:
        reg.add_module(plugin_module("b", OtherVec), package="pkg-beta")
    assert "'vec'" in str(exc.value)
    assert "pkg-alpha" in str(exc.value) and "pkg-beta" in str(exc.value)
    assert reg.condition("vec") is VectorEncoder  # the first registration stands


def test_same_name_through_entry_points_names_both(monkeypatch):
    class OtherClass(VectorEncoder):
        name = "class"

    with_entry_points(monkeypatch, FakeEntryPoint("zz_other", "other_pkg",
                                                  lambda: plugin_module("other_pkg", OtherClass)))
    reg = build_registry()  # a clash stops only the runs that use the name
    with pytest.raises(PluginClash) as exc:
        reg.condition("class")
    assert "'ldmcore' and 'other_pkg'" in str(exc.value) and SKIP_ENV in str(exc.value)
    assert reg.clashes == {"condition 'class'": ["ldmcore", "other_pkg"]}
    assert "class" not in [i.name for i in reg.infos()]  # neither wins by install order
    assert reg.condition("layout").name == "layout"  # the other names still work
    monkeypatch.setenv(SKIP_ENV, "other_pkg")
    assert build_registry().condition("class") is not OtherClass


@pytest.mark.parametrize("bad, words", [
    (int, "not a ConditionEncoder"),
    (type("Nameless", (VectorEncoder,), {"name": ""}), "`name`"),
])
def test_registering_something_that_breaks_the_contract(bad, words):
    reg = build_registry(load_entry_points=False)
    with pytest.raises(PluginError) as exc:
        reg.add_module(plugin_module("bad_pkg", bad))
    assert words in str(exc.value) and "bad_pkg" in str(exc.value)


def test_an_entry_point_registering_a_non_encoder_is_broken_not_fatal(monkeypatch):
    with_entry_points(monkeypatch, FakeEntryPoint("bad", "bad_pkg", lambda: plugin_module("bad_pkg", int)))
    reg = build_registry()
    assert "not a ConditionEncoder" in reg.broken["bad_pkg:bad"]
    assert [i.name for i in reg.infos()] == BUILTINS


def test_a_broken_plugin_is_recorded_and_the_host_keeps_working(monkeypatch):
    def boom():
        raise ImportError("No module named 'torchvision'")

    with_entry_points(monkeypatch, FakeEntryPoint("text", "ldm_text", boom))
    reg = build_registry()
    assert reg.broken == {"ldm_text:text": "ImportError: No module named 'torchvision'"}
    assert [i.name for i in reg.infos()] == [n for n in BUILTINS if n != "text"]  # the good ones load
    with pytest.raises(PluginError) as exc:
        reg.condition("text")
    assert "ldm_text:text" in str(exc.value) and "torchvision" in str(exc.value)


def test_a_plugin_whose_hook_raises_is_recorded_as_broken(monkeypatch):
    mod = types.ModuleType("ldm_flaky")

    @hookimpl
    def register_conditions(register):
        raise RuntimeError("weights folder missing")

    mod.register_conditions = register_conditions
    with_entry_points(monkeypatch, FakeEntryPoint("flaky", "ldm_flaky", lambda: mod))
    reg = build_registry()
    assert "RuntimeError: weights folder missing" in reg.broken["ldm_flaky:flaky"]
    assert reg.condition("class")


def test_allow_list_loads_only_the_named_entry_points(monkeypatch):
    extra = FakeEntryPoint("vec", "vec_pkg", lambda: plugin_module("vec_pkg", VectorEncoder))
    with_entry_points(monkeypatch, extra)
    monkeypatch.setenv(ALLOW_ENV, "vec")
    reg = build_registry()
    assert [i.name for i in reg.infos()] == ["vec"]
    monkeypatch.setenv(ALLOW_ENV, " class , nothing ")
    extra.loaded = False
    reg = build_registry()
    assert [i.name for i in reg.infos()] == ["class"]
    assert not extra.loaded  # an entry point outside the list is never even imported


@pytest.mark.parametrize("env, value, loaded", [
    (DISABLE_ENV, "1", []), (DISABLE_ENV, "true", []), (DISABLE_ENV, "yes", []),
    # LDM_DISABLE_PLUGINS names entry points or distributions to skip
    (SKIP_ENV, "vec", BUILTINS), (SKIP_ENV, "vec_pkg", BUILTINS), (SKIP_ENV, " other , vec ", BUILTINS),
])
def test_the_environment_skips_entry_points(monkeypatch, env, value, loaded):
    fake = FakeEntryPoint("vec", "vec_pkg", lambda: plugin_module("vec_pkg", VectorEncoder))
    with_entry_points(monkeypatch, fake)
    monkeypatch.setenv(env, value)
    reg = build_registry()
    assert [i.name for i in reg.infos()] == loaded and reg.broken == {} and not fake.loaded
    if env == DISABLE_ENV:  # the argument wins over the variable
        assert [i.name for i in build_registry(load_entry_points=True).infos()] == sorted([*BUILTINS, "vec"])


# -- the Conditioner: routing and derived dimensions ------------------------------------------

def test_routing_joins_tokens_on_sequence_maps_on_channels_vectors_on_features():
    enc = {"tok": make(TokenEncoder, tokens=2), "tok2": make(TokenEncoder2, tokens=3),
           "map": make(MapEncoder, channels=2), "map2": make(MapEncoder2, channels=1),
           "vec": make(VectorEncoder, dim=4), "vec2": make(VectorEncoder2, dim=3)}
    cond = Conditioner(enc)
    b = 2
    t1, t2 = torch.tensor([1.0, -1.0]), torch.tensor([5.0, 6.0])
    m1, m2 = torch.randn(b, 2, 8, 8), torch.randn(b, 1, 8, 8)
    v1, v2 = torch.randn(b, 4), torch.randn(b, 3)
    out = cond({"tok": t1, "tok2": t2, "map": m1, "map2": m2, "vec": v1, "vec2": v2}, b)

    assert out.context.shape == (b, 5, SPEC.context_dim)
    assert torch.equal(out.context[:, :2], t1.view(b, 1, 1).expand(b, 2, SPEC.context_dim))
    assert torch.equal(out.context[:, 2:], t2.view(b, 1, 1).expand(b, 3, SPEC.context_dim))
    # masks travel with their tokens: value>0 attends 2 tokens, else 1 (per TokenEncoder)
    assert out.context_mask.tolist() == [[True, True, True, True, False],
                                         [True, False, True, True, False]]
    assert torch.equal(out.concat, torch.cat([m1, m2], dim=1))
    assert torch.equal(out.vector[:, :4], v1) and torch.equal(out.vector[:, 4:], v2)
    assert (cond.context_tokens, cond.concat_channels, cond.vector_dim) == (5, 3, 7)
    assert cond.uses_crossattn


def test_an_encoder_feeding_two_injections_is_routed_to_both():
    cond = Conditioner({"lowres": make(LowresLike), "vec": make(VectorEncoder, dim=2)})
    image, level, v = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.2, 0.3]), torch.randn(3, 2)
    out = cond({"lowres": (image, level), "vec": v}, 3)
    assert torch.equal(out.concat, image)
    assert torch.equal(out.vector, torch.cat([level[:, None], v], dim=1))
    assert out.context is None and out.context_mask is None
    assert (cond.concat_channels, cond.vector_dim, cond.context_tokens) == (1, 3, 0)


def test_no_plugins_means_no_conditioning():
    cond = Conditioner({})
    out = cond({}, 4)
    assert out == Conditioning()
    assert (cond.concat_channels, cond.vector_dim, cond.context_tokens, cond.uses_crossattn) == (0, 0, 0, False)


def test_conditioning_cat_stacks_on_the_batch_axis():
    cond = Conditioner({"tok": make(TokenEncoder), "vec": make(VectorEncoder)})
    a = cond({"tok": torch.tensor([1.0]), "vec": torch.ones(1, 4)}, 1)
    u = cond.unconditional(1)
    both = Conditioning.cat([a, u])
    assert torch.equal(both.context, torch.cat([a.context, u.context]))
    assert torch.equal(both.context_mask, torch.cat([a.context_mask, u.context_mask]))
    assert torch.equal(both.vector, torch.cat([a.vector, u.vector]))
    assert both.concat is None


def test_frozen_encoders_run_without_grad_trainable_ones_with():
    class Frozen(VectorEncoder):
        name = "frozen"
        trainable = False

        def forward(self, value):
            return {Injection.VECTOR: value * self.null_vector}

    class Trained(Frozen):
        name = "trained"
        trainable = True

    cond = Conditioner({"frozen": make(Frozen), "trained": make(Trained)})
    v = torch.ones(2, 4)
    assert not cond.encode("frozen", v)[Injection.VECTOR].requires_grad
    assert cond.encode("trained", v)[Injection.VECTOR].requires_grad


# -- contract violations are caught at build time or at the plugin's boundary, by name ---------

def test_crossattn_spec_that_violates_context_dim_names_the_plugin():
    with pytest.raises(PluginError) as exc:
        Conditioner({"tok": make(TokenEncoder, width=SPEC.context_dim + 1)})
    assert "'tok'" in str(exc.value) and f"context_dim={SPEC.context_dim}" in str(exc.value)


def test_concat_spec_at_the_wrong_resolution_names_the_plugin():
    class PixelMap(MapEncoder):  # emits at image resolution, not latent resolution
        def output_specs(self):
            return {Injection.CONCAT: OutputSpec(Injection.CONCAT, (2, *self.backbone.image_size))}

    with pytest.raises(PluginError) as exc:
        Conditioner({"map": make(PixelMap)})
    assert "'map'" in str(exc.value) and "(channels, 8, 8)" in str(exc.value)


def test_an_output_outside_the_declared_injections_names_the_plugin():
    class Liar(VectorEncoder):
        name = "liar"
        injections = (Injection.CROSSATTN,)

    with pytest.raises(PluginError) as exc:
        Conditioner({"liar": make(Liar)})
    assert "'liar'" in str(exc.value) and "'vector'" in str(exc.value)


def test_a_plugin_declaring_no_outputs_names_the_plugin():
    class Mute(VectorEncoder):
        name = "mute"

        def output_specs(self):
            return {}

    with pytest.raises(PluginError) as exc:
        Conditioner({"mute": make(Mute)})
    assert "'mute'" in str(exc.value)


def test_a_wrong_shaped_output_names_the_plugin():
    class Sloppy(TokenEncoder):
        name = "sloppy"

        def forward(self, value):
            out = super().forward(value)[Injection.CROSSATTN]
            return {Injection.CROSSATTN: Tokens(out.values[:, :-1], out.mask[:, :-1])}

    cond = Conditioner({"sloppy": make(Sloppy, tokens=3)})
    with pytest.raises(PluginError) as exc:
        cond({"sloppy": torch.ones(2)}, 2)
    assert "'sloppy'" in str(exc.value) and "(2, 16)" in str(exc.value) and "(3, 16)" in str(exc.value)


def test_an_output_for_an_undeclared_injection_names_the_plugin():
    class Extra(VectorEncoder):
        name = "extra"

        def forward(self, value):
            return {Injection.VECTOR: value, Injection.CONCAT: torch.zeros(len(value), 1, 8, 8)}

    with pytest.raises(PluginError) as exc:
        Conditioner({"extra": make(Extra)})({"extra": torch.ones(2, 4)}, 2)
    assert "'extra'" in str(exc.value) and "concat" in str(exc.value)


def test_a_mask_that_does_not_fit_its_tokens_names_the_plugin():
    class BadMask(TokenEncoder):
        name = "badmask"

        def forward(self, value):
            out = super().forward(value)[Injection.CROSSATTN]
            return {Injection.CROSSATTN: Tokens(out.values, out.mask[:, :1])}

    with pytest.raises(PluginError) as exc:
        Conditioner({"badmask": make(BadMask)})({"badmask": torch.ones(2)}, 2)
    assert "'badmask'" in str(exc.value) and "mask" in str(exc.value)


def test_a_wrong_shaped_null_names_the_plugin():
    class BadNull(VectorEncoder):
        name = "badnull"

        def null(self, batch_size):
            return {Injection.VECTOR: torch.zeros(batch_size, self.config.dim + 1)}

    cond = Conditioner({"badnull": make(BadNull), "vec": make(VectorEncoder)})
    for call in (lambda: cond.unconditional(2), lambda: cond({}, 2, keep=set()),
                 lambda: cond({"badnull": torch.ones(2, 4), "vec": torch.ones(2, 4)}, 2, drop=True)):
        with pytest.raises(PluginError) as exc:
            call()
        assert "'badnull'" in str(exc.value) and "null" in str(exc.value)


def test_a_missing_value_names_the_plugin_and_how_to_give_it():
    cond = Conditioner({"vec": make(VectorEncoder), "tok": make(TokenEncoder)})
    with pytest.raises(PluginError) as exc:
        cond({"vec": torch.ones(1, 4)}, 1)
    assert "'tok'" in str(exc.value) and "cond.tok=" in str(exc.value)


# -- classifier-free guidance: nulls and per-plugin dropout ----------------------------------

def two_plugins(p_tok: float, p_vec: float) -> Conditioner:
    return Conditioner({"tok": make(TokenEncoder, tokens=2, drop_prob=p_tok),
                        "vec": make(VectorEncoder, dim=4, drop_prob=p_vec)})


def values(b: int) -> dict[str, torch.Tensor]:
    return {"tok": torch.arange(1, b + 1, dtype=torch.float32), "vec": torch.randn(b, 4)}


def assert_same(a: Conditioning, b: Conditioning) -> None:
    for field in ("context", "context_mask", "concat", "vector"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y), field


def test_drop_prob_one_gives_exactly_the_null_and_zero_exactly_the_conditional():
    b, vals = 6, values(6)
    cond = two_plugins(p_tok=1.0, p_vec=0.0)
    dropped = cond(vals, b, drop=True, generator=torch.Generator().manual_seed(0))
    conditional = cond(vals, b)
    null = cond.unconditional(b)
    # per plugin: tok is always its null, vec never
    assert torch.equal(dropped.context, null.context)
    assert torch.equal(dropped.context_mask, null.context_mask)
    assert torch.equal(dropped.vector, conditional.vector)
    assert torch.equal(dropped.vector, vals["vec"])
    assert not torch.equal(conditional.context, null.context)


def test_without_drop_the_drop_prob_is_ignored():
    b, vals = 5, values(5)
    cond = two_plugins(p_tok=1.0, p_vec=1.0)
    out = cond(vals, b)
    assert torch.equal(out.vector, vals["vec"])
    assert torch.equal(out.context[:, 0, 0], vals["tok"])


def test_drop_prob_half_drops_about_half_per_plugin_independently():
    b = 4000
    vals = values(b)
    cond = two_plugins(p_tok=0.5, p_vec=0.5)
    out = cond(vals, b, drop=True, generator=torch.Generator().manual_seed(1))
    null = cond.unconditional(b)
    tok_dropped = (out.context == null.context).all(dim=(1, 2))
    vec_dropped = (out.vector == null.vector).all(dim=1)
    # a dropped sample is entirely its null, a kept one entirely its value, masks included
    assert torch.equal(out.context_mask[tok_dropped], null.context_mask[tok_dropped])
    assert torch.equal(out.vector[~vec_dropped], vals["vec"][~vec_dropped])
    bound = 5 * math.sqrt(0.25 / b)  # five binomial standard deviations
    assert abs(tok_dropped.float().mean().item() - 0.5) < bound
    assert abs(vec_dropped.float().mean().item() - 0.5) < bound
    # independent draws per plugin: both dropped about a quarter of the time
    both = (tok_dropped & vec_dropped).float().mean().item()
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / b)


def test_dropout_is_reproducible_from_the_generator():
    b, vals = 64, values(64)
    cond = two_plugins(0.5, 0.5)
    a = cond(vals, b, drop=True, generator=torch.Generator().manual_seed(3))
    c = cond(vals, b, drop=True, generator=torch.Generator().manual_seed(3))
    assert_same(a, c)


def test_keep_empty_is_the_unconditional_and_needs_no_values():
    b = 3
    cond = two_plugins(0.1, 0.1)
    out = cond({}, b, keep=set())
    assert_same(out, cond.unconditional(b))
    assert torch.equal(out.vector, torch.full((b, 4), 7.0))  # VectorEncoder's null
    assert torch.equal(out.context, -torch.ones(b, 2, SPEC.context_dim))  # TokenEncoder's null
    assert out.context_mask.tolist() == [[True, False]] * b


def test_keep_one_plugin_gives_its_conditional_and_the_others_null():
    b, vals = 3, values(3)
    cond = two_plugins(0.1, 0.1)
    out = cond(vals, b, keep={"vec"})
    assert torch.equal(out.vector, vals["vec"])
    assert torch.equal(out.context, cond.unconditional(b).context)


def test_class_plugin_null_is_its_extra_embedding_row():
    from ldm_class import ClassEncoder

    enc = ClassEncoder(ClassEncoder.Config(num_classes=10, embed_dim=8, drop_prob=1.0), SPEC)
    cond = Conditioner({"class": enc})
    labels = torch.tensor([0, 3, 9])
    dropped = cond({"class": labels}, 3, drop=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dropped.vector, enc.embedding.weight[10].expand(3, -1))
    assert torch.equal(cond({"class": labels}, 3).vector, enc.embedding.weight[labels])


# -- isolation: nothing a plugin does at import or in a hook takes the host down -----------------

def test_a_plugin_raising_systemexit_at_import_is_broken_not_fatal(monkeypatch):
    def leave():
        raise SystemExit(3)

    with_entry_points(monkeypatch, FakeEntryPoint("quits", "ldm_quits", leave))
    reg = build_registry()
    assert reg.broken == {"ldm_quits:quits": "SystemExit(3) raised while loading"}
    assert [i.name for i in reg.infos()] == BUILTINS


def test_a_plugin_raising_systemexit_in_its_hook_keeps_none_of_its_registrations(monkeypatch):
    class Quits:
        @hookimpl
        def register_conditions(self, register):
            register(VectorEncoder)
            raise SystemExit("no GPU found")

    with_entry_points(monkeypatch, FakeEntryPoint("quits", "ldm_quits", Quits))
    reg = build_registry()
    assert "SystemExit('no GPU found')" in reg.broken["ldm_quits:quits"]
    assert "vec" not in reg.encoders
    assert "ldm_quits:quits" not in dict(reg.manager.list_name_plugin())


def test_each_package_is_called_through_the_plugin_manager_with_its_own_hooks_only(monkeypatch):
    calls = []
    real = pluggy.PluginManager.subset_hook_caller

    def spy(self, name, remove_plugins):
        caller = real(self, name, remove_plugins)
        calls.append((name, [self.get_name(i.plugin) for i in caller.get_hookimpls()]))
        return caller

    monkeypatch.setattr(pluggy.PluginManager, "subset_hook_caller", spy)
    reg = build_registry(load_entry_points=False)
    reg.add_module(plugin_module("a", VectorEncoder), package="pkg-a")
    reg.add_module(plugin_module("b", TokenEncoder), package="pkg-b")
    conditions = [names for hook, names in calls if hook == "register_conditions" and names]
    assert len(conditions) == 2 and all(len(n) == 1 for n in conditions)  # one package per call
    assert (reg.origins["vec"][0], reg.origins["tok"][0]) == ("pkg-a", "pkg-b")
