"""The conformance kit (ldmcore/testing/): every built-in plugin passes it, and plugins broken
on purpose are caught with a message naming the rule they break.

The broken plugins are one good encoder (which passes every rule, checked first) with one fault
each, so each failure is known to come from that fault alone; for the rules of plugins that
insert layers into the transformer blocks, the ip_adapter plugin (which passes every rule, as a
built-in) is the good one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ConfigDict
from torch import nn

import ldm_class
import ldm_controlnet
import ldm_inpaint
import ldm_ip_adapter
import ldm_layout
import ldm_lowres
import ldm_segmap
import ldm_t2i_adapter
import ldm_text
from ldm_class import ClassEncoder
from ldm_controlnet.encoder import ControlNetEncoder
from ldm_inpaint.encoder import InpaintEncoder
from ldm_ip_adapter.encoder import IPAdapterEncoder
from ldm_layout.encoder import LayoutEncoder
from ldm_lowres.encoder import LowresEncoder
from ldm_segmap.encoder import SegmapEncoder
from ldm_t2i_adapter.encoder import T2IAdapterEncoder
from ldm_text.encoder import TextEncoder
from ldmcore.conditioning import (ConditionEncoder, EncoderConfig, Injection, OutputSpec, Tokens,
                                  Widget, WidgetKind)
from ldmcore.errors import ConfigError
from ldmcore.hookspecs import hookimpl
from ldmcore.nn.decoupled_attention import DecoupledKeyValue
from ldmcore.testing import (RULES, ConformanceError, ConformanceTests, PluginCase, check_plugin,
                             check_rule, isolated_registry)

# -- every built-in plugin ------------------------------------------------------------------------

def png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def label_maps(tmp: Path) -> list[str]:
    a = np.zeros((16, 16), np.uint8)
    a[2:9, 3:10] = 2
    b = np.full((16, 16), 3, np.uint8)
    b[8:, :] = 1
    return [png(tmp / "map_a.png", a), png(tmp / "map_b.png", b)]


def edge_maps(tmp: Path) -> list[str]:
    a = np.zeros((16, 16), np.uint8)
    a[4, 2:12] = 255
    b = np.zeros((16, 16), np.uint8)
    b[3:13, 8] = 255
    return [png(tmp / "edges_a.png", a), png(tmp / "edges_b.png", b)]


def low_images(tmp: Path) -> list[str]:
    rng = np.random.default_rng(0)
    return [png(tmp / f"low{i}.png", (rng.random((4, 4, 3)) * 255).astype(np.uint8)) for i in range(2)]


def holes(tmp: Path) -> list[str]:
    rgb = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    small, big = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    small[4:8, 4:8], big[2:14, 2:14] = 255, 255
    image = png(tmp / "photo.png", rgb)
    return [f"{image},{png(tmp / 'small.png', small)}", f"{image},{png(tmp / 'big.png', big)}"]


def references(tmp: Path) -> list[str]:
    """Two reference images; the second with a region (its left half)."""
    rng = np.random.default_rng(2)
    a, b = ((rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(2))
    region = np.zeros((16, 16), np.uint8)
    region[:, :8] = 255
    return [png(tmp / "ref_a.png", a),
            f'{{"image":"{png(tmp / "ref_b.png", b)}","region":"{png(tmp / "where.png", region)}"}}']


# A new built-in plugin adds its case here; the test below fails for a built-in without one.
CASES = {
    "class": PluginCase(ClassEncoder, config={"num_classes": 10}, cli_values=["3", "0"],
                        bad_cli_values=["seven", "3.5"], plugin=ldm_class),
    "segmap": PluginCase(SegmapEncoder, config={"channels": 4, "hidden": 8}, cli_values=label_maps,
                         bad_cli_values=["/no/such/map.png"], dataset="shapes", image_channels=3,
                         plugin=ldm_segmap),
    "layout": PluginCase(LayoutEncoder, config={"embed_dim": 16, "num_freqs": 4},
                         cli_values=['[[0.1,0.1,0.5,0.5,"circle"]]',
                                     '[[0.1,0.1,0.5,0.5,"circle"],[0.6,0.2,0.9,0.6,2]]', "[]"],
                         bad_cli_values=["boxes", '[[0.1,0.1,0.5,0.5,"hexagon"]]',
                                         '[[0.1,0.1,"circle"]]'],
                         dataset="shapes", image_channels=3, plugin=ldm_layout),
    "lowres": PluginCase(LowresEncoder, config={"level_dim": 8}, cli_values=low_images,
                         bad_cli_values=["/no/such/low.png"], dataset="shapes", image_channels=3,
                         plugin=ldm_lowres),
    "text": PluginCase(TextEncoder, config={"max_length": 12},
                       cli_values=["a red circle", "a blue square and a green triangle"],
                       dataset="shapes", image_channels=3, plugin=ldm_text),
    "inpaint": PluginCase(InpaintEncoder, cli_values=holes, bad_cli_values=["only_one.png"],
                          dataset="shapes", image_channels=3, plugin=ldm_inpaint),
    "controlnet": PluginCase(ControlNetEncoder, config={"condition": "segmap"}, cli_values=label_maps,
                             bad_cli_values=["/no/such/map.png"], dataset="shapes",
                             image_channels=3, plugin=ldm_controlnet),
    "t2i_adapter": PluginCase(T2IAdapterEncoder, config={"condition": "edges", "num_res_blocks": 1},
                              cli_values=edge_maps, bad_cli_values=["/no/such/edges.png"],
                              dataset="shapes", image_channels=3, plugin=ldm_t2i_adapter),
    "ip_adapter": PluginCase(IPAdapterEncoder, config={"embed_dim": 16}, cli_values=references,
                             bad_cli_values=["/no/such/ref.png", '{"picture":"a.png"}', "3"], dataset="shapes",
                             image_channels=3, plugin=ldm_ip_adapter),
}


def builtin_plugins() -> list[str]:
    return [i.name for i in isolated_registry(builtins=True).infos()]


@pytest.mark.parametrize("name", builtin_plugins())
def test_every_builtin_plugin_passes_the_kit(name):
    assert name in CASES, (f"built-in plugin {name!r} has no PluginCase in CASES in "
                           f"tests/test_conformance.py; add one (docs/conformance.md).")
    check_plugin(CASES[name])


class TestLowresWithBaseConformance(ConformanceTests):
    """The lowres plugin giving a base image (residual diffusion), rule by rule."""

    case = PluginCase(LowresEncoder, config={"level_dim": 8, "base": "bicubic"}, cli_values=low_images,
                      dataset="shapes", image_channels=3, plugin=ldm_lowres)


class TestInpaintWeighingTheHoleConformance(ConformanceTests):
    """The inpaint plugin weighing the known region less in the loss, rule by rule."""

    case = PluginCase(InpaintEncoder, config={"base": "blur_fill", "known_weight": 0.1}, cli_values=holes,
                      dataset="shapes", image_channels=3, plugin=ldm_inpaint)


class TestClassAsTokensConformance(ConformanceTests):
    """The class plugin's other injection (one cross-attention token), rule by rule."""

    case = PluginCase(ClassEncoder, config={"num_classes": 10, "injection": "crossattn"},
                      cli_values=["9"], bad_cli_values=["nine"], plugin=ldm_class)


class TestGatedLayoutConformance(ConformanceTests):
    """The layout plugin's GLIGEN injection (gated self-attention in every block), rule by rule."""

    case = PluginCase(LayoutEncoder, config={"embed_dim": 16, "num_freqs": 4, "injection": "gated",
                                             "grounding_hidden": 32},
                      cli_values=['[[0.1,0.1,0.5,0.5,"circle"]]', "[]"], dataset="shapes",
                      image_channels=3, plugin=ldm_layout)


def test_the_mixin_has_one_test_per_rule():
    tests = sorted(n for n in dir(ConformanceTests) if n.startswith("test_rule_"))
    assert tests == sorted(f"test_rule_{r.replace('-', '_')}" for r in RULES)


# -- one good encoder, then one fault at a time ---------------------------------------------------

class GoodConfig(EncoderConfig):
    dim: int = 8


class Good(ConditionEncoder):
    """Digit labels -> a learned vector; a learned null vector."""

    name = "good"
    injections = (Injection.VECTOR,)
    Config = GoodConfig

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.table = nn.Embedding(10, config.dim)
        self.null_vector = nn.Parameter(torch.randn(config.dim))

    def output_specs(self):
        return {Injection.VECTOR: OutputSpec(Injection.VECTOR, (self.config.dim,))}

    def batch_value(self, batch):
        return batch["class"] if "class" in batch else batch[self.name]

    def forward(self, value):
        return {Injection.VECTOR: self.table(torch.as_tensor(value).long())}

    def null(self, batch_size):
        return {Injection.VECTOR: self.null_vector.expand(batch_size, -1)}

    @classmethod
    def parse(cls, value):
        if not str(value).isdigit() or int(value) > 9:
            raise ConfigError(f"cond.good={value!r} is not a digit.")
        return torch.tensor(int(value))


def case_of(cls: type, **kw) -> PluginCase:
    return PluginCase(cls, cli_values=kw.pop("cli_values", ["4", "2"]),
                      bad_cli_values=kw.pop("bad_cli_values", ["x"]), **kw)


def test_the_good_encoder_passes_every_rule():
    check_plugin(case_of(Good))


class WrongShape(Good):
    def forward(self, value):
        out = super().forward(value)[Injection.VECTOR]
        return {Injection.VECTOR: torch.cat([out, out[:, :1]], dim=1)}  # dim + 1 features


class NoNull(Good):
    null = ConditionEncoder.null


class OffersTen(Good):
    def widget(self):  # "10" is offered, but parse takes digits 0..9
        return Widget(WidgetKind.CHOICE, choices=tuple(str(i) for i in range(11)))


class PaintsAnywhere(Good):
    def widget(self):  # a painted map needs the size of its canvas
        return Widget(WidgetKind.LABEL_MAP, choices=("background", "thing"))


@pytest.mark.parametrize("broken, rule, words", [
    (WrongShape, "forward", "(9,) per sample; its spec says (8,)"),
    (NoNull, "null", "null() is missing"),
    (OffersTen, "widget", "the page can send cond.good='10'"),
    (PaintsAnywhere, "widget", "a painted input needs one"),
])
def test_a_deliberately_broken_plugin_is_caught_naming_the_rule(broken, rule, words):
    with pytest.raises(ConformanceError) as exc:
        check_plugin(case_of(broken))
    assert rule in exc.value.rules
    assert f"plugin 'good' breaks rule '{rule}': " in str(exc.value)
    assert words in exc.value.failures[rule]


class LooseConfig(GoodConfig):
    model_config = ConfigDict(extra="allow", frozen=True)


class Loose(Good):
    Config = LooseConfig


class TooWide(Good):
    name = "too_wide"
    injections = (Injection.CROSSATTN,)

    def output_specs(self):
        return {Injection.CROSSATTN: OutputSpec(Injection.CROSSATTN, (1, self.backbone.context_dim + 1))}


class BlindMask(Good):
    """Tokens whose padding mask hides every token of some samples."""

    injections = (Injection.CROSSATTN,)

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.table = nn.Embedding(10, backbone.context_dim)
        self.null_vector = nn.Parameter(torch.zeros(backbone.context_dim))

    def output_specs(self):
        return {Injection.CROSSATTN: OutputSpec(Injection.CROSSATTN, (2, self.backbone.context_dim))}

    def forward(self, value):
        labels = torch.as_tensor(value).long()
        tokens = self.table(labels)[:, None].expand(-1, 2, -1)
        return {Injection.CROSSATTN: Tokens(tokens, (labels > 0)[:, None].expand(-1, 2))}

    def null(self, batch_size):
        mask = torch.ones(batch_size, 2, dtype=torch.bool)
        return {Injection.CROSSATTN: Tokens(self.null_vector.expand(batch_size, 2, -1), mask)}


class PerSampleNull(Good):
    def null(self, batch_size):
        return {Injection.VECTOR: self.null_vector * torch.arange(batch_size)[:, None]}


class BatchNormed(Good):
    """Normalises over the batch: a sample's code depends on the other samples."""

    def forward(self, value):
        out = super().forward(value)[Injection.VECTOR]
        return {Injection.VECTOR: (out - out.mean(0)) / (out.std(0, correction=0) + 1)}


class UnsavedNull(Good):
    """The null is a non-persistent random buffer: it is lost in a save/load round trip."""

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        del self.null_vector
        self.register_buffer("null_vector", torch.randn(config.dim), persistent=False)


class ParseRaisesValueError(Good):
    @classmethod
    def parse(cls, value):
        return torch.tensor(int(value))  # "x" raises ValueError: a traceback, not exit status 2


class NothingToTrain(Good):
    """Declares trainable but has no parameters."""

    def __init__(self, config, backbone):
        ConditionEncoder.__init__(self, config, backbone)
        self.register_buffer("table_", torch.eye(10, config.dim))

    def forward(self, value):
        return {Injection.VECTOR: self.table_[torch.as_tensor(value).long()]}

    def null(self, batch_size):
        return {Injection.VECTOR: torch.zeros(batch_size, self.config.dim)}


class FrozenLeaky(Good):
    """Frozen, but its null is built from a fresh tensor that requires grad."""

    trainable = False

    def null(self, batch_size):
        return {Injection.VECTOR: torch.zeros(batch_size, self.config.dim, requires_grad=True)}


class Exploding(Good):
    """Finite but enormous outputs: the diffusion loss overflows."""

    def forward(self, value):
        return {Injection.VECTOR: super().forward(value)[Injection.VECTOR] * 1e38}


class WrongBase(Good):
    """Says it gives a base, and returns one at image size, not latent size."""

    @property
    def provides_base(self):
        return True

    def base(self, value):
        return torch.zeros(len(value), self.backbone.latent_channels, *self.backbone.image_size)


class NegativeWeight(Good):
    """Weighs the loss with -1 everywhere: training would climb the error."""

    def loss_weight(self, value):
        return -torch.ones(len(value), 1, *self.backbone.latent_size)


class Unregistered:
    """A plugin module whose hook registers nothing."""

    @hookimpl
    def register_conditions(self, register):
        pass


# plugins that insert layers: the ip_adapter plugin with one fault each

class OpenAtInit(IPAdapterEncoder):
    """Its value projections start random: attached, it would move a pretrained model."""

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        for layer in self.adapters:
            nn.init.normal_(layer.to_v.weight)


class DeadLayer(DecoupledKeyValue):
    def forward(self, q, tokens, mask=None, region=None):
        return torch.zeros(*q.shape[:1], q.shape[2], self.heads * self.head_dim)


class NeverOpens(IPAdapterEncoder):
    """Layers that add zero whatever they learn: no gate at all."""

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.adapters = nn.ModuleList(DeadLayer(backbone.context_dim, b.heads, b.head_dim)
                                      for b in backbone.transformer_blocks)


class UnownedLayers(IPAdapterEncoder):
    """Keeps its layers outside its modules: not saved, not trained, not removable."""

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.__dict__["loose"] = self._modules.pop("adapters")

    def block_layers(self):
        return {Injection.DECOUPLED_CROSSATTN: self.__dict__["loose"]}


class UnsavedScale(IPAdapterEncoder):
    """A random scale per layer that its state dict does not hold."""

    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        for layer in self.adapters:
            layer.scale = float(torch.rand(()))


def ip_case(cls: type) -> PluginCase:
    return PluginCase(cls, config={"embed_dim": 16}, cli_values=references, dataset="shapes",
                      image_channels=3)


@pytest.mark.parametrize("case, rule, words", [
    (case_of(Loose), "declaration", "accepts unknown keys"),
    (case_of(TooWide), "output-spec", "context_dim=32"),
    (case_of(BlindMask, cli_values=["0"]), "key-padding-mask", "attends no token"),
    (case_of(PerSampleNull), "null", "not null(1) repeated"),
    (case_of(BatchNormed), "determinism", "alone than in a batch"),
    (case_of(UnsavedNull), "save-load", "missing from state_dict()"),
    (case_of(WrongBase), "base", "it must be a finite tensor"),
    (case_of(NegativeWeight), "loss-weight", "a negative or non-finite weight"),
    (case_of(ParseRaisesValueError), "parse", "raised ValueError"),
    (case_of(Good, cli_values=[]), "parse", "no cli_values"),
    (case_of(Good, bad_cli_values=["4"]), "parse", "accepted a value"),
    (case_of(NothingToTrain), "gradients", "no trainable parameters"),
    (case_of(FrozenLeaky), "gradients", "null() output requires grad"),
    (case_of(Exploding), "train-sample", "the diffusion loss is"),
    (case_of(Good, plugin=Unregistered()), "registration", "does not register"),
    (case_of(Good, dataset="shapes"), "forward", "batch_value() found no value"),
    (ip_case(OpenAtInit), "zero-effect", "must start at zero effect"),
    (ip_case(NeverOpens), "gate", "sends no gradient into its inserted layers"),
    (ip_case(UnownedLayers), "owned-layers", "are not the encoder's own"),
    (ip_case(UnsavedScale), "layers-save-load", "output differs"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_rule_catches_its_fault(case, rule, words):
    with pytest.raises(ConformanceError) as exc:
        check_rule(case, rule)
    assert exc.value.rules == [rule]
    assert str(exc.value).startswith(f"plugin '{case.name}' breaks rule '{rule}': ")
    assert words in str(exc.value), str(exc.value)


def test_unknown_rule_names_the_rules():
    with pytest.raises(ValueError, match="save-load"):
        check_plugin(case_of(Good), rules=["save_load"])
